"""A key (and an email) planted in a model's answer never reaches the database, the API, the
logs or the export: ``ledger serve`` runs two behaviors against the OpenRouter simulator, which
answers with the planted text — one blocks sensitive output, the other only warns and acts on
its answer (tier C). Both store, show and act on the answer masked."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import inspect, text
from sqlmodel import select

from ledger.db.models import Run
from ledger.db.session import Database
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_thread
from tests.factories import write_behavior
from tests.servers import Daemon, wait_until

PLANTED = "sk-or-v1-" + "5ec7e75ec7e7" * 5 + "abcd"  # key-shaped, nobody's real key
NEEDLES = [PLANTED, "5ec7e75e", "jane.doe@example.com", "jane.doe"]
ANSWER = f"Deploy with {PLANTED}; questions to jane.doe@example.com."
KEYS = {"blocker": "sk-or-v1-maskblock" + "1" * 40, "warner": "sk-or-v1-maskwarn" + "2" * 40}


def _behavior(name: str, sensitive: str) -> str:
    return (
        f"schedule: 10s\npreset: writer\napi_key: env:MASK_KEY_{name.upper()}\n"
        f"key_name: {name}\nprompt: 'write the deploy note'\n"
        f"checks:\n  sensitive_info: {sensitive}\n"
    )


def _scan(database_url: str) -> None:
    db = Database.open(database_url)
    try:
        with db.engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                    shown = repr(tuple(row))
                    for needle in NEEDLES:
                        assert needle not in shown, (table, needle)
    finally:
        db.close()
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                raw = file.read_bytes()
                for needle in NEEDLES:
                    assert needle.encode() not in raw, (file.name, needle)


def test_a_key_planted_in_a_model_answer_is_stored_shown_and_acted_on_masked(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    folder = tmp_path / "behaviors"
    folder.mkdir()
    write_behavior(folder, "blocker", _behavior("blocker", "block"))
    write_behavior(folder, "warner", _behavior("warner", "warn"))
    config = SimConfig(
        presets={"writer": Preset(model="openai/gpt-4o-mini", output=ANSWER)},
        keys=[SimKey(key=key, name=name) for name, key in KEYS.items()],
    )
    with run_in_thread(config) as sim:
        daemon = start_daemon(
            database_url,
            {
                "LEDGER_OPENROUTER_BASE_URL": sim,
                "LEDGER_AUTH": "off",
                "MASK_KEY_BLOCKER": KEYS["blocker"],
                "MASK_KEY_WARNER": KEYS["warner"],
            },
        )
        with httpx.Client(base_url=daemon.base_url, timeout=30) as api:
            promoted = api.post("/api/behaviors/warner/promote", json={"reason": "t", "to": "C"})
            assert promoted.status_code == 200, promoted.text

            def finished() -> dict[str, str]:
                db = Database.open(database_url)
                try:
                    with db.transaction() as session:
                        runs = session.exec(select(Run).where(Run.status == "succeeded")).all()
                        return {r.disposition or "": r.id for r in runs}
                finally:
                    db.close()

            wait_until(
                lambda: {"blocked", "action"} <= set(finished()),
                timeout=40,
                what="a blocked run and an acted-on run",
            )
            for name in KEYS:
                paused = api.post(f"/api/behaviors/{name}/pause", json={"reason": "done"})
                assert paused.status_code in (200, 409), paused.text  # 409: fails paused it
            # The warner's action (log) ran on the masked answer.
            wait_until(lambda: "behavior output" in daemon.log(), what="the warner's action")
            assert "<email: j***@***.com>" in daemon.log()
            digest = hashlib.sha256(ANSWER.encode()).hexdigest()
            for disposition in ("blocked", "action"):
                run = api.get(f"/api/runs/{finished()[disposition]}")
                assert run.status_code == 200
                shown = run.json()
                assert shown["output"] == (
                    "Deploy with <openrouter_key: sk-or-v1-…(73 chars)>; questions to "
                    "<email: j***@***.com>."
                )
                assert [f["kind"] for f in shown["output_findings"]] == ["openrouter_key", "email"]
                assert shown["output_sha256"] == digest
                for needle in NEEDLES:
                    assert needle not in run.text, (disposition, needle)
        _scan(database_url)  # while the daemon runs: its writes are in the write-ahead log
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
    log = daemon.log()
    assert "ledger stopped" in log
    for needle in NEEDLES:
        assert needle not in log, needle
    _scan(database_url)
    exported = subprocess.run(
        [sys.executable, "-m", "ledger", "export"],
        env={**os.environ, "LEDGER_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "warner" in exported.stdout
    for needle in NEEDLES:
        assert needle not in exported.stdout + exported.stderr, needle
