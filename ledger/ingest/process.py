"""Acknowledged broadcast deliveries → stored spans, spend and gate results, off the receiver's
hot path.

The receiver only stores each delivery (``ingest_delivery``); this processor takes them oldest
first, groups each one's spans by trace, extracts generations, attributes each to a behavior,
and, in one transaction for a whole batch of deliveries, stores their spans in
``ingested_span`` (marked with their attribution; the prompt and completion text masked, see
``content``), applies the effects and deletes the deliveries. The effects go through the same
transitions the runner uses:

- cost counts toward the behavior's budget window (for a daemon run: the larger of the runner's
  and broadcast's figures wins; a disagreement stays visible on the run);
- error and guardrail signals become gate results with their attributable flag — for a daemon
  run only those the runner did not already record from the HTTP response;
- spend seen only via broadcast that pushes a window past its budget records ``spend_cap``.

A span already stored (a redelivery) is not stored again and has no effects again.
Unattributed spans are kept and marked ``unattributed`` (counted in ``ledger status``).
A batch's transaction locks its behaviors like the runner does (once each, in id order) and
adds each budget window's spend once; a batch the database refuses is applied one delivery at a
time (deliveries without effects together), so one bad delivery cannot hold up the others.

Hand-written database access, where the profile (``python -m tests.benchmarks.bench_process
--profile``: the processor alone on a filled backlog, 50 behaviors, ~5 KB deliveries of 3
spans) said SQLAlchemy's generic path cost more than the work:

- span rows go in driver-level (``_insert_new_spans``): on PostgreSQL every row of a batch in
  one JSON parameter read by ``json_to_recordset`` (psycopg re-parses a statement with
  thousands of ``%s`` on every execute, and regex-escapes JSON text inside arrays); on SQLite a
  multi-row ``INSERT … VALUES``; ``data`` serialised by orjson, not the stdlib encoder;
- the batch, the runs it names and pending webhook events are plain reads (no ``BEGIN
  IMMEDIATE`` on SQLite queueing behind the receiver's commits); the ``DELETE … RETURNING`` /
  conditional ``UPDATE`` in the applying transaction is still what claims work.

Measured in one session on a loaded 2-CPU machine (before = main at the merge of ingest16):

=====================================  ==================  ==================
processor alone (3,000 deliveries)     SQLite              PostgreSQL
=====================================  ==================  ==================
before: CPU per delivery               276-278 µs          489-499 µs
after: CPU per delivery                239-248 µs (0.88x)  222-226 µs (0.45x)
before: deliveries applied per second  2,750-2,860         1,330-1,350
after: deliveries applied per second   2,750-2,760         2,270-2,410 (1.75x)
=====================================  ==================  ==================

``bench_ingest --sustained`` at 1,000 deliveries/s for 60 s (50 behaviors) varies more with
the machine's other load than with this change; p99 freshness over the session's runs: before,
SQLite 9.1 s and 6.9 s (4,300-14,300 deliveries refused with 429), PostgreSQL 6.3 s (growing)
and 0.59 s (kept up); after, SQLite 0.63 s (kept up, no 429), 7.2 s and 12.2 s (2,400-12,100
refused; 6.0 s with the driver-level insert alone), PostgreSQL 0.32 s (insert alone) and 0.54 s
(kept up) and 2.7 s (growing in its last 10 s).
Beside the receiver, in one interpreter, SQLite applies 700-950 deliveries/s: the processor's
own CPU is no longer what bounds it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson
import structlog
from sqlalchemy import Table, delete, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlmodel import Session, col, select

from ledger.clock import Clock
from ledger.config import WebhookSource
from ledger.db.bulk import DriverInsert, driver_insert
from ledger.db.models import (
    BehaviorRow,
    GateResultRow,
    IngestDelivery,
    IngestedSpan,
    Run,
    WebhookEvent,
)
from ledger.db.session import Database
from ledger.errors import NotFoundError
from ledger.gates import Gate, GateResult, Outcome
from ledger.ingest.attribution import Attribution, Generation, attribute, extract_generations
from ledger.ingest.content import mask_span_content
from ledger.ingest.otlp import SpanRecord, spans_from_stored_request
from ledger.ingest.writer import (
    SOURCE_BROADCAST,
    Backlog,
    is_bad_data,
    span_data,
    span_from_data,
    span_name,
)
from ledger.policy import Observation
from ledger.spend import add_spent, spent_in_windows, window_start
from ledger.transitions import (
    PolicyContext,
    apply_observation,
    lock_behavior,
    note_spend,
    record_results,
)

log = structlog.get_logger("ledger.ingest")

BATCH = 200  # deliveries per pass
_INT32_MAX: Final = 2**31 - 1
# On SQLite while the receiver is busy: shorter write transactions, so the receiver's group
# commits (SQLite has one writer at a time) never wait long for the processor's. PostgreSQL
# locks rows, so there the processor keeps its full batches.
BUSY_BATCH = 50
LOOKUP_TTL = 5.0
# Caught up while deliveries keep arriving: rest this long, so the next pass takes a batch
# rather than one delivery at a time (a delivery waits at most this long more to be counted).
GATHER_REST = 0.05


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
            rows = session.exec(
                select(BehaviorRow.name, BehaviorRow.definition, BehaviorRow.learned_key_name)
            ).all()
        self._names = {name for name, _, _ in rows}
        # The file's key_name, else the one ``ledger keys check`` learned from the key itself.
        keys = ((name, (d or {}).get("key_name") or learned) for name, d, learned in rows)
        self._keys = {key: name for name, key in keys if key}
        self._loaded_at = time.monotonic()

    def prefetch_runs(self, run_ids: set[str]) -> None:
        """Look up the behaviors of ``run_ids`` in one query, for the batch about to be
        attributed (``by_run_id`` answers from it; ``forget_runs`` drops it)."""
        wanted = [r for r in run_ids if r.startswith("run-")]
        self._runs = dict.fromkeys(wanted)
        if not wanted:
            return
        marks = ", ".join([_placeholder(self.db)] * len(wanted))
        for name, run_id in _plain_read(self.db, _RUNS_SQL.format(marks=marks), tuple(wanted)):
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
    fetched: int = 0  # deliveries taken from the queue (a full batch: more are waiting)
    deliveries: int = 0
    spans: int = 0
    generations: int = 0
    attributed: int = 0
    unattributed: int = 0
    results: int = 0
    by_behavior: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def process_pending(
    db: Database, lookup: DbLookup, now: datetime, ctx: PolicyContext, limit: int = BATCH
) -> ProcessStats:
    """Process up to ``limit`` acknowledged deliveries, oldest first. Returns what was done."""
    stats = ProcessStats()
    # A plain read (on SQLite no ``BEGIN IMMEDIATE``: it neither waits for the receiver's
    # commits nor holds them up). Reading is not taking: the apply transaction's DELETE …
    # RETURNING is what claims a delivery.
    received_at = _received_at_reader(db)
    fetched = [
        (delivery_id, received_at(when), text)
        for delivery_id, when, text in _plain_read(db, _PENDING_SQL.format(limit=int(limit)))
    ]
    if not fetched:
        return stats
    stats.fetched = len(fetched)
    deliveries = [d for d in (_read(db, *row) for row in fetched) if d is not None]
    lookup.prefetch_runs(
        {
            hint
            for d in deliveries
            for trace in d.traces
            for g in trace.generations
            for hint in (g.run_id_hint, g.session_id)
            if hint
        }
    )
    try:
        for delivery in deliveries:
            for trace in delivery.traces:
                trace.placed = [(attribute(gen, lookup), gen) for gen in trace.generations]
    finally:
        lookup.forget_runs()
    # The whole batch in one transaction: lookups, spans, spend and gate results of every
    # delivery at once. Strictly in id order, so a span delivered twice is stored, and counted,
    # as its first delivery says.
    try:
        _apply_deliveries(db, deliveries, now, ctx, stats)
        return stats
    except DBAPIError as exc:
        if not is_bad_data(exc):
            raise  # the database failed: retried on the next pass
        reason: BaseException = exc
    except Exception as exc:  # a delivery the batch cannot take: found below, one at a time
        reason = exc
    log.info(
        "a batch of broadcast deliveries failed; applying them one at a time",
        deliveries=len(deliveries),
        error=f"{type(reason).__name__}: {str(getattr(reason, 'orig', reason))[:200]}",
    )
    # Deliveries no behavior claims have no effects: each run of them is stored together, in
    # one transaction; the others one transaction each.
    idle: list[_Delivery] = []
    for delivery in deliveries:
        if not delivery.behaviors():
            idle.append(delivery)
            continue
        if idle:
            _store_idle(db, idle, now, stats)
            idle = []
        _apply_delivery(db, delivery, now, ctx, stats)
    if idle:
        _store_idle(db, idle, now, stats)
    return stats


_RUNS_SQL: Final = (
    "SELECT behavior.name, run.id FROM run JOIN behavior ON run.behavior_id = behavior.id"
    " WHERE run.id IN ({marks})"
)
_WEBHOOK_PENDING_SQL: Final = (
    "SELECT id, source, event, behavior_id FROM webhook_event WHERE processed_at IS NULL"
    " ORDER BY id LIMIT {limit}"
)
_PENDING_SQL: Final = (
    "SELECT id, received_at, spans FROM ingest_delivery WHERE set_aside IS NULL"
    " ORDER BY id LIMIT {limit}"
)


def _plain_read(db: Database, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql`` read on the driver's own connection, outside any transaction SQLAlchemy
    begins: on SQLite no ``BEGIN IMMEDIATE``, so it never waits for, nor holds up, a writer.
    ``sql`` uses the driver's placeholders (``_placeholder``)."""
    with db.engine.connect() as conn:
        dbapi: Any = conn.connection.driver_connection
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()


