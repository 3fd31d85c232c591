"""``ledger serve`` with Notion configured, killed (SIGKILL) while it drains the mirror: after a
restart and ``ledger notion sync`` the Notion side equals the ledger row by row, with no
duplicate row; the integration token appears in no log and no CLI output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger.db.session import Database
from ledger.notion.store import load_workspace
from tests.conftest import write_behavior
from tests.daemon import ledger, wait_until
from tests.notion.checks import compare_with_ledger
from tests.notion.conftest import ROOT, TOKEN, TOKEN_ENV, NotionSim

NAMES = [f"job-{i:02d}" for i in range(12)]


def _created_rows(sim: NotionSim) -> int:
    return sum(1 for r in sim.requests() if r["method"] == "POST" and r["path"] == "/v1/pages")


def test_no_duplicate_rows_after_sigkills_during_the_drain(
    tmp_path: Path, start_daemon: Any, notion_sim: NotionSim, database_url: str
) -> None:
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_NOTION_TOKEN": f"env:{TOKEN_ENV}",
        TOKEN_ENV: TOKEN,
        "LEDGER_NOTION_BASE_URL": notion_sim.base_url,
        "LEDGER_NOTION_POLL_SECONDS": "2",
        "LEDGER_AUTH": "off",
    }
    for i, name in enumerate(NAMES):
        write_behavior(tmp_path / "behaviors", name)
        env["LEDGER_TEST_KEY_" + name.upper().replace("-", "_")] = f"sk-or-v1-{i:064x}"
    outputs = [ledger("db", "upgrade", cwd=tmp_path, env=env)]
    outputs.append(ledger("notion", "init", "--parent", ROOT, cwd=tmp_path, env=env))
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    assert "Behaviors  created" in outputs[-1].stdout

    logs = []
    for kill_after in (4, 10):  # Notion rows created before each SIGKILL
        daemon = start_daemon(database_url, env)
        try:
            wait_until(
                lambda n=kill_after: _created_rows(notion_sim) >= n,
                timeout=60,
                what=f"{kill_after} Notion rows",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{daemon.log()[-3000:]}") from None
        daemon.proc.kill()
        daemon.proc.wait(10)
        logs.append(daemon.log())

    outputs.append(ledger("notion", "sync", cwd=tmp_path, env=env))
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    assert "0 duplicate" not in outputs[-1].stdout  # no duplicate Key is reported at all
    outputs.append(ledger("notion", "status", cwd=tmp_path, env=env))
    assert "dead letters: 0" in outputs[-1].stdout

    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            ws = load_workspace(session)
            assert ws is not None and ws.last_sync_at is not None
        compare_with_ledger(db, notion_sim)  # exactly one row per Key, saying what we say
    finally:
        db.close()
    everything = "".join(logs) + "".join(o.stdout + o.stderr for o in outputs)
    assert TOKEN not in everything
