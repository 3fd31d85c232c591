"""Prometheus metrics (``GET /metrics``), cheap at 10,000 behaviors and millions of runs.

Two kinds:

- **Counters and histograms**, counted in this process where the events happen and only once
  their transaction has committed (a rolled-back change counts nothing): runs finished by
  outcome, gate results by gate and outcome, tier changes, broadcast deliveries accepted and
  rejected, run duration and outbox dispatch lag. Like every Prometheus counter they start at 0
  when the process starts; with several replicas, sum them. The database events are seen
  through SQLAlchemy ORM events that ``install_event_counters`` registers once (the daemon does
  it when it opens), so the runner, the broadcast processor and the apply layer count without
  knowing about metrics: a tier change is a ``behavior.tier`` set, a finished run a
  ``run.status`` set, a gate result a ``gate_result`` insert.
- **Gauges read from the database at scrape** by ``render``: behaviors by tier, outbox depth
  and the age of its oldest pending row, the broadcast backlog, pending approvals. A handful of
  aggregate queries, each on an index or a small table; no per-behavior query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Insert, Result, Update, event, func
from sqlalchemy.orm import ORMExecuteState, object_session
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select

from ledger.db.models import Approval, BehaviorRow, GateResultRow, IngestDelivery, OutboxRow, Run
from ledger.db.session import Database

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY: Final = CollectorRegistry(auto_describe=True)

RUNS: Final = Counter(
    "ledger_runs",
    "Runs finished, by outcome (succeeded, failed, refused, skipped, interrupted).",
    ["outcome"],
    registry=REGISTRY,
)
GATE_RESULTS: Final = Counter(
    "ledger_gate_results",
    "Gate results recorded, by gate and outcome (pass, warn, fail).",
    ["gate", "outcome"],
    registry=REGISTRY,
)
TIER_CHANGES: Final = Counter(
    "ledger_tier_changes",
    "Tier changes, by direction (promotion, demotion) and tiers.",
    ["direction", "from_tier", "to_tier"],
    registry=REGISTRY,
)
BROADCAST_DELIVERIES: Final = Counter(
    "ledger_broadcast_deliveries",
    "Broadcast (OTLP) deliveries answered, by result (accepted, rejected).",
    ["result"],
    registry=REGISTRY,
)
RUN_DURATION: Final = Histogram(
    "ledger_run_duration_seconds",
    "From a run's start to its finish (model call, gates and disposition).",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
PROCESSOR_RESTARTS: Final = Counter(
    "ledger_broadcast_processor_restarts",
    "Times the broadcast processor's child process exited unasked and was started again.",
    registry=REGISTRY,
)
DISPATCH_LAG: Final = Histogram(
    "ledger_outbox_dispatch_lag_seconds",
    "From an outbox row's creation (the state change) to its delivery, retries included.",
    ["kind"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600),
    registry=REGISTRY,
)

_TIERS: Final = ("A", "B", "C")
_RUN_TABLE: Final = Run.__table__  # type: ignore[attr-defined]  # SQLModel declares no __table__
_GATE_TABLE: Final = GateResultRow.__table__  # type: ignore[attr-defined]
# A run that got an answer (or a refusal) from its model call: its duration is observed.
_COMPLETED: Final = frozenset({"succeeded", "failed", "refused"})
# ... and one closed without one: skipped when due (paused meanwhile, over budget, its file
# gone) or interrupted (its process stopped before it finished).
_FINISHED: Final = _COMPLETED | {"skipped", "interrupted"}
_PENDING_KEY: Final = "ledger.metrics.pending"
_installed = False


# --------------------------------------------------------------------------------------------
# Counting on commit
# --------------------------------------------------------------------------------------------


def after_commit(session: OrmSession | None, count: Callable[[], None]) -> None:
    """Run ``count`` once ``session``'s transaction commits; drop it if it rolls back."""
    if session is None:
        return
    session.info.setdefault(_PENDING_KEY, []).append(count)


def _on_commit(session: OrmSession) -> None:
    for count in session.info.pop(_PENDING_KEY, ()):
        count()


def _on_rollback(session: OrmSession) -> None:
    session.info.pop(_PENDING_KEY, None)


def _run_status_set(target: Run, value: Any, oldvalue: Any, _initiator: Any) -> None:
    if value == oldvalue or value not in _FINISHED:
        return

    def count() -> None:
        RUNS.labels(value).inc()
        if value not in _COMPLETED:
            return
        # Read what is loaded, never a lazy load: no SQL may run while a commit finishes.
        _observe_duration(*(target.__dict__.get(k) for k in ("started_at", "finished_at")))

    after_commit(object_session(target), count)


