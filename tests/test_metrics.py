"""``ledger_runs_total`` counts every way a run ends, once its transaction commits: those the
runner closes in bulk (skipped when due, interrupted after a stopped process) as well as
those finished one by one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from ledger.behaviors.registry import reconcile_directory
from ledger.db.session import Database
from ledger.metrics import REGISTRY, install_event_counters
from ledger.runner.run import (
    CallOutcome,
    SlotClaim,
    begin_run,
    begin_runs,
    claim_slots,
    finish_run,
    finish_runs,
    interrupt_expired_runs,
)
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import T0, VALID_BEHAVIOR, write_behavior

CTX = PolicyContext()
OK = CallOutcome(output="Hello, world!", model="m/primary", cost_usd=0.01)
OUTCOMES = ("succeeded", "failed", "refused", "skipped", "interrupted")


def runs_by_outcome() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value("ledger_runs_total", {"outcome": outcome}) or 0.0
        for outcome in OUTCOMES
    }


def durations() -> float:
    return REGISTRY.get_sample_value("ledger_run_duration_seconds_count") or 0.0


def counted_since(before: dict[str, float]) -> dict[str, float]:
    return {k: v - before[k] for k, v in runs_by_outcome().items() if v != before[k]}


def pause(db: Database, *names: str) -> None:
    with db.transaction() as session:
        for name in names:
            lock_behavior(session, name=name).paused = True


@pytest.fixture
def behaviors(db: Database, tmp_path: Path) -> list[int]:
    """Three registered behaviors at tier A, their ids; the event counters installed."""
    install_event_counters()
    for name in ("alpha", "beta", "gamma"):
        write_behavior(
            tmp_path, name, VALID_BEHAVIOR.format(key_env=f"K_{name.upper()}", name=name)
        )
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        return [lock_behavior(session, name=n).id or 0 for n in ("alpha", "beta", "gamma")]


def test_runs_skipped_when_due_are_counted_by_the_rows_closed(
    db: Database, behaviors: list[int]
) -> None:
    pause(db, "alpha", "beta")
    before = runs_by_outcome()
    with db.transaction() as session:
        runs = claim_slots(session, [SlotClaim(b, T0, "A") for b in behaviors], T0)
        plans = [begin_run(session, run.id, now=T0, ctx=CTX) for run in runs]
    assert sum(p is None for p in plans) == 2  # alpha and beta skipped, gamma started
    assert counted_since(before) == {"skipped": 2}


def test_a_rolled_back_skip_counts_nothing(db: Database, behaviors: list[int]) -> None:
    with db.transaction() as session:
        lock_behavior(session, name="alpha").paused = True
    before = runs_by_outcome()
    with pytest.raises(RuntimeError), db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(behaviors[0], T0, "A")], T0)
        assert begin_run(session, run.id, now=T0, ctx=CTX) is None
        raise RuntimeError("rolled back")
    assert counted_since(before) == {}


def test_interrupted_runs_are_counted_once_without_a_duration(
    db: Database, behaviors: list[int]
) -> None:
    with db.transaction() as session:
        claims = [SlotClaim(b, T0, "A") for b in behaviors[:2]]
        runs = claim_slots(session, claims, T0, timedelta(seconds=60))
        for run in runs:
            assert begin_run(session, run.id, now=T0, ctx=CTX) is not None
    before, observed = runs_by_outcome(), durations()
    later = T0 + timedelta(minutes=2)
    with db.transaction() as session:
        assert len(interrupt_expired_runs(session, later)) == 2
    with db.transaction() as session:
        assert interrupt_expired_runs(session, later) == []  # nothing left to close
    assert counted_since(before) == {"interrupted": 2}
    assert durations() == observed


def test_a_finished_run_is_counted_with_its_duration(db: Database, behaviors: list[int]) -> None:
    before, observed = runs_by_outcome(), durations()
    with db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(behaviors[2], T0, "A")], T0)
        plan = begin_run(session, run.id, now=T0, ctx=CTX)
    assert plan is not None
    with db.transaction() as session:
        finish_run(session, plan, OK, now=T0 + timedelta(seconds=3), ctx=CTX)
    assert counted_since(before) == {"succeeded": 1}
    assert durations() == observed + 1


def gate_results() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "ledger_gate_results"
        for sample in metric.samples
        if sample.name == "ledger_gate_results_total"
    )


def test_a_batch_of_finished_runs_counts_each_run_its_duration_and_its_gate_results(
    db: Database, behaviors: list[int]
) -> None:
    before, observed, gates = runs_by_outcome(), durations(), gate_results()
    with db.transaction() as session:
        runs = claim_slots(session, [SlotClaim(b, T0, "A") for b in behaviors], T0)
        plans = [begin_run(session, run.id, now=T0, ctx=CTX) for run in runs]
    assert all(plans)
    a, b, c = (p for p in plans if p is not None)
    failed = CallOutcome(output=None, model="m/primary", error="upstream 502")
    with db.transaction() as session:
        finished = finish_runs(
            session,
            [(a, OK), (b, OK), (c, failed)],
            now=T0 + timedelta(seconds=2),
            ctx=CTX,
        )
    assert counted_since(before) == {"succeeded": 2, "failed": 1}
    assert durations() == observed + 3
    recorded = sum(len(f.results) for f in finished)
    assert recorded > 0 and gate_results() == gates + recorded


def test_runs_skipped_together_in_one_statement_are_each_counted(
    db: Database, behaviors: list[int]
) -> None:
    pause(db, "alpha", "beta")
    before = runs_by_outcome()
    with db.transaction() as session:
        runs = claim_slots(session, [SlotClaim(b, T0, "A") for b in behaviors], T0)
        plans = begin_runs(session, [run.id for run in runs], now=T0, ctx=CTX)
    assert len(plans) == 1  # gamma started; alpha and beta skipped by one executemany
    assert counted_since(before) == {"skipped": 2}
