"""What a finished run tells the operator beyond gates: provider errors that persist and
spend nearing the budget alert through the runner's own transaction (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.gates import Gate, GateResult, Outcome
from ledger.runner.run import CallOutcome, SlotClaim, begin_run, claim_slots, finish_run
from ledger.transitions import PolicyContext, lock_behavior
from tests.conftest import T0, VALID_BEHAVIOR, write_behavior

CTX = PolicyContext(alert_channels=("ops",), channel_events={"ops": ("provider_error", "spend")})
UPSTREAM = GateResult(Gate.PROVIDER_ERROR, Outcome.FAIL, False, {"reason": "HTTP 503 upstream"})


def run_once(db: Database, minute: int, outcome: CallOutcome) -> None:
    at = T0 + timedelta(minutes=minute)
    with db.transaction() as session:
        row = lock_behavior(session, name="alpha")
        (run,) = claim_slots(session, [SlotClaim(row.id or 0, at, row.tier)], at)
        plan = begin_run(session, run.id, now=at, ctx=CTX)
    assert plan is not None
    with db.transaction() as session:
        finish_run(session, plan, outcome, now=at, ctx=CTX)


def alerts(db: Database) -> list[tuple[str, str]]:
    with db.transaction() as session:
        rows = session.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all()
        return [
            (r.payload["channel"], r.payload["alert"]["event"])
            for r in rows
            if r.kind.startswith("alert")
        ]


def test_three_provider_errors_in_a_row_alert_once_and_never_demote(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha", VALID_BEHAVIOR.format(key_env="K_ALPHA", name="alpha"))
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
    failing = CallOutcome(failures=(UPSTREAM,), error="HTTP 503")
    run_once(db, 0, failing)
    run_once(db, 15, failing)
    assert alerts(db) == []
    run_once(db, 30, failing)
    assert alerts(db) == [("ops", "provider_error"), ("log", "provider_error")]
    run_once(db, 45, failing)  # the same streak: no new alert
    assert len(alerts(db)) == 2
    with db.transaction() as session:
        assert lock_behavior(session, name="alpha").tier == "A"


def test_a_run_that_takes_spend_past_80_percent_of_the_budget_alerts(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha", VALID_BEHAVIOR.format(key_env="K_ALPHA", name="alpha"))
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)  # budget: 1 USD a day
    run_once(db, 0, CallOutcome(output="hello", model="m", cost_usd=0.5))
    assert alerts(db) == []
    run_once(db, 15, CallOutcome(output="hello", model="m", cost_usd=0.35))
    assert alerts(db) == [("ops", "spend"), ("log", "spend")]
    run_once(db, 30, CallOutcome(output="hello", model="m", cost_usd=0.01))
    assert len(alerts(db)) == 2  # once per window