def _placeholder(db: Database) -> str:
    return "?" if db.engine.dialect.paramstyle == "qmark" else "%s"


def _received_at_reader(db: Database) -> Callable[[Any], Any]:
    """``ingest_delivery.received_at`` as the driver returns it → an aware datetime (the
    column type's own result processing)."""
    dialect = db.engine.dialect
    process = _DELIVERY.c.received_at.type.dialect_impl(dialect).result_processor(dialect, None)
    return process if process is not None else (lambda value: value)


_WAITING_SQL: Final = (
    "SELECT coalesce(sum(span_count), 0) - coalesce((SELECT sum(span_count) FROM"
    " ingest_delivery WHERE set_aside IS NOT NULL), 0) FROM ingest_delivery"
)


def waiting_spans(db: Database) -> int:
    """Spans acknowledged and not yet processed: every stored delivery but the set-aside ones
    (read from the rows' leading columns and a partial index: the delivery text is not). A
    plain read on the driver's connection: on SQLite no ``BEGIN IMMEDIATE``, so it never waits
    for, nor holds up, a writer."""
    with db.engine.connect() as conn:
        dbapi: Any = conn.connection.driver_connection
        cursor = dbapi.cursor()
        try:
            cursor.execute(_WAITING_SQL)
            return int(cursor.fetchone()[0])
        finally:
            cursor.close()


