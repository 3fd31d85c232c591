"""The tier board's Notion indicator in a real browser (Debian's Chromium under Playwright)
against the daemon's app on a loopback port and the Notion simulator: quiet and green-ish when
the mirror is in sync; when Notion starts refusing writes (the token was revoked), the
indicator turns into a "failing" banner with the advice — live, without a reload — and a page
loaded without JavaScript says the same. A screenshot goes to ``test-artifacts/``."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from pydantic import SecretStr

from ledger.clock import SystemClock
from ledger.config import Settings
from ledger.db.session import Database
from ledger.transitions import PolicyContext, operator_action
from ledger.web.app import create_app
from tests.conftest import write_behavior
from tests.daemon import wait_until
from tests.notion.conftest import TOKEN, TOKEN_ENV, NotionSim, set_up_workspace
from tests.servers import serve_app
from tests.web.browser import chromium

ARTIFACTS = Path(
    os.environ.get("LEDGER_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


def _notion(api: httpx.Client) -> dict[str, Any]:
    response = api.get("/api/notion")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def test_the_board_shows_the_mirror_in_sync_then_failing_live(
    database_url: str, tmp_path: Path, notion_sim: NotionSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    write_behavior(tmp_path / "behaviors", "alpha")
    db = Database.open(database_url)
    try:
        asyncio.run(set_up_workspace(db, notion_sim, SystemClock().now()))
        settings = Settings(
            database_url=database_url,
            behaviors_dir=tmp_path / "behaviors",
            watch=False,
            auth="off",
            notion_token=SecretStr(f"env:{TOKEN_ENV}"),
            notion_base_url=notion_sim.base_url,
            notion_poll_seconds=1.0,
        )
        with (
            serve_app(create_app(settings, clock=SystemClock())) as base_url,
            httpx.Client(base_url=base_url, timeout=30) as api,
            chromium() as browser,
        ):
            wait_until(
                lambda: (
                    (d := _notion(api))["state"] == "ok"
                    and d["queued"] == 0
                    and d["last_poll_at"] is not None
                ),
                timeout=30,
                what="the mirror in sync",
            )
            page = browser.new_page(base_url=base_url)
            page.goto("/")
            indicator = page.locator("#notion-mirror")
            expect(indicator).to_have_attribute("data-state", "ok")
            # A write the daemon queued after that check (a behavior row refreshed) may show
            # as "1 write queued" at first; the change feed re-reads the mirror every 10 s.
            expect(indicator).to_have_text(
                re.compile(r"^✓ Notion: in sync · \d+ (s|min) ago$"), timeout=30_000
            )
            expect(indicator.locator("time")).to_have_attribute(
                "title", re.compile(r"^last read of Notion: \d{4}-\d\d-\d\d .* UTC$")
            )
            expect(page.locator("#live")).to_have_text("Live", timeout=30_000)

            # The integration's token is revoked in Notion: every write is refused (401).
            notion_sim.workspace.config.token = "secret_rotated_" + "0" * 30
            with db.transaction() as session:
                operator_action(
                    session,
                    "alpha",
                    "pin",
                    reason="hold",
                    actor="cli:ann",
                    now=SystemClock().now(),
                    ctx=PolicyContext(mirror=True),
                )
            # Live: the change feed notices the dead letter and the board fetches its fragment.
            expect(indicator).to_have_attribute("data-state", "failing", timeout=30_000)
            expect(indicator).to_contain_text(
                re.compile(r"Notion mirror failing: \d+ dead letters?\.")
            )
            expect(indicator).to_contain_text("401 unauthorized")
            expect(indicator).to_contain_text("`ledger outbox retry ID`")
            expect(indicator.locator("strong")).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-notion-failing.png"))

            without_js = browser.new_context(base_url=base_url, java_script_enabled=False)
            plain = without_js.new_page()
            plain.goto("/")
            expect(plain.locator("#notion-mirror")).to_have_attribute("data-state", "failing")
            expect(plain.locator("#notion-mirror")).to_contain_text("ledger outbox list")
            without_js.close()
    finally:
        db.close()
