"""The dashboard over plain HTTP against a real ``ledger serve``: login and its cookie, CSRF on
every form, the login rate limit, the auth-off banner, pages without inline script or style,
and actions that go through the same services as the API (recorded in the ledger)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import VALID_BEHAVIOR, free_port, write_behavior
from tests.servers import Daemon, daemon_starter

TOKEN = "dash-token-" + "3" * 30
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _start_dashboard(folder: Path, database_url: str, start: Callable[..., Daemon]) -> Daemon:
    body = VALID_BEHAVIOR.format(key_env="DASH_TEST_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(folder / "behaviors", "alpha", body)
    return start(
        database_url,
        {
            "LEDGER_API_TOKENS": '{"ops": "env:DASH_OPS_TOKEN"}',
            "DASH_OPS_TOKEN": TOKEN,
            "LEDGER_OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}",
            # the test plays the TLS proxy in front of the daemon, from loopback
            "LEDGER_FORWARDED_ALLOW_IPS": "127.0.0.1",
        },
    )


@pytest.fixture(scope="module")
def shared_daemon(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon for the tests below that log in (one refused token at most, far from the
    limit), read pages and pause ``alpha`` (the only one that changes it, and the only one that
    asks). Starting a daemon costs seconds; the rate limit test has one of its own."""
    folder = tmp_path_factory.mktemp("dashboard-daemon")
    with contextlib.contextmanager(daemon_starter)(folder) as start:
        yield _start_dashboard(folder, module_database_url, start)


@pytest.fixture
def daemon(shared_daemon: Daemon) -> Daemon:
    return shared_daemon


@pytest.fixture
def browser(daemon: Daemon) -> Iterator[httpx.Client]:
    """A client that keeps cookies like a browser (and follows no redirects)."""
    with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
        yield client


def login(client: httpx.Client, token: str = TOKEN, **headers: str) -> httpx.Response:
    form = client.get("/login", headers=headers)
    assert form.status_code == 200
    match = CSRF.search(form.text)
    assert match, form.text
    return client.post(
        "/login",
        data={"token": token, "csrf_token": match.group(1), "next": "/approvals"},
        headers=headers,
    )


