"""Stored broadcast spans → spend and gate results, off the receiver's hot path.

The receiver only stores spans; this processor takes unprocessed rows (oldest first), groups
them by trace (one delivery = one trace), extracts generations, attributes each to a behavior,
and applies the effects through the same transitions the runner uses:

- cost counts toward the behavior's budget window (for a daemon run: the larger of the runner's
  and broadcast's figures wins; a disagreement stays visible on the run);
- error and guardrail signals become gate results with their attributable flag — for a daemon
  run only those the runner did not already record from the HTTP response;
- spend seen only via broadcast that pushes a window past its budget records ``spend_cap``.

Unattributed spans are kept and marked ``unattributed`` (counted in ``ledger status``).
Each generation is applied in its own transaction, locking its behavior like the runner does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import structlog
from sqlalchemy import Text, cast, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from ledger.budget import window_start
from ledger.clock import Clock
from ledger.config import WebhookSource
from ledger.db.models import BehaviorRow, GateResultRow, IngestedSpan, Run, WebhookEvent
from ledger.db.session import Database
from ledger.gates import Gate, GateResult, Outcome
from ledger.ingest.attribution import Attribution, Generation, attribute, extract_generations
from ledger.ingest.store import span_from_data
from ledger.policy import Observation
from ledger.spend import settle, spent_in_window
from ledger.transitions import PolicyContext, apply_observation, lock_behavior, record_results

log = structlog.get_logger("ledger.ingest")

BATCH = 500
LOOKUP_TTL = 5.0
YIELD_FACTOR = 2.0  # rest per second of work while the receiver is busy
MAX_REST = 1.0


class DbLookup:
    """``AttributionLookup`` over the registry (names and key names cached briefly) and runs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._loaded_at = -LOOKUP_TTL
        self._names: set[str] = set()
        self._keys: dict[str, str] = {}
        self._runs: dict[str, str | None] = {}

    def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < LOOKUP_TTL:
            return
        with self.db.transaction() as session:
            rows = session.exec(select(BehaviorRow.name, BehaviorRow.definition)).all()
        self._names = {name for name, _ in rows}
        self._keys = {d["key_name"]: name for name, d in rows if (d or {}).get("key_name")}
        self._loaded_at = time.monotonic()

    def prefetch_runs(self, run_ids: set[str]) -> None:
        """Look up the behaviors of ``run_ids`` in one query, for the batch about to be
        attributed (``by_run_id`` answers from it; ``forget_runs`` drops it)."""
        wanted = [r for r in run_ids if r.startswith("run-")]
        self._runs = dict.fromkeys(wanted)
        if not wanted:
            return
        with self.db.transaction() as session:
            for name, run_id in session.exec(
                select(BehaviorRow.name, Run.id)
                .join(Run, col(Run.behavior_id) == col(BehaviorRow.id))
                .where(col(Run.id).in_(wanted))
            ):
                self._runs[run_id] = name

    def forget_runs(self) -> None:
        self._runs = {}

    def by_run_id(self, run_id: str) -> str | None:
        if not run_id.startswith("run-"):
            return None
        if run_id in self._runs:
            return self._runs[run_id]
        with self.db.transaction() as session:
            found = session.exec(
                select(BehaviorRow.name)
                .join(Run, col(Run.behavior_id) == col(BehaviorRow.id))
                .where(col(Run.id) == run_id)
            ).first()
        return found

    def by_name(self, name: str) -> bool:
        self._refresh()
        return name in self._names

    def by_key_name(self, key_name: str) -> str | None:
        self._refresh()
        return self._keys.get(key_name)


