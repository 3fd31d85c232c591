"""What the ``ledger`` command tells an operator to do next, on real files and databases (in
this process through its entry point, ``cli``; one test as a real process, ``ledger``): the
commands it prints carry the --config given, a run that is not there says so, ``validate``
reports secret references that do not resolve, and ``--help`` reads like any command's help."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from ledger.db.models import Approval
from ledger.db.session import Database
from tests.factories import registered_at_b_with_a_pending_approval, write_behavior
from tests.servers import Daemon, cli, ledger


def config_elsewhere(tmp_path: Path, database_url: str) -> Path:
    """A ledger.toml in a folder of its own naming the database and the behaviors folder: run
    from anywhere else, only --config finds this installation."""
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "ledger.toml"
    path.write_text(
        f"database_url = {json.dumps(database_url)}\n"
        f"behaviors_dir = {json.dumps(str(tmp_path / 'behaviors'))}\n"
    )
    return path


def not_expired_yet(database_url: str, run_id: str) -> None:
    """The factory's request was made at T0, long expired: it expires in a day from now."""
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            approval = session.exec(select(Approval).where(col(Approval.run_id) == run_id)).one()
            approval.expires_at = datetime.now(UTC) + timedelta(days=1)
            session.add(approval)
    finally:
        db.close()


def test_approvals_prints_commands_that_carry_the_config_and_work_pasted_elsewhere(
    tmp_path: Path, database_url: str
) -> None:
    run_id = registered_at_b_with_a_pending_approval(tmp_path, database_url)
    not_expired_yet(database_url, run_id)
    config = config_elsewhere(tmp_path, database_url)
    here = tmp_path / "somewhere"
    here.mkdir()
    relative = str(Path("..") / "conf" / "ledger.toml")  # as typed: relative to the shell's cwd
    listed = cli("approvals", "--config", relative, cwd=here)
    assert listed.returncode == 0, listed.stderr
    lines = [line.strip() for line in listed.stdout.splitlines()]
    approve = next(line for line in lines if line.startswith("ledger approve "))
    reject = next(line for line in lines if line.startswith("ledger reject "))
    assert approve.endswith(f" --config {config}")  # absolute: it works from any directory
    assert reject == f"ledger reject {run_id} --reason TEXT --config {config}"

    # Pasted as printed, from another directory (where ./ledger.toml is not this one).
    other = tmp_path / "other"
    other.mkdir()
    words = shlex.split(approve)
    approved = cli(*words[1:], cwd=other)
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert run_id in approved.stdout


def test_approve_or_reject_of_a_run_that_does_not_exist_says_so_and_where_it_looked(
    tmp_path: Path, database_url: str
) -> None:
    registered_at_b_with_a_pending_approval(tmp_path, database_url)
    config = config_elsewhere(tmp_path, database_url)
    for args in (("approve", "run-XYZ"), ("reject", "run-XYZ", "--reason", "no")):
        result = cli(*args, "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith(
            "error: run run-XYZ does not exist (`ledger approvals --config "
            f"{config}` lists the requests waiting); looked in "
        ), result.stderr
        assert result.stderr.rstrip().endswith(f" of {config}")
        assert "no approval request" not in result.stderr
        assert "Traceback" not in result.stderr
    # Where there is no database, it says so and leaves no empty ledger.db behind.
    empty = tmp_path / "empty"
    empty.mkdir()
    nowhere = {"LEDGER_DATABASE_URL": "sqlite:///./ledger.db"}
    result = cli("approve", "run-XYZ", cwd=empty, env=nowhere)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no database at ./ledger.db yet: "), result.stderr
    assert list(empty.iterdir()) == []


