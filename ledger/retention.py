"""Retention: delete the rows that would otherwise grow forever once they are older than their
configured age — broadcast spans, deliveries set aside, delivered and discarded outbox rows,
processed webhook events — in short batches. Ledger entries, runs, gate results, approvals and
proposals are the history and are never pruned.

How a table is pruned: a walk over its primary key, ``batch_size`` rows at a time, each batch
one short transaction (``DELETE … WHERE id > :after AND id <= :last AND <old enough> AND
<prunable>``). A table's ids grow with its rows' creation time, so the walk stops at the first
batch holding a row created after the cutoff; rows older than the cutoff that must stay
(pending, in-flight or dead outbox rows, unprocessed events) are stepped over, not deleted.

Replicas need no coordination: each batch deletes by primary key, so two replicas (or ``ledger
prune`` beside the daemon) pruning at once delete each row once between them — the second finds
it gone — and a prune stopped half-way leaves nothing to recover. No lease to take, expire or
get stuck. The last prune of each table is recorded in ``retention_prune`` (when, the cutoff,
how many rows this process deleted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import ColumnElement, Table, delete, func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from ledger.config import Settings, WebhookSource
from ledger.db.models import IngestDelivery, IngestedSpan, OutboxRow, RetentionPrune, WebhookEvent
from ledger.db.session import Database
from ledger.outbox.enqueue import DELIVERED, DISCARDED

log = structlog.get_logger("ledger.retention")

_SPAN: Final[Table] = IngestedSpan.__table__  # type: ignore[attr-defined]  # SQLModel table
_DELIVERY: Final[Table] = IngestDelivery.__table__  # type: ignore[attr-defined]
_OUTBOX: Final[Table] = OutboxRow.__table__  # type: ignore[attr-defined]
_EVENT: Final[Table] = WebhookEvent.__table__  # type: ignore[attr-defined]
_PRUNE: Final[Table] = RetentionPrune.__table__  # type: ignore[attr-defined]

# Webhook schemes whose signature carries a timestamp: a request older than the tolerance is
# refused by its signature, so its stored event can go. GitHub signs no time; its stored event
# is the only thing that stops a captured request from being accepted again.
TIMESTAMPED_SCHEMES: Final = frozenset({"generic", "stripe"})


@dataclass(frozen=True, slots=True)
class Target:
    """One table to prune: ``created`` is the column that grows with its ids (the walk stops
    past the cutoff on it); ``prunable(cutoff)`` says which old rows may go."""

    name: str
    table: Table
    created: str
    max_age: timedelta
    prunable: Callable[[datetime], ColumnElement[bool]]


def targets(
    *,
    spans_days: int,
    outbox_days: int,
    webhook_events_days: int,
    webhook_sources: Mapping[str, WebhookSource],
) -> list[Target]:
    """The tables to prune and their rules (a retention of 0 days keeps the table whole)."""
    out: list[Target] = []
    if spans_days:
        age = timedelta(days=spans_days)
        out.append(Target("ingested_span", _SPAN, "received_at", age, lambda c: true()))
        out.append(
            Target(
                "ingest_delivery",
                _DELIVERY,
                "received_at",
                age,
                # Only deliveries set aside: one waiting for the processor is work, not history.
                lambda c: _DELIVERY.c.set_aside.is_not(None),
            )
        )
    if outbox_days:
        out.append(
            Target(
                "outbox",
                _OUTBOX,
                "created_at",
                timedelta(days=outbox_days),
                # Finished rows only, by when they finished: delivered, or discarded by an
                # operator (the ledger entry of the discard keeps who and why). Pending and
                # in-flight rows are work; dead rows wait for an operator.
                lambda c: (
                    ((_OUTBOX.c.status == DELIVERED) & (_OUTBOX.c.delivered_at < c))
                    | ((_OUTBOX.c.status == DISCARDED) & (_OUTBOX.c.discarded_at < c))
                ),
            )
        )
    timestamped = sorted(n for n, s in webhook_sources.items() if s.scheme in TIMESTAMPED_SCHEMES)
    if webhook_events_days and timestamped:
        out.append(
            Target(
                "webhook_event",
                _EVENT,
                "received_at",
                timedelta(days=webhook_events_days),
                lambda c: _EVENT.c.processed_at.is_not(None) & _EVENT.c.source.in_(timestamped),
            )
        )
    return out


def targets_from_settings(settings: Settings) -> list[Target]:
    return targets(
        spans_days=settings.retention_spans_days,
        outbox_days=settings.retention_outbox_days,
        webhook_events_days=settings.retention_webhook_events_days,
        webhook_sources=settings.webhook_sources,
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """One step of a walk: rows deleted (or that would be, on a dry run), the last id looked
    at, and whether the walk is over."""

    deleted: int
    last_id: int
    done: bool


def prune_batch(
    session: Session,
    target: Target,
    cutoff: datetime,
    after_id: int,
    batch_size: int,
    *,
    dry_run: bool = False,
) -> Batch:
    """Delete the prunable rows older than ``cutoff`` among the ``batch_size`` rows after
    ``after_id``. Runs in the caller's transaction (executes, never commits)."""
    table = target.table
    created = table.c[target.created]
    rows = session.execute(
        select(table.c.id, created)
        .where(table.c.id > after_id)
        .order_by(table.c.id)
        .limit(batch_size)
    ).all()
    if not rows:
        return Batch(0, after_id, True)
    last_id: int = rows[-1][0]
    past_cutoff = len(rows) < batch_size or any(when >= cutoff for _id, when in rows)
    where = (
        (table.c.id > after_id)
        & (table.c.id <= last_id)
        & (created < cutoff)
        & target.prunable(cutoff)
    )
    if dry_run:
        count = session.execute(select(func.count()).select_from(table).where(where)).scalar_one()
        return Batch(int(count), last_id, past_cutoff)
    result: Any = session.execute(delete(table).where(where))
    return Batch(int(result.rowcount), last_id, past_cutoff)


