"""An operator's first hour at the ``ledger`` command, as a real process: status tells the
truth at a glance, approvals and runs are one command away, an export verifies on its own,
and read-only commands leave no database behind."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from sqlmodel import col, select

from ledger.behaviors.load import load_directory
from ledger.behaviors.registry import reconcile
from ledger.config import Settings
from ledger.db.models import Approval
from ledger.db.session import Database
from ledger.status import status_document
from tests.factories import (
    T0,
    VALID_BEHAVIOR,
    registered_at_b_with_a_pending_approval,
    write_behavior,
)
from tests.servers import ledger

REPO = Path(__file__).resolve().parents[1]


def test_read_only_commands_never_create_a_database_file(tmp_path: Path) -> None:
    write_behavior(tmp_path / "behaviors", "alpha")
    env = {
        "LEDGER_DATABASE_URL": "sqlite:///./nothing-here.db",
        "LEDGER_BEHAVIORS_DIR": "behaviors",
    }
    for command in (["status"], ["status", "--json"], ["explain", "alpha"], ["verify"], ["export"]):
        result = ledger(*command, cwd=tmp_path, env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.startswith("error: no database at ./nothing-here.db yet: start "), (
            result.stderr
        )
        assert "`ledger serve`" in result.stderr and "run `ledger db upgrade`" in result.stderr
        assert "Traceback" not in result.stderr
    assert ledger("validate", cwd=tmp_path, env=env).returncode == 0
    assert not (tmp_path / "nothing-here.db").exists()


def test_status_on_an_empty_database_says_that_ledger_serve_registers_the_folder(
    tmp_path: Path,
) -> None:
    env = {"LEDGER_DATABASE_URL": "sqlite:///./ledger.db", "LEDGER_BEHAVIORS_DIR": "behaviors"}
    sqlite3.connect(tmp_path / "ledger.db").close()  # a file, but never upgraded
    stale = ledger("status", cwd=tmp_path, env=env)
    assert stale.returncode == 2
    assert "is at schema revision none" in stale.stderr
    assert stale.stderr.rstrip().endswith("run `ledger db upgrade`")
    assert ledger("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    empty = ledger("status", cwd=tmp_path, env=env)
    assert empty.returncode == 0, empty.stderr
    assert "No behaviors registered yet. Start the daemon — `ledger serve` — and it registers" in (
        " ".join(empty.stdout.split())
    )
    assert "behaviors (check them first with `ledger validate`" in " ".join(empty.stdout.split())


def test_status_approvals_and_show_tell_an_operator_what_waits_for_them(
    tmp_path: Path, database_url: str
) -> None:
    run_id = registered_at_b_with_a_pending_approval(tmp_path, database_url)
    # ``quick`` and ``brisk`` run every 30 s; quick's key is missing where the daemon runs.
    quick = VALID_BEHAVIOR.format(key_env="QUICK_KEY", name="quick").replace("15m", "30s")
    write_behavior(tmp_path / "behaviors", "quick", quick)
    brisk = VALID_BEHAVIOR.format(key_env="BRISK_KEY", name="brisk").replace("15m", "30s")
    write_behavior(tmp_path / "behaviors", "brisk", brisk)
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            report = load_directory(tmp_path / "behaviors")
            missing = {"quick": "environment variable QUICK_KEY is not set"}
            reconcile(session, report, tmp_path / "behaviors", T0, missing)
            digest = session.exec(
                select(Approval.payload_sha256).where(col(Approval.run_id) == run_id)
            ).one()
    finally:
        db.close()
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_BEHAVIORS_DIR": "behaviors"}

    status = ledger("status", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    text = " ".join(status.stdout.split())
    assert "1 awaiting approval" in text
    assert "key missing" in text and not re.search(r"(quick|alpha)[^\n]* active ", status.stdout)
    assert (
        "quick: its key cannot be resolved where the daemon runs (environment variable "
        "QUICK_KEY is not set)" in text
    )
    assert "1 approval request(s) pending: `ledger approvals` lists them" in text
    assert "outbox: " in text and " queued" in text
    # every 30 s: the next run to the second; every 15 min: to the minute; not scheduled: none
    assert re.search(r"brisk .* \d\d:\d\d:\d\d UTC", status.stdout), status.stdout
    assert re.search(r"quick .* key missing: not scheduled .* never .* — ", status.stdout)
    assert not re.search(r"alpha .* \d\d:\d\d:\d\d UTC", status.stdout), status.stdout

    approvals = ledger("approvals", cwd=tmp_path, env=env)
    assert approvals.returncode == 0, approvals.stderr
    first, preview, payload, how = approvals.stdout.splitlines()[:4]
    assert first.startswith(f"{run_id}  alpha  requested ") and " · expires in " in first
    assert preview == "  │ hello"
    assert payload == f"  payload sha256 {digest}"
    assert how.startswith(f"  ledger approve {run_id} --payload-sha256 {digest}")

    show = ledger("show", run_id, cwd=tmp_path, env=env)
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith(f"{run_id}: succeeded, disposition approval\n")
    assert "  behavior: alpha · tier B · human-in-the-loop · schedule" in show.stdout
    assert "  model: m · preset test-preset" in show.stdout
    assert "  output_check: pass — no checks configured" in show.stdout
    assert "  sensitive_info: pass — nothing sensitive found" in show.stdout
    assert f"  approval: pending, expires 2026-11-03 09:00:00 UTC, payload sha256 {digest}" in (
        show.stdout
    )
    assert "output (as stored: sensitive findings masked):\nhello\n" in show.stdout
    request = json.loads(show.stdout.split("the key is never stored):\n", 1)[1])
    assert request["messages"][-1]["content"] == "Say hello to world"
    assert "Authorization" not in show.stdout and "QUICK_KEY" not in show.stdout

    as_json = ledger("status", "--json", cwd=tmp_path, env=env)
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            expected = status_document(
                session,
                datetime.fromisoformat(printed["generated_at"]),
                Settings().retention_interval_seconds,
            )
    finally:
        db.close()
    assert printed == expected  # the document GET /api/status answers (one builder)
    (quick_status,) = [b for b in printed["behaviors"] if b["name"] == "quick"]
    assert quick_status["state"] == "key missing: not scheduled"


def test_an_export_verifies_on_its_own_and_an_edit_is_found(
    tmp_path: Path, database_url: str
) -> None:
    registered_at_b_with_a_pending_approval(tmp_path, database_url)
    env = {"LEDGER_DATABASE_URL": database_url}
    exported = ledger("export", "-o", "ledger.jsonl", cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stderr
    good = ledger("verify", "--file", "ledger.jsonl", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("ledger.jsonl intact: ")
    assert good.stdout.endswith(" entries, hash chain verified\n")

    lines = (tmp_path / "ledger.jsonl").read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"actor":"registry"', '"actor":"someone else"')
    assert '"someone else"' in lines[0]
    (tmp_path / "edited.jsonl").write_text("".join(lines))
    edited = ledger("verify", "--file", "edited.jsonl", cwd=tmp_path)
    assert edited.returncode == 1
    assert edited.stdout.startswith("edited.jsonl BROKEN at entry 1: entry 1 (registered, line 1)")
    assert "was edited after it was written" in edited.stdout
    # The recipe of docs/operations.md, as printed there, agrees without the ledger package.
    recipe = tmp_path / "recipe.py"
    recipe.write_text(_readme_recipe())
    intact = _python(recipe, tmp_path / "ledger.jsonl")
    assert intact.returncode == 0, intact.stderr
    entries = good.stdout.split()[2]  # "ledger.jsonl intact: N entries, …"
    assert intact.stdout.startswith(f"intact: {entries} entries; last hash ")
    broken = _python(recipe, tmp_path / "edited.jsonl")
    assert broken.returncode == 1 and "AssertionError: line 1: edited" in broken.stderr
    missing = ledger("verify", "--file", "nope.jsonl", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: cannot read nope.jsonl: No such file")


def _readme_recipe() -> str:
    section = (
        (REPO / "docs" / "operations.md")
        .read_text(encoding="utf-8")
        .split("## Verifying an exported ledger", 1)[1]
    )
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def _python(script: Path, argument: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), str(argument)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
