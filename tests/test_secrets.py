"""Secrets are referenced, never stored: a planted key never reaches logs, DB or exports."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import structlog
from sqlalchemy import inspect, text

from ledger.behaviors.load import check_resolved_keys, load_directory
from ledger.db.session import Database
from ledger.errors import SecretError
from ledger.logging import configure_logging
from ledger.secrets import resolve
from ledger.signatures import sign_generic
from ledger.sim.openrouter import GenerationRecord, build_broadcast
from tests.factories import VALID_BEHAVIOR, write_behavior
from tests.servers import Daemon, names, wait_until

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
    assert [lb.name for lb in report.behaviors] == ["one"]  # first by file name keeps it
    assert [(p.path, p.field) for p in report.problems] == [(str(tmp_path / "two.yaml"), "api_key")]
    assert (
        "resolves to the same key as one (one.yaml), which keeps it" in report.problems[0].message
    )
    assert PLANTED not in repr(report.problems)

    registered = {("api_key", "env:LEDGER_TEST_KEY_TWO"): "two.yaml"}
    report = load_directory(tmp_path, registered)
    check_resolved_keys(report, holders=registered)
    assert [lb.name for lb in report.behaviors] == ["two"]  # registered with it: keeps it
    assert "same key as two (two.yaml), which keeps it (registered" in report.problems[0].message


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
    # The duplicate key is refused at start-up: the first file by name keeps it, the other
    # does not register, and the log says why.
    wait_until(lambda: "resolves to the same key" in daemon.log(), what="the duplicate-key error")
    assert names(database_url) == {"alpha": False}
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


BROADCAST_TOKEN = "bcast-" + "b0a7" * 12
WEBHOOK_SECRET = "whsec-" + "c0de" * 12  # a literal value in ledger.toml
OLD_WEBHOOK_SECRET = "whsec-" + "01d5" * 12  # through an env: reference (rotation)
BEHAVIOR_KEY = "sk-or-v1-" + "f00d" * 16


def _scan_database(database_url: str, needles: list[str], present: list[str]) -> list[str]:
    """No needle in any row of any table, nor in the SQLite file or its write-ahead log; every
    ``present`` string in some row (the scan reads what was written). Returns the files read."""
    found: set[str] = set()
    db = Database.open(database_url)
    try:
        with db.engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                    shown = repr(tuple(row))  # a Row's repr cuts long values short
                    for needle in needles:
                        assert needle not in shown, (table, needle)
                    found.update(p for p in present if p in shown)
    finally:
        db.close()
    assert found == set(present)
    files: list[str] = []
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                files.append(file.name)
                raw = file.read_bytes()
                for needle in needles:
                    assert needle.encode() not in raw, (file.name, needle)
    return files


def test_ingestion_secrets_never_reach_logs_or_the_database(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    body = VALID_BEHAVIOR.format(key_env="LEDGER_TEST_KEY_ALPHA", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    (tmp_path / "ledger.toml").write_text(
        "[webhook_sources.deploys]\n"
        'scheme = "generic"\n'
        f'secrets = "env:DEPLOYS_OLD_SECRET,{WEBHOOK_SECRET}"\n'
        'behavior = "alpha"\n'
        'warn_events = ["deploy.slow"]\n'
    )
    daemon = start_daemon(
        database_url,
        {
            "LEDGER_BROADCAST_TOKENS": BROADCAST_TOKEN,
            "LEDGER_TEST_KEY_ALPHA": BEHAVIOR_KEY,
            "DEPLOYS_OLD_SECRET": OLD_WEBHOOK_SECRET,
            "LEDGER_AUTH": "off",
            "LEDGER_LOG_LEVEL": "debug",
        },
    )
    traces = daemon.base_url + "/v1/traces"
    json_type = {"content-type": "application/json"}

    # Broadcast deliveries with the token, attributed to alpha by its key name.
    now = datetime.now(UTC)
    for i in range(2):
        record = GenerationRecord(
            generation_id=f"gen-{int(now.timestamp())}-secrets{i}",
            started_at=now - timedelta(seconds=1),
            ended_at=now,
            key_name="alpha-key",
            request_model="openai/gpt-4o-mini",
            response_model="openai/gpt-4o-mini",
            prompt_tokens=100,
            input_unit_price=0.000001,
        )
        delivery = orjson.dumps(build_broadcast(record))
        ok = httpx.post(
            traces,
            content=delivery,
            headers={**json_type, "authorization": f"Bearer {BROADCAST_TOKEN}"},
        )
        assert ok.status_code == 200, ok.text
    # Wrong tokens, one of them the real token with a character more: 401, nothing echoed.
    for authorization in (
        f"Bearer {BROADCAST_TOKEN}x",
        f"Bearer {BROADCAST_TOKEN[:-1]}",
        BROADCAST_TOKEN,
    ):
        refused = httpx.post(
            traces, content=delivery, headers={**json_type, "authorization": authorization}
        )
        assert refused.status_code == 401
        assert BROADCAST_TOKEN[:-1] not in refused.text

    # Signed webhook events, with each configured secret; then wrongly signed ones.
    hooks = daemon.base_url + "/webhooks/deploys"
    t = int(time.time())
    slow = orjson.dumps({"event": "deploy.slow", "site": "blog"})
    done = orjson.dumps({"event": "deploy.done", "site": "blog"})
    for secret, event in ((WEBHOOK_SECRET, slow), (OLD_WEBHOOK_SECRET, done)):
        signed = httpx.post(
            hooks, content=event, headers={"X-Ledger-Signature": sign_generic(secret, event, t)}
        )
        assert signed.status_code == 200, signed.text
    forged = orjson.dumps({"event": "deploy.slow", "forged": True})
    expected_signatures = [
        sign_generic(s, forged, t).split("v1=")[1] for s in (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET)
    ]
    wrong = {
        "wrong secret": sign_generic(WEBHOOK_SECRET + "x", forged, t),
        "expired": sign_generic(WEBHOOK_SECRET, forged, t - 3600),
        "no signature": "",
    }
    for why, signature in wrong.items():
        headers = {"X-Ledger-Signature": signature} if signature else {}
        refused = httpx.post(hooks, content=forged, headers=headers)
        assert refused.status_code == 401, why
        for needle in (WEBHOOK_SECRET, OLD_WEBHOOK_SECRET, *expected_signatures):
            assert needle not in refused.text, why
    wait_until(
        lambda: daemon.log().count("webhook refused") == len(wrong),
        what="the refused webhooks in the log",
    )

    # The processor applies the deliveries and the events.
    def processed() -> bool:
        alpha = httpx.get(f"{daemon.base_url}/api/behaviors/alpha", timeout=10).json()
        db = Database.open(database_url)
        try:
            with db.engine.connect() as conn:
                events = conn.execute(
                    text("SELECT count(*), count(processed_at) FROM webhook_event")
                ).one()
        finally:
            db.close()
        return len(alpha["last_deliveries"]) == 6 and tuple(events) == (2, 2)

    wait_until(processed, what="the processor to apply deliveries and events")

    needles = [
        BROADCAST_TOKEN,
        BROADCAST_TOKEN[:-1],
        WEBHOOK_SECRET,
        OLD_WEBHOOK_SECRET,
        BEHAVIOR_KEY,
        *expected_signatures,
        "b0a7b0a7",
        "c0dec0de",
        "01d501d5",
        "f00df00d",
    ]
    # What the daemon stored: the broadcast spans (with the key's name) and both events.
    stored = ["alpha-key", "deploy.slow", "deploy.done"]
    # While the daemon runs, its writes are still in the write-ahead log.
    scanned = _scan_database(database_url, needles, stored)
    if database_url.startswith("sqlite"):
        assert scanned == ["ledger.db", "ledger.db-wal"]
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    log = daemon.log()
    assert "ledger stopped" in log
    for needle in needles:
        assert needle not in log, needle
    _scan_database(database_url, needles, stored)
    exported = subprocess.run(
        [sys.executable, "-m", "ledger", "export"],
        env={**os.environ, "LEDGER_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "alpha" in exported.stdout
    for needle in needles:
        assert needle not in exported.stdout + exported.stderr, needle
