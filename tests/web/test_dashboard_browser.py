"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real
``ledger serve`` and the OpenRouter simulator: log in, the tier board, approving and rejecting,
a guardrail fault moving a card from C to B live, the approvals queue updating live, operator
actions, the ledger page, and ``<script>`` in a description or a model output never running.

One daemon and one browser for the module and backend (SQLite, and PostgreSQL when
LEDGER_TEST_DATABASE_URL is set; each test leaves state the next ones tolerate);
waits are on conditions (Playwright's auto-waiting ``expect``), never sleeps. Screenshots of
the main pages go to ``test-artifacts/`` (or ``$LEDGER_TEST_ARTIFACTS``)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from tests.conftest import BACKENDS, free_port, write_behavior
from tests.daemon import Daemon, daemon_starter, ledger, wait_until
from tests.databases import PG_URL, pg_schema_url
from tests.web.browser import CHROMIUM, chromium, column, login

ARTIFACTS = Path(
    os.environ.get("LEDGER_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
TOKEN = "dash-ops-" + "5" * 30
KEYS = {
    name: f"sk-or-v1-dash{name}" + "0" * 40
    for name in ("guard", "queue", "xss", "report", "steady")
}
XSS_OUTPUT = (
    "# Weekly digest\\n\\n**Bold** finding. <script>alert('output')</script> "
    "<img src=x onerror=alert('img-output')> [click](javascript:alert('link'))"
)
XSS_DESCRIPTION = "<script>alert('description')</script><img src=x onerror=alert('desc-img')>"
# A live update: the change feed reads the database about every second, then the page fetches
# its fragment again. On a busy machine that takes longer than ``expect``'s own 5 s (which
# ``page.set_default_timeout`` does not change), so waits on one say how long they may take;
# so do waits for the stream itself ("Live"), which reconnects every 25 s.
LIVE_MS = 30_000
SIM = f"""\
seed: 3
presets:
  writer: {{model: openai/gpt-4o-mini, provider: OpenAI}}
keys:
  - {{key: {KEYS["guard"]}, name: guard}}
  - {{key: {KEYS["queue"]}, name: queue}}
  - {{key: {KEYS["report"]}, name: report}}
  - {{key: {KEYS["steady"]}, name: steady}}
  - key: {KEYS["xss"]}
    name: xss
    output: "{XSS_OUTPUT}"
"""


def behavior(key: str, description: str, start_tier: str = "A") -> str:
    # A yearly schedule: runs happen only when a test asks for one.
    return f"""\
description: {description!r}
schedule: "0 0 1 1 *"
preset: writer
api_key: env:DASH_KEY_{key.upper()}
key_name: {key}
prompt: "Write the weekly digest"
start_tier: {start_tier}
budget:
  usd: 2
  reset: day
action: {{type: log}}
"""


@dataclass
class Stack:
    daemon: Daemon
    sim_url: str
    api: httpx.Client
    folder: Path
    database_url: str

    def token(self, *args: str) -> str:
        """``ledger token ARGS`` against the daemon's database: its output."""
        done = ledger(
            "token", *args, cwd=self.folder, env={"LEDGER_DATABASE_URL": self.database_url}
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    @property
    def url(self) -> str:
        return self.daemon.base_url

    def run(self, name: str) -> dict[str, Any]:
        response = self.api.post(f"/api/behaviors/{name}/run", params={"wait": 30})
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()["run"]
        return run


@contextlib.contextmanager
def empty_database(backend: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database of ``backend`` for the module's daemon (it migrates it on
    start): a SQLite file in ``folder``, or a PostgreSQL schema of its own, dropped after."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'ledger.db'}"
        return
    assert PG_URL is not None
    admin_url = PG_URL.replace("postgresql://", "postgresql+psycopg://")
    schema = f"dash_{secrets.token_hex(6)}"
    admin = sa.create_engine(admin_url)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield pg_schema_url(admin_url, schema)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


# Every test on each backend: SQLite, and PostgreSQL when LEDGER_TEST_DATABASE_URL is set.
@pytest.fixture(scope="module", params=BACKENDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    tmp = tmp_path_factory.mktemp("dashboard")
    (tmp / "sim.yaml").write_text(SIM)
    write_behavior(tmp / "behaviors", "guarded", behavior("guard", "Summarises the news."))
    write_behavior(tmp / "behaviors", "queued", behavior("queue", "Drafts replies.", "B"))
    write_behavior(tmp / "behaviors", "hostile", behavior("xss", XSS_DESCRIPTION, "B"))
    write_behavior(tmp / "behaviors", "weekly-report", behavior("report", "SEO weekly report."))
    write_behavior(tmp / "behaviors", "steady-digest", behavior("steady", "Daily changelog."))
    sim_port = free_port()
    with (tmp / "sim.log").open("w") as out:
        sim = subprocess.Popen(
            [
                *(sys.executable, "-m", "ledger", "sim", "openrouter"),
                *("--port", str(sim_port), "--presets", str(tmp / "sim.yaml")),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    sim_url = f"http://127.0.0.1:{sim_port}"
    starter = daemon_starter(tmp)
    start = next(starter)
    database_stack = contextlib.ExitStack()
    try:

        def sim_up() -> bool:
            try:
                return httpx.get(sim_url + "/_sim/calls", timeout=1).status_code == 200
            except httpx.TransportError:
                assert sim.poll() is None, (tmp / "sim.log").read_text()
                return False

        wait_until(sim_up, what="the simulator")
        env = {
            "LEDGER_OPENROUTER_BASE_URL": sim_url,
            "LEDGER_API_TOKENS": '{"ops": "env:DASH_OPS_TOKEN"}',
            "DASH_OPS_TOKEN": TOKEN,
            **{f"DASH_KEY_{name.upper()}": key for name, key in KEYS.items()},
        }
        database_url = database_stack.enter_context(empty_database(request.param, tmp))
        daemon = start(database_url, env)
        with httpx.Client(
            base_url=daemon.base_url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as api:
            stack = Stack(daemon, sim_url, api, tmp, database_url)
            # A board with something in each column: runs toward B, one behavior trusted at C.
            for _ in range(3):
                stack.run("weekly-report")
            promoted = api.post(
                "/api/behaviors/steady-digest/promote", json={"reason": "proven", "to": "C"}
            )
            assert promoted.status_code == 200, promoted.text
            stack.run("steady-digest")
            yield stack
    finally:
        next(starter, None)
        sim.kill()
        sim.wait(10)
        database_stack.close()  # after the daemon stopped: nothing holds the schema


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@dataclass
class Watched:
    page: Any
    dialogs: list[str]
    errors: list[str]


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Watched]:
    """A fresh browser context, logged in, that records every dialog (an ``alert`` would be a
    script that ran) and every page error or CSP violation."""
    context = browser.new_context(base_url=stack.url, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    watched = Watched(page, [], [])

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    page.on(
        "console",
        lambda msg: watched.errors.append(msg.text) if msg.type == "error" else None,
    )
    login(page, TOKEN)
    yield watched
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def context(browser: Any, stack: Stack) -> Iterator[Any]:
    context = browser.new_context(base_url=stack.url)
    try:
        yield context
    finally:
        context.close()


def test_login_is_required_and_a_wrong_token_is_refused(browser: Any, stack: Stack) -> None:
    context = browser.new_context(base_url=stack.url)
    page = context.new_page()
    try:
        page.goto("/approvals")
        expect(page).to_have_url(re.compile(r"/login\?next=/approvals$"))
        page.get_by_label("API token").fill("not-a-token")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#login-error")).to_contain_text("not valid")
        shot(page, "login")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{stack.url}/approvals")
        cookie = next(c for c in context.cookies() if c["name"] == "ledger_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    finally:
        context.close()


def test_the_tier_board_shows_three_columns_with_counts_and_cards(
    page: Watched, stack: Stack
) -> None:
    p = page.page
    for tier, meaning in (("A", "proposal-only"), ("B", "human-in-the-loop"), ("C", "autonomous")):
        expect(column(p, tier).locator("h2")).to_contain_text(meaning)
    expect(column(p, "A").locator("#card-guarded")).to_be_visible()
    expect(column(p, "B").locator("#card-queued")).to_be_visible()
    expect(column(p, "B").locator(".count")).to_have_text("2")
    expect(column(p, "C").locator("#card-steady-digest")).to_contain_text("succeeded")
    expect(column(p, "A").locator("#card-weekly-report")).to_contain_text("3 of 10 clean runs")
    expect(column(p, "A").locator("#card-guarded")).to_contain_text("0 of 10 clean runs")
    expect(p.locator("#board .summary")).to_contain_text("5 behaviors")
    expect(p.locator("#live")).to_have_text("Live", timeout=LIVE_MS)
    # The filter box narrows the board (as you type, and as a plain GET form).
    p.get_by_label("Filter behaviors").fill("drafts")
    expect(p.locator("#card-guarded")).to_be_hidden()
    expect(p.locator("#card-queued")).to_be_visible()
    p.get_by_role("button", name="Filter").click()
    expect(p.locator("#board .summary")).to_have_text(re.compile("^1 behavior matching “drafts”"))
    assert page.dialogs == [] and page.errors == []


def test_filtering_as_you_type_holds_across_a_live_update(page: Watched, stack: Stack) -> None:
    p = page.page
    held: list[Any] = []  # the board's first fetch of its fragment, held until after typing
    p.route("**/fragments/board*", lambda route, request: held.append(route), times=1)
    p.goto("/")
    expect(p.locator("#live")).to_have_text("Live", timeout=LIVE_MS)

    def requested() -> bool:
        p.evaluate("0")  # lets Playwright run the route handler
        return bool(held)

    wait_until(requested, what="the board to fetch its fragment")
    p.get_by_label("Filter behaviors").fill("drafts")
    expect(p.locator("#card-guarded")).to_be_hidden()
    held[0].continue_()  # the fragment asked for before the typing: every card
    expect(p.locator("#board[data-version]")).to_have_count(1, timeout=LIVE_MS)  # swapped in
    expect(p.locator("#card-guarded")).to_be_hidden()
    expect(p.locator("#card-queued")).to_be_visible()
    assert page.dialogs == [] and page.errors == []


def test_an_approved_run_is_executed_and_a_rejected_one_is_not(page: Watched, stack: Stack) -> None:
    first = stack.run("queued")
    second = stack.run("queued")
    assert first["disposition"] == second["disposition"] == "approval"
    p = page.page
    p.goto("/approvals")
    expect(p.locator(f"#approval-{first['id']}")).to_be_visible()
    shot(p, "approvals")
    item = p.locator(f"#approval-{first['id']}")
    item.get_by_label("Note (optional)").fill("looks right")
    item.get_by_role("button", name="Approve").click()
    expect(p.locator("#flash")).to_contain_text(f"approved run {first['id']}")
    # The log action runs through the outbox: reload until the dispatcher delivered it.
    closed = p.locator("tr", has_text=first["id"])

    def executed() -> bool:
        p.reload()
        return "log action executed" in (closed.text_content(timeout=5000) or "")

    wait_until(executed, timeout=30, what="the approved action to run")
    expect(closed).to_contain_text("approved")
    item = p.locator(f"#approval-{second['id']}")
    item.get_by_label("Reason for rejecting").fill("tone is off")
    item.get_by_role("button", name="Reject").click()
    expect(p.locator("#flash")).to_contain_text(f"run {second['id']}")
    rejected = p.locator("tr", has_text=second["id"])
    expect(rejected).to_contain_text("rejected")
    expect(rejected).to_contain_text("tone is off")
    expect(rejected).not_to_contain_text("executed")
    assert page.dialogs == [] and page.errors == []


def test_the_approvals_queue_updates_live_and_keeps_what_is_being_typed(
    page: Watched, stack: Stack
) -> None:
    waiting = stack.run("queued")
    p = page.page
    p.goto("/approvals")
    expect(p.locator("#live")).to_have_text("Live", timeout=LIVE_MS)
    p.evaluate("window.__sameDocument = true")  # gone if the page reloaded
    # Half a reason typed into one request while others arrive and are decided elsewhere.
    reason = p.locator(f"#reject-reason-{waiting['id']}")
    reason.fill("needs a second loo")
    reason.focus()

    arrived = stack.run("queued")
    assert arrived["disposition"] == "approval"
    expect(p.locator(f"#approval-{arrived['id']}")).to_be_visible(timeout=LIVE_MS)

    decided = stack.api.post(
        f"/api/approvals/{arrived['id']}/reject", json={"reason": "decided elsewhere"}
    )
    assert decided.status_code == 200, decided.text
    expect(p.locator(f"#approval-{arrived['id']}")).to_have_count(0, timeout=LIVE_MS)
    closed = p.locator("tr", has_text=arrived["id"])
    expect(closed).to_contain_text("rejected", timeout=LIVE_MS)
    expect(closed).to_contain_text("decided elsewhere")

    assert p.evaluate("window.__sameDocument") is True
    expect(reason).to_have_value("needs a second loo")
    expect(reason).to_be_focused()
    p.keyboard.type("k")  # typing goes on where it was
    expect(reason).to_have_value("needs a second look")
    assert page.dialogs == [] and page.errors == []


def test_a_change_made_while_the_page_connects_its_live_updates_still_shows(
    page: Watched, stack: Stack
) -> None:
    """The page's first event is the feed's version when its stream starts, which may already
    include a change made after the page was rendered: the page fetches its fragment then too."""
    p = page.page
    # Another page watching the queue keeps the change feed running, and shows when it has
    # read the change.
    watcher = p.context.new_page()
    watcher.goto("/approvals")
    expect(watcher.locator("#live")).to_have_text("Live", timeout=LIVE_MS)
    held: list[Any] = []  # the page's event stream, held back until the change is read
    p.route("**/events/approvals", lambda route, request: held.append(route), times=1)
    p.goto("/approvals")

    def requested() -> bool:
        p.evaluate("0")  # lets Playwright run the route handler
        return bool(held)

    wait_until(requested, what="the page to ask for its event stream")
    arrived = stack.run("queued")
    assert arrived["disposition"] == "approval"
    expect(p.locator(f"#approval-{arrived['id']}")).to_have_count(0)  # rendered before
    expect(watcher.locator(f"#approval-{arrived['id']}")).to_be_visible(timeout=LIVE_MS)
    held[0].continue_()
    expect(p.locator("#live")).to_have_text("Live", timeout=LIVE_MS)
    # Well before the stream's end (25 s), whose reconnect would fetch the fragment anyway.
    expect(p.locator(f"#approval-{arrived['id']}")).to_be_visible(timeout=15_000)
    watcher.close()
    assert page.dialogs == [] and page.errors == []


def test_a_guardrail_fault_moves_the_card_from_c_to_b_live_and_the_pages_tell_why(
    page: Watched, stack: Stack
) -> None:
    promoted = stack.api.post(
        "/api/behaviors/guarded/promote", json={"reason": "trusted", "to": "C"}
    )
    assert promoted.status_code == 200, promoted.text
    p = page.page
    p.goto("/")
    card = p.locator("#card-guarded")
    expect(column(p, "C").locator("#card-guarded")).to_be_visible()
    expect(p.locator("#live")).to_have_text("Live", timeout=LIVE_MS)
    p.evaluate("window.__sameDocument = true")  # gone if the page reloaded
    fault = httpx.post(
        stack.sim_url + "/_sim/faults",
        json={"kind": "prompt_injection", "key_name": "guard", "times": 1},
        timeout=10,
    )
    assert fault.status_code == 201, fault.text
    run = stack.run("guarded")
    assert run["status"] == "failed"
    expect(column(p, "B").locator("#card-guarded")).to_be_visible(timeout=LIVE_MS)
    expect(column(p, "C").locator("#card-guarded")).to_have_count(0)
    expect(card.locator(".reason")).to_contain_text("prompt_injection")
    expect(p.locator("#demotions")).to_contain_text("guarded")
    assert p.evaluate("window.__sameDocument") is True
    shot(p, "board")
    p.emulate_media(color_scheme="dark")
    shot(p, "board-dark")
    p.emulate_media(color_scheme="light")

    # The behavior page tells the story, and an operator acts on it with a reason.
    p.goto("/behaviors/guarded")
    expect(p.locator("#tier")).to_contain_text("B · human-in-the-loop")
    expect(p.locator("#timeline")).to_contain_text("demoted")
    expect(p.locator("table.runs")).to_contain_text("prompt_injection")
    expect(p.locator("svg[role=img] rect.bar").first).to_be_attached()
    expect(p.locator("pre.yaml")).to_contain_text("env:DASH_KEY_GUARD")
    assert KEYS["guard"] not in p.content()
    shot(p, "behavior")
    p.get_by_label("Reason (recorded with your name)").fill("investigating the injection")
    p.get_by_role("button", name="Pause").click()
    expect(p.locator("#flash")).to_contain_text("paused")
    expect(p.locator(".badge-paused")).to_be_visible()
    expect(p.locator("#timeline")).to_contain_text("investigating the injection")
    expect(p.locator("#timeline")).to_contain_text("api:ops")
    # A reason is required: the form says so instead of acting.
    p.get_by_label("Reason (recorded with your name)").fill(" ")
    p.get_by_role("button", name="Resume").click()
    expect(p.locator("#flash")).to_contain_text("Give a reason")
    expect(p.locator(".badge-paused")).to_be_visible()

    # The ledger page: the chain verified, the demotion found by its filters.
    p.goto("/ledger")
    expect(p.locator("#verify")).to_contain_text("Chain verified")
    p.get_by_label("Behavior").fill("guarded")
    p.get_by_label("Kind").select_option("demoted")
    p.get_by_role("button", name="Filter").click()
    rows = p.locator("table.entries tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("prompt_injection")
    p.goto("/ledger")
    shot(p, "ledger")
    assert page.dialogs == [] and page.errors == []


def test_script_in_a_description_or_a_model_output_never_executes(
    page: Watched, stack: Stack
) -> None:
    run = stack.run("hostile")
    assert run["disposition"] == "approval"
    p = page.page
    p.goto("/")
    expect(p.locator("#card-hostile .desc")).to_have_text(XSS_DESCRIPTION)
    p.goto("/behaviors/hostile")
    expect(p.locator("#description")).to_have_text(XSS_DESCRIPTION)
    p.goto("/approvals")
    output = p.locator(f"#approval-{run['id']} .output")
    expect(output.locator("h1")).to_have_text("Weekly digest")  # Markdown is rendered …
    expect(output.locator("strong")).to_have_text("Bold")
    expect(output).to_contain_text("<script>alert('output')</script>")  # … HTML is text
    assert output.locator("script, img").count() == 0
    assert output.locator("a[href^='javascript']").count() == 0
    assert p.locator("script:not([src])").count() == 0
    assert page.dialogs == []
    assert page.errors == []


def test_a_viewer_reads_but_cannot_approve_and_a_revoked_token_ends_the_session(
    context: Any, stack: Stack
) -> None:
    run = stack.run("queued")
    created = stack.token("create", "auditor", "--role", "viewer")
    token = next(line for line in created.split() if line.startswith("ldg_"))
    page = context.new_page()
    page.set_default_timeout(20_000)
    login(page, token)
    expect(page.locator(".who")).to_contain_text("token:auditor · viewer")
    page.goto("/approvals")
    item = page.locator(f"#approval-{run['id']}")
    expect(item).to_contain_text("approving needs operator")
    expect(item.get_by_role("button", name="Approve")).to_have_count(0)
    # Posting the form anyway (with the viewer's own CSRF token) is refused, nothing changes.
    page.goto("/")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = page.request.post(
        f"/approvals/{run['id']}/approve", form={"csrf_token": csrf}, max_redirects=0
    )
    assert refused.status == 403
    assert "has the viewer role" in refused.text()
    pending = stack.api.get("/api/approvals").json()["approvals"]
    assert run["id"] in {a["run_id"] for a in pending}
    page.goto("/behaviors/queued")
    expect(page.get_by_text("actions need operator")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    stack.token("revoke", "auditor")
    page.goto("/approvals")
    expect(page).to_have_url(re.compile(r"/login\?next=/approvals$"))
