"""What each Notion row should say now, rendered from the database: one row per behavior,
per ledger entry and per approval request. Every row has a stable ``Key`` (``behavior:NAME``,
``entry:ID``, ``approval:RUN``) — the mirror finds a row by it before creating one.

Rendering reads the current state, so whichever mirror work runs last writes the newest state
(a later state is never overwritten by an earlier one). Text is masked on the way out: known
secret values and credential shapes never reach Notion."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import func
from sqlmodel import Session, col, select

from ledger.db.models import Approval, BehaviorRow, GateResultRow, LedgerEntry, Run
from ledger.gates import Tier
from ledger.logging import mask_text
from ledger.notion.props import MAX_TEXT, chunks, format_date
from ledger.notion.schema import APPROVALS, BEHAVIORS, LEDGER, Table
from ledger.outbox.enqueue import mirror_row_key
from ledger.policy import progress
from ledger.spend import spent_in_window, window_start
from ledger.transitions import PolicyContext, state_of, thresholds_for, window_of

__all__ = [
    "FAILURE_WINDOW",
    "RowSpec",
    "approval_key",
    "behavior_key",
    "entry_key",
    "iter_keys",
    "render_key",
]

FAILURE_WINDOW: Final = timedelta(hours=24)
# Approvals: until the request is approved or rejected, a person sets Decision and Reason and
# the approval poller answers in Result; the mirror leaves the three alone.
HUMAN_WHILE_PENDING: Final = frozenset({"Decision", "Reason", "Result"})


def behavior_key(name: str) -> str:
    return mirror_row_key("behavior", name)


def entry_key(entry_id: int) -> str:
    return mirror_row_key("entry", entry_id)


def approval_key(run_id: str) -> str:
    return mirror_row_key("approval", run_id)


@dataclass(frozen=True, slots=True)
class RowSpec:
    """One Notion row as it should be. ``values`` are plain values by property name (the
    relation to the behavior is filled in by the mirror from ``behavior``'s page);
    ``content`` goes in the page body (paragraphs of ≤ 2,000 characters) when the row is
    created; ``human`` names properties a person edits, never overwritten by the mirror."""

    key: str
    table: Table
    values: dict[str, Any]
    behavior: str | None = None
    content: str = ""
    human: frozenset[str] = field(default_factory=frozenset)


def _masked(value: str | None) -> str | None:
    return None if value is None else mask_text(value)


def render_behavior(
    session: Session, row: BehaviorRow, now: datetime, ctx: PolicyContext, dashboard: str | None
) -> RowSpec:
    definition = row.definition or {}
    budget = definition.get("budget") or {}
    start = window_start(budget.get("reset"), now)
    spend, _reserved = spent_in_window(session, row.id or 0, start)
    failures = session.exec(
        select(func.count())
        .select_from(GateResultRow)
        .where(
            col(GateResultRow.behavior_id) == row.id,
            col(GateResultRow.created_at) >= now - FAILURE_WINDOW,
            col(GateResultRow.attributable).is_(True),
            col(GateResultRow.outcome) != "pass",
        )
    ).one()
    if row.retired:
        status = "retired"
        next_step = "Retired: restore its file to bring it back at its old tier."
    else:
        status = "invalid file" if row.problem else "paused" if row.paused else "active"
        next_step = progress(state_of(row), window_of(row), now, thresholds_for(row, ctx))
    values: dict[str, Any] = {
        "Name": row.name,
        "Tier": Tier(row.tier).label,
        "Status": status,
        "Pinned": row.pinned,
        "Last run": format_date(row.last_run_at),
        "Last result": row.last_run_status,
        "Failures in window": int(failures),
        "Spend this period": round(spend, 6),
        "Budget": budget.get("usd"),
        "Next promotion": _masked(next_step.splitlines()[0] if next_step else None),
        "Dashboard": f"{dashboard.rstrip('/')}/behaviors/{row.name}" if dashboard else None,
        "Problem": _masked(row.problem[:MAX_TEXT] if row.problem else None),
        "Key": behavior_key(row.name),
    }
    return RowSpec(behavior_key(row.name), BEHAVIORS, values)


def render_entry(entry: LedgerEntry) -> RowSpec:
    data = entry.data or {}
    tiers = {k: Tier(data[k]).label for k in ("from", "to") if data.get(k) in ("A", "B", "C")}
    name = entry.behavior_name or "ledger"
    values: dict[str, Any] = {
        "Name": f"{name}: {entry.kind}",
        "Kind": entry.kind,
        "From tier": tiers.get("from"),
        "To tier": tiers.get("to"),
        "Reason": _masked(entry.reason),
        "Actor": _masked(entry.actor),
        "At": format_date(entry.created_at),
        "Entry hash": entry.hash,
        "Key": entry_key(entry.id or 0),
    }
    behavior = behavior_key(entry.behavior_name) if entry.behavior_name else None
    if behavior is None:
        values["Behavior"] = []
    return RowSpec(entry_key(entry.id or 0), LEDGER, values, behavior)


_DECISION_OF: Final = {"approved": "approve", "rejected": "reject"}


def render_approval(approval: Approval, behavior: str, output: str | None) -> RowSpec:
    text = mask_text(output or "")
    first = chunks(text)[:1]
    decided = approval.status in _DECISION_OF
    result = None
    if approval.status != "pending":
        who = f" by {approval.decided_by}" if approval.decided_by else ""
        result = f"{approval.status}{who}" + (f": {approval.reason}" if approval.reason else "")
    values: dict[str, Any] = {
        "Name": f"{behavior} · run {approval.run_id}",
        "Status": approval.status,
        "Output": first[0] if first else None,
        "Payload hash": approval.payload_sha256,
        "Decision": _DECISION_OF.get(approval.status, "pending"),
        "Reason": _masked(approval.reason) if decided else None,
        "Result": _masked(result),
        "Decided by": _masked(approval.decided_by),
        "Expires": format_date(approval.expires_at),
        "Key": approval_key(approval.run_id),
    }
    # Undecided (pending, withdrawn, expired): Decision and Reason are the person's, Result the
    # approval poller's (it answers a decision there and sets Decision back).
    human = frozenset() if decided else HUMAN_WHILE_PENDING
    return RowSpec(
        approval_key(approval.run_id),
        APPROVALS,
        values,
        behavior_key(behavior),
        content=text[MAX_TEXT:],
        human=human,
    )


def render_key(
    session: Session, key: str, now: datetime, ctx: PolicyContext, dashboard: str | None
) -> RowSpec | None:
    """The row ``key`` names, as it should be now; None when nothing in the database backs it
    (e.g. a pruned row)."""
    kind, _, ident = key.partition(":")
    if kind == "behavior":
        row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == ident)).first()
        return None if row is None else render_behavior(session, row, now, ctx, dashboard)
    if kind == "entry" and ident.isdigit():
        entry = session.get(LedgerEntry, int(ident))
        return None if entry is None else render_entry(entry)
    if kind == "approval":
        found = session.exec(
            select(Approval, BehaviorRow.name, Run.output)
            .join(BehaviorRow, col(BehaviorRow.id) == col(Approval.behavior_id))
            .join(Run, col(Run.id) == col(Approval.run_id))
            .where(col(Approval.run_id) == ident)
        ).first()
        return None if found is None else render_approval(*found)
    return None


def iter_keys(session: Session) -> Iterator[str]:
    """Every row the mirror should hold: behaviors, then ledger entries, then approvals."""
    for name in session.exec(select(BehaviorRow.name).order_by(col(BehaviorRow.id))):
        yield behavior_key(name)
    for entry_id in session.exec(select(LedgerEntry.id).order_by(col(LedgerEntry.id))):
        yield entry_key(entry_id or 0)
    for run_id in session.exec(select(Approval.run_id).order_by(col(Approval.id))):
        yield approval_key(run_id)
