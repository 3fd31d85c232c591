"""The ``cost_anomaly`` gate: the judgement (pure) and its recording with a run (database)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from statistics import median

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.db.models import BehaviorRow, GateResultRow, LedgerEntry, OutboxRow, Run
from ledger.db.session import Database
from ledger.gates import Gate, GateResult, Outcome
from ledger.runner.cost_anomaly import CostAnomalySpec, judge_cost, remember_cost
from ledger.runner.run import (
    CallOutcome,
    RunPlan,
    SlotClaim,
    begin_runs,
    claim_slots,
    finish_runs,
)
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import T0, VALID_BEHAVIOR, register_behavior, write_behavior

DEFAULT = CostAnomalySpec()
STEADY = [0.01, 0.012, 0.009, 0.011, 0.01]  # median 0.01

# -- the judgement -----------------------------------------------------------------------------


def test_a_run_costing_ten_times_the_median_is_an_attributable_warn_that_says_why() -> None:
    result = judge_cost(0.1, STEADY, DEFAULT)
    assert result is not None
    assert (result.gate, result.outcome, result.attributable) == (
        Gate.COST_ANOMALY,
        Outcome.WARN,
        True,
    )
    evidence = result.evidence
    assert evidence["cost_usd"] == 0.1
    assert evidence["median_usd"] == 0.01
    assert evidence["factor"] == 5.0
    assert evidence["runs"] == 5
    assert evidence["ratio"] == 10.0
    assert evidence["reason"] == (
        "the run cost $0.100000, 10.0 times the median $0.010000 of the behavior's last 5 runs "
        "with a cost (more than 5 times is an anomaly)"
    )


def test_a_cost_within_the_factor_passes_with_the_same_evidence() -> None:
    result = judge_cost(0.02, STEADY, DEFAULT)
    assert result is not None and result.outcome is Outcome.PASS
    assert result.evidence["median_usd"] == 0.01 and result.evidence["runs"] == 5
    assert result.evidence["reason"].endswith("(within 5 times)")


def test_exactly_the_factor_times_the_median_is_not_an_anomaly() -> None:
    assert judge_cost(0.05, [0.01] * 5, DEFAULT).outcome is Outcome.PASS  # type: ignore[union-attr]
    assert judge_cost(0.0501, [0.01] * 5, DEFAULT).outcome is Outcome.WARN  # type: ignore[union-attr]


def test_nothing_is_judged_until_min_runs_runs_had_a_cost() -> None:
    assert judge_cost(1.0, STEADY[:4], DEFAULT) is None
    assert judge_cost(1.0, [], DEFAULT) is None
    assert judge_cost(1.0, STEADY[:2], CostAnomalySpec(min_runs=2)) is not None


def test_a_run_without_a_cost_or_with_the_check_off_is_not_judged() -> None:
    assert judge_cost(0.0, STEADY, DEFAULT) is None
    assert judge_cost(float("nan"), STEADY, DEFAULT) is None
    assert judge_cost(1.0, STEADY, CostAnomalySpec(enabled=False)) is None


def test_the_median_is_over_the_last_window_runs_only() -> None:
    # Twenty cheap runs long ago, then ten at a dollar: with a window of 10 a dollar is normal.
    recent = [0.01] * 20 + [1.0] * 10
    assert judge_cost(2.0, recent, CostAnomalySpec(window_runs=10)).outcome is Outcome.PASS  # type: ignore[union-attr]
    warned = judge_cost(2.0, recent, CostAnomalySpec(window_runs=30))
    assert warned is not None and warned.outcome is Outcome.WARN
    assert warned.evidence["runs"] == 30 and warned.evidence["median_usd"] == 0.01


def test_one_expensive_run_does_not_move_the_median() -> None:
    result = judge_cost(0.1, [*STEADY, 5.0], DEFAULT)
    assert result is not None and result.outcome is Outcome.WARN
    assert result.evidence["median_usd"] == pytest.approx(0.0105)


def test_a_cost_under_min_usd_is_never_an_anomaly() -> None:
    spec = CostAnomalySpec(min_usd=0.5)
    result = judge_cost(0.1, STEADY, spec)
    assert result is not None and result.outcome is Outcome.PASS
    assert "under min_usd $0.5" in result.evidence["reason"]
    assert judge_cost(0.6, STEADY, spec).outcome is Outcome.WARN  # type: ignore[union-attr]


def test_a_pass_is_left_out_when_the_caller_does_not_record_passes() -> None:
    assert judge_cost(0.01, STEADY, DEFAULT, passes=False) is None
    warned = judge_cost(0.1, STEADY, DEFAULT, passes=False)
    assert warned is not None and warned.outcome is Outcome.WARN


def test_remembering_keeps_the_last_window_runs_with_a_cost() -> None:
    assert remember_cost([0.1, 0.2, 0.3], 0.4, 3) == [0.2, 0.3, 0.4]
    assert remember_cost([0.1, 0.2], 0.0, 3) == [0.1, 0.2]
    assert remember_cost([0.1, 0.2, 0.3], 0.4, 10) == [0.1, 0.2, 0.3, 0.4]
    assert remember_cost([0.1, 0.2, 0.3, 0.4], 0.5, 2) == [0.4, 0.5]


costs = st.floats(min_value=1e-6, max_value=100, allow_nan=False)


@given(
    recent=st.lists(costs, min_size=1, max_size=40),
    cost=costs,
    factor=st.floats(min_value=1.01, max_value=50),
    window=st.integers(min_value=1, max_value=100),
)
def test_a_warn_exactly_when_the_cost_exceeds_factor_times_the_windows_median(
    recent: list[float], cost: float, factor: float, window: int
) -> None:
    spec = CostAnomalySpec(factor=factor, window_runs=window, min_runs=1)
    result = judge_cost(cost, recent, spec)
    assert result is not None
    considered = recent[-window:]
    assert result.evidence["runs"] == len(considered)
    assert result.evidence["median_usd"] == median(considered)
    assert (result.outcome is Outcome.WARN) == (cost > factor * median(considered))
    kept = remember_cost(recent, cost, window)
    assert kept[-1] == cost and len(kept) == min(len(recent) + 1, window)


# -- recorded with a run -----------------------------------------------------------------------

CTX = PolicyContext()


def start(db: Database, bid: int, minutes: list[int], tier: str = "C") -> list[RunPlan]:
    slots = [T0 + timedelta(minutes=m) for m in minutes]
    with db.transaction() as session:
        claimed = claim_slots(session, [SlotClaim(bid, at, tier) for at in slots], slots[0])
        return begin_runs(session, [c.id for c in claimed], now=slots[0], ctx=CTX)


def answered(cost: float) -> CallOutcome:
    return CallOutcome(output="fine", model="m/primary", generation_id="g", cost_usd=cost)


def finish(db: Database, plans: list[RunPlan], outcomes: list[CallOutcome], minute: int) -> None:
    with db.transaction() as session:
        finish_runs(
            session,
            list(zip(plans, outcomes, strict=True)),
            now=T0 + timedelta(minutes=minute),
            ctx=CTX,
        )


def cost_results(db: Database) -> list[tuple[str, str, float]]:
    """(run id, outcome, cost) of every cost_anomaly result, in the order recorded."""
    with db.transaction() as session:
        rows = session.exec(
            select(GateResultRow)
            .where(col(GateResultRow.gate) == "cost_anomaly")
            .order_by(col(GateResultRow.id))
        )
        return [(r.run_id or "", r.outcome, r.evidence["cost_usd"]) for r in rows]


def test_runs_in_one_batch_are_judged_in_order_against_the_costs_before_them(
    db: Database, tmp_path: Path
) -> None:
    """A batch with seven runs of one behavior (recorded in seven rounds): the first five
    build the median, the sixth (10 times) warns, the seventh (normal) passes."""
    bid = register_behavior(db, tmp_path, "C")
    plans = start(db, bid, list(range(7)))
    outcomes = [answered(c) for c in (*STEADY, 0.1, 0.01)]
    finish(db, plans, outcomes, 10)
    assert cost_results(db) == [
        (plans[5].run_id, "warn", 0.1),
        (plans[6].run_id, "pass", 0.01),
    ]
    with db.transaction() as session:
        row = lock_behavior(session, id=bid)
        assert row.recent_costs == [*STEADY, 0.1, 0.01]
        assert row.last_run_status == "succeeded"


def test_a_cost_anomaly_warn_does_not_block_the_action(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "C")
    plans = start(db, bid, list(range(6)))
    finish(db, plans, [answered(c) for c in (*STEADY, 0.1)], 10)
    with db.transaction() as session:
        row = lock_behavior(session, id=bid)
        assert row.last_run_status == "succeeded: cost_anomaly warn"
        assert row.tier == "C"  # one warn: nothing more
        keys = session.exec(select(OutboxRow.dedup_key).where(col(OutboxRow.kind) == "action.log"))
        assert f"action.log:{plans[5].run_id}" in set(keys)


def test_three_anomalies_in_ten_runs_demote_with_the_gate_named(
    db: Database, tmp_path: Path
) -> None:
    bid = register_behavior(db, tmp_path, "C")
    plans = start(db, bid, list(range(8)))
    finish(db, plans, [answered(c) for c in (*STEADY, 0.1, 0.12, 0.1)], 10)
    with db.transaction() as session:
        assert lock_behavior(session, id=bid).tier == "B"
        (entry,) = session.exec(select(LedgerEntry).where(col(LedgerEntry.kind) == "demoted"))
        assert "cost_anomaly" in entry.reason and "3 runs with an attributable warn" in entry.reason


def test_a_call_that_failed_for_the_provider_is_never_judged(db: Database, tmp_path: Path) -> None:
    """A provider's failure (retries billed, say) must not move a tier: an expensive one is no
    cost_anomaly warn, a cheap one no pass, and neither enters the median."""
    bid = register_behavior(db, tmp_path, "C")
    plans = start(db, bid, list(range(7)))
    failed = CallOutcome(
        failures=(GateResult(Gate.PROVIDER_ERROR, Outcome.FAIL, False, {"reason": "502"}),),
        error="502",
        cost_usd=0.01,
    )
    expensive = CallOutcome(
        failures=(GateResult(Gate.PROVIDER_ERROR, Outcome.FAIL, False, {"reason": "502"}),),
        error="502",
        cost_usd=0.2,
    )
    finish(db, plans, [*(answered(c) for c in STEADY), failed, expensive], 10)
    assert cost_results(db) == []
    with db.transaction() as session:
        assert len(lock_behavior(session, id=bid).recent_costs) == len(STEADY)


def test_broadcast_cost_counted_before_the_run_is_recorded_is_the_one_judged(
    db: Database, tmp_path: Path
) -> None:
    bid = register_behavior(db, tmp_path, "C")
    plans = start(db, bid, list(range(6)))
    with db.transaction() as session:
        run = session.get(Run, plans[5].run_id)
        assert run is not None
        run.broadcast_cost_usd = 0.3  # broadcast came first and counted more than the runner
        session.add(run)
    finish(db, plans, [answered(c) for c in (*STEADY, 0.01)], 10)
    assert cost_results(db) == [(plans[5].run_id, "warn", 0.3)]


TUNED = "checks:\n  cost_anomaly:\n    factor: 20\n    min_runs: 2\n"


def test_a_behavior_can_tune_the_factor_and_min_runs(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "C", extra=TUNED)
    plans = start(db, bid, list(range(4)))
    finish(db, plans, [answered(c) for c in (0.01, 0.01, 0.1, 0.3)], 10)
    assert cost_results(db) == [(plans[2].run_id, "pass", 0.1), (plans[3].run_id, "warn", 0.3)]


def test_a_behavior_can_turn_the_check_off(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(
        db, tmp_path, "C", extra="checks:\n  cost_anomaly:\n    enabled: false\n"
    )
    plans = start(db, bid, list(range(7)))
    finish(db, plans, [answered(c) for c in (*STEADY, 1.0, 1.0)], 10)
    assert cost_results(db) == []


def test_editing_the_behavior_restarts_its_cost_median(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "C")
    plans = start(db, bid, list(range(5)))
    finish(db, plans, [answered(c) for c in STEADY], 10)
    write_behavior(
        tmp_path,
        "alpha",
        VALID_BEHAVIOR.format(key_env="K", name="alpha").replace("hello", "good morning"),
    )
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0 + timedelta(minutes=11))
        row = session.exec(select(BehaviorRow).where(col(BehaviorRow.id) == bid)).one()
        assert row.recent_costs == []
        (entry,) = session.exec(
            select(LedgerEntry).where(col(LedgerEntry.kind) == "definition_changed")
        )
        assert "cost_anomaly median restart" in entry.reason
    plans = start(db, bid, [20])
    finish(db, plans, [answered(0.5)], 21)  # ten times dearer by design: not judged yet
    assert cost_results(db) == []
