"""Recording finished runs as a batch: the same as recording them one by one, in order."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import FakeClock
from ledger.db.models import (
    Approval,
    BehaviorRow,
    BudgetWindow,
    GateResultRow,
    LedgerEntry,
    OutboxRow,
    Run,
)
from ledger.db.session import Database
from ledger.errors import NotFoundError
from ledger.gates import Gate, GateResult, Outcome
from ledger.journal import verify
from ledger.runner.run import (
    CallOutcome,
    FinishedRun,
    RunPlan,
    SlotClaim,
    begin_runs,
    claim_slots,
    finish_run,
    finish_runs,
)
from ledger.runner.scheduler import RunnerService
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import T0, VALID_BEHAVIOR, key_env

CTX = PolicyContext(
    alert_channels=("ops",),
    channel_events={"ops": ("demotion", "pause", "auth_error", "spend", "provider_error")},
)
LATER = T0 + timedelta(minutes=15)
LEAKY = "checks:\n  sensitive_info: block\n"
# (behavior suffix, tier, extra file lines, slot, outcome) in the order they are recorded:
# ``steady`` twice (its second run crosses 80 % of its $1 budget), a tier-C run whose output
# leaks (blocked, demoted to B), a tier-B run (an approval request), a refused key (paused).
WAVE: list[tuple[str, str, str, Any, CallOutcome]] = [
    ("steady", "A", "", T0, CallOutcome(output="one", model="m", cost_usd=0.5)),
    ("leaky", "C", LEAKY, T0, CallOutcome(output="mail jane.doe@example.com", model="m")),
    ("steady", "A", "", LATER, CallOutcome(output="two", model="m", cost_usd=0.35)),
    ("asks", "B", "", T0, CallOutcome(output="please", model="m", cost_usd=0.01)),
    (
        "locked",
        "A",
        "",
        T0,
        CallOutcome(
            failures=(GateResult(Gate.AUTH_ERROR, Outcome.FAIL, False, {"reason": "401"}),),
            pause=True,
            error="401 invalid key",
        ),
    ),
]


def prepare(db: Database, folder: Path, *prefixes: str) -> list[list[tuple[RunPlan, CallOutcome]]]:
    """Register the wave's behaviors as ``PREFIX-NAME`` for each prefix (one folder) and start
    their runs: the plans and outcomes of each prefix's wave."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in prefixes:
        for suffix, _tier, extra, _slot, _outcome in WAVE:
            name = f"{prefix}-{suffix}"
            body = VALID_BEHAVIOR.format(key_env=key_env(name), name=name) + extra
            (folder / f"{name}.yaml").write_text(body)
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
    waves = []
    for prefix in prefixes:
        plans = []
        for suffix, tier, _extra, slot, outcome in WAVE:
            with db.transaction() as session:
                row = lock_behavior(session, name=f"{prefix}-{suffix}")
                row.tier = tier
                (run,) = claim_slots(session, [SlotClaim(row.id or 0, slot, tier)], T0)
                (plan,) = begin_runs(session, [run.id], now=T0, ctx=CTX)
            plans.append((plan, outcome))
        waves.append(plans)
    return waves


def by_behavior(rows: Any) -> list[Any]:
    """Rows ``(behavior, ...)`` grouped by behavior, each behavior's in their order."""
    return sorted(rows, key=lambda row: row[0])