@dataclass(slots=True)
class ProcessStats:
    spans: int = 0
    generations: int = 0
    attributed: int = 0
    unattributed: int = 0
    results: int = 0
    by_behavior: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def process_pending(
    db: Database, lookup: DbLookup, now: datetime, ctx: PolicyContext, limit: int = BATCH
) -> ProcessStats:
    """Process up to ``limit`` unprocessed spans (whole traces). Returns what was done."""
    stats = ProcessStats()
    with db.transaction() as session:
        # ``data`` as text, parsed by orjson: the JSON type's loader is the stdlib's.
        rows = [
            _Row(row_id, trace_id, span_id, orjson.loads(data))
            for row_id, trace_id, span_id, data in session.execute(
                sa_select(
                    col(IngestedSpan.id),
                    col(IngestedSpan.trace_id),
                    col(IngestedSpan.span_id),
                    cast(col(IngestedSpan.data), Text),
                )
                .where(col(IngestedSpan.processed_at).is_(None))
                .order_by(col(IngestedSpan.id))
                .limit(limit)
            )
        ]
    if not rows:
        return stats
    by_trace: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        by_trace[row.trace_id].append(row)
    # Deliveries no behavior claims have no effects: marked processed together. A delivery that
    # cannot be read back or applied (a bug, not the database) is set aside as ``invalid`` /
    # ``error`` with a log line, so it cannot stall the ones after it.
    idle: dict[str, list[int]] = {"unattributed": [], "no_generation": [], "invalid": []}
    traces: list[tuple[list[_Row], list[Generation]]] = []
    for trace_rows in by_trace.values():
        try:
            spans = [span_from_data(r.trace_id, r.span_id, r.data) for r in trace_rows]
            traces.append((trace_rows, extract_generations(spans)))
        except Exception as exc:
            log.error(
                "a stored broadcast delivery cannot be read; set aside as invalid",
                trace_id=trace_rows[0].trace_id,
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )
            idle["invalid"].extend(r.id for r in trace_rows)
            stats.spans += len(trace_rows)
    lookup.prefetch_runs(
        {hint for _, gens in traces for g in gens for hint in (g.run_id_hint, g.session_id) if hint}
    )
    try:
        placed_traces = [
            (trace_rows, [(attribute(gen, lookup), gen) for gen in generations])
            for trace_rows, generations in traces
        ]
    finally:
        lookup.forget_runs()
    for trace_rows, placed in placed_traces:
        if any(a.behavior is not None for a, _ in placed):
            continue
        idle["unattributed" if placed else "no_generation"].extend(r.id for r in trace_rows)
        stats.spans += len(trace_rows)
        stats.generations += len(placed)
        stats.unattributed += len(placed)
    if any(idle.values()):
        _mark_idle(db, idle, now)
    for trace_rows, placed in placed_traces:
        if not any(a.behavior is not None for a, _ in placed):
            continue
        try:
            results = _process_trace(db, trace_rows, placed, now, ctx)
        except _TakenElsewhere:
            continue
        except DBAPIError:
            raise  # the database failed: retried on the next pass
        except Exception:
            log.exception(
                "applying a broadcast delivery failed; set aside as error",
                trace_id=trace_rows[0].trace_id,
            )
            _mark_idle(db, {"error": [r.id for r in trace_rows]}, now)
            stats.spans += len(trace_rows)
            continue
        stats.spans += len(trace_rows)
        stats.results += results
        for attribution, _gen in placed:
            stats.generations += 1
            if attribution.behavior is None:
                stats.unattributed += 1
            else:
                stats.attributed += 1
                stats.by_behavior[attribution.behavior] += 1
    return stats


def _mark_idle(db: Database, idle: dict[str, list[int]], now: datetime) -> None:
    """Mark spans without effects processed, in one transaction (a replica that marked some
    first changes nothing: there is nothing to apply twice)."""
    with db.transaction() as session:
        for label, ids in idle.items():
            if ids:
                session.execute(
                    update(IngestedSpan)
                    .where(col(IngestedSpan.id).in_(ids), col(IngestedSpan.processed_at).is_(None))
                    .values(processed_at=now, attribution=label)
                )


