"""Two ``ledger serve`` processes against one PostgreSQL run every slot exactly once.

CI runs 200 behaviors every 10 s for about 60 s; ``LEDGER_LONG_TESTS=1`` runs the full
acceptance version (200 behaviors every minute for 5 minutes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from ledger.db.models import BehaviorRow, Run
from ledger.db.session import Database
from tests.conftest import PG_URL, free_port
from tests.daemon import wait_until

LONG = os.environ.get("LEDGER_LONG_TESTS") == "1"
BEHAVIORS = 200
INTERVAL = 60 if LONG else 10
DURATION = 300 if LONG else 60


def _write_fixture(folder: Path) -> tuple[Path, dict[str, str]]:
    behaviors = folder / "behaviors"
    behaviors.mkdir()
    env: dict[str, str] = {}
    keys = []
    for i in range(BEHAVIORS):
        name = f"job-{i:03d}"
        key = f"sk-or-v1-replica{i:03d}" + "0" * 40
        env[f"REPLICA_KEY_{i}"] = key
        keys.append(f"  - {{key: {key}, name: {name}}}\n")
        (behaviors / f"{name}.yaml").write_text(
            f"schedule: {INTERVAL}s\npreset: writer\napi_key: env:REPLICA_KEY_{i}\n"
            f"key_name: {name}\nprompt: 'slot work {i}'\nmax_output_tokens: 20\n"
        )
    presets = folder / "sim.yaml"
    presets.write_text(
        "presets:\n  writer: {model: openai/gpt-4o-mini, input_price: 0.0000001, "
        "output_price: 0.0000002}\nkeys:\n" + "".join(keys)
    )
    return presets, env


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledger", *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.parametrize("database_url", ["postgresql"] if PG_URL else [], indirect=True)
def test_two_replicas_run_every_slot_exactly_once(database_url: str, tmp_path: Path) -> None:
    presets, keys = _write_fixture(tmp_path)
    sim_port = free_port()
    base_env = {**os.environ, **keys, "LEDGER_LOG_FORMAT": "json"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _start(
                ["sim", "openrouter", "--port", str(sim_port), "--presets", str(presets)],
                base_env,
                tmp_path / "sim.log",
                tmp_path,
            )
        )
        sim = f"http://127.0.0.1:{sim_port}"
        wait_until(lambda: _up(sim + "/_sim/calls"), what="the simulator")
        Database.open(database_url, migrate=True).close()  # both replicas start on the schema
        env = {
            **base_env,
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_BEHAVIORS_DIR": str(tmp_path / "behaviors"),
            "LEDGER_OPENROUTER_BASE_URL": sim,
        }
        ports = [free_port(), free_port()]
        for n, port in enumerate(ports):
            procs.append(
                _start(["serve", "--port", str(port)], env, tmp_path / f"serve{n}.log", tmp_path)
            )
        for port in ports:
            wait_until(
                lambda p=port: _up(f"http://127.0.0.1:{p}/healthz"), timeout=60, what="a replica"
            )
        started = datetime.now(UTC)
        time.sleep(DURATION)
        stopped = datetime.now(UTC)
        for proc in procs[1:]:
            proc.send_signal(signal.SIGTERM)
        for proc in procs[1:]:
            assert proc.wait(60) == 0
        calls = httpx.get(sim + "/_sim/calls", timeout=30).json()["calls"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    db = Database.open(database_url)
    with db.transaction() as session:
        names = dict(session.exec(select(BehaviorRow.id, BehaviorRow.name)).all())
        runs = session.exec(select(Run).where(col(Run.trigger).in_(["schedule", "catch_up"]))).all()
    db.close()
    assert len(names) == BEHAVIORS

    # Every slot fully inside the window was run, once.
    interval = timedelta(seconds=INTERVAL)
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    first = epoch + (int((started - epoch) / interval) + 1) * interval
    last = epoch + (int((stopped - epoch) / interval) - 1) * interval
    expected_slots = int((last - first) / interval) + 1
    assert expected_slots >= 4
    per_slot = Counter((r.behavior_id, r.scheduled_for) for r in runs)
    assert all(count == 1 for count in per_slot.values())  # the constraint, as a check
    for bid in names:
        slots = {s for (b, s) in per_slot if b == bid and first <= s <= last}
        assert len(slots) == expected_slots, f"{names[bid]} ran {len(slots)}/{expected_slots}"

    # …and each run called the model exactly once (the session id is the run id).
    chat = [c for c in calls if c["path"] == "/api/v1/chat/completions"]
    by_run = Counter(c["body"]["session_id"] for c in chat)
    in_window = [r for r in runs if first <= r.scheduled_for <= last]
    assert all(by_run[r.id] == 1 for r in in_window)
    assert all(r.status == "succeeded" for r in in_window)
    assert max(by_run.values()) == 1

    # Both replicas did part of the work.
    logs = [(tmp_path / f"serve{n}.log").read_text() for n in range(2)]
    shares = [sum(1 for r in in_window if r.id in log) for log in logs]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) == len(in_window)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False