@dataclass(frozen=True, slots=True)
class PruneResult:
    target: str
    cutoff: datetime
    deleted: int
    batches: int
    complete: bool  # False: stopped before the walk's end (the daemon is stopping)


def prune_target(
    db: Database,
    target: Target,
    now: datetime,
    batch_size: int,
    *,
    dry_run: bool = False,
    between_batches: Callable[[], bool] = lambda: True,
) -> PruneResult:
    """Walk ``target`` in batches, one transaction each; ``between_batches`` runs after every
    batch (a pause) and returns False to stop early. Records the prune unless ``dry_run``."""
    cutoff = now - target.max_age
    deleted = batches = 0
    after = 0
    complete = False
    while True:
        with db.transaction() as session:
            batch = prune_batch(session, target, cutoff, after, batch_size, dry_run=dry_run)
        batches += 1
        deleted += batch.deleted
        after = batch.last_id
        if batch.done:
            complete = True
            break
        if not between_batches():
            break
    if not dry_run:
        with db.transaction() as session:
            record_prune(session, target.name, now, cutoff, deleted)
    return PruneResult(target.name, cutoff, deleted, batches, complete)


def prune(
    db: Database,
    all_targets: list[Target],
    now: datetime,
    batch_size: int,
    *,
    dry_run: bool = False,
    between_batches: Callable[[], bool] = lambda: True,
) -> list[PruneResult]:
    """Prune every target once (see ``prune_target``); stops early when told to."""
    results: list[PruneResult] = []
    for target in all_targets:
        result = prune_target(
            db, target, now, batch_size, dry_run=dry_run, between_batches=between_batches
        )
        results.append(result)
        if not result.complete:
            break
    return results


def record_prune(
    session: Session, target: str, now: datetime, cutoff: datetime, deleted: int
) -> None:
    """Upsert the last prune of ``target`` (in the caller's transaction)."""
    values = {"target": target, "pruned_at": now, "cutoff": cutoff, "deleted": deleted}
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(_PRUNE).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["target"],
            set_={"pruned_at": now, "cutoff": cutoff, "deleted": deleted},
        )
    )
