"""The outbox: rows written in the same transaction as a state change, delivered with retries.

Steps are functions, the loop is thin (healthchecks' ``sendalerts`` model):

- ``enqueue`` (in ``ledger.outbox.enqueue``, the write side) adds a row inside the caller's
  transaction (a duplicate ``dedup_key`` is a no-op);
- ``claim_one`` takes the most urgent due row with a conditional ``UPDATE … WHERE status =
  'pending'`` checked by row count, recording the attempt and a lease *before* anything is sent
  (``FOR UPDATE SKIP LOCKED`` narrows the pick on PostgreSQL; SQLite serializes writers);
- ``dispatch_one`` claims (one transaction), delivers through the handler for the row's kind
  (outside any transaction), then records the outcome (another transaction);
- ``Dispatcher`` runs ``dispatch_one`` in a few workers until told to stop.

Handlers say what went wrong by raising ``DeliveryError`` (``permanent``, ``retry_after``,
``attributable``); anything else they raise is treated as a transient failure.

Priority: kinds have a rank (``KIND_RANK``; lower is sooner, ``DEFAULT_RANK`` otherwise). Among
due rows the lowest rank is claimed first, then the oldest due time, so a demotion alert
(``alert.demotion``) overtakes a backlog of Notion mirror writes. The rank is computed in SQL
from ``kind`` (a ``CASE``), so no column is needed.

Leases: a claimed row is ``in_flight`` until ``next_attempt_at`` (claim time + lease). If the
process dies before recording the outcome, the lease expires and the row is claimed again
(at-least-once delivery: receivers deduplicate on the ids we send). A row that keeps crashing
the deliverer still goes dead after ``max_attempts`` claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
import structlog
from sqlalchemy import case, update
from sqlmodel import Session, col, select

from ledger.clock import Clock
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.errors import ConflictError, LedgerError, NotFoundError
from ledger.http import backoff_delay
from ledger.logging import mask_text
from ledger.outbox.enqueue import (
    DEAD,
    DELIVERED,
    IN_FLIGHT,
    KIND_ALERT,
    KIND_DEMOTION_ALERT,
    PENDING,
)

__all__ = [
    "DEFAULT_RANK",
    "KIND_RANK",
    "DeadLetterHook",
    "DeliveryDeferred",
    "DeliveryError",
    "Dispatcher",
    "Handler",
    "OutboxItem",
    "RetryPolicy",
    "claim_one",
    "count_by_status",
    "dead_letters",
    "dispatch_one",
    "record_delivered",
    "record_failure",
    "requeue",
    "retry_decision",
]

log = structlog.get_logger("ledger.outbox")

# Lower is claimed sooner among due rows. Kinds not listed get DEFAULT_RANK.
KIND_RANK: Final[Mapping[str, int]] = {KIND_DEMOTION_ALERT: 0, KIND_ALERT: 1}
DEFAULT_RANK: Final = 5

_MAX_ERROR_CHARS: Final = 4000


class DeliveryError(LedgerError):
    """A delivery failed; the attributes carry the retry decision (never parse the message).

    ``permanent``: retrying cannot help (the row goes dead at once). ``retry_after``: the
    receiver's hint in seconds, honoured instead of the backoff. ``attributable``: the failure is
    the behavior's own doing (e.g. a target rejected its output) — a dead-letter hook may record
    a gate result for it. ``status_code``: the HTTP status, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        attributable: bool = False,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.attributable = attributable
        self.status_code = status_code


class DeliveryDeferred(DeliveryError):
    """Not attempted: the row stays pending until ``retry_after`` seconds from now, and the
    claim does not count as an attempt (e.g. a destination that is not configured yet)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """What a handler receives: a claimed row, detached from any session. ``attempts``
    counts this attempt."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    behavior_id: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: OutboxRow) -> OutboxItem:
        assert row.id is not None  # noqa: S101 — a claimed row was flushed
        return cls(
            row.id, row.kind, dict(row.payload), row.attempts, row.behavior_id, row.created_at
        )

    def log_context(self) -> dict[str, Any]:
        context: dict[str, Any] = {"outbox_id": self.id, "kind": self.kind}
        for key in ("behavior", "run_id"):
            if key in self.payload:
                context[key] = self.payload[key]
        return context