def _apply_delivery(
    db: Database, delivery: _Delivery, now: datetime, ctx: PolicyContext, stats: ProcessStats
) -> None:
    try:
        _apply_deliveries(db, [delivery], now, ctx, stats)
    except DBAPIError as exc:
        if not is_bad_data(exc):
            raise  # the database failed: retried on the next pass
        _set_aside(db, delivery.id, "rejected", exc)
        return
    except SQLAlchemyError as exc:
        if not isinstance(exc, StatementError):
            raise  # e.g. no pooled connection in time: retried on the next pass
        _keep_as_error(db, delivery, now, stats, exc)
        return
    except Exception as exc:
        _keep_as_error(db, delivery, now, stats, exc)


def _keep_as_error(
    db: Database, delivery: _Delivery, now: datetime, stats: ProcessStats, exc: BaseException
) -> None:
    log.error(
        "applying a broadcast delivery failed; its spans are kept, marked error",
        delivery=delivery.id,
        exc_info=exc,
    )
    delivery.label_all("error")
    _store_idle(db, [delivery], now, stats, error=exc)


_DELIVERY: Final[Table] = IngestDelivery.__table__  # type: ignore[attr-defined]
_SPAN: Final[Table] = IngestedSpan.__table__  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Trace:
    """The spans of one trace in a delivery, its generations and where each was placed."""

    entries: list[list[Any]]
    generations: list[Generation]
    placed: list[tuple[Attribution, Generation]] = field(default_factory=list)
    label: str | None = None  # set instead of attribution: invalid / error

    def mark(self) -> tuple[str | None, str | None, str]:
        """(behavior, run id, label) its span rows are stored with."""
        if self.label is not None:
            return None, None, self.label
        first = next((a for a, _ in self.placed if a.behavior is not None), None)
        if first is not None:
            return first.behavior, first.run_id, str(first.rule)
        return None, None, "unattributed" if self.placed else "no_generation"


