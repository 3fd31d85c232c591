"""What ``ledger status``, ``GET /api/status`` (and later the dashboard) show: each behavior's
state and problems, approvals waiting, the outbox, broadcast ingestion and storage. Read-only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, text
from sqlmodel import Session, col, select

from ledger.behaviors.schema import Behavior
from ledger.db.models import (
    Approval,
    BehaviorRow,
    FileProblem,
    GateResultRow,
    IngestDelivery,
    IngestedSpan,
    OutboxRow,
    RetentionPrune,
    Run,
)
from ledger.gates import Tier
from ledger.spend import cost_disagreement, spent_in_window, window_start

FAILURE_LOOKBACK = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class BehaviorStatus:
    name: str
    tier: Tier
    flags: tuple[str, ...]
    last_run_at: datetime | None
    last_run_status: str | None
    next_run_at: datetime | None
    recent_failures: int
    spend_usd: float
    budget_usd: float | None
    budget_reset: str | None
    problem: str | None
    # Runs claimed in the last 24 hours whose broadcast cost differs from the runner's (the
    # budget counted the larger); ``GET /api/runs/{id}`` shows both figures.
    cost_disagreements_24h: int = 0
    # Start (UTC) of the window ``spend_usd`` covers: the budget's, else the calendar month.
    spend_window_start: datetime | None = None
    # Runs claimed in the last 24 hours that were left behind by a stopped daemon and closed
    # as ``interrupted`` (not held against the behavior).
    interrupted_24h: int = 0
    # Why its key cannot be resolved in the daemon's environment (recorded by the daemon).
    key_problem: str | None = None
    pending_approvals: int = 0
    # The schedule's interval when it is one (None for cron): under a minute, the next run is
    # shown to the second.
    interval_seconds: float | None = None

    @property
    def state(self) -> str:
        """``active``, or what keeps it from being: its flags, a missing key, approvals."""
        parts = list(self.flags)
        if self.key_problem:
            parts.append("key missing")
        if self.pending_approvals:
            parts.append(f"{self.pending_approvals} awaiting approval")
        return ", ".join(parts) or "active"


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """Broadcast ingestion at a glance: deliveries acknowledged but not processed yet, those
    set aside (the processor could not store them; see the log), and spans no behavior claimed
    in the last 24 hours (kept in ``ingested_span``, attribution ``unattributed``)."""

    waiting_deliveries: int
    set_aside_deliveries: int
    unattributed_spans_24h: int
    last_received_at: datetime | None


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Work written after state changes: rows waiting (or being) delivered, and dead letters
    (retries exhausted; ``ledger outbox list --status dead`` lists them)."""

    queued: int
    dead: int


@dataclass(frozen=True, slots=True)
class StatusReport:
    behaviors: list[BehaviorStatus]
    file_problems: list[FileProblem]
    ingest: IngestStatus
    outbox: OutboxStatus = OutboxStatus(0, 0)

    @property
    def pending_approvals(self) -> int:
        return sum(b.pending_approvals for b in self.behaviors)