Handler = Callable[[OutboxItem], Awaitable[None]]
# Called inside the transaction that marks a row dead (e.g. to record an attributable
# output_check result from ``error.attributable``).
DeadLetterHook = Callable[[Session, OutboxItem, DeliveryError], None]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again. Backoff doubles from ``base_delay`` up to ``max_delay`` seconds, with
    "equal jitter" (half fixed, half random) so that retries after an outage spread out."""

    max_attempts: int = 10
    base_delay: float = 10.0
    max_delay: float = 3600.0
    max_retry_after: float = 86_400.0
    lease: timedelta = timedelta(minutes=5)

    def backoff(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        return backoff_delay(
            attempts, base=self.base_delay, cap=self.max_delay, jitter=0.5, rng=rng
        )


def retry_decision(
    attempts: int, error: DeliveryError, now: datetime, policy: RetryPolicy, rng: random.Random
) -> datetime | None:
    """When to try a row again after ``error`` on its ``attempts``-th attempt; None = dead."""
    if isinstance(error, DeliveryDeferred):
        return now + timedelta(seconds=max(0.0, error.retry_after or 0.0))
    if error.permanent or attempts >= policy.max_attempts:
        return None
    if error.retry_after is not None:
        delay = min(max(error.retry_after, 0.0), policy.max_retry_after)
    else:
        delay = policy.backoff(attempts, rng)
    return now + timedelta(seconds=delay)


# --------------------------------------------------------------------------------------------
# Steps (each runs inside the caller's transaction: add/flush/execute, never commit)
# --------------------------------------------------------------------------------------------


def _rank() -> Any:
    return case(dict(KIND_RANK), value=col(OutboxRow.kind), else_=DEFAULT_RANK)


def _pick(session: Session, now: datetime, status: str) -> tuple[int, int] | None:
    """(id, attempts) of the most urgent claimable row in ``status``, or None."""
    stmt = sa.select(col(OutboxRow.id), col(OutboxRow.attempts))
    if status == PENDING:
        # Through the partial index on pending rows' next_attempt_at: the status is written as a
        # literal so that it visibly implies the index predicate (PostgreSQL's generic plans).
        stmt = stmt.where(
            col(OutboxRow.status) == sa.literal_column(f"'{PENDING}'"),
            col(OutboxRow.next_attempt_at) <= now,
        ).order_by(_rank(), col(OutboxRow.next_attempt_at), col(OutboxRow.id))
    else:
        # Expired leases: the deliverer died or hung. Rare, so no index of their own.
        stmt = stmt.where(
            col(OutboxRow.status) == IN_FLIGHT, col(OutboxRow.next_attempt_at) < now
        ).order_by(col(OutboxRow.next_attempt_at), col(OutboxRow.id))
    stmt = stmt.limit(1)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    found = session.execute(stmt).first()
    return None if found is None else (int(found[0]), int(found[1]))


def claim_one(
    session: Session, now: datetime, lease: timedelta, *, tries: int = 5
) -> OutboxRow | None:
    """Claim the most urgent due row in the caller's open transaction, or return None.

    Due means pending with ``next_attempt_at <= now``, or in flight with an expired lease. The
    claim is a compare-and-set (status and attempts as read) checked by row count, so two
    dispatchers can never both win; it sets ``in_flight``, increments ``attempts`` and sets the
    lease (``next_attempt_at = now + lease``). Commit before delivering.
    """
    for _ in range(tries):
        picked = None
        status = PENDING
        for status in (PENDING, IN_FLIGHT):
            picked = _pick(session, now, status)
            if picked is not None:
                break
        if picked is None:
            return None
        row_id, attempts = picked
        conditions = [
            col(OutboxRow.id) == row_id,
            col(OutboxRow.status) == status,
            col(OutboxRow.attempts) == attempts,
        ]
        if status == IN_FLIGHT:
            conditions.append(col(OutboxRow.next_attempt_at) < now)
        result = session.exec(
            update(OutboxRow)
            .where(*conditions)
            .values(
                status=IN_FLIGHT,
                attempts=col(OutboxRow.attempts) + 1,
                next_attempt_at=now + lease,
            )
        )
        if result.rowcount == 1:
            return session.get(OutboxRow, row_id, populate_existing=True)
    return None


def _ours(item: OutboxItem) -> list[Any]:
    """The row is still the one we claimed: in flight and not re-claimed since (attempts)."""
    return [
        col(OutboxRow.id) == item.id,
        col(OutboxRow.status) == IN_FLIGHT,
        col(OutboxRow.attempts) == item.attempts,
    ]


def record_delivered(session: Session, item: OutboxItem, now: datetime) -> bool:
    """Mark a claimed row delivered. False if our lease was lost to another dispatcher."""
    result = session.exec(
        update(OutboxRow)
        .where(*_ours(item))
        .values(status=DELIVERED, delivered_at=now, last_error=None)
    )
    return result.rowcount == 1


def record_failure(
    session: Session,
    item: OutboxItem,
    error: DeliveryError,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    on_dead: DeadLetterHook | None = None,
) -> str | None:
    """Record a failed attempt: back to pending at the retry time, or dead. Returns the new
    status, or None if our lease was lost. ``on_dead`` runs in this transaction."""
    retry_at = retry_decision(item.attempts, error, now, policy, rng)
    message = _error_text(error)
    if retry_at is None:
        values: dict[str, Any] = {"status": DEAD, "last_error": message}
    else:
        values = {"status": PENDING, "next_attempt_at": retry_at, "last_error": message}
        if isinstance(error, DeliveryDeferred):
            values["attempts"] = item.attempts - 1  # deferred: not an attempt
    result = session.exec(update(OutboxRow).where(*_ours(item)).values(**values))
    if result.rowcount != 1:
        return None
    if retry_at is None and on_dead is not None:
        on_dead(session, item, error)
    return str(values["status"])


def _error_text(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return mask_text(text)[:_MAX_ERROR_CHARS]  # no secret value reaches the database


def dead_letters(session: Session, *, limit: int = 100) -> list[OutboxRow]:
    """Rows that will not be retried, newest first."""
    stmt = (
        select(OutboxRow)
        .where(col(OutboxRow.status) == DEAD)
        .order_by(col(OutboxRow.id).desc())
        .limit(limit)
    )
    return list(session.exec(stmt).all())


def count_by_status(session: Session) -> dict[str, int]:
    """How many rows are in each status (for /metrics and ``ledger status``)."""
    stmt = sa.select(col(OutboxRow.status), sa.func.count()).group_by(col(OutboxRow.status))
    return {str(status): int(n) for status, n in session.execute(stmt).all()}


def requeue(session: Session, row_id: int, now: datetime) -> OutboxRow:
    """Give a dead letter a fresh start (attempts reset, due now). Raises NotFoundError, or
    ConflictError if the row is not dead. ``last_error`` is kept until the next attempt."""
    result = session.exec(
        update(OutboxRow)
        .where(col(OutboxRow.id) == row_id, col(OutboxRow.status) == DEAD)
        .values(status=PENDING, attempts=0, next_attempt_at=now)
    )
    row = session.get(OutboxRow, row_id, populate_existing=True)
    if row is None:
        raise NotFoundError(f"outbox row {row_id} does not exist")
    if result.rowcount != 1:
        raise ConflictError(f"outbox row {row_id} is {row.status}, not dead: nothing to requeue")
    return row


# --------------------------------------------------------------------------------------------
# One delivery: claim → deliver → record
# --------------------------------------------------------------------------------------------


def _claim(db: Database, now: datetime, lease: timedelta) -> OutboxItem | None:
    with db.transaction() as session:
        row = claim_one(session, now, lease)
        return None if row is None else OutboxItem.from_row(row)


def _record(
    db: Database,
    item: OutboxItem,
    error: DeliveryError | None,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
    on_dead: DeadLetterHook | None,
) -> str | None:
    with db.transaction() as session:
        if error is None:
            return DELIVERED if record_delivered(session, item, now) else None
        return record_failure(session, item, error, now, policy, rng, on_dead)


async def dispatch_one(
    db: Database,
    handlers: Mapping[str, Handler],
    clock: Clock,
    *,
    policy: RetryPolicy | None = None,
    rng: random.Random | None = None,
    on_dead: DeadLetterHook | None = None,
) -> bool:
    """Deliver at most one due row. True if a row was claimed (whatever the outcome), False if
    nothing was due. Database work runs in a worker thread; the handler runs on the loop,
    outside any transaction. Database errors propagate (the loop backs off)."""
    policy = policy or RetryPolicy()
    rng = rng or random.Random()  # noqa: S311 — jitter, not security
    item = await asyncio.to_thread(_claim, db, clock.now(), policy.lease)
    if item is None:
        return False
    context = item.log_context()
    error: DeliveryError | None = None
    handler = handlers.get(item.kind)
    if item.attempts > policy.max_attempts:
        error = DeliveryError(
            f"gave up after {item.attempts - 1} attempts; the last did not finish "
            "(the deliverer crashed or hung past its lease)",
            permanent=True,
        )
    elif handler is None:
        error = DeliveryError(f"no handler for outbox kind {item.kind!r}", permanent=True)
    else:
        try:
            await handler(item)
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # a bug in a handler must not stop the dispatcher
            log.exception("outbox handler crashed", **context)
            error = DeliveryError(f"handler crashed: {type(exc).__name__}: {exc}")
    status = await asyncio.to_thread(_record, db, item, error, clock.now(), policy, rng, on_dead)
    if status is None:
        log.warning("outbox lease lost before the outcome was recorded", **context)
    elif error is None:
        log.info("outbox delivered", attempts=item.attempts, **context)
    elif status == DEAD:
        log.error("outbox dead letter", attempts=item.attempts, error=_error_text(error), **context)
    else:
        log.warning(
            "outbox delivery failed, will retry",
            attempts=item.attempts,
            error=_error_text(error),
            **context,
        )
    return True


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Dispatcher:
    """``concurrency`` workers looping over ``dispatch_one``; idle workers wait ``idle_wait``
    seconds or until ``wake()``. A lifespan calls ``start()`` and ``await stop()``."""

    db: Database
    handlers: Mapping[str, Handler]
    clock: Clock
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    on_dead: DeadLetterHook | None = None
    concurrency: int = 4
    idle_wait: float = 1.0
    error_wait: float = 5.0
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _stopping: bool = field(default=False, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)

    def start(self) -> None:
        if self._tasks:
            raise RuntimeError("the dispatcher is already running")
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._work(), name=f"outbox-dispatcher-{n}")
            for n in range(self.concurrency)
        ]

    def wake(self) -> None:
        """Tell idle workers there may be new rows (call after committing an enqueue)."""
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Let deliveries in progress finish (up to ``grace`` seconds), then cancel. A cancelled
        delivery stays in flight and is retried when its lease expires."""
        self._stopping = True
        self._wake.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _step(self) -> bool:
        return await dispatch_one(
            self.db,
            self.handlers,
            self.clock,
            policy=self.policy,
            rng=self.rng,
            on_dead=self.on_dead,
        )

    async def _work(self) -> None:
        while not self._stopping:
            wait = 0.0
            try:
                if not await self._step():
                    wait = self.idle_wait
            except Exception:
                log.exception("outbox dispatcher step failed; backing off")
                wait = self.error_wait
            if wait and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