def _observe_duration(started: Any, finished: Any) -> None:
    if isinstance(started, datetime) and isinstance(finished, datetime):
        RUN_DURATION.observe(max(0.0, (finished - started).total_seconds()))


def _parameter_sets(state: ORMExecuteState) -> list[dict[str, Any]]:
    parameters: Any = state.parameters
    if isinstance(parameters, list):
        return [p for p in parameters if isinstance(p, dict)]
    return [parameters] if isinstance(parameters, dict) else [{}]


def _bulk_statements(state: ORMExecuteState) -> Result[Any] | None:
    """Runs closed and gate results written by a statement rather than through the ORM: counted
    once its transaction commits. The runner records finished runs set-based (one
    ``executemany`` UPDATE of the runs, each parameter set naming its status, and one
    multi-row INSERT of their gate results), skips the due runs it will not start and closes
    those a stopped process left with one bulk UPDATE (counted by the rows it changed)."""
    statement = state.statement
    if state.is_update and isinstance(statement, Update) and statement.table is _RUN_TABLE:
        return _runs_closed(state, statement)
    if state.is_insert and isinstance(statement, Insert) and statement.table is _GATE_TABLE:
        sets = _parameter_sets(state)
        result = state.invoke_statement()

        def count_gates() -> None:
            for p in sets:
                if p.get("gate") is not None and p.get("outcome") is not None:
                    GATE_RESULTS.labels(p["gate"], p["outcome"]).inc()

        after_commit(state.session, count_gates)
        return result
    return None


def _runs_closed(state: ORMExecuteState, statement: Update) -> Result[Any] | None:
    sets = _parameter_sets(state)
    literal = statement.compile().params.get("status")
    if any("status" in p for p in sets):  # executemany by run: each set names its status
        closed = [p for p in sets if p.get("status") in _FINISHED]
        if not closed:
            return None
        result = state.invoke_statement()

        def count_each() -> None:
            for p in closed:
                RUNS.labels(p["status"]).inc()
                if p["status"] in _COMPLETED:
                    _observe_duration(p.get("started_at"), p.get("finished_at"))

        after_commit(state.session, count_each)
        return result
    if literal not in _FINISHED:
        return None
    result = state.invoke_statement()
    changed = getattr(result, "rowcount", 0)
    if changed > 0:
        after_commit(state.session, lambda: RUNS.labels(literal).inc(changed))
    return result


def _tier_set(target: BehaviorRow, value: Any, oldvalue: Any, _initiator: Any) -> None:
    if oldvalue not in _TIERS or value not in _TIERS or value == oldvalue:
        return  # a new behavior's first tier is no change
    direction = "promotion" if _TIERS.index(value) > _TIERS.index(oldvalue) else "demotion"
    after_commit(object_session(target), TIER_CHANGES.labels(direction, oldvalue, value).inc)


def _gate_result_inserted(_mapper: Any, _connection: Any, target: GateResultRow) -> None:
    after_commit(object_session(target), GATE_RESULTS.labels(target.gate, target.outcome).inc)


def install_event_counters() -> None:
    """Register the ORM event listeners that feed the counters (once per process)."""
    global _installed
    if _installed:
        return
    event.listen(OrmSession, "after_commit", _on_commit)
    event.listen(OrmSession, "after_rollback", _on_rollback)
    event.listen(Run.status, "set", _run_status_set)
    event.listen(OrmSession, "do_orm_execute", _bulk_statements)
    event.listen(BehaviorRow.tier, "set", _tier_set)
    event.listen(GateResultRow, "after_insert", _gate_result_inserted)
    _installed = True


# The counters a service in another process (the broadcast processor's, ``ledger.ingest.worker``)
# counts there and sends here: ``counts`` in that process, ``add_counts`` of the difference here.
_SHARED_COUNTERS: Final[dict[str, tuple[Counter, tuple[str, ...]]]] = {
    "ledger_runs": (RUNS, ("outcome",)),
    "ledger_gate_results": (GATE_RESULTS, ("gate", "outcome")),
    "ledger_tier_changes": (TIER_CHANGES, ("direction", "from_tier", "to_tier")),
}


