"""``ledger status`` with more behaviors than a glance holds: the count per tier, then a table
of 50 with those needing attention first; ``--all`` lists every one, ``--json`` them all."""

from __future__ import annotations

import json
from pathlib import Path

from ledger.db.session import Database
from tests.board_rows import behavior_row
from tests.conftest import T0
from tests.daemon import ledger


def test_status_over_fifty_behaviors_lists_those_needing_attention_first(
    tmp_path: Path, database_url: str
) -> None:
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as s:
            for n in range(60):
                behavior_row(s, f"b-{n:02d}", now=T0, tier="AB"[n % 2], paused=n == 57)
            behavior_row(s, "z-missing-key", now=T0, key_problem="Z_KEY is not set")
    finally:
        db.close()
    env = {"LEDGER_DATABASE_URL": database_url}

    glance = ledger("status", cwd=tmp_path, env=env)
    assert glance.returncode == 0, glance.stderr
    assert "A · proposal-only: 31 · B · human-in-the-loop: 30" in glance.stdout
    assert "50 of 61 behaviors (2 needing attention, listed first" in glance.stdout
    rows = [line for line in glance.stdout.splitlines() if line.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows[:2]] == ["b-57", "z-missing-key"]
    assert len(rows) == 50 and "b-49" not in glance.stdout
    assert "z-missing-key: its key cannot be resolved where the daemon runs" in glance.stdout

    every = ledger("status", "--all", cwd=tmp_path, env=env)
    assert every.returncode == 0, every.stderr
    assert len([line for line in every.stdout.splitlines() if line.startswith("│ ")]) == 61
    as_json = ledger("status", "--json", cwd=tmp_path, env=env)
    assert len(json.loads(as_json.stdout)["behaviors"]) == 61
