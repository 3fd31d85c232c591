"""Rows for read-model tests, built directly (no behaviors folder, no runner): a registered
behavior, a run with its gate results, a ledger entry, a broadcast span."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from ledger.db.models import BehaviorRow, GateResultRow, IngestedSpan, Run
from ledger.policy import PolicyWindow


def behavior_row(
    session: Session,
    name: str,
    *,
    now: datetime,
    tier: str = "A",
    description: str = "",
    budget: dict[str, Any] | None = None,
    window: PolicyWindow | None = None,
    definition: dict[str, Any] | None = None,
    **flags: Any,
) -> BehaviorRow:
    """A registered behavior (flags: paused, pinned, retired, enabled, problem, key_problem,
    max_tier…), flushed so it has its id."""
    row = BehaviorRow(
        name=name,
        tier=tier,
        definition_hash=name.ljust(64, "0")[:64],
        definition={
            "name": name,
            "description": description,
            "schedule": "15m",
            "timezone": "UTC",
            **({"budget": budget} if budget else {}),
            **(definition or {}),
        },
        source_path=f"/behaviors/{name}.yaml",
        policy_window=(window or PolicyWindow()).to_json(),
        created_at=now,
        updated_at=now,
        **flags,
    )
    session.add(row)
    session.flush()
    return row


def run_row(
    session: Session,
    behavior: BehaviorRow,
    run_id: str,
    *,
    at: datetime,
    slot: datetime | None = None,
    status: str = "succeeded",
    gates: tuple[tuple[str, str], ...] = (("output_check", "pass"),),
    cost: float | None = 0.001,
) -> Run:
    """A finished run claimed at ``at`` (for the slot ``slot``, else ``at``) with one
    attributable gate result per (gate, outcome)."""
    run = Run(
        id=run_id,
        behavior_id=behavior.id or 0,
        scheduled_for=slot or at,
        claimed_at=at,
        started_at=at,
        finished_at=at + timedelta(seconds=2),
        status=status,
        tier=behavior.tier,
        cost_usd=cost,
    )
    session.add(run)
    session.flush()
    for gate, outcome in gates:
        session.add(
            GateResultRow(
                behavior_id=behavior.id or 0,
                run_id=run_id,
                gate=gate,
                outcome=outcome,
                attributable=True,
                evidence={},
                created_at=at,
            )
        )
    session.flush()
    return run


def span_row(
    session: Session,
    n: int,
    *,
    at: datetime,
    behavior: BehaviorRow | None = None,
    attribution: str = "unattributed",
) -> IngestedSpan:
    span = IngestedSpan(
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        name="chat",
        data={"n": n},
        received_at=at,
        processed_at=at,
        behavior_id=behavior.id if behavior else None,
        attribution=attribution if behavior is None else "key_name",
        cost_usd=0.001,
    )
    session.add(span)
    session.flush()
    return span