def counts() -> dict[tuple[str, tuple[str, ...]], float]:
    """This process's values of the shared counters: ``(name, label values) -> value``."""
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for name, (counter, label_names) in _SHARED_COUNTERS.items():
        for metric in counter.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = tuple(sample.labels[n] for n in label_names)
                    out[(name, labels)] = sample.value
    return out


def add_counts(deltas: dict[tuple[str, tuple[str, ...]], float]) -> None:
    """Add what another process counted (``counts`` differences) to this process's counters."""
    for (name, labels), value in deltas.items():
        entry = _SHARED_COUNTERS.get(name)
        if entry is not None and value > 0:
            entry[0].labels(*labels).inc(value)


def count_broadcast_delivery(status_code: int) -> None:
    """A broadcast delivery was answered with ``status_code`` (2xx: accepted)."""
    BROADCAST_DELIVERIES.labels("accepted" if 200 <= status_code < 300 else "rejected").inc()


def observe_dispatch(kind: str, created_at: datetime, delivered_at: datetime) -> None:
    DISPATCH_LAG.labels(kind).observe(max(0.0, (delivered_at - created_at).total_seconds()))


# --------------------------------------------------------------------------------------------
# Gauges at scrape
# --------------------------------------------------------------------------------------------


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def snapshot(session: Session, now: datetime) -> list[Metric]:
    """The gauges, from a few aggregate queries."""
    by_tier = {tier: 0 for tier in _TIERS}
    for tier, count in session.execute(
        select(BehaviorRow.tier, func.count())
        .where(col(BehaviorRow.retired).is_(False))
        .group_by(col(BehaviorRow.tier))
    ):
        by_tier[tier] = int(count)
    behaviors = GaugeMetricFamily(
        "ledger_behaviors", "Registered behaviors (not retired), by tier.", labels=["tier"]
    )
    for tier, count in by_tier.items():
        behaviors.add_metric([tier], count)
    pending = col(OutboxRow.status) == "pending"
    depth, oldest_created, oldest_due = session.execute(
        select(
            func.count(), func.min(OutboxRow.created_at), func.min(OutboxRow.next_attempt_at)
        ).where(pending)
    ).one()
    oldest_age = (now - _aware(oldest_created)).total_seconds() if oldest_created else 0.0
    overdue = max(0.0, (now - _aware(oldest_due)).total_seconds()) if oldest_due else 0.0
    backlog = session.execute(
        select(func.count(), func.coalesce(func.sum(IngestDelivery.span_count), 0)).where(
            col(IngestDelivery.set_aside).is_(None)
        )
    ).one()
    approvals = session.execute(
        select(func.count()).select_from(Approval).where(col(Approval.status) == "pending")
    ).scalar_one()
    return [
        behaviors,
        _gauge("ledger_outbox_pending", "Outbox rows waiting for delivery.", int(depth)),
        _gauge(
            "ledger_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox row waiting for delivery (0: none).",
            max(0.0, oldest_age),
        ),
        _gauge(
            "ledger_outbox_overdue_seconds",
            "How long the most overdue pending outbox row has been due (0: none).",
            overdue,
        ),
        _gauge(
            "ledger_broadcast_backlog_deliveries",
            "Broadcast deliveries accepted and not processed yet.",
            int(backlog[0]),
        ),
        _gauge(
            "ledger_broadcast_backlog_spans",
            "Spans in the broadcast deliveries not processed yet.",
            int(backlog[1]),
        ),
        _gauge("ledger_approvals_pending", "Approval requests waiting.", int(approvals)),
    ]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def outbox_overdue_seconds(session: Session, now: datetime) -> float:
    """How long the most overdue pending outbox row has been due (0 when none is): a row
    stays due only while no dispatcher takes it (a delivery in flight or waiting to retry has
    a later ``next_attempt_at``), so a large value means the dispatchers make no progress."""
    oldest_due = session.execute(
        select(func.min(OutboxRow.next_attempt_at)).where(col(OutboxRow.status) == "pending")
    ).scalar_one()
    return max(0.0, (now - _aware(oldest_due)).total_seconds()) if oldest_due else 0.0


def render(db: Database, now: datetime) -> bytes:
    """The exposition: this process's counters and histograms, then the database's gauges.
    Runs queries: call it off the event loop."""
    with db.transaction() as session:
        gauges = snapshot(session, now)
    at_scrape = CollectorRegistry(auto_describe=False)
    at_scrape.register(_Snapshot(gauges))
    return generate_latest(REGISTRY) + generate_latest(at_scrape)
