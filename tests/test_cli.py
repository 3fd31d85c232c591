"""The ``ledger`` command as an operator runs it: a real process, real files, real databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_behavior

REPO = Path(__file__).resolve().parents[1]


def ledger(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "LEDGER_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_passes_on_the_shipped_examples(tmp_path: Path) -> None:
    result = ledger("validate", str(REPO / "behaviors"), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().startswith("3 behavior file(s) valid")


def test_validate_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    write_behavior(tmp_path, "one", "schedule: 15m\nprest: x\n")
    write_behavior(
        tmp_path, "two", "schedule: '0 0 30 2 *'\npreset: ok\napi_key: env:K\nprompt: hi\n"
    )
    result = ledger("validate", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert (
        f"{tmp_path}/one.yaml:2:1: prest: unknown field 'prest' (did you mean 'preset'?)" in lines
    )
    assert (
        f"{tmp_path}/two.yaml:1:11: schedule: this cron expression never fires (e.g. 30 February)"
        in lines
    )
    assert all(line.startswith(str(tmp_path)) for line in lines)
    assert "Traceback" not in result.stderr


def test_init_creates_starter_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    first = ledger("init", str(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "ledger.toml").is_file()
    assert ledger("validate", cwd=tmp_path).returncode == 0
    second = ledger("init", str(tmp_path), cwd=tmp_path)
    assert second.returncode == 2
    assert second.stderr.startswith("error: refusing to overwrite")
    assert "Traceback" not in second.stderr


def test_schema_prints_json_schema(tmp_path: Path) -> None:
    result = ledger("schema", cwd=tmp_path)
    assert json.loads(result.stdout)["title"] == "Promotion Ledger behavior file"


def test_config_prints_masked_configuration(tmp_path: Path) -> None:
    result = ledger("config", cwd=tmp_path, env={"LEDGER_BROADCAST_TOKENS": "s3cr3t-t0ken-value"})
    assert result.returncode == 0
    assert 'broadcast_tokens = "********"' in result.stdout
    assert "s3cr3t" not in result.stdout
    assert 'database_url = "sqlite:///./ledger.db"' in result.stdout


def test_status_before_upgrade_says_what_to_run(tmp_path: Path) -> None:
    result = ledger("status", cwd=tmp_path)
    assert result.returncode == 2
    assert "run `ledger db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_status_verify_and_export(tmp_path: Path, database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url}
    assert ledger("init", ".", cwd=tmp_path).returncode == 0
    up = ledger("db", "upgrade", cwd=tmp_path, env=env)
    assert up.returncode == 0, up.stderr
    # serve would reconcile; here the registry is driven through the library once.
    from ledger.behaviors.registry import reconcile_directory
    from ledger.db.session import Database
    from tests.conftest import T0

    db = Database.open(database_url)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path / "behaviors", T0)
    db.close()
    status = ledger("status", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert "seo-audit-weekly" in status.stdout and "A · proposal-only" in status.stdout
    assert "$0.0000 / $5.00 per month" in status.stdout
    verify = ledger("verify", cwd=tmp_path, env=env)
    assert verify.returncode == 0 and "3 entries" in verify.stdout
    export = ledger("export", "--format", "jsonl", cwd=tmp_path, env=env)
    assert [json.loads(line)["kind"] for line in export.stdout.splitlines()] == ["registered"] * 3


def test_bad_database_url_is_one_clear_line(tmp_path: Path) -> None:
    result = ledger("db", "upgrade", cwd=tmp_path, env={"LEDGER_DATABASE_URL": "mysql://x/y"})
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "error: unsupported database 'mysql': use sqlite:/// or postgresql://"
    )