@dataclass(frozen=True, slots=True)
class _Row:
    """An unprocessed ``ingested_span`` row: what processing it needs."""

    id: int
    trace_id: str
    span_id: str
    data: dict[str, Any]


class _TakenElsewhere(Exception):
    """Another processor (a replica) claimed these spans first."""


def _process_trace(
    db: Database,
    rows: list[_Row],
    placed: list[tuple[Attribution, Generation]],
    now: datetime,
    ctx: PolicyContext,
) -> int:
    """One delivery's effects and its spans marked processed — one transaction, so a crash
    never applies a delivery twice nor loses it. Raises _TakenElsewhere if a replica won."""
    first = next((a for a, _ in placed if a.behavior is not None), None)
    count = 0
    with db.transaction() as session:
        locked: dict[str, BehaviorRow] = {}
        for name in sorted({a.behavior for a, _ in placed if a.behavior is not None}):
            locked[name] = lock_behavior(session, name=name)
        claimed = session.execute(
            update(IngestedSpan)
            .where(
                col(IngestedSpan.id).in_([r.id for r in rows]),
                col(IngestedSpan.processed_at).is_(None),
            )
            .values(
                processed_at=now,
                behavior_id=locked[first.behavior].id if first and first.behavior else None,
                run_id=first.run_id if first else None,
                attribution=str(first.rule)
                if first
                else ("unattributed" if placed else "no_generation"),
            )
        )
        if claimed.rowcount != len(rows):  # type: ignore[attr-defined]  # CursorResult
            raise _TakenElsewhere
        for attribution, gen in placed:
            if attribution.behavior is not None:
                count += _apply(session, locked[attribution.behavior], gen, attribution, now, ctx)
    return count


def _apply(
    session: Session,
    row: BehaviorRow,
    gen: Generation,
    attribution: Attribution,
    now: datetime,
    ctx: PolicyContext,
) -> int:
    """Spend and gate results of one attributed generation (inside the trace's transaction)."""
    run = session.get(Run, attribution.run_id) if attribution.run_id else None
    results: list[GateResult] = []
    if gen.cost is not None:
        results.extend(_count_spend(session, row, run, float(gen.cost), now))
    already: set[str] = set()
    if run is not None:
        already = {
            g
            for (g,) in session.execute(
                select(GateResultRow.gate).where(col(GateResultRow.run_id) == run.id)
            )
        }
    for signal in gen.signals:
        if str(signal.gate) in already:
            continue  # the runner saw it first, from the HTTP response
        results.append(
            GateResult(
                signal.gate,
                signal.outcome,
                signal.attributable,
                {
                    "source": "broadcast",
                    "reason": signal.reason[:500],
                    "trace_id": gen.trace_id,
                    "generation_id": gen.generation_id,
                    "attribution": str(attribution.rule),
                },
            )
        )
    if attribution.key_conflict:
        log.warning(
            "a behavior's key was used for another behavior's call",
            behavior=attribution.behavior,
            key_owner=attribution.key_conflict,
            trace_id=gen.trace_id,
        )
    if not results:
        return 0
    stored = record_results(
        session,
        row,
        results,
        now=now,
        source="broadcast",
        run_id=run.id if run is not None else None,
    )
    for result in stored:
        apply_observation(session, row, Observation.result(now, result), now=now, ctx=ctx)
    return len(stored)


