"""Secrets are referenced, never stored: a planted key never reaches logs, DB or exports."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from sqlalchemy import inspect, text

from ledger.behaviors.load import check_resolved_keys, load_directory
from ledger.db.session import Database
from ledger.errors import SecretError
from ledger.logging import configure_logging
from ledger.secrets import resolve
from tests.conftest import write_behavior
from tests.daemon import Daemon, names, wait_until

PLANTED = "sk-or-v1-" + "5eed" * 16


def test_env_and_file_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "  value-from-env \n")
    (tmp_path / "k.txt").write_text("value-from-file\n")
    assert resolve("env:MY_KEY").get_secret_value() == "value-from-env"
    assert resolve("file:k.txt", base_dir=tmp_path).get_secret_value() == "value-from-file"


def test_unresolvable_references_say_which_and_why(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="environment variable NOPE_NOT_SET is not set"):
        resolve("env:NOPE_NOT_SET")
    with pytest.raises(SecretError, match="cannot read"):
        resolve(f"file:{tmp_path}/missing")
    with pytest.raises(SecretError, match="is not a secret reference") as err:
        resolve(PLANTED)
    assert PLANTED not in str(err.value)


def test_two_behaviors_resolving_to_the_same_key_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_behavior(tmp_path, "one")
    write_behavior(tmp_path, "two")
    monkeypatch.setenv("LEDGER_TEST_KEY_ONE", PLANTED)
    monkeypatch.setenv("LEDGER_TEST_KEY_TWO", PLANTED)
    report = load_directory(tmp_path)
    check_resolved_keys(report)
    assert report.behaviors == []
    assert [p.field for p in report.problems] == ["api_key", "api_key"]
    assert "resolves to the same key as two" in report.problems[0].message
    assert PLANTED not in repr(report.problems)


def test_log_pipeline_masks_resolved_secrets_and_key_shapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLANTED_KEY", PLANTED)
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    key = resolve("env:PLANTED_KEY").get_secret_value()
    structlog.get_logger("t").error(
        "call failed", detail=f"Authorization: Bearer {key}", nested={"k": [key]}
    )
    logging.getLogger("foreign.lib").warning("stdlib says %s", key)
    try:
        raise RuntimeError(f"boom with {key}")
    except RuntimeError:
        structlog.get_logger("t").exception("with traceback")
    output = stream.getvalue()
    assert "5eed5eed" not in output
    assert output.count("********") >= 4
    assert all(json.loads(line) for line in output.splitlines())


def test_planted_key_never_reaches_logs_db_or_export(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    folder = tmp_path / "behaviors"
    write_behavior(folder, "alpha")
    write_behavior(folder, "beta")
    daemon = start_daemon(
        database_url,
        {
            "LEDGER_TEST_KEY_ALPHA": PLANTED,
            "LEDGER_TEST_KEY_BETA": PLANTED,
            "LEDGER_BROADCAST_TOKENS": PLANTED,
        },
    )
    # The duplicate key is refused at start-up: neither behavior registers, and says why.
    wait_until(lambda: "resolves to the same key" in daemon.log(), what="the duplicate-key error")
    assert names(database_url) == {}
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    assert PLANTED not in daemon.log()
    assert "5eed5eed" not in daemon.log()

    db = Database.open(database_url)
    try:
        with db.engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                    assert "5eed5eed" not in repr(row), table
    finally:
        db.close()
    if database_url.startswith("sqlite"):
        raw = Path(database_url.removeprefix("sqlite:///")).read_bytes()
        assert b"5eed5eed" not in raw
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    exported = subprocess.run(
        [sys.executable, "-m", "ledger", "export"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "5eed5eed" not in exported.stdout + exported.stderr


def test_masking_finds_every_registered_secret_among_thousands() -> None:
    from ledger.secrets import mask_known_secrets, register_secret_value

    keys = [f"sk-or-v1-masktest{i:05d}" + "q" * 30 for i in range(3000)]
    for key in keys:
        register_secret_value(key)
    register_secret_value(keys[7] + "-longer")  # shares a prefix: the longest match wins
    text = f"a{keys[1]}b {keys[2999]}{keys[7]}-longer end"
    assert mask_known_secrets(text, "*") == "a*b ** end"
    assert mask_known_secrets("nothing to see here", "*") == "nothing to see here"
