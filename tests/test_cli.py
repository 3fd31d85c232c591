"""The ``ledger`` command as an operator runs it: a real process, real files, real databases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.factories import registered_at_b_with_a_pending_approval, write_behavior
from tests.servers import ledger

REPO = Path(__file__).resolve().parents[1]


def register(behaviors: Path, database_url: str) -> None:
    """Register the folder's behaviors as ``serve`` or ``run`` would, in this process (setup for
    the command under test; ``database_url`` is at schema head already, see tests/conftest.py)."""
    from ledger.behaviors.registry import reconcile_directory
    from ledger.db.session import Database
    from tests.factories import T0

    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            reconcile_directory(session, behaviors, T0)
    finally:
        db.close()


def test_validate_passes_on_the_shipped_examples(tmp_path: Path) -> None:
    references = (
        "OPENROUTER_KEY_CONTENT_DIGEST",
        "CONTENT_DIGEST_WEBHOOK_URL",
        "CONTENT_DIGEST_WEBHOOK_SECRET",
        "OPENROUTER_KEY_QUICK_DIGEST",
        "OPENROUTER_KEY_SEO_AUDIT",
    )
    env = {name: f"value-of-{name.lower()}" for name in references}
    result = ledger("validate", "--strict", str(REPO / "behaviors"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().startswith("3 behavior file(s) valid")
    # Without them, each reference is a warning (tests/test_cli_followups.py has the details).
    unset = ledger(
        "validate", str(REPO / "behaviors"), cwd=tmp_path, env=dict.fromkeys(references, "")
    )
    assert unset.returncode == 0, unset.stdout + unset.stderr
    assert unset.stdout.count("warning: ") == len(references)


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


def test_validate_reports_an_invalid_file_name_once_with_file_and_field(tmp_path: Path) -> None:
    write_behavior(
        tmp_path, "Weekly Audit", "schedule: 1h\npreset: p\napi_key: env:K\nprompt: hi\n"
    )
    result = ledger("validate", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        f"{tmp_path}/Weekly Audit.yaml:1:1: name: the file name 'Weekly Audit' is not a valid "
        "behavior name (lowercase slug); rename the file or set name:"
    ]
    assert result.stderr.strip() == "1 problem(s) in 1 of 1 file(s)"


def test_validate_reports_every_problem_of_every_file_in_one_run(tmp_path: Path) -> None:
    """A bad schedule used to hide the missing input and the shared key until it was fixed."""
    write_behavior(
        tmp_path,
        "audit",
        'schedule: "0 6 * * 8"\npreset: p\napi_key: env:K\nprompt: "Review {site}"\n'
        "timeout: slow\n",
    )
    write_behavior(tmp_path, "digest", "schedule: 1h\npreset: p\napi_key: env:K\nprompt: hi\n")
    result = ledger("validate", str(tmp_path), cwd=tmp_path, env={"K": "a-key-value"})
    assert result.returncode == 1
    fields = [line.split(": ")[1] for line in result.stdout.strip().splitlines()]
    assert fields == ["schedule", "api_key", "prompt", "timeout"]
    assert "already used by digest.yaml" in result.stdout
    assert result.stderr.strip() == "4 problem(s) in 1 of 2 file(s)"


def test_validate_of_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = ledger("validate", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: behaviors folder ./behaviors not found: create it or set LEDGER_BEHAVIORS_DIR\n"
    )
    assert not (tmp_path / "ledger.db").exists()  # validating never creates a database


def test_validate_keeps_a_shared_key_with_the_behavior_registered_with_it(
    tmp_path: Path, database_url: str
) -> None:
    body = "schedule: 1h\npreset: p\napi_key: env:K\nprompt: hi\n"
    write_behavior(tmp_path / "behaviors", "z-old", body)
    env = {"LEDGER_DATABASE_URL": database_url, "K": "a-key-value"}
    register(tmp_path / "behaviors", database_url)
    write_behavior(tmp_path / "behaviors", "a-new", body)
    result = ledger("validate", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "behaviors/a-new.yaml:3:10: api_key: api_key reference 'env:K' is already used by "
        "z-old.yaml, which keeps it (registered with it): one behavior = one key, so create an "
        "OpenRouter key for it"
    )


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
    from tests.factories import T0

    db = Database.open(database_url)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path / "behaviors", T0)
    db.close()
    status = ledger("status", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr
    assert "seo-audit-weekly" in status.stdout and "A · proposal-only" in status.stdout
    assert "$0.00 / $5.00 per month" in status.stdout
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


ALERTS_TOML = """\
[alert_channels.ops]
type = "log"
"""


def alert_channels_queued(database_url: str) -> list[tuple[str, str]]:
    from sqlmodel import col, select

    from ledger.db.models import OutboxRow
    from ledger.db.session import Database

    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            rows = session.exec(
                select(OutboxRow)
                .where(col(OutboxRow.kind).startswith("alert"))
                .order_by(col(OutboxRow.id))
            )
            return [(r.payload["channel"], r.payload["alert"]["event"]) for r in rows]
    finally:
        db.close()


def test_an_operators_demotion_alerts_the_channels_of_ledger_toml(
    tmp_path: Path, database_url: str
) -> None:
    registered_at_b_with_a_pending_approval(tmp_path, database_url)
    (tmp_path / "ledger.toml").write_text(ALERTS_TOML)
    env = {"LEDGER_DATABASE_URL": database_url}
    demoted = ledger("demote", "alpha", "--reason", "too noisy", cwd=tmp_path, env=env)
    assert demoted.returncode == 0, demoted.stderr
    paused = ledger("pause", "alpha", "--reason", "maintenance", cwd=tmp_path, env=env)
    assert paused.returncode == 0, paused.stderr
    # Every alert also goes to the log channel.
    assert alert_channels_queued(database_url) == [
        ("ops", "demotion"),
        ("log", "demotion"),
        ("ops", "pause"),
        ("log", "pause"),
    ]


def test_approving_a_request_withdrawn_by_a_demotion_is_refused_with_the_reason(
    tmp_path: Path, database_url: str
) -> None:
    run_id = registered_at_b_with_a_pending_approval(tmp_path, database_url)
    env = {"LEDGER_DATABASE_URL": database_url}
    demoted = ledger("demote", "alpha", "--reason", "too noisy", cwd=tmp_path, env=env)
    assert demoted.returncode == 0, demoted.stderr
    approved = ledger("approve", run_id, cwd=tmp_path, env=env)
    assert approved.returncode == 2
    assert approved.stderr.startswith(f"error: run {run_id}'s approval request was withdrawn (")
    assert (
        "because alpha was demoted from B · human-in-the-loop to A · proposal-only by cli:"
        in approved.stderr
    )
    assert ": too noisy; its action will not run." in approved.stderr
    assert "Traceback" not in approved.stderr


def ledger_rows(database_url: str) -> dict[str, Any]:
    """What the database holds about ``alpha``: runs, gate results, ledger entries, paused."""
    from sqlmodel import select

    from ledger.db.models import BehaviorRow, GateResultRow, LedgerEntry, Run
    from ledger.db.session import Database

    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            (row,) = session.exec(select(BehaviorRow)).all()
            return {
                "runs": len(session.exec(select(Run)).all()),
                "results": len(session.exec(select(GateResultRow)).all()),
                "entries": [e.kind for e in session.exec(select(LedgerEntry))],
                "paused": row.paused,
            }
    finally:
        db.close()


def test_run_without_its_key_in_this_shell_exits_1_and_records_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """A new file, never registered: ``run`` reconciles the folder first, then refuses to
    start a run whose key this shell does not have — no run, no gate result, no pause."""
    write_behavior(tmp_path / "behaviors", "alpha")
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_BEHAVIORS_DIR": "behaviors"}
    ran = ledger("run", "alpha", cwd=tmp_path, env=env)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert ran.stderr.startswith(
        "error: alpha: its key cannot be resolved in this shell (secret reference "
        "env:LEDGER_TEST_KEY_ALPHA: environment variable LEDGER_TEST_KEY_ALPHA is not set); "
        "nothing was run or recorded. Start it where the daemon runs, with the daemon's keys: "
        "`ledger run alpha --via-daemon`"
    )
    assert "Traceback" not in ran.stderr
    assert ledger_rows(database_url) == {
        "runs": 0,
        "results": 0,
        "entries": ["registered"],
        "paused": False,
    }


def test_run_of_a_paused_behavior_says_so_and_exits_1(tmp_path: Path, database_url: str) -> None:
    write_behavior(tmp_path / "behaviors", "alpha")
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_BEHAVIORS_DIR": "behaviors",
        "LEDGER_TEST_KEY_ALPHA": "sk-or-v1-" + "5" * 40,
    }
    # register it (a run reconciles the folder first, as the test above shows: done here in
    # this process), pause it, then try to run it
    register(tmp_path / "behaviors", database_url)
    paused = ledger("pause", "alpha", "--reason", "maintenance", cwd=tmp_path, env=env)
    assert paused.returncode == 0, paused.stderr
    ran = ledger("run", "alpha", cwd=tmp_path, env=env)
    assert ran.returncode == 1
    assert ran.stderr == (
        "error: alpha is paused; nothing was run. Resume it first: "
        "`ledger resume alpha --reason TEXT`\n"
    )
    assert ledger_rows(database_url)["runs"] == 0


def test_a_run_that_fails_exits_1(tmp_path: Path, database_url: str) -> None:
    """The key is here, OpenRouter is not (a closed port): a provider error, exit 1."""
    write_behavior(tmp_path / "behaviors", "alpha")
    env = {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_BEHAVIORS_DIR": "behaviors",
        "LEDGER_TEST_KEY_ALPHA": "sk-or-v1-" + "6" * 40,
    }
    ran = ledger("run", "alpha", cwd=tmp_path, env=env)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    first, gate = ran.stdout.splitlines()[:2]
    assert first.startswith("run-") and ": failed, disposition none, error: " in first
    # each gate with its reason, not just its outcome
    assert gate.startswith("  provider_error: fail (not attributable) — "), gate
    assert "the connection to OpenRouter failed" in gate, gate
    # Not a terminal: results on stdout, the JSON log lines on stderr only.
    assert not [line for line in ran.stdout.splitlines() if line.startswith("{")], ran.stdout
    assert '"event": "openrouter.call_failed"' in ran.stderr
    assert ledger_rows(database_url)["paused"] is False


def test_dry_run_reads_a_file_no_daemon_registered_and_masks_the_key(tmp_path: Path) -> None:
    path = write_behavior(tmp_path / "behaviors", "alpha")
    key = "sk-or-v1-" + "7" * 40
    env = {"LEDGER_BEHAVIORS_DIR": "behaviors", "LEDGER_TEST_KEY_ALPHA": key}
    ran = ledger("run", "alpha", "--dry-run", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[:3] == [
        f"# {path.relative_to(tmp_path)}: alpha at A · proposal-only (not registered yet: its "
        "start_tier)",
        "POST http://127.0.0.1:9/api/v1/chat/completions",
        "Authorization: Bearer ******** (env:LEDGER_TEST_KEY_ALPHA)",
    ]
    body = json.loads(ran.stdout[ran.stdout.index("{") :])
    assert body["model"] == "@preset/test-preset"
    assert body["messages"][-1]["content"] == "Say hello to world"
    assert key not in ran.stdout + ran.stderr
    assert not (tmp_path / "ledger.db").exists()
    without = ledger(
        "run", "alpha", "--dry-run", cwd=tmp_path, env={**env, "LEDGER_TEST_KEY_ALPHA": ""}
    )
    assert "(env:LEDGER_TEST_KEY_ALPHA, not resolvable in this shell)" in without.stdout


def test_dry_run_of_an_invalid_file_prints_its_problems_and_exits_1(tmp_path: Path) -> None:
    write_behavior(tmp_path / "behaviors", "alpha", "schedule: 15m\nprest: x\n")
    ran = ledger(
        "run", "alpha", "--dry-run", cwd=tmp_path, env={"LEDGER_BEHAVIORS_DIR": "behaviors"}
    )
    assert ran.returncode == 1
    assert "behaviors/alpha.yaml:2:1: prest: unknown field 'prest'" in ran.stderr
    assert ran.stderr.strip().endswith("error: alpha: its file is invalid; nothing to show")