@dataclass(slots=True)
class _Delivery:
    """An acknowledged delivery read back: its stored entries grouped by trace."""

    id: int
    received_at: datetime
    entries: list[list[Any]]
    traces: list[_Trace]

    def behaviors(self) -> set[str]:
        return {
            a.behavior
            for trace in self.traces
            if trace.label is None
            for a, _ in trace.placed
            if a.behavior is not None
        }

    def label_all(self, label: str) -> None:
        for trace in self.traces:
            trace.label = label

    def span_rows(self, now: datetime, behavior_ids: Mapping[str, int]) -> list[dict[str, Any]]:
        generations = {
            (gen.trace_id, gen.span_id): gen for trace in self.traces for gen in trace.generations
        }
        rows: list[dict[str, Any]] = []
        for trace in self.traces:
            behavior, run_id, label = trace.mark()
            for trace_id, span_id, name, data in trace.entries:
                gen = generations.get((trace_id, span_id))
                rows.append(
                    {
                        "trace_id": trace_id,
                        "span_id": span_id,
                        "name": span_name(name),
                        "source": SOURCE_BROADCAST,
                        "data": data,
                        "received_at": self.received_at,
                        "processed_at": now,
                        "behavior_id": behavior_ids[behavior] if behavior else None,
                        "run_id": run_id,
                        "attribution": label,
                        "cost_usd": None if gen is None or gen.cost is None else float(gen.cost),
                        "prompt_tokens": None if gen is None else _token_count(gen.input_tokens),
                        "completion_tokens": (
                            None if gen is None else _token_count(gen.output_tokens)
                        ),
                    }
                )
        return rows


def _token_count(value: int | None) -> int | None:
    """A token count as the INTEGER column holds it; a negative or absurd one is not stored
    (the span's ``data`` keeps what was sent)."""
    return value if value is not None and 0 <= value <= _INT32_MAX else None


def _read(db: Database, delivery_id: int, received_at: datetime, text: str) -> _Delivery | None:
    """A stored delivery's traces and generations: a request stored as it came is decoded by
    the walker, a stored span list parsed. A trace whose spans cannot be read is kept with its
    spans marked ``invalid``; a delivery that cannot be read at all is set aside."""
    by_trace: dict[str, list[tuple[list[Any], SpanRecord | None]]] = defaultdict(list)
    try:
        if text[:1] == "{":
            records = spans_from_stored_request(text)
            entries = [[r.trace_id, r.span_id, r.name, span_data(r)] for r in records]
            pairs: list[tuple[list[Any], SpanRecord | None]] = list(
                zip(entries, records, strict=True)
            )
        else:
            entries = orjson.loads(text)
            if not isinstance(entries, list) or not all(map(_is_entry, entries)):
                raise ValueError("not a list of [trace_id, span_id, name, data] entries")
            pairs = [(entry, None) for entry in entries]
        seen: set[tuple[str, str]] = set()
        kept: list[list[Any]] = []
        for entry, record in pairs:
            key = (entry[0], entry[1])
            if key in seen:
                continue  # a span repeated within the delivery counts once
            seen.add(key)
            entry[3] = mask_span_content(entry[3])  # stored without the keys in its text
            kept.append(entry)
            by_trace[entry[0]].append((entry, record))
        entries = kept
    except Exception as exc:
        _set_aside(db, delivery_id, "invalid", exc)
        return None
    delivery = _Delivery(delivery_id, received_at, entries, [])
    for trace_pairs in by_trace.values():
        trace = _Trace([entry for entry, _ in trace_pairs], [])
        try:
            spans = [
                record if record is not None else span_from_data(e[0], e[1], e[3])
                for e, record in trace_pairs
            ]
            trace.generations = extract_generations(spans)
        except Exception as exc:
            log.error(
                "a stored broadcast trace cannot be read; its spans are kept, marked invalid",
                delivery=delivery_id,
                trace_id=str(trace.entries[0][0])[:32],
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )
            trace.label = "invalid"
        delivery.traces.append(trace)
    return delivery