def csrf_of(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    match = CSRF.search(page.text)
    assert match, page.text
    return match.group(1)


def state_of(daemon: Daemon) -> dict[str, object]:
    response = httpx.get(
        f"{daemon.base_url}/api/behaviors/alpha", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200
    state: dict[str, object] = response.json()
    return state


def test_pages_need_a_login_whose_cookie_is_httponly_lax_and_secure_over_tls(
    browser: httpx.Client,
) -> None:
    for path in ("/", "/approvals", "/ledger", "/behaviors/alpha", "/fragments/board"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == f"/login?next={path}"
    assert browser.get("/events/board").status_code == 303

    done = login(browser)
    assert done.status_code == 303 and done.headers["location"] == "/approvals"
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("ledger_session=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    board = browser.get("/")
    assert board.status_code == 200 and "alpha" in board.text
    assert "api:ops · operator" in board.text

    # Behind a TLS proxy (LEDGER_FORWARDED_ALLOW_IPS names it) the cookie is Secure.
    with httpx.Client(base_url=browser.base_url, timeout=30) as tls:
        secure = login(tls, **{"X-Forwarded-Proto": "https"})
        assert "Secure" in secure.headers["set-cookie"]

    # A forged or edited cookie is no session.
    with httpx.Client(base_url=browser.base_url, timeout=30) as forger:
        value = done.cookies["ledger_session"]
        forger.cookies.set("ledger_session", value[:-2] + ("A" if value[-2] != "A" else "B") + "x")
        assert forger.get("/").status_code == 303

    logout = browser.post("/logout", data={"csrf_token": csrf_of(browser, "/")})
    assert logout.status_code == 303 and logout.headers["location"] == "/login"
    assert browser.get("/").status_code == 303


def test_every_form_needs_its_csrf_token_and_actions_are_recorded_with_the_name(
    browser: httpx.Client, daemon: Daemon
) -> None:
    assert login(browser).status_code == 303
    action = "/behaviors/alpha/action"
    missing = browser.post(action, data={"verb": "pause", "reason": "x"})
    assert missing.status_code == 403 and "did not come from this dashboard" in missing.text
    with httpx.Client(base_url=browser.base_url, timeout=30) as other:
        assert login(other).status_code == 303
        foreign = csrf_of(other, "/behaviors/alpha")  # another session's token
    assert (
        browser.post(
            action, data={"verb": "pause", "reason": "x", "csrf_token": foreign}
        ).status_code
        == 403
    )
    assert state_of(daemon)["paused"] is False

    token = csrf_of(browser, "/behaviors/alpha")
    no_reason = browser.post(action, data={"verb": "pause", "reason": " ", "csrf_token": token})
    assert no_reason.status_code == 303
    assert "Give a reason" in browser.get("/behaviors/alpha").text
    assert state_of(daemon)["paused"] is False

    paused = browser.post(
        action, data={"verb": "pause", "reason": "maintenance", "csrf_token": token}
    )
    assert paused.status_code == 303 and paused.headers["location"] == "/behaviors/alpha"
    page = browser.get("/behaviors/alpha").text
    assert "alpha paused at A · proposal-only by api:ops: maintenance" in page
    assert state_of(daemon)["paused"] is True
    entries = httpx.get(
        f"{daemon.base_url}/api/ledger",
        params={"behavior": "alpha"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()["entries"]
    assert (entries[-1]["kind"], entries[-1]["actor"], entries[-1]["reason"]) == (
        "paused",
        "api:ops",
        "maintenance",
    )
    # A refused action says why (a conflict from the service), and changes nothing.
    again = browser.post(action, data={"verb": "demote", "reason": "no", "csrf_token": token})
    assert again.status_code == 303
    assert "cannot demote" in browser.get("/behaviors/alpha").text

    unknown = browser.post("/approvals/run-nope/approve", data={"csrf_token": token})
    assert unknown.status_code == 303
    assert "run-nope" in browser.get("/approvals").text


def test_the_login_page_and_a_refused_token_say_how_to_get_one(browser: httpx.Client) -> None:
    page = browser.get("/login")
    assert "<code>ledger token create NAME --role operator</code> makes one" in page.text
    refused = login(browser, "wrong-token")
    assert refused.status_code == 401
    assert (
        "That token is not valid (revoked, mistyped, or from another daemon): paste it again, "
        "or make a new one where the daemon runs with "
        "`ledger token create NAME --role operator`."
    ) in refused.text.replace("&#96;", "`")


def test_failed_logins_are_limited_per_address(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = _start_dashboard(tmp_path, database_url, start_daemon)  # its own: it hits the limit
    with httpx.Client(base_url=daemon.base_url, timeout=30) as browser:
        _hit_the_login_limit(browser)


def _hit_the_login_limit(browser: httpx.Client) -> None:
    for _ in range(10):
        refused = login(browser, "wrong-token")
        assert refused.status_code == 401 and "not valid" in refused.text
    limited = login(browser)  # even the right token waits now
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert "Too many failed logins" in limited.text
    assert browser.get("/").status_code == 303


class _Inline(HTMLParser):
    """Collects what a strict CSP (no 'unsafe-inline') would block."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.assets: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            if not named.get("src"):
                self.problems.append("inline <script>")
            else:
                self.assets.append(named["src"] or "")
        if tag == "link" and named.get("href"):
            self.assets.append(named["href"] or "")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{tag} {name}={value!r}")
            if name in ("href", "src") and value and value.startswith(("http:", "https:", "//")):
                self.problems.append(f"external {value}")


def test_pages_have_no_inline_script_or_style_and_load_only_their_own_assets(
    browser: httpx.Client,
) -> None:
    assert login(browser).status_code == 303
    assets: set[str] = set()
    pages = ("/login", "/", "/behaviors/alpha", "/approvals", "/ledger", "/nowhere-page")
    odd = (
        "/ledger?before_id=99999999999999999999999",
        "/ledger?before_id=-1&kind=%00&behavior=a%00b",
        "/?q=%00x",
        "/behaviors/alpha?runs=%00",
        "/behaviors/alpha?runs=zz",
        "/?after_B=zz",
    )
    for path in pages + odd:
        page = browser.get(path)
        if path == "/nowhere-page":
            assert page.status_code == 404
            continue
        if path.endswith("=zz"):  # a cursor that is not one: said so
            assert page.status_code == 400 and "cursor" in page.text
            continue
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        parser = _Inline()
        parser.feed(page.text)
        assert parser.problems == [], path
        assets |= set(parser.assets)
    assert assets == {
        "/static/dashboard/app.css",
        "/static/dashboard/app.js",
        "/static/dashboard/favicon.svg",
    }
    for asset in assets:
        assert browser.get(asset).status_code == 200, asset


def test_with_auth_off_every_page_warns_and_forms_still_need_csrf(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    write_behavior(tmp_path / "behaviors", "alpha")
    daemon = start_daemon(database_url, {"LEDGER_AUTH": "off"})
    with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
        board = client.get("/")
        assert board.status_code == 200
        assert "Authentication is off" in board.text
        assert client.get("/login").status_code == 303
        forged = client.post("/behaviors/alpha/action", data={"verb": "pin", "reason": "x"})
        assert forged.status_code == 403
        token = csrf_of(client, "/behaviors/alpha")
        done = client.post(
            "/behaviors/alpha/action", data={"verb": "pin", "reason": "x", "csrf_token": token}
        )
        assert done.status_code == 303
        page = client.get("/behaviors/alpha").text
        assert "alpha pinned at A · proposal-only by anonymous (auth off): x" in page


def test_a_session_survives_a_restart_with_the_session_secret_but_not_a_changed_token(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    write_behavior(tmp_path / "behaviors", "alpha")
    env = {
        "LEDGER_API_TOKENS": '{"ops": "env:DASH_OPS_TOKEN"}',
        "DASH_OPS_TOKEN": TOKEN,
        "LEDGER_SESSION_SECRET": "env:DASH_SESSION_SECRET",
        "DASH_SESSION_SECRET": "s" * 40,
    }
    first = start_daemon(database_url, env)
    with httpx.Client(base_url=first.base_url, timeout=30) as client:
        assert login(client).status_code == 303
        cookie = client.cookies["ledger_session"]
    first.proc.terminate()
    first.proc.wait(30)

    # Both restarts at once (after the first daemon stopped): a start costs seconds.
    with ThreadPoolExecutor(2) as pool:
        starting_same = pool.submit(start_daemon, database_url, env)
        starting_rotated = pool.submit(
            start_daemon, database_url, {**env, "DASH_OPS_TOKEN": "rotated-" + "9" * 30}
        )
        same, rotated = starting_same.result(), starting_rotated.result()
    with httpx.Client(base_url=same.base_url, timeout=30) as client:
        client.cookies.set("ledger_session", cookie)
        assert client.get("/").status_code == 200  # the same secret reads the same session
    with httpx.Client(base_url=rotated.base_url, timeout=30) as client:
        client.cookies.set("ledger_session", cookie)
        answer = client.get("/")
        assert answer.status_code == 303 and answer.headers["location"] == "/login?next=/"
