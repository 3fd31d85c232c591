"""What an operator does with the outbox and with alert silences: list rows by status, retry a
dead letter, discard a row with a reason; list, start and end silences. The CLI and the API
call these (they never query the tables themselves); the writes go through ``transitions``
(every one is a ledger entry with its actor and reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlmodel import Session, col, select

from ledger.clock import json_time
from ledger.db.models import BehaviorRow, OutboxRow, Silence
from ledger.errors import LedgerError
from ledger.outbox.enqueue import STATUSES
from ledger.transitions import (
    ALL_BEHAVIORS,
    PolicyContext,
    discard_outbox_row,
    end_silence,
    muted_summary,
    retry_outbox_row,
    start_silence,
)

__all__ = [
    "OutboxView",
    "SilenceView",
    "discard",
    "list_outbox",
    "list_silences",
    "parse_duration",
    "retry",
    "silence",
    "unsilence",
]

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS: Final = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``2h``, ``30m``, ``1h30m``, ``1d``, ``90s`` → a timedelta. Raises LedgerError."""
    cleaned = text.strip().replace(" ", "")
    parts = _DURATION.findall(cleaned)
    if not cleaned or "".join(f"{n}{u}" for n, u in parts).lower() != cleaned.lower():
        raise LedgerError(f"invalid duration {text!r}: write it like 2h, 30m, 1h30m, 1d or 90s")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts))


# -- the outbox --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxView:
    """One outbox row as an operator sees it (the payload is summarised, never shown whole:
    an action's payload holds the behavior's output)."""

    id: int
    kind: str
    status: str
    behavior: str | None
    summary: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "behavior": self.behavior,
            "summary": self.summary,
            "attempts": self.attempts,
            "next_attempt_at": json_time(self.next_attempt_at),
            "created_at": json_time(self.created_at),
            "delivered_at": json_time(self.delivered_at) if self.delivered_at else None,
            "last_error": self.last_error,
        }


def _summary(row: OutboxRow) -> str:
    payload = row.payload or {}
    if row.kind.startswith("alert"):
        alert = payload.get("alert") or {}
        count = alert.get("count")
        times = f" ({count} times)" if isinstance(count, int) and count > 1 else ""
        return f"{alert.get('event', 'alert')}{times} → channel {payload.get('channel')}"
    if row.kind.startswith("action."):
        return f"{row.kind.removeprefix('action.')} action for run {payload.get('run_id')}"
    event = payload.get("event")
    return f"{row.kind}: {event}" if event else row.kind


def list_outbox(
    session: Session, *, status: str | None = None, limit: int = 100
) -> list[OutboxView]:
    """Outbox rows, newest first, in ``status`` if given (pending, in_flight, delivered, dead,
    discarded). Raises LedgerError for an unknown status."""
    if status is not None and status not in STATUSES:
        raise LedgerError(f"unknown outbox status {status!r}: use one of {', '.join(STATUSES)}")
    stmt = select(OutboxRow, BehaviorRow.name).join(
        BehaviorRow, col(BehaviorRow.id) == col(OutboxRow.behavior_id), isouter=True
    )
    if status is not None:
        stmt = stmt.where(col(OutboxRow.status) == status)
    stmt = stmt.order_by(col(OutboxRow.id).desc()).limit(max(1, min(limit, 1000)))
    return [
        OutboxView(
            id=row.id or 0,
            kind=row.kind,
            status=row.status,
            behavior=name or (row.payload or {}).get("behavior"),
            summary=_summary(row),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            last_error=row.last_error,
        )
        for row, name in session.exec(stmt).all()
    ]


def retry(session: Session, row_id: int, *, actor: str, now: datetime) -> str:
    """Queue a dead (or discarded) row again, due now. Returns a one-line description."""
    row = retry_outbox_row(session, row_id, actor=actor, now=now)
    return f"outbox row {row_id} ({row.kind}) queued again; it is delivered within seconds"


def discard(session: Session, row_id: int, *, actor: str, reason: str, now: datetime) -> str:
    """Give up on a dead or pending row, with who and why. Returns a one-line description."""
    row = discard_outbox_row(session, row_id, actor=actor, reason=reason, now=now)
    return f"outbox row {row_id} ({row.kind}) discarded by {actor}: {reason}"


# -- silences ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SilenceView:
    id: int
    behavior: str | None
    reason: str
    created_by: str
    starts_at: datetime
    ends_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    muted: dict[str, int]

    def active(self, now: datetime) -> bool:
        return self.ended_at is None and self.starts_at <= now < self.ends_at

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "behavior": self.behavior,
            "scope": self.behavior or ALL_BEHAVIORS,
            "reason": self.reason,
            "created_by": self.created_by,
            "starts_at": json_time(self.starts_at),
            "ends_at": json_time(self.ends_at),
            "ended_at": json_time(self.ended_at) if self.ended_at else None,
            "ended_by": self.ended_by,
            "active": self.active(now),
            "muted": self.muted,
            "muted_summary": muted_summary(self.muted),
        }


def _view(row: Silence) -> SilenceView:
    return SilenceView(
        id=row.id or 0,
        behavior=row.behavior_name,
        reason=row.reason,
        created_by=row.created_by,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        ended_at=row.ended_at,
        ended_by=row.ended_by,
        muted={str(k): int(v) for k, v in (row.muted or {}).items()},
    )


def list_silences(
    session: Session, *, include_ended: bool = False, limit: int = 100
) -> list[SilenceView]:
    """Silences not ended yet (or every one, newest first, with ``include_ended``)."""
    stmt = select(Silence)
    if not include_ended:
        stmt = stmt.where(col(Silence.ended_at).is_(None))
    stmt = stmt.order_by(col(Silence.id).desc()).limit(max(1, min(limit, 1000)))
    return [_view(row) for row in session.exec(stmt).all()]


def silence(
    session: Session,
    *,
    behavior: str | None,
    duration: timedelta,
    reason: str,
    actor: str,
    now: datetime,
) -> SilenceView:
    """Start a silence of ``behavior`` (None: every behavior)."""
    return _view(
        start_silence(
            session, behavior=behavior, duration=duration, reason=reason, actor=actor, now=now
        )
    )


def unsilence(
    session: Session, silence_id: int, *, actor: str, now: datetime, ctx: PolicyContext
) -> SilenceView:
    """End a silence now; what it muted is summarised (ledger entry, and an alert if any)."""
    return _view(end_silence(session, silence_id, actor=actor, now=now, ctx=ctx))