def recorded(db: Database, prefix: str) -> dict[str, Any]:
    """What was recorded about the ``PREFIX-`` behaviors, their names without the prefix."""

    def plain(value: Any) -> str:
        return re.sub(r"run-[0-9A-Z]{26}", "run-ID", str(value).replace(f"{prefix}-", ""))

    with db.transaction() as session:
        rows = {
            r.id: r
            for r in session.exec(
                select(BehaviorRow).where(col(BehaviorRow.name).startswith(f"{prefix}-"))
            )
        }
        ids = list(rows)
        runs = session.exec(
            select(Run).where(col(Run.behavior_id).in_(ids)).order_by(col(Run.scheduled_for))
        ).all()
        return {
            "behaviors": sorted(
                (plain(r.name), r.tier, r.paused, r.last_run_status) for r in rows.values()
            ),
            "runs": sorted(
                (plain(rows[r.behavior_id].name), r.status, r.disposition, r.output, r.error)
                for r in runs
            ),
            # Each behavior's in order (the batch records a behavior's second run later).
            "results": by_behavior(
                (plain(rows[g.behavior_id].name), g.gate, g.outcome, g.attributable)
                for g in session.exec(
                    select(GateResultRow)
                    .where(col(GateResultRow.behavior_id).in_(ids))
                    .order_by(col(GateResultRow.id))
                )
            ),
            "ledger": by_behavior(
                (plain(e.behavior_name), e.kind, plain(e.reason))
                for e in session.exec(
                    select(LedgerEntry)
                    .where(col(LedgerEntry.behavior_id).in_(ids), col(LedgerEntry.id) > 0)
                    .where(col(LedgerEntry.kind) != "registered")
                    .order_by(col(LedgerEntry.id))
                )
            ),
            "outbox": sorted(
                (o.kind, plain(o.payload.get("alert", o.payload).get("event", "")))
                for o in session.exec(select(OutboxRow).where(col(OutboxRow.behavior_id).in_(ids)))
            ),
            "budgets": sorted(
                (plain(rows[w.behavior_id].name), round(w.spent_usd, 6), round(w.reserved_usd, 6))
                for w in session.exec(
                    select(BudgetWindow).where(col(BudgetWindow.behavior_id).in_(ids))
                )
            ),
            "approvals": sorted(
                (plain(rows[a.behavior_id].name), a.status)
                for a in session.exec(select(Approval).where(col(Approval.behavior_id).in_(ids)))
            ),
            "windows": sorted(
                (plain(r.name), sorted((r.policy_window or {}).keys())) for r in rows.values()
            ),
        }


def test_a_batch_records_what_recording_the_runs_one_by_one_records(
    db: Database, tmp_path: Path
) -> None:
    one, many = prepare(db, tmp_path, "one", "many")
    singles = []
    for plan, outcome in one:
        with db.transaction() as session:
            singles.append(finish_run(session, plan, outcome, now=LATER, ctx=CTX))
    with db.transaction() as session:
        batch = finish_runs(session, many, now=LATER, ctx=CTX)

    def shape(done: list[FinishedRun]) -> list[tuple[str, str, str, int]]:
        return [(f.status, f.disposition, f.decision, len(f.results)) for f in done]

    assert shape(batch) == shape(singles)
    assert [f.run_id for f in batch] == [plan.run_id for plan, _ in many]
    expected = recorded(db, "one")
    assert recorded(db, "many") == expected
    # The wave did what it says: each kind of outcome is there to compare.
    assert ("leaky", "B", False, "succeeded: sensitive_info fail") in expected["behaviors"]
    assert ("locked", "A", True, "failed: auth_error fail") in expected["behaviors"]
    assert ("steady", 0.85, 0.0) in expected["budgets"]
    assert ("asks", "pending") in expected["approvals"]
    assert {kind for _name, kind, _reason in expected["ledger"]} == {"demoted", "paused"}
    assert ("alert", "spend") in expected["outbox"]
    with db.transaction() as session:
        assert verify(session).ok


async def test_a_run_that_cannot_be_recorded_does_not_lose_the_rest_of_its_batch(
    db: Database, tmp_path: Path
) -> None:
    (plans,) = prepare(db, tmp_path, "x")
    plan, outcome = plans[3]
    gone = RunPlan(**{**{f: getattr(plan, f) for f in plan.__slots__}, "run_id": "run-GONE"})

    async def no_call(plan: RunPlan) -> CallOutcome:
        raise AssertionError("no call in this test")

    service = RunnerService(db, FakeClock(LATER), no_call, CTX)
    batch = [(p, o, None) for p, o in plans[:3]] + [(gone, outcome, None), (plan, outcome, None)]
    results = service._finish_batch(batch)
    assert isinstance(results[3], NotFoundError)
    assert [r.status for r in results if isinstance(r, FinishedRun)] == [
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    with db.transaction() as session:
        finished = session.exec(select(Run).where(col(Run.finished_at).is_not(None))).all()
        assert sorted(r.id for r in finished) == sorted(p.run_id for p, _ in plans[:4])