def _count_spend(
    session: Session, row: BehaviorRow, run: Run | None, cost: float, now: datetime
) -> list[GateResult]:
    definition = row.definition or {}
    budget = definition.get("budget")
    delta = cost
    if run is not None:
        previous = max(run.cost_usd or 0.0, run.broadcast_cost_usd or 0.0)
        run.broadcast_cost_usd = (run.broadcast_cost_usd or 0.0) + cost
        delta = max(run.cost_usd or 0.0, run.broadcast_cost_usd) - previous
        session.add(run)
    if not budget or delta <= 0:
        return []
    start = window_start(budget["reset"], now, definition.get("timezone", "UTC"))
    before, _reserved = spent_in_window(session, row.id or 0, start)
    settle(session, behavior_id=row.id or 0, window_start=start, reserved=0.0, spent=delta, now=now)
    after = before + delta
    if before <= budget["usd"] < after:
        return [
            GateResult(
                Gate.SPEND_CAP,
                Outcome.FAIL,
                True,
                {
                    "source": "broadcast",
                    "reason": f"spend reported by broadcast took the {budget['reset']} window "
                    f"to ${after:.6f}, over its ${budget['usd']} budget",
                    "window_start": start.isoformat(),
                    "spent_usd": after,
                    "budget_usd": budget["usd"],
                },
            )
        ]
    return []


def process_webhook_events(
    db: Database,
    now: datetime,
    ctx: PolicyContext,
    sources: Mapping[str, WebhookSource],
    limit: int = 200,
) -> int:
    """Verified webhook events → gate results for the behavior their source is bound to: an
    event named in the source's ``fail_events`` is an attributable ``external_event`` fail,
    one in ``warn_events`` a warn; others are only kept in the event log. Returns how many
    events were processed."""
    table = WebhookEvent.__table__  # type: ignore[attr-defined]
    with db.transaction() as session:
        pending = session.execute(
            sa_select(table.c.id, table.c.source, table.c.event, table.c.behavior_id)
            .where(table.c.processed_at.is_(None))
            .order_by(table.c.id)
            .limit(limit)
        ).all()
    for event_id, source, event, behavior_id in pending:
        config = sources.get(source)
        outcome: Outcome | None = None
        if config is not None and event in config.fail_events:
            outcome = Outcome.FAIL
        elif config is not None and event in config.warn_events:
            outcome = Outcome.WARN
        with db.transaction() as session:
            row = lock_behavior(session, id=behavior_id) if behavior_id and outcome else None
            claimed = session.execute(
                update(table)
                .where(table.c.id == event_id, table.c.processed_at.is_(None))
                .values(processed_at=now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]  # a replica took it
                continue
            if row is None or outcome is None:
                continue
            stored = record_results(
                session,
                row,
                [
                    GateResult(
                        Gate.EXTERNAL_EVENT,
                        outcome,
                        True,
                        {"source": source, "event": event, "webhook_event_id": event_id},
                    )
                ],
                now=now,
                source="webhook",
            )
            apply_observation(session, row, Observation.result(now, stored[0]), now=now, ctx=ctx)
    return len(pending)


class IngestProcessor:
    """A loop over ``process_pending``, started and stopped by the lifespan.

    Acknowledging deliveries comes first: while the receiver is busy (``ingest_busy``), the
    processor rests twice as long as each batch took, so it takes at most about a third of the
    CPU and the backlog is worked off as soon as the receiver quietens down.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        ctx: PolicyContext,
        idle: float = 0.5,
        sources: Mapping[str, WebhookSource] | None = None,
        ingest_busy: Callable[[], bool] | None = None,
    ) -> None:
        self.ingest_busy = ingest_busy
        self.sources = dict(sources or {})
        self.db = db
        self.clock = clock
        self.ctx = ctx
        self.idle = idle
        self.lookup = DbLookup(db)
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                stats = await asyncio.to_thread(
                    process_pending, self.db, self.lookup, self.clock.now(), self.ctx
                )
                events = await asyncio.to_thread(
                    process_webhook_events, self.db, self.clock.now(), self.ctx, self.sources
                )
            except Exception:
                log.exception("processing broadcast spans or webhook events failed; retrying")
                stats, events = ProcessStats(), 0
            if stats.spans or events:
                if self.ingest_busy is not None and self.ingest_busy():
                    rest = min(YIELD_FACTOR * (time.monotonic() - started), MAX_REST)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=rest)
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.idle)
