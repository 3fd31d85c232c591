"""What ``ledger status``, ``GET /api/status`` (and later the dashboard) show: each behavior's
state and problems, approvals waiting, the outbox, broadcast ingestion and storage. Read-only."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Text, and_, case, cast, func, text
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ledger.clock import json_time
from ledger.db.models import (
    Approval,
    BehaviorRow,
    BudgetWindow,
    FileProblem,
    GateResultRow,
    IngestDelivery,
    IngestedSpan,
    OutboxRow,
    RetentionPrune,
    Run,
)
from ledger.gates import Tier
from ledger.schedule import Schedule, ScheduleError, compile_schedule, parse_interval
from ledger.spend import SAME_ABS_USD, SAME_RELATIVE, window_start

FAILURE_LOOKBACK = timedelta(hours=24)


# The state of a behavior whose key the daemon cannot resolve: the scheduler leaves it out.
KEY_MISSING = "key missing: not scheduled"


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
            parts.append(KEY_MISSING)
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


def collect_status(
    session: Session,
    now: datetime,
    *,
    where: Sequence[ColumnElement[bool]] = (),
    after: str | None = None,
    limit: int | None = None,
) -> StatusReport:
    """Every behavior's status (those matching ``where``, by name after ``after``, at most
    ``limit``), from set-based queries: one per fact for all of them, never one per behavior,
    and no definition validated (the registry stored only valid ones)."""
    b = BehaviorRow
    definition = col(b.definition)
    # PostgreSQL keeps a json column as text and parses the whole definition again for each
    # field taken out of it: at ten thousand behaviors, four fields cost it more than sending
    # the text once and parsing it here. SQLite's json_extract is cheap.
    postgres = session.get_bind().dialect.name == "postgresql"
    fields = (
        (cast(definition, Text),)
        if postgres
        else (
            definition["schedule"].as_string(),
            definition["timezone"].as_string(),
            definition[("budget", "usd")].as_float(),
            definition[("budget", "reset")].as_string(),
        )
    )
    query = sa_select(
        col(b.id),
        col(b.name),
        col(b.tier),
        col(b.paused),
        col(b.pinned),
        col(b.retired),
        col(b.enabled),
        col(b.problem),
        col(b.key_problem),
        col(b.last_run_at),
        col(b.last_run_status),
        *fields,
    ).where(*where)
    if after is not None:
        query = query.where(col(b.name) > after)
    query = query.order_by(col(b.name))
    if limit is not None:
        query = query.limit(limit)
    # Plain column tuples, read on the session's connection: the ORM's result processing
    # costs more than the query for ten thousand rows.
    connection = session.connection()
    rows: Sequence[tuple[Any, ...]] = connection.execute(query).all()
    if postgres:
        rows = [(*row[:-1], *_definition_fields(row[-1])) for row in rows]
    # A page names its behaviors; the whole list needs no IN over thousands of ids.
    page = [row[0] for row in rows] if (where or after is not None or limit is not None) else None
    since = now - FAILURE_LOOKBACK
    failures = _count_by_behavior(
        session,
        GateResultRow.behavior_id,
        page,
        col(GateResultRow.created_at) >= since,
        ATTRIBUTABLE_PROBLEM,
    )
    disagreements = _count_by_behavior(
        session, Run.behavior_id, page, col(Run.claimed_at) >= since, _COSTS_DISAGREE
    )
    interrupted = _count_by_behavior(
        session,
        Run.behavior_id,
        page,
        col(Run.status) == "interrupted",
        col(Run.claimed_at) >= since,
    )
    pending = _count_by_behavior(
        session,
        Approval.behavior_id,
        page,
        col(Approval.status) == "pending",  # the partial index on pending requests
    )
    starts = {reset: window_start(reset, now) for reset in BUDGET_RESETS}
    spent: dict[tuple[int, datetime], float] = {}
    windows = sa_select(
        col(BudgetWindow.behavior_id), col(BudgetWindow.window_start), col(BudgetWindow.spent_usd)
    )
    windows = windows.where(col(BudgetWindow.window_start).in_(sorted(set(starts.values()))))
    if page is not None:
        windows = windows.where(col(BudgetWindow.behavior_id).in_(page))
    for behavior_id, start, usd in connection.execute(windows).all():
        spent[(behavior_id, start)] = usd
    out: list[BehaviorStatus] = []
    for (
        row_id,
        name,
        tier,
        paused,
        pinned,
        retired,
        enabled,
        problem,
        key_problem,
        last_run_at,
        last_run_status,
        schedule,
        timezone,
        budget_usd,
        budget_reset,
    ) in rows:
        flags = tuple(
            flag
            for flag, on in (
                ("retired", retired),
                ("paused", paused),
                ("pinned", pinned),
                ("disabled", not enabled),
                ("invalid file", problem is not None),
            )
            if on
        )
        slots = _schedule(schedule, timezone)
        next_run = None
        if slots is not None and not (retired or paused or not enabled or key_problem):
            next_run = slots.next_after(now)
        reset = budget_reset if budget_reset in starts else None
        has_budget = budget_usd is not None
        # The window's spend (the budget's window, else the calendar month in UTC): the
        # runner's and broadcast's figures reconciled, and spend seen only via broadcast.
        start = starts[reset if has_budget else None]
        interval = _interval(schedule) if schedule else None
        out.append(
            BehaviorStatus(
                name=name,
                tier=_TIERS[tier],
                flags=flags,
                last_run_at=last_run_at,
                last_run_status=last_run_status,
                next_run_at=next_run,
                recent_failures=failures.get(row_id, 0),
                spend_usd=spent.get((row_id, start), 0.0),
                budget_usd=float(budget_usd) if has_budget else None,
                budget_reset=reset if has_budget else None,
                spend_window_start=start,
                interrupted_24h=interrupted.get(row_id, 0),
                problem=problem,
                cost_disagreements_24h=disagreements.get(row_id, 0),
                key_problem=None if retired else key_problem,
                pending_approvals=pending.get(row_id, 0),
                interval_seconds=interval.total_seconds() if interval else None,
            )
        )
    problems = session.execute(select(FileProblem).order_by(col(FileProblem.path))).scalars().all()
    return StatusReport(
        out, list(problems), _ingest_status(session, since), _outbox_status(session)
    )


BUDGET_RESETS: tuple[str | None, ...] = (None, "day", "week", "month", "never")
# An attributable result that did not pass: what the partial index on gate_result holds.
ATTRIBUTABLE_PROBLEM = and_(
    col(GateResultRow.attributable) == True,  # noqa: E712  # matches the partial index
    col(GateResultRow.outcome) != "pass",
)
# ``spend.cost_disagreement`` in SQL: both figures, differing by more than rounding.
_DIFFERENCE = func.abs(col(Run.broadcast_cost_usd) - col(Run.cost_usd))
_COSTS_DISAGREE = and_(
    col(Run.cost_usd).is_not(None),
    col(Run.broadcast_cost_usd).is_not(None),
    _DIFFERENCE > SAME_ABS_USD,
    SAME_RELATIVE
    * case(
        (col(Run.cost_usd) > col(Run.broadcast_cost_usd), col(Run.cost_usd)),
        else_=col(Run.broadcast_cost_usd),
    )
    < _DIFFERENCE,
)


def _definition_fields(text_value: str) -> tuple[Any, Any, float | None, Any]:
    """Schedule, time zone, budget and budget reset of a stored definition (JSON text), as
    the SQL of the other backends extracts them."""
    definition = orjson.loads(text_value)
    budget = definition.get("budget")
    budget = budget if isinstance(budget, dict) else {}
    usd = budget.get("usd")
    return (
        definition.get("schedule"),
        definition.get("timezone"),
        float(usd) if isinstance(usd, int | float) else None,
        budget.get("reset"),
    )


def _count_by_behavior(
    session: Session,
    behavior_id: Any,
    page: list[int] | None,
    *conditions: ColumnElement[bool],
) -> dict[int, int]:
    """Rows matching ``conditions`` per behavior. Counted here rather than with GROUP BY:
    grouping tempts SQLite (without statistics) to walk the whole (behavior_id, …) index in
    order instead of the small time-range index the conditions fit."""
    query = sa_select(behavior_id).where(*conditions)
    if page is not None:
        query = query.where(col(behavior_id).in_(page))
    # all(): one fetch of every row (iterating fetches them one by one on psycopg).
    return dict(Counter(session.connection().execute(query).scalars().all()))


_TIERS: dict[str, Tier] = {tier.value: tier for tier in Tier}
_interval = lru_cache(maxsize=1024)(parse_interval)  # thousands of behaviors, a few schedules


def _schedule(schedule: str | None, timezone: str | None) -> Schedule | None:
    """The stored schedule as the one engine reads it; None if it cannot be read."""
    if not schedule:
        return None
    try:
        return compile_schedule(schedule, timezone or "UTC")
    except (ScheduleError, ValueError, KeyError):
        return None


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


_TIER_JSON: dict[str, dict[str, str]] = {tier: tier.as_json() for tier in Tier}


def behavior_json(b: BehaviorStatus) -> dict[str, Any]:
    """One behavior as ``GET /api/status`` and ``GET /api/behaviors`` show it (times as ISO
    8601 strings)."""
    return {
        "name": b.name,
        **_TIER_JSON[b.tier],
        "state": b.state,
        "flags": list(b.flags),
        "key_problem": b.key_problem,
        "problem": b.problem,
        "pending_approvals": b.pending_approvals,
        "last_run_at": _iso(b.last_run_at),
        "last_run_status": b.last_run_status,
        "next_run_at": _iso(b.next_run_at),
        "interval_seconds": b.interval_seconds,
        "recent_failures": b.recent_failures,
        "interrupted_runs_24h": b.interrupted_24h,
        "cost_disagreements_24h": b.cost_disagreements_24h,
        "spend_usd": b.spend_usd,
        "spend_window_start": _iso(b.spend_window_start),
        "budget_usd": b.budget_usd,
        "budget_reset": b.budget_reset,
    }


def status_document(
    session: Session, now: datetime, retention_interval_seconds: float
) -> dict[str, Any]:
    """The summary ``ledger status`` prints, as JSON-ready values (times as ISO 8601 strings):
    what ``GET /api/status`` answers and ``ledger status --json`` prints."""
    report = collect_status(session, now)
    return status_json(report, collect_storage(session), now, retention_interval_seconds)


def status_json(
    report: StatusReport,
    storage: StorageStatus,
    now: datetime,
    retention_interval_seconds: float,
    *,
    behaviors: bool = True,
) -> dict[str, Any]:
    """``status_document`` of what was collected; without ``behaviors`` (``ledger status``
    prints a table of a few from ``report.behaviors`` itself) the key is left out."""
    return {
        "generated_at": json_time(now),
        **({"behaviors": [behavior_json(b) for b in report.behaviors]} if behaviors else {}),
        "pending_approvals": report.pending_approvals,
        "outbox": asdict(report.outbox),
        "invalid_files": [{"path": p.path, "problems": p.problems} for p in report.file_problems],
        "ingest": ingest_json(report.ingest),
        "storage": _jsonable(
            {
                "tables": [asdict(t) for t in storage.tables],
                "last_prunes": [asdict(p) for p in storage.last_prunes],
                "prune_interval_seconds": retention_interval_seconds,
            }
        ),
    }


def ingest_json(ingest: IngestStatus) -> dict[str, Any]:
    """Broadcast ingestion as ``GET /api/status`` and ``GET /api/behaviors`` show it."""
    value: dict[str, Any] = _jsonable(asdict(ingest))
    return value


def _iso(value: datetime | None) -> str | None:
    return None if value is None else json_time(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return json_time(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
