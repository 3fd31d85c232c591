"""The CLI imports what a command needs inside the command: ``ledger --help`` loads no database,
web or Notion code, and ``ledger status`` (run every few seconds by operators and scripts, with
a 1-second budget at 10,000 behaviors) opens the database without alembic, which only
migrating needs. Not timed: the modules each process loaded are checked, in a fresh
interpreter (this one has imported everything already)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ledger.db.session import Database
from tests.board_rows import behavior_row
from tests.conftest import T0

# Heavy or unrelated to reading status: migrations (alembic and its mako templates), the
# outside-world clients, the web app, the behavior-file schema, the scheduler.
NEVER_FOR_STATUS = (
    "alembic",
    "mako",
    "httpx",
    "notion_client",
    "ledger.notion",
    "fastapi",
    "starlette",
    "jinja2",
    "ledger.web",
    "ledger.runner",
    "ledger.behaviors.load",
    "ledger.behaviors.schema",
    "apscheduler",
    "prometheus_client",
)
# ``--help`` does not open a database at all.
NEVER_FOR_HELP = (*NEVER_FOR_STATUS, "sqlalchemy", "sqlmodel", "psycopg", "ledger.db.models")

_LOADED = """
import json, os, sys
from ledger.cli import app
try:
    app(sys.argv[1:], prog_name="ledger")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
names = json.loads(os.environ["CHECK_MODULES"])
loaded = sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in sys.modules))
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def loaded_by(
    argv: list[str], names: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None
) -> tuple[object, list[str]]:
    """Run the CLI with ``argv`` in a fresh interpreter: its exit code and which of ``names``
    (modules or packages) it had imported by the end."""
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, *argv],
        cwd=cwd,
        env={
            **os.environ,
            "LEDGER_LOG_FORMAT": "json",
            "CHECK_MODULES": json.dumps(names),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert last.startswith("{"), proc.stderr
    result = json.loads(last)
    return result["code"], result["loaded"]


def test_help_imports_no_database_web_or_notion_code(tmp_path: Path) -> None:
    code, loaded = loaded_by(["--help"], NEVER_FOR_HELP, tmp_path)
    assert code == 0
    assert loaded == []


def test_status_reads_the_database_without_alembic_or_the_web_app(
    tmp_path: Path, database_url: str
) -> None:
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as s:
            behavior_row(s, "checked", now=T0)
    finally:
        db.close()
    env = {"LEDGER_DATABASE_URL": database_url}
    code, loaded = loaded_by(["status", "--json"], NEVER_FOR_STATUS, tmp_path, env)
    assert code == 0
    assert loaded == []
