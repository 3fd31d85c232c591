"""Two ``ledger serve`` processes against one PostgreSQL run every slot exactly once.

CI runs 200 behaviors every 10 s for about 60 s; ``LEDGER_LONG_TESTS=1`` runs the full
acceptance version (200 behaviors every minute for 5 minutes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from ledger.db.models import BehaviorRow, Run
from ledger.db.session import Database
from tests.databases import PG_URL
from tests.factories import write_behavior
from tests.servers import free_port, ledger_process

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
        write_behavior(
            behaviors,
            name,
            f"schedule: {INTERVAL}s\npreset: writer\napi_key: env:REPLICA_KEY_{i}\n"
            f"key_name: {name}\nprompt: 'slot work {i}'\nmax_output_tokens: 20\n",
        )
    presets = folder / "sim.yaml"
    presets.write_text(
        "presets:\n  writer: {model: openai/gpt-4o-mini, input_price: 0.0000001, "
        "output_price: 0.0000002}\nkeys:\n" + "".join(keys)
    )
    return presets, env


@pytest.mark.parametrize("database_url", ["postgresql"] if PG_URL else [], indirect=True)
def test_two_replicas_run_every_slot_exactly_once(database_url: str, tmp_path: Path) -> None:
    presets, keys = _write_fixture(tmp_path)
    sim_port = free_port()
    base_env = {**os.environ, **keys, "LEDGER_LOG_FORMAT": "json"}
    sim = f"http://127.0.0.1:{sim_port}"
    sim_args = ["sim", "openrouter", "--port", str(sim_port), "--presets", str(presets)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            ledger_process(
                sim_args,
                log=tmp_path / "sim.log",
                ready=sim + "/_sim/calls",
                env=base_env,
                cwd=tmp_path,
                timeout=20,
            )
        )
        Database.open(database_url, migrate=True).close()  # both replicas start on the schema
        env = {
            **base_env,
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_BEHAVIORS_DIR": str(tmp_path / "behaviors"),
            "LEDGER_OPENROUTER_BASE_URL": sim,
        }
        replicas = [
            stack.enter_context(
                ledger_process(
                    ["serve", "--port", str(port)],
                    log=tmp_path / f"serve{n}.log",
                    ready=f"http://127.0.0.1:{port}/healthz",
                    env=env,
                    cwd=tmp_path,
                )
            )
            for n, port in enumerate([free_port(), free_port()])
        ]
        started = datetime.now(UTC)
        time.sleep(DURATION)  # the observation window: slots keep coming due while it lasts
        stopped = datetime.now(UTC)
        for proc in replicas:
            proc.send_signal(signal.SIGTERM)
        for proc in replicas:
            assert proc.wait(60) == 0
        calls = httpx.get(sim + "/_sim/calls", timeout=30).json()["calls"]

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
