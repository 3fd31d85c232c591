"""Property-based tests of the whole HTTP API from its own ``/openapi.json`` (schemathesis):
every operation, reads and writes, with valid and invalid input, sent with a real admin token
(the schema's bearer security scheme filled in) to a real ``ledger serve``: no answer is a
server error. Fixed seed and a bounded number of examples per operation, so CI is repeatable."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlmodel import col, select

from ledger.config import Settings
from ledger.db.models import LedgerEntry
from ledger.db.session import Database
from ledger.tokens import create_token
from ledger.web.app import create_app
from tests.conftest import T0, VALID_BEHAVIOR, free_port, write_behavior
from tests.daemon import Daemon

# 15 per operation and mode: every operation still gets valid and invalid input (about 960
# requests a backend, each to a real daemon); the fixed seed makes them the same every run, so
# more examples would repeat CI time rather than cover new ground between commits.
EXAMPLES_PER_OPERATION = 15
SEED = 18


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_a_server_error(
    mode: GenerationMode,
    tmp_path: Path,
    database_url: str,
    start_daemon: Callable[..., Daemon],
) -> None:
    body = VALID_BEHAVIOR.format(key_env="FUZZ_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as session:
            token, _ = create_token(
                session, "schemathesis-admin-7f3a", "admin", actor="test", now=T0
            )
    finally:
        db.close()
    daemon = start_daemon(
        database_url,
        {
            "LEDGER_OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "LEDGER_BROADCAST_TOKENS": "broadcast-secret-" + "3" * 20,
        },
    )
    schema = schemathesis.openapi.from_url(f"{daemon.base_url}/openapi.json")
    auth = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {operation.label for operation in operations}
    assert {"GET /api/ledger", "POST /api/behaviors/{name}/{verb}", "POST /api/tokens"} <= labels
    failures = [
        failure
        for operation in operations
        if (failure := _server_error(operation, mode, daemon.base_url, auth)) is not None
    ]
    assert failures == [], "\n".join(failures)


def _server_error(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    base_url: str,
    auth: dict[str, str],
) -> str | None:
    """The first server error (shrunk) ``operation`` answers with generated input, or None."""

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        headers = {**(case.headers or {}), **auth}
        response = case.call(base_url=base_url, headers=headers, timeout=70)
        case.validate_response(response, checks=[not_a_server_error])

    try:
        check()
    except Unsatisfiable:
        return None  # no input of this mode exists (a route without parameters has no invalid one)
    except Exception as exc:  # the check's failure, as schemathesis reports it
        return f"{operation.label}: {exc}"
    return None


def test_an_id_beyond_64_bits_is_a_validation_error_not_a_server_error(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(f"sqlite:///{tmp_path / 'ids.db'}", {"LEDGER_AUTH": "off"})
    with httpx.Client(base_url=daemon.base_url, timeout=30) as http:
        for after_id in (2**63, 2**64 + 1, 10**40):
            answer = http.get("/api/ledger", params={"after_id": after_id})
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["details"][0]["field"] == "query.after_id"
        assert http.get("/api/ledger", params={"after_id": 2**63 - 1}).status_code == 200
    assert "LEDGER_AUTH=off: every request is served without a token" in daemon.log()


async def test_a_number_the_database_cannot_hold_is_a_422_wherever_it_slips_through(
    tmp_path: Path, sqlite_db: Database
) -> None:
    """The net under every route: a parameter a route forgot to bound is still the caller's
    error (422, the API's error shape), not a 500."""
    app = create_app(Settings(database_url="sqlite://", behaviors_dir=tmp_path))

    @app.get("/probe")
    def probe(n: int) -> dict[str, int]:
        with sqlite_db.transaction() as session:
            rows = session.exec(select(LedgerEntry).where(col(LedgerEntry.id) > n)).all()
        return {"rows": len(rows)}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as http:
        assert (await http.get("/probe", params={"n": 5})).json() == {"rows": 0}
        answer = await http.get("/probe", params={"n": 2**64})
        assert answer.status_code == 422
        assert answer.json()["error"] == {
            "code": "invalid_request",
            "message": "a value in the request is out of range",
            "details": [],
        }