def test_error_hints_carry_the_config_only_to_commands_that_take_one(
    tmp_path: Path, database_url: str
) -> None:
    registered_at_b_with_a_pending_approval(tmp_path, database_url)
    config = config_elsewhere(tmp_path, database_url)
    missing = cli("explain", "nobody", "--config", str(config), cwd=tmp_path)
    assert missing.returncode == 2
    assert f"(see `ledger status --config {config}`)" in missing.stderr
    dead = cli("outbox", "retry", "999", "--config", str(config), cwd=tmp_path)
    assert f"`ledger outbox list --config {config}`" in dead.stderr
    # No --config given: the hints are printed as they always were.
    plain = cli("explain", "nobody", cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    assert "(see `ledger status`)" in plain.stderr
    status = cli("status", "--config", str(config), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert (
        f"`ledger approvals --config {config}` lists them, `ledger approve RUN --config {config}`"
        in status.stdout
    )
    tokens = cli("token", "list", "--config", str(config), cwd=tmp_path)
    assert tokens.returncode == 0, tokens.stderr
    assert f"--role viewer|operator|admin --config {config})" in tokens.stdout


# -- validate: secret references ----------------------------------------------------------------

WEBHOOK_BEHAVIOR = """\
schedule: 1h
preset: p
api_key: env:OPENROUTER_KEY_DOES_NOT_EXIST
prompt: hi
action:
  type: webhook
  url: env:NOPE_URL
  secret: file:nope-secret.txt
"""


def test_validate_warns_of_each_reference_that_does_not_resolve_and_strict_refuses(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "behaviors"
    write_behavior(folder, "hello", WEBHOOK_BEHAVIOR)
    env = {"OPENROUTER_KEY_DOES_NOT_EXIST": "", "NOPE_URL": ""}
    result = cli("validate", str(folder), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    path = folder / "hello.yaml"
    assert result.stdout.splitlines() == [
        f"warning: {path}:3:10: api_key: secret reference env:OPENROUTER_KEY_DOES_NOT_EXIST: "
        "environment variable OPENROUTER_KEY_DOES_NOT_EXIST is not set",
        f"warning: {path}:7:8: action.url: secret reference env:NOPE_URL: environment variable "
        "NOPE_URL is not set",
        f"warning: {path}:8:11: action.secret: secret reference file:nope-secret.txt: cannot "
        f"read {folder / 'nope-secret.txt'}: No such file or directory",
        f"1 behavior file(s) valid in {folder}",
    ]
    assert result.stderr == (
        "3 secret reference(s) do not resolve in this shell: warnings: the daemon resolves "
        "them in its own environment; --strict makes them errors\n"
    )

    strict = cli("validate", str(folder), "--strict", cwd=tmp_path, env=env)
    assert strict.returncode == 1
    assert [line.split(": ")[1] for line in strict.stdout.splitlines()] == [
        "api_key",
        "action.url",
        "action.secret",
    ]
    assert strict.stderr.splitlines()[-1] == "3 problem(s) in 1 of 1 file(s)"


def test_validate_resolves_references_without_printing_a_value(tmp_path: Path) -> None:
    folder = tmp_path / "behaviors"
    write_behavior(folder, "hello", WEBHOOK_BEHAVIOR)
    secret = "webhook-signing-secret-" + "7" * 20
    (folder / "nope-secret.txt").write_text(secret + "\n")
    env = {
        "OPENROUTER_KEY_DOES_NOT_EXIST": "sk-or-v1-" + "a" * 40,
        "NOPE_URL": "https://hooks.example.test/x",
    }
    result = ledger("validate", str(folder), "--strict", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"1 behavior file(s) valid in {folder}\n"
    assert result.stderr == ""
    for value in (secret, *env.values()):
        assert value not in result.stdout + result.stderr


# -- help -----------------------------------------------------------------------------------------


def help_of(*words: str, cwd: Path) -> str:
    result = cli(*words, "--help", cwd=cwd, env={"COLUMNS": "100", "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_reads_like_cli_help(tmp_path: Path) -> None:
    root = help_of(cwd=tmp_path)
    assert "<bool>" not in root
    # A summary in the command list is one paragraph, not broken where the docstring was.
    assert re.search(r"│ +what +│", root) is None  # was "…, then" / "what" / "needs an operator"
    show = help_of("show", cwd=tmp_path)
    assert re.search(r"Usage: .*ledger show \[OPTIONS\] RUN_ID +\n", show), show
    assert "{run_id}" not in show and "<bool>" not in show and "<str>" not in show
    for words in (("canvas", "skipped"), ("canvas", "reenable"), ("notion", "status")):
        text = " ".join(help_of(*words, cwd=tmp_path).replace("│", " ").split())
        wording = "ledger.toml to read (default: $LEDGER_CONFIG or ./ledger.toml if present)."
        assert f"--config -c FILE {wording}" in text, words
    silence = help_of("silence", cwd=tmp_path)
    usage = "silence NAME|--all --for DURATION --reason TEXT [OPTIONS] | COMMAND [ARGS]..."
    assert usage in " ".join(silence.split())
    assert "`ledger silence NAME --for 2h --reason TEXT` silences one behavior" in " ".join(
        silence.split()
    )


# -- canvas ---------------------------------------------------------------------------------------


def test_canvas_commands_refuse_a_behavior_that_is_not_a_broad_canvas(
    tmp_path: Path, database_url: str
) -> None:
    registered_at_b_with_a_pending_approval(tmp_path, database_url)  # alpha: kind single
    config = config_elsewhere(tmp_path, database_url)
    for args in (("skipped", "alpha"), ("reenable", "alpha", "some/model")):
        result = cli("canvas", *args, "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2, result.stdout
        assert result.stderr == (
            "error: alpha is not a broad_canvas behavior (kind single): only a broad canvas "
            "skips models after persistent failures\n"
        )


# -- run --via-daemon ---------------------------------------------------------------------------


def test_run_via_daemon_without_a_token_says_none_was_given(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "behaviors").mkdir()
    daemon = start_daemon(
        database_url,
        {"LEDGER_API_TOKENS": '{"ops": "env:OPS_TOKEN"}', "OPS_TOKEN": "ops-token-" + "9" * 24},
    )
    shell = {"LEDGER_DAEMON_URL": daemon.base_url, "LEDGER_API_TOKEN": ""}
    none = cli("run", "alpha", "--via-daemon", cwd=tmp_path, env=shell)
    assert none.returncode == 2
    assert none.stderr.startswith(
        f"error: no API token was given and the daemon at {daemon.base_url} requires one: pass "
        "--token TOKEN or set LEDGER_API_TOKEN"
    ), none.stderr
    wrong = cli("run", "alpha", "--via-daemon", "--token", "not-a-token", cwd=tmp_path, env=shell)
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(
        f"error: the daemon at {daemon.base_url} refused the token given"
    ), wrong.stderr


@pytest.mark.parametrize("words", [("approvals",), ("status",)])
def test_commands_without_config_print_hints_as_before(
    tmp_path: Path, database_url: str, words: tuple[str, ...]
) -> None:
    registered_at_b_with_a_pending_approval(tmp_path, database_url)
    result = cli(*words, cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "--config" not in result.stdout
