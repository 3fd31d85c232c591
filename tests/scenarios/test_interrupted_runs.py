"""Runs left behind by a killed ``ledger serve`` are closed as interrupted, by lease: after a
restart (or by another replica) once their lease expired, never while their owner renews it.

The simulator holds every answer for minutes (a ``delay`` fault), so runs stay in flight; the
daemons run with a 6-second lease (renewed every 2 s, swept every 3 s)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from ledger.db.models import BehaviorRow, BudgetWindow, GateResultRow, Run
from ledger.db.session import Database
from tests.factories import make_run, write_behavior
from tests.servers import Daemon, free_port, ledger, ledger_process, wait_until

KEY = "sk-or-v1-leasetest" + "0" * 40
LEASE = 6.0
BEHAVIOR = """\
schedule: 10s
preset: writer
api_key: env:LEASE_TEST_KEY
key_name: alpha
prompt: 'slow work'
timeout: multi_agent
budget:
  usd: 100
  per_call_estimate_usd: 0.5
"""
SIM = f"""\
presets:
  writer: {{model: openai/gpt-4o-mini}}
keys:
  - {{key: {KEY}, name: alpha}}
faults:
  - {{kind: delay, seconds: 300}}
"""


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[str]:
    """The OpenRouter simulator as a process of its own (killed with its held answers)."""
    write_behavior(tmp_path, "sim", SIM)
    port = free_port()
    args = ["sim", "openrouter", "--port", str(port), "--presets", str(tmp_path / "sim.yaml")]
    url = f"http://127.0.0.1:{port}"
    with ledger_process(args, log=tmp_path / "sim.log", ready=url + "/_sim/calls", timeout=20):
        yield url


def _env(sim: str) -> dict[str, str]:
    return {
        "LEDGER_OPENROUTER_BASE_URL": sim,
        "LEASE_TEST_KEY": KEY,
        "LEDGER_AUTH": "off",
        "LEDGER_RUNNER_LEASE_SECONDS": str(LEASE),
    }


def _runs(database_url: str) -> dict[str, Run]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            runs = session.exec(select(Run)).all()
            for run in runs:
                session.expunge(run)
            return {run.id: run for run in runs}
    finally:
        db.close()


def _start_runs_then_pause(daemon: Daemon, database_url: str) -> set[str]:
    """Wait for the daemon to have a run in flight, pause the behavior (no new run starts) and
    return the ids of the runs in flight."""
    wait_until(
        lambda: any(r.status == "running" for r in _runs(database_url).values()),
        timeout=60,
        what="a run in flight",
    )
    paused = httpx.post(f"{daemon.base_url}/api/behaviors/alpha/pause", json={"reason": "test"})
    assert paused.status_code == 200, paused.text
    # A slot claimed just before the pause started (or was skipped) in its claim transaction.
    return {r.id for r in _runs(database_url).values() if r.status == "running"}


def _lease(run: Run) -> datetime:
    assert run.lease_until is not None, run.id
    return run.lease_until


def _reserved(database_url: str) -> float:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            return sum(w.reserved_usd for w in session.exec(select(BudgetWindow)).all())
    finally:
        db.close()


def _assert_interrupted_and_not_held_against_alpha(database_url: str, ids: set[str]) -> None:
    runs = _runs(database_url)
    assert {runs[i].status for i in ids} == {"interrupted"}
    assert all("lease expired" in (runs[i].error or "") for i in ids)
    assert _reserved(database_url) == pytest.approx(0.0)
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            results = session.exec(
                select(GateResultRow).where(col(GateResultRow.run_id).in_(ids))
            ).all()
            alpha = session.exec(select(BehaviorRow)).one()
            assert results == [] and alpha.tier == "A"
    finally:
        db.close()


def test_a_run_of_a_killed_daemon_is_interrupted_after_restart_and_its_reservation_freed(
    tmp_path: Path, database_url: str, sim: str, start_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "behaviors").mkdir()
    write_behavior(tmp_path / "behaviors", "alpha", BEHAVIOR)
    first = start_daemon(database_url, _env(sim))
    in_flight = _start_runs_then_pause(first, database_url)
    assert _reserved(database_url) == pytest.approx(0.5 * len(in_flight))

    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    assert {_runs(database_url)[i].status for i in in_flight} == {"running"}

    second = start_daemon(database_url, _env(sim))
    wait_until(
        lambda: {_runs(database_url)[i].status for i in in_flight} == {"interrupted"},
        timeout=60,
        what="the killed daemon's runs to be closed as interrupted",
    )
    _assert_interrupted_and_not_held_against_alpha(database_url, in_flight)
    (listed,) = httpx.get(f"{second.base_url}/api/behaviors").json()["behaviors"]
    assert listed["interrupted_runs_24h"] == len(in_flight)
    # Logged after the sweep's transaction commits: a moment after the runs read interrupted.
    wait_until(lambda: "closed as interrupted" in second.log(), what="the sweep's log line")
    status = ledger("status", cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    status.check_returncode()
    assert f"alpha: {len(in_flight)} run(s) in 24h interrupted" in status.stdout


def test_a_live_run_of_another_replica_is_not_swept(
    tmp_path: Path, database_url: str, sim: str, start_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "behaviors").mkdir()
    write_behavior(tmp_path / "behaviors", "alpha", BEHAVIOR)
    owner = start_daemon(database_url, _env(sim))
    in_flight = _start_runs_then_pause(owner, database_url)
    other = start_daemon(database_url, _env(sim))  # a second replica, sweeping too

    # The owner renews its runs' leases: wait until each first lease has run out (and been
    # renewed), so any sweep from now on would close a run whose owner stopped renewing.
    first_leases = {i: _lease(_runs(database_url)[i]) for i in in_flight}

    def renewed_past_first_lease() -> bool:
        runs = _runs(database_url)
        assert {runs[i].status for i in in_flight} == {"running"}, "a live run was swept"
        return all(_lease(runs[i]) > first_leases[i] + timedelta(seconds=LEASE) for i in in_flight)

    wait_until(renewed_past_first_lease, timeout=60, what="the owner to renew its runs' leases")
    # A run left behind by a third, crashed replica: the sweep closes it...
    now = datetime.now(UTC)
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            alpha = session.exec(select(BehaviorRow)).one()
            make_run(
                session,
                alpha.id or 0,
                "run-LEFTBEHIND",
                now - timedelta(days=1),
                claimed_at=now - timedelta(minutes=1),
                status="running",
                lease_until=now - timedelta(seconds=30),
            )
    finally:
        db.close()
    wait_until(
        lambda: _runs(database_url)["run-LEFTBEHIND"].status == "interrupted",
        timeout=60,
        what="the sweep to close the run left behind",
    )
    # ...and leaves the owner's live runs alone.
    assert {_runs(database_url)[i].status for i in in_flight} == {"running"}

    # Once their owner is killed, the other replica closes them.
    owner.proc.send_signal(signal.SIGKILL)
    owner.proc.wait(10)
    wait_until(
        lambda: {_runs(database_url)[i].status for i in in_flight} == {"interrupted"},
        timeout=60,
        what="the other replica to close the killed owner's runs",
    )
    _assert_interrupted_and_not_held_against_alpha(database_url, in_flight)
    wait_until(lambda: "closed as interrupted" in other.log(), what="the sweep's log line")