def _is_entry(entry: Any) -> bool:
    return (
        type(entry) is list
        and len(entry) == 4
        and type(entry[0]) is str
        and len(entry[0]) <= 32
        and type(entry[1]) is str
        and len(entry[1]) <= 16
        and type(entry[2]) is str
        and type(entry[3]) is dict
    )


def _set_aside(db: Database, delivery_id: int, label: str, exc: BaseException) -> None:
    log.error(
        "a broadcast delivery cannot be stored; set aside (it stays in ingest_delivery)",
        delivery=delivery_id,
        reason=label,
        error=f"{type(exc).__name__}: {str(getattr(exc, 'orig', exc))[:200]}",
    )
    with db.transaction() as session:
        session.execute(
            update(_DELIVERY).where(_DELIVERY.c.id == delivery_id).values(set_aside=label)
        )


_SPAN_COLUMNS: Final = (
    "trace_id",
    "span_id",
    "name",
    "source",
    "data",
    "received_at",
    "processed_at",
    "behavior_id",
    "run_id",
    "attribution",
    "cost_usd",
    "prompt_tokens",
    "completion_tokens",
)


_WIDTH: Final = len(_SPAN_COLUMNS)
_TIME_COLUMNS: Final = frozenset(("received_at", "processed_at"))
_INSERT_SPANS: Final = (
    f"INSERT INTO ingested_span ({', '.join(_SPAN_COLUMNS)}) VALUES {{rows}}"  # noqa: S608
    " ON CONFLICT (trace_id, span_id) DO NOTHING RETURNING trace_id, span_id"
)

# PostgreSQL: the rows as one JSON document, read back by ``json_to_recordset`` (text columns
# as text, so the insert's assignment cast refuses an over-long value as a plain insert does).
_PG_RECORD_TYPES: Final = {
    "data": "json",
    "received_at": "timestamptz",
    "processed_at": "timestamptz",
    "behavior_id": "integer",
    "cost_usd": "float8",
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
}
_COLUMN_LIST: Final = ", ".join(_SPAN_COLUMNS)
_RECORD_TYPES: Final = ", ".join(f"{c} {_PG_RECORD_TYPES.get(c, 'text')}" for c in _SPAN_COLUMNS)
_INSERT_SPANS_RECORDSET: Final = (
    f"INSERT INTO ingested_span ({_COLUMN_LIST}) SELECT {_COLUMN_LIST}"  # noqa: S608
    f" FROM json_to_recordset(%s::json) AS r({_RECORD_TYPES})"
    " ON CONFLICT (trace_id, span_id) DO NOTHING RETURNING trace_id, span_id"
)


def _span_insert(session: Session) -> DriverInsert:
    dialect = session.get_bind().dialect
    return driver_insert(_SPAN, _SPAN_COLUMNS, ("trace_id", "span_id"), dialect)


def _by_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["trace_id"], row["span_id"]