def collect_status(session: Session, now: datetime) -> StatusReport:
    rows = session.execute(select(BehaviorRow).order_by(col(BehaviorRow.name))).scalars().all()
    since = now - FAILURE_LOOKBACK
    failures: dict[int, int] = dict(
        session.execute(
            select(GateResultRow.behavior_id, func.count())
            .where(
                col(GateResultRow.created_at) >= since,
                col(GateResultRow.attributable).is_(True),
                col(GateResultRow.outcome) != "pass",
            )
            .group_by(col(GateResultRow.behavior_id))
        ).all()
    )
    disagreements: dict[int, int] = {}
    for behavior_id, runner, broadcast in session.execute(
        select(Run.behavior_id, Run.cost_usd, Run.broadcast_cost_usd).where(
            col(Run.behavior_id).in_([row.id for row in rows]),  # (behavior_id, claimed_at)
            col(Run.claimed_at) >= since,
            col(Run.cost_usd).is_not(None),
            col(Run.broadcast_cost_usd).is_not(None),
        )
    ):
        if cost_disagreement(runner, broadcast) is not None:
            disagreements[behavior_id] = disagreements.get(behavior_id, 0) + 1
    interrupted: dict[int, int] = dict(
        session.execute(
            select(Run.behavior_id, func.count())
            .where(col(Run.status) == "interrupted", col(Run.claimed_at) >= since)
            .group_by(col(Run.behavior_id))
        ).all()
    )
    pending: dict[int, int] = dict(
        session.execute(
            select(Approval.behavior_id, func.count())
            .where(col(Approval.status) == "pending")  # the partial index on pending requests
            .group_by(col(Approval.behavior_id))
        ).all()
    )
    out: list[BehaviorStatus] = []
    for row in rows:
        behavior = _definition(row)
        flags = tuple(
            flag
            for flag, on in (
                ("retired", row.retired),
                ("paused", row.paused),
                ("pinned", row.pinned),
                ("disabled", not row.enabled),
                ("invalid file", row.problem is not None),
            )
            if on
        )
        next_run = None
        if behavior and not (row.retired or row.paused or not row.enabled):
            next_run = behavior.next_fire_after(now)
        budget = behavior.budget if behavior else None
        # The window's spend (the budget's window, else the calendar month in UTC): the
        # runner's and broadcast's figures reconciled, and spend seen only via broadcast.
        start = window_start(budget.reset if budget else None, now)
        spend, _reserved = spent_in_window(session, row.id or 0, start)
        interval = behavior.interval if behavior else None
        out.append(
            BehaviorStatus(
                name=row.name,
                tier=Tier(row.tier),
                flags=flags,
                last_run_at=row.last_run_at,
                last_run_status=row.last_run_status,
                next_run_at=next_run,
                recent_failures=int(failures.get(row.id, 0)),
                spend_usd=spend,
                budget_usd=budget.usd if budget else None,
                budget_reset=budget.reset if budget else None,
                spend_window_start=start,
                interrupted_24h=int(interrupted.get(row.id or 0, 0)),
                problem=row.problem,
                cost_disagreements_24h=disagreements.get(row.id or 0, 0),
                key_problem=None if row.retired else row.key_problem,
                pending_approvals=int(pending.get(row.id or 0, 0)),
                interval_seconds=interval.total_seconds() if interval else None,
            )
        )
    problems = session.execute(select(FileProblem).order_by(col(FileProblem.path))).scalars().all()
    return StatusReport(
        out, list(problems), _ingest_status(session, since), _outbox_status(session)
    )


def _outbox_status(session: Session) -> OutboxStatus:
    by_status: dict[str, int] = dict(
        session.execute(
            select(OutboxRow.status, func.count())
            .where(col(OutboxRow.status).in_(("pending", "in_flight", "dead")))
            .group_by(col(OutboxRow.status))
        ).all()
    )
    queued = by_status.get("pending", 0) + by_status.get("in_flight", 0)
    return OutboxStatus(queued=int(queued), dead=int(by_status.get("dead", 0)))


def _ingest_status(session: Session, since: datetime) -> IngestStatus:
    by_state = dict(
        session.execute(
            select(col(IngestDelivery.set_aside).is_not(None), func.count()).group_by(
                col(IngestDelivery.set_aside).is_not(None)
            )
        ).all()
    )
    unattributed = session.execute(
        select(func.count()).where(
            col(IngestedSpan.behavior_id).is_(None),
            col(IngestedSpan.received_at) >= since,
            col(IngestedSpan.attribution) == "unattributed",
        )
    ).scalar_one()
    # The newest row of each table by primary key (an index), not max(received_at) (a scan).
    newest = (
        session.execute(
            select(table.received_at).order_by(col(table.id).desc()).limit(1)
        ).scalar_one_or_none()
        for table in (IngestDelivery, IngestedSpan)
    )
    last = max((t for t in newest if t is not None), default=None)
    return IngestStatus(
        waiting_deliveries=int(by_state.get(False, 0)),
        set_aside_deliveries=int(by_state.get(True, 0)),
        unattributed_spans_24h=int(unattributed),
        last_received_at=last,
    )


