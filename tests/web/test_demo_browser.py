"""``ledger demo`` as a new user meets it: started as a real process, its printed dashboard
opened in headless Chromium with the printed token; within the demo's first minute the board
shows every tier, a promotion, an approval waiting at B and the guardrail demotion with its
reason; the alert receiver and the Notion view show the demotion; the printed `ledger explain`
command tells why; Ctrl-C stops everything cleanly and removes the demo's folder."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.servers import free_port, wait_until
from tests.web.browser import chromium, column, login

pytestmark = pytest.mark.slow

# The banner's lines: "  Label      value   (comment)".
BANNER = re.compile(r"^  (?P<label>[A-Z][a-z]+(?: [a-z]+)?) {2,}(?P<value>\S.*?)(?: {2,}\(.*\))?$")
# Each step of the demo's timeline happens within a minute of the start (Playwright's expect
# waits 5 seconds unless told).
STEP_MS = 60_000


def banner(text: str) -> dict[str, str]:
    return {m["label"]: m["value"] for line in text.splitlines() if (m := BANNER.match(line))}


def test_ledger_demo_shows_every_tier_a_promotion_and_a_guardrail_demotion_then_stops_clean(
    tmp_path: Path,
) -> None:
    temp = tmp_path / "tmp"  # the demo's temporary folder goes here: nothing may be left
    temp.mkdir()
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp), "COLUMNS": "200"}
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", "demo", "--port", str(port)],
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=tmp_path,
        )
    try:

        def started() -> bool:
            assert proc.poll() is None, err.read_text()
            return "Explain" in banner(out.read_text())

        wait_until(started, timeout=60, what="the demo's banner")
        shown = banner(out.read_text())
        assert shown["Dashboard"] == f"http://127.0.0.1:{port}/"
        folder = Path(shown["Folder"])
        assert folder.parent == temp and (folder / "ledger.db").is_file()
        assert "DEMO-ONLY" in shown["Policy"]

        with chromium() as browser:
            context = browser.new_context(base_url=shown["Dashboard"])
            page = context.new_page()
            login(page, shown["Login token"])
            for tier, label in (
                ("A", "proposal-only"),
                ("B", "human-in-the-loop"),
                ("C", "autonomous"),
            ):
                expect(column(page, tier)).to_contain_text(label)
            expect(column(page, "A").locator("#card-seo-audit")).to_be_visible()
            expect(column(page, "B").locator("#card-release-notes")).to_be_visible()
            # The policy promotes site-digest A → B (demo thresholds: two clean runs) …
            expect(column(page, "B").locator("#card-site-digest")).to_be_visible(timeout=STEP_MS)
            # … and the guardrail fault demotes publisher C → B, the card saying why.
            publisher = column(page, "B").locator("#card-publisher")
            expect(publisher).to_be_visible(timeout=STEP_MS)
            expect(publisher.locator(".reason")).to_contain_text("guardrail_block", timeout=STEP_MS)
            expect(column(page, "C").locator("#card-publisher")).to_have_count(0)
            expect(page.locator("#demotions")).to_contain_text("publisher", timeout=STEP_MS)
            page.goto("/behaviors/publisher")
            expect(page.locator("#timeline")).to_contain_text("C · autonomous")
            expect(page.locator("#timeline")).to_contain_text("guardrail_block")
            page.goto("/approvals")
            expect(page.locator("[id^='approval-']").first).to_be_visible(timeout=STEP_MS)
            expect(page.locator("main")).to_contain_text("release-notes")

            # The alert goes out through the outbox after the demotion is recorded: on a busy
            # machine it reaches the receiver a little after the board shows the demotion.
            def alerted() -> bool:
                alerts = httpx.get(shown["Alerts"], timeout=10)
                assert alerts.status_code == 200
                return "demotion" in alerts.text and "guardrail_block" in alerts.text

            wait_until(alerted, timeout=STEP_MS / 1000, what="the demotion alert at the receiver")
            assert "verified" in httpx.get(shown["Alerts"], timeout=10).text

            def notion_updated() -> bool:
                text = httpx.get(shown["Notion rows"], timeout=10).text
                return "publisher: demoted" in text and "site-digest: promoted" in text

            wait_until(notion_updated, timeout=30, what="the Notion rows to show the changes")
            notion = httpx.get(shown["Notion rows"], timeout=10).text
            assert 'id="notion-behaviors"' in notion and "B · human-in-the-loop" in notion

            explain = subprocess.run(
                shlex.split(shown["Explain"]),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env=env,
            )
            assert explain.returncode == 0, explain.stderr
            assert explain.stdout.startswith("publisher is at B · human-in-the-loop")
            assert "guardrail_block" in explain.stdout and "demoted" in explain.stdout

            # Ctrl-C while a dashboard is open (its live-update stream too) stops it all.
            page.goto("/")
            expect(page.locator("#live")).to_have_text("Live", timeout=STEP_MS)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(30)
            context.close()
    finally:
        if proc.poll() is None:  # a failed step: stop it as a user would, then kill
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    log = err.read_text()
    assert code in (0, 130), log
    assert "Traceback" not in log and "Traceback" not in out.read_text()
    assert "publisher demoted" in out.read_text()
    assert "Stopped. Removed" in out.read_text()
    assert list(temp.iterdir()) == []  # the demo's folder is gone