def _insert_spans(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert span rows, skipping any already stored: one driver-level ``executemany``, in key
    order (two replicas inserting the same spans lock them in the same order)."""
    if not rows:
        return
    insert = _span_insert(session)
    when = insert.converter("received_at")  # both time columns are UTCDateTime
    converted: dict[datetime, Any] = {}
    params = []
    for row in sorted(rows, key=_by_key):
        times = {}
        for key in ("received_at", "processed_at"):
            value = row[key]
            if value not in converted:
                converted[value] = when(value)
            times[key] = converted[value]
        params.append({**row, **times, "data": orjson.dumps(row["data"]).decode()})
    insert.execute(session.connection(), insert.params(params))


def _insert_new_spans(session: Session, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Insert span rows, skipping any already stored; the (trace id, span id) of those this
    insert stored (a redelivered span is not among them).

    Driver-level, in key order, ``data`` serialised by orjson: on PostgreSQL every row in one
    JSON parameter (``json_to_recordset``), on SQLite a multi-row ``VALUES`` with each distinct
    time converted once. SQLAlchemy's executemany bound every value of every row through its
    type and ``data`` through the stdlib json encoder; psycopg re-parses a statement with
    thousands of placeholders, and escapes JSON text in arrays, on every execute (see the
    module docstring's table)."""
    if not rows:
        return set()
    ordered = sorted(rows, key=_by_key)
    conn = session.connection()
    driver: Any = conn.connection.driver_connection
    if not isinstance(driver, sqlite3.Connection):
        document = orjson.dumps(ordered).decode()
        return {(t, s) for t, s in conn.exec_driver_sql(_INSERT_SPANS_RECORDSET, (document,))}
    when = _span_insert(session).converter("received_at")  # both time columns: UTCDateTime
    converted: dict[datetime, Any] = {}
    values: list[Any] = []
    for row in ordered:
        for name in _SPAN_COLUMNS:
            value = row[name]
            if name == "data":
                value = orjson.dumps(value).decode()
            elif name in _TIME_COLUMNS:
                found = converted.get(value)
                if found is None:
                    found = converted[value] = when(value)
                value = found
            values.append(value)
    new: set[tuple[str, str]] = set()
    row_sql = "(" + ", ".join(["?"] * _WIDTH) + ")"
    step = max(1, driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _WIDTH) * _WIDTH
    for start in range(0, len(values), step):
        chunk = values[start : start + step]
        sql = _INSERT_SPANS.format(rows=", ".join([row_sql] * (len(chunk) // _WIDTH)))
        new.update((t, s) for t, s in conn.exec_driver_sql(sql, tuple(chunk)))
    return new


def _store_idle(
    db: Database,
    deliveries: list[_Delivery],
    now: datetime,
    stats: ProcessStats,
    error: BaseException | None = None,
) -> None:
    """Deliveries without effects: their spans stored with their marks, the deliveries deleted,
    in one transaction (a replica that took some first keeps them). A delivery the database
    refuses is then tried alone, and set aside if it is refused again."""
    try:
        with db.transaction() as session:
            ids = [d.id for d in deliveries]
            taken = set(
                session.execute(
                    delete(_DELIVERY).where(_DELIVERY.c.id.in_(ids)).returning(_DELIVERY.c.id)
                ).scalars()
            )
            rows = [row for d in deliveries if d.id in taken for row in d.span_rows(now, {})]
            _insert_spans(session, rows)
    except Exception as exc:
        if isinstance(exc, SQLAlchemyError) and not is_bad_data(exc):
            raise  # the database failed: retried on the next pass
        # Bad data (the database refused a row, or it could not be made): find the delivery.
        if len(deliveries) == 1:
            _set_aside(db, deliveries[0].id, "rejected" if error is None else "error", exc)
            return
        for delivery in deliveries:
            _store_idle(db, [delivery], now, stats, error)
        return
    for delivery in deliveries:
        if delivery.id not in taken:
            continue
        stats.deliveries += 1
        stats.spans += len(delivery.entries)
        if error is not None:
            continue  # kept as ``error``: its generations were not applied
        for trace in delivery.traces:
            stats.generations += len(trace.placed)
            stats.unattributed += len(trace.placed)


def _apply_deliveries(
    db: Database,
    deliveries: list[_Delivery],
    now: datetime,
    ctx: PolicyContext,
    stats: ProcessStats,
) -> None:
    """Deliveries' spans stored and their effects applied, and the deliveries deleted — one
    transaction, so a crash never applies a delivery twice nor loses it. A span stored before
    (a redelivery) has no effects again; a delivery a replica took first is left to it.

    Set-based: the behaviors are locked in one statement (in id order, as every writer
    does), the spans inserted in one, the runs and their recorded gates read in one each, and
    the spend added to each budget window once, whatever the number of deliveries."""
    names = sorted({name for delivery in deliveries for name in delivery.behaviors()})
    results = 0
    with db.transaction() as session:
        locked = _lock_behaviors(session, names)
        taken = set(
            session.execute(
                delete(_DELIVERY)
                .where(_DELIVERY.c.id.in_([d.id for d in deliveries]))
                .returning(_DELIVERY.c.id)
            ).scalars()
        )
        mine = [d for d in deliveries if d.id in taken]
        ids = {name: row.id for name, row in locked.items() if row.id is not None}
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for delivery in mine:  # a span in two deliveries of the batch: its first one's row
            for row in delivery.span_rows(now, ids):
                if _by_key(row) not in seen:
                    seen.add(_by_key(row))
                    rows.append(row)
        new = _insert_new_spans(session, rows)
        effects: list[tuple[BehaviorRow, Generation, Attribution]] = []
        for delivery in mine:
            for trace in delivery.traces:
                for attribution, gen in trace.placed:
                    key = (gen.trace_id, gen.span_id)
                    if attribution.behavior is None or key not in new:
                        continue
                    new.discard(key)  # once, even if two generations share a span
                    effects.append((locked[attribution.behavior], gen, attribution))
        if effects:
            results = _apply_effects(session, effects, now, ctx)
    stats.results += results
    for delivery in mine:
        stats.deliveries += 1
        stats.spans += len(delivery.entries)
        for trace in delivery.traces:
            for attribution, _gen in trace.placed:
                stats.generations += 1
                if attribution.behavior is None:
                    stats.unattributed += 1
                else:
                    stats.attributed += 1
                    stats.by_behavior[attribution.behavior] += 1


def _lock_behaviors(session: Session, names: list[str]) -> dict[str, BehaviorRow]:
    """The behaviors named, locked for the rest of the transaction in id order — the order of
    every other writer that locks several (claims, ``transitions.lock_behaviors``), so that
    no two transactions wait on each other. Raises ``NotFoundError`` when one is not
    registered."""
    if not names:
        return {}
    rows = session.exec(
        select(BehaviorRow)
        .where(col(BehaviorRow.name).in_(names))
        .order_by(col(BehaviorRow.id))
        .with_for_update()
    ).all()
    locked = {row.name: row for row in rows}
    missing = [name for name in names if name not in locked]
    if missing:
        raise NotFoundError(f"behavior {missing[0]!r} is not registered (see `ledger status`)")
    return locked


class _SpendTally:
    """Spend of one transaction's generations, counted in order in memory and added to each
    budget window once at the end (``flush``)."""

    def __init__(self, session: Session, rows: list[BehaviorRow], now: datetime) -> None:
        self.starts = {row.id or 0: window_start(_reset(row), now) for row in rows}
        self.spent = spent_in_windows(session, self.starts.items())
        self.added: dict[tuple[int, datetime], float] = defaultdict(float)

    def count(
        self,
        session: Session,
        row: BehaviorRow,
        run: Run | None,
        cost: float,
        now: datetime,
        ctx: PolicyContext,
    ) -> list[GateResult]:
        """Count one generation's ``cost``; a ``spend_cap`` result when it took the window past
        the behavior's budget (for a daemon run, only what broadcast adds beyond the runner's
        own figure counts)."""
        delta = cost
        if run is not None:
            previous = max(run.cost_usd or 0.0, run.broadcast_cost_usd or 0.0)
            run.broadcast_cost_usd = (run.broadcast_cost_usd or 0.0) + cost
            delta = max(run.cost_usd or 0.0, run.broadcast_cost_usd) - previous
            session.add(run)
        if delta <= 0:
            return []
        # Counted with or without a budget (without one, in the calendar month).
        key = (row.id or 0, self.starts[row.id or 0])
        before = self.spent[key]
        after = self.spent[key] = before + delta
        self.added[key] += delta
        note_spend(session, row, before=before, after=after, now=now, ctx=ctx)
        budget = _budget(row)
        if budget and before <= budget["usd"] < after:
            return [
                GateResult(
                    Gate.SPEND_CAP,
                    Outcome.FAIL,
                    True,
                    {
                        "source": "broadcast",
                        "reason": f"spend reported by broadcast took the {budget['reset']} window "
                        f"to ${after:.6f}, over its ${budget['usd']} budget",
                        "window_start": key[1].isoformat(),
                        "spent_usd": after,
                        "budget_usd": budget["usd"],
                    },
                )
            ]
        return []

    def flush(self, session: Session, now: datetime) -> None:
        add_spent(session, self.added, now)


def _reset(row: BehaviorRow) -> str | None:
    budget = _budget(row)
    return budget["reset"] if budget else None


def _budget(row: BehaviorRow) -> dict[str, Any] | None:
    budget: dict[str, Any] | None = (row.definition or {}).get("budget")
    return budget


def _apply_effects(
    session: Session,
    effects: list[tuple[BehaviorRow, Generation, Attribution]],
    now: datetime,
    ctx: PolicyContext,
) -> int:
    """Spend and gate results of attributed generations, in order (inside the caller's
    transaction, the behaviors locked). Returns how many gate results were recorded."""
    run_ids = {attribution.run_id for _, _, attribution in effects if attribution.run_id}
    runs: dict[str, Run] = {}
    already: dict[str, set[str]] = defaultdict(set)
    if run_ids:
        runs = {run.id: run for run in session.exec(select(Run).where(col(Run.id).in_(run_ids)))}
        for run_id, gate in session.execute(
            select(GateResultRow.run_id, GateResultRow.gate).where(
                col(GateResultRow.run_id).in_(runs)
            )
        ):
            already[run_id].add(gate)
    tally = _SpendTally(session, list({id(row): row for row, _, _ in effects}.values()), now)
    count = 0
    for row, gen, attribution in effects:
        run = runs.get(attribution.run_id) if attribution.run_id else None
        results: list[GateResult] = []
        if gen.cost is not None:
            results.extend(tally.count(session, row, run, float(gen.cost), now, ctx))
        seen = already[run.id] if run is not None else set()
        for signal in gen.signals:
            if str(signal.gate) in seen:
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
            continue
        stored = record_results(
            session,
            row,
            results,
            now=now,
            source="broadcast",
            run_id=run.id if run is not None else None,
        )
        if run is not None:  # one result per (run, gate): a later call of the run adds none
            seen.update(str(result.gate) for result in stored)
        for result in stored:
            apply_observation(session, row, Observation.result(now, result), now=now, ctx=ctx)
        count += len(stored)
    tally.flush(session, now)
    return count


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
    # A plain read, like the deliveries' (the conditional UPDATE below claims each event).
    pending = _plain_read(db, _WEBHOOK_PENDING_SQL.format(limit=int(limit)))
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

    Keeping up comes first: while a pass finds a full batch (a backlog), the next starts at
    once, so "acknowledged" soon means "counted" (the receiver refuses deliveries with 429 once
    the backlog passes its bound, ``LEDGER_INGEST_MAX_BACKLOG_SPANS``, rather than let it
    grow). Once caught up while the receiver is busy (``ingest_busy``), it rests
    ``GATHER_REST`` so the next pass takes a batch, and on SQLite takes ``BUSY_BATCH``
    deliveries at a time (short write transactions beside the receiver's group commits).
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        ctx: PolicyContext,
        idle: float = 0.5,
        sources: Mapping[str, WebhookSource] | None = None,
        ingest_busy: Callable[[], bool] | None = None,
        backlog: Backlog | None = None,
    ) -> None:
        self.ingest_busy = ingest_busy
        self.backlog = backlog
        self.sources = dict(sources or {})
        self.db = db
        self.clock = clock
        self.ctx = ctx
        self.idle = idle
        self.lookup = DbLookup(db)
        self.wake = asyncio.Event()
        self._one_writer = db.engine.dialect.name == "sqlite"

    def problem(self) -> str | None:
        """Why deliveries are not being applied (for /readyz): in the daemon's own thread,
        nothing this loop can tell (a failed pass is logged and retried)."""
        return None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            busy = self.ingest_busy is not None and self.ingest_busy()
            limit = BUSY_BATCH if busy and self._one_writer else BATCH
            try:
                stats = await asyncio.to_thread(
                    process_pending,
                    self.db,
                    self.lookup,
                    self.clock.now(),
                    self.ctx,
                    limit,
                )
                if self.backlog is not None and self.backlog.limit:
                    self.backlog.resync(await asyncio.to_thread(waiting_spans, self.db))
                events = await asyncio.to_thread(
                    process_webhook_events, self.db, self.clock.now(), self.ctx, self.sources
                )
            except Exception:
                log.exception("processing broadcast spans or webhook events failed; retrying")
                stats, events = ProcessStats(), 0
            if stats.fetched >= limit:
                continue  # a backlog: on with the next batch
            if stats.fetched or events or busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=GATHER_REST)
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.idle)