def _definition(row: BehaviorRow) -> Behavior | None:
    try:
        return Behavior.model_validate(row.definition)
    except ValidationError:
        return None


# The tables that grow with use: the pruned ones first, then the history (never pruned).
SIZED_TABLES: tuple[str, ...] = (
    "ingested_span",
    "ingest_delivery",
    "outbox",
    "webhook_event",
    "ledger_entry",
    "run",
    "gate_result",
)


@dataclass(frozen=True, slots=True)
class TableSize:
    table: str
    rows: int
    estimated: bool  # PostgreSQL's planner estimate (pg_class.reltuples), not a count


@dataclass(frozen=True, slots=True)
class LastPrune:
    table: str
    pruned_at: datetime
    cutoff: datetime
    deleted: int


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """Rows per table (on PostgreSQL the planner's estimate, kept by autovacuum: a count of a
    big table would read all of it; on SQLite an exact count) and the last prune of each pruned
    table (``ledger.retention``)."""

    tables: list[TableSize]
    last_prunes: list[LastPrune]


def collect_storage(session: Session) -> StorageStatus:
    postgres = session.get_bind().dialect.name == "postgresql"
    sizes: list[TableSize] = []
    for name in SIZED_TABLES:
        estimate = None
        if postgres:
            estimate = session.execute(
                text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"),
                {"name": name},
            ).scalar_one_or_none()
        if estimate is not None and estimate >= 0:  # -1: never analyzed yet
            sizes.append(TableSize(name, int(estimate), True))
            continue
        count_rows = text(f'SELECT count(*) FROM "{name}"')  # noqa: S608  # one of SIZED_TABLES
        counted = session.execute(count_rows).scalar_one()
        sizes.append(TableSize(name, int(counted), False))
    prunes = session.execute(select(RetentionPrune).order_by(col(RetentionPrune.target))).scalars()
    return StorageStatus(
        sizes, [LastPrune(p.target, p.pruned_at, p.cutoff, p.deleted) for p in prunes]
    )


def status_document(
    session: Session, now: datetime, retention_interval_seconds: float
) -> dict[str, Any]:
    """The summary ``ledger status`` prints, as JSON-ready values (times as ISO 8601 strings):
    what ``GET /api/status`` answers and ``ledger status --json`` prints."""
    report = collect_status(session, now)
    storage = collect_storage(session)
    document: dict[str, Any] = _jsonable(
        {
            "generated_at": now,
            "behaviors": [
                {
                    "name": b.name,
                    **b.tier.as_json(),
                    "state": b.state,
                    "flags": list(b.flags),
                    "key_problem": b.key_problem,
                    "problem": b.problem,
                    "pending_approvals": b.pending_approvals,
                    "last_run_at": b.last_run_at,
                    "last_run_status": b.last_run_status,
                    "next_run_at": b.next_run_at,
                    "interval_seconds": b.interval_seconds,
                    "recent_failures": b.recent_failures,
                    "interrupted_runs_24h": b.interrupted_24h,
                    "cost_disagreements_24h": b.cost_disagreements_24h,
                    "spend_usd": b.spend_usd,
                    "spend_window_start": b.spend_window_start,
                    "budget_usd": b.budget_usd,
                    "budget_reset": b.budget_reset,
                }
                for b in report.behaviors
            ],
            "pending_approvals": report.pending_approvals,
            "outbox": asdict(report.outbox),
            "invalid_files": [
                {"path": p.path, "problems": p.problems} for p in report.file_problems
            ],
            "ingest": asdict(report.ingest),
            "storage": {
                "tables": [asdict(t) for t in storage.tables],
                "last_prunes": [asdict(p) for p in storage.last_prunes],
                "prune_interval_seconds": retention_interval_seconds,
            },
        }
    )
    return document


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
