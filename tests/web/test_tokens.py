"""Named tokens with roles against a real ``ledger serve``: viewers read, operators act, admins
manage tokens; tokens are stored hashed, revoked ones stop at once; ``[api_tokens]`` keep
working as operators; ingestion never accepts API credentials; every answer carries the
security headers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from ledger.config import Settings
from ledger.db.session import Database
from ledger.tokens import create_token, revoke_token
from ledger.web.app import create_app
from ledger.web.auth import Operator, authenticate_token
from tests.conftest import T0, VALID_BEHAVIOR, free_port, write_behavior
from tests.servers import Daemon, daemon_starter, ledger

CONFIG_TOKEN = "cfg-token-" + "5" * 24


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _serve(folder: Path, database_url: str, start: Callable[..., Daemon]) -> tuple[Daemon, str]:
    """A daemon with one behavior, a config token and a named admin token: the daemon and the
    admin token."""
    body = VALID_BEHAVIOR.format(key_env="TOKENS_TEST_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(folder / "behaviors", "alpha", body)
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as session:
            admin_token, _ = create_token(session, "boss", "admin", actor="test", now=T0)
    finally:
        db.close()
    daemon = start(
        database_url,
        {
            "LEDGER_API_TOKENS": '{"ops": "env:OPS_TOKEN"}',
            "OPS_TOKEN": CONFIG_TOKEN,
            "LEDGER_BROADCAST_TOKENS": "broadcast-secret-" + "1" * 20,
            "LEDGER_WEBHOOK_SOURCES": '{"gh": {"scheme": "github", "secrets": "env:GH_SECRET"}}',
            "GH_SECRET": "gh-secret-" + "2" * 20,
            "LEDGER_OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}",
        },
    )
    return daemon, admin_token


@pytest.fixture(scope="module")
def shared(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daemon, str]]:
    """One daemon (``_serve``) for the tests below that make tokens of names no other of them
    uses and look only at those (a start costs seconds): the daemon and the admin token. The
    test that lists every token has a daemon of its own."""
    folder = tmp_path_factory.mktemp("tokens-daemon")
    with contextlib.contextmanager(daemon_starter)(folder) as start:
        yield _serve(folder, module_database_url, start)


@pytest.fixture
def served(shared: tuple[Daemon, str]) -> tuple[Daemon, str]:
    return shared


def test_viewers_read_operators_act_admins_manage_tokens(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon, admin = _serve(tmp_path, database_url, start_daemon)  # its own: it lists every token
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        made = http.post(
            "/api/tokens", json={"name": "wall", "role": "viewer"}, headers=_bearer(admin)
        )
        assert made.status_code == 201, made.text
        viewer = made.json()["token"]
        assert made.json()["role"] == "viewer" and made.json()["created_by"] == "token:boss"

        assert http.get("/api/behaviors", headers=_bearer(viewer)).status_code == 200
        refused = http.post(
            "/api/behaviors/alpha/pin", json={"reason": "x"}, headers=_bearer(viewer)
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["message"] == (
            "token:wall has the viewer role; this needs operator"
        )
        assert http.get("/api/tokens", headers=_bearer(viewer)).status_code == 403

        # [api_tokens] keep working, with the operator role: they act, but manage no tokens.
        pinned = http.post(
            "/api/behaviors/alpha/pin", json={"reason": "launch"}, headers=_bearer(CONFIG_TOKEN)
        )
        assert pinned.status_code == 200, pinned.text
        assert http.get("/api/tokens", headers=_bearer(CONFIG_TOKEN)).status_code == 403
        made_op = http.post(
            "/api/tokens", json={"name": "ci", "role": "operator"}, headers=_bearer(admin)
        )
        operator = made_op.json()["token"]
        resumed = http.post(
            "/api/behaviors/alpha/unpin", json={"reason": "done"}, headers=_bearer(operator)
        )
        assert resumed.status_code == 200, resumed.text
        entries = http.get("/api/ledger", headers=_bearer(viewer)).json()["entries"]
        assert [e["actor"] for e in entries if e["kind"].endswith("pinned")][-2:] == [
            "api:ops",
            "token:ci",
        ]

        listed = http.get("/api/tokens", headers=_bearer(admin)).json()["tokens"]
        assert [(t["name"], t["role"], t["active"]) for t in listed] == [
            ("boss", "admin", True),
            ("ci", "operator", True),
            ("wall", "viewer", True),
        ]
        assert all(t["last_used_at"] is not None for t in listed)
        assert "token" not in listed[0]
        clash = http.post(
            "/api/tokens", json={"name": "wall", "role": "admin"}, headers=_bearer(admin)
        )
        assert clash.status_code == 409
        bad = http.post(
            "/api/tokens", json={"name": "Wall!", "role": "root"}, headers=_bearer(admin)
        )
        assert bad.status_code == 422
        assert {d["field"] for d in bad.json()["error"]["details"]} == {"name", "role"}


def test_a_revoked_token_stops_working_at_once(served: tuple[Daemon, str]) -> None:
    daemon, admin = served
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        viewer = http.post(
            "/api/tokens", json={"name": "temp", "role": "viewer"}, headers=_bearer(admin)
        ).json()["token"]
        assert http.get("/api/status", headers=_bearer(viewer)).status_code == 200
        revoked = http.delete("/api/tokens/temp", headers=_bearer(admin))
        assert revoked.status_code == 200 and revoked.json()["active"] is False
        gone = http.get("/api/status", headers=_bearer(viewer))
        assert gone.status_code == 401
        assert http.delete("/api/tokens/temp", headers=_bearer(admin)).status_code == 409
        assert http.delete("/api/tokens/nobody", headers=_bearer(admin)).status_code == 404


def test_tokens_are_stored_only_as_their_digest(
    served: tuple[Daemon, str], module_database_url: str
) -> None:
    daemon, admin = served
    database_url = module_database_url
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        viewer = http.post(
            "/api/tokens", json={"name": "wall", "role": "viewer"}, headers=_bearer(admin)
        ).json()["token"]
    db = Database.open(database_url)
    try:
        with db.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM api_token"))]
    finally:
        db.close()
    stored = repr(rows)
    for token in (admin, viewer):
        assert token not in stored
        assert hashlib.sha256(token.encode()).hexdigest() in stored
    if database_url.startswith("sqlite:"):
        path = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob("ledger.db*"))
        assert admin.encode() not in raw and viewer.encode() not in raw
        assert hashlib.sha256(viewer.encode()).hexdigest().encode() in raw


def test_ingestion_never_accepts_api_credentials(served: tuple[Daemon, str]) -> None:
    daemon, admin = served
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        for token in (admin, CONFIG_TOKEN):
            traces = http.post("/v1/traces", json={"resourceSpans": []}, headers=_bearer(token))
            assert traces.status_code == 401
            hook = http.post(
                "/webhooks/gh",
                json={"action": "opened"},
                headers={**_bearer(token), "X-GitHub-Event": "pull_request"},
            )
            assert hook.status_code == 401


def test_every_answer_carries_the_security_headers(served: tuple[Daemon, str]) -> None:
    daemon, admin = served
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        answers = [
            http.get("/healthz"),
            http.get("/api/behaviors", headers=_bearer(admin)),
            http.get("/api/behaviors"),  # 401
            http.get("/nowhere"),  # 404
            http.get("/openapi.json"),
            http.get("/api/docs/static/swagger-ui.css"),
        ]
        for answer in answers:
            csp = answer.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self';" in csp, answer.url
            assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["referrer-policy"] == "same-origin"
            assert "strict-transport-security" not in answer.headers  # plain HTTP
        # The API docs page runs one inline script (it starts Swagger UI): allowed by its hash.
        docs = http.get("/api/docs")
        policy = docs.headers["content-security-policy"]
        (inline,) = re.findall(r"<script>(.*?)</script>", docs.text, flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"script-src 'self' 'sha256-{digest}';" in policy
        assert "frame-ancestors 'none'" in policy and "'unsafe-eval'" not in policy


def test_the_cli_creates_lists_and_revokes_tokens(tmp_path: Path, database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url}
    created = ledger("token", "create", "wall", "--role", "viewer", cwd=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("ldg_") and len(token) > 40
    assert "shown only now" in created.stderr
    listed = ledger("token", "list", "--json", cwd=tmp_path, env=env)
    assert token not in listed.stdout
    assert '"role": "viewer"' in listed.stdout and '"revoked_at": null' in listed.stdout
    again = ledger("token", "create", "wall", "--role", "admin", cwd=tmp_path, env=env)
    assert again.returncode == 2 and "revoke it first" in again.stderr
    revoked = ledger("token", "revoke", "wall", cwd=tmp_path, env=env)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    bad_role = ledger("token", "create", "x", "--role", "root", cwd=tmp_path, env=env)
    assert bad_role.returncode != 0 and "root" in bad_role.stderr


async def test_the_dashboard_login_check_and_hsts_behind_tls(tmp_path: Path) -> None:
    """``authenticate_token`` (what the dashboard's login form calls) knows named and
    configured tokens and forgets a revoked one; HSTS is sent only over TLS."""
    database_url = f"sqlite:///{tmp_path / 'login.db'}"
    (tmp_path / "behaviors").mkdir()
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        watch=False,
        api_tokens={"ops": CONFIG_TOKEN},
    )
    app = create_app(settings)
    assert app.state.auth_disabled is False
    async with app.router.lifespan_context(app):
        db = app.state.ledger.db

        def make() -> str:
            with db.transaction() as session:
                return create_token(session, "screen", "viewer", actor="test", now=T0)[0]

        token = await asyncio.to_thread(make)
        found = await asyncio.to_thread(authenticate_token, app, token)
        assert found == Operator("token:screen", "viewer")
        configured = await asyncio.to_thread(authenticate_token, app, CONFIG_TOKEN)
        assert configured == Operator("api:ops", "operator")
        assert await asyncio.to_thread(authenticate_token, app, "ldg_" + "x" * 43) is None
        assert await asyncio.to_thread(authenticate_token, app, "") is None

        def revoke() -> None:
            with db.transaction() as session:
                revoke_token(session, "screen", now=T0)

        await asyncio.to_thread(revoke)
        assert await asyncio.to_thread(authenticate_token, app, token) is None

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://ledger.test") as tls:
            answer = await tls.get("/healthz")
            assert answer.headers["strict-transport-security"] == "max-age=31536000"
        async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as plain:
            assert "strict-transport-security" not in (await plain.get("/healthz")).headers


def test_auth_off_is_flagged_for_the_dashboard(tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", behaviors_dir=tmp_path, auth="off")
    assert create_app(settings).state.auth_disabled is True
