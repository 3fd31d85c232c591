"""Retention: old spans, set-aside deliveries, delivered outbox rows and processed webhook
events are pruned in short batches; the history (ledger, runs, gate results) never is."""

from __future__ import annotations

import asyncio
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlmodel import SQLModel

from ledger.clock import FakeClock
from ledger.config import Settings, WebhookSource, load_settings
from ledger.daemon import open_services
from ledger.db.models import (
    IngestDelivery,
    IngestedSpan,
    OutboxRow,
    RetentionPrune,
    WebhookEvent,
)
from ledger.db.session import Database
from ledger.errors import ConfigError
from ledger.outbox.enqueue import KIND_LOG, enqueue, enqueue_alert
from ledger.retention import prune, prune_target, targets
from ledger.status import collect_storage
from ledger.transitions import discard_outbox_row, retry_outbox_row
from tests.factories import T0
from tests.servers import ledger

DAY = timedelta(days=1)
SOURCES = {
    "deploys": WebhookSource(scheme="generic", secrets="env:X"),  # type: ignore[arg-type]
    "payments": WebhookSource(scheme="stripe", secrets="env:Y"),  # type: ignore[arg-type]
    "repo": WebhookSource(scheme="github", secrets="env:Z"),  # type: ignore[arg-type]
}


def rules(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "spans_days": 30,
        "outbox_days": 7,
        "webhook_events_days": 30,
        "webhook_sources": SOURCES,
    }
    return targets(**{**values, **overrides})


def add(db: Database, *rows: SQLModel) -> None:
    with db.transaction() as session:
        session.add_all(rows)


def count(db: Database, model: type[SQLModel], *where: Any) -> int:
    with db.transaction() as session:
        return int(session.execute(select(func.count()).select_from(model).where(*where)).scalar())


def span(n: int, received: datetime) -> IngestedSpan:
    return IngestedSpan(
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        name="gen",
        received_at=received,
        processed_at=received,
        attribution="unattributed",
    )


def outbox(
    status: str,
    created: datetime,
    delivered: datetime | None = None,
    *,
    discarded: datetime | None = None,
) -> OutboxRow:
    return OutboxRow(
        kind="log",
        status=status,
        next_attempt_at=created,
        created_at=created,
        delivered_at=delivered,
        discarded_at=discarded,
    )


def event(n: int, source: str, received: datetime, processed: bool = True) -> WebhookEvent:
    return WebhookEvent(
        source=source,
        event="deploy.done",
        replay_key=f"key-{n}",
        received_at=received,
        processed_at=received if processed else None,
    )


def test_spans_older_than_the_retention_are_deleted_newer_ones_kept(db: Database) -> None:
    add(db, *(span(n, T0 - days * DAY) for n, days in enumerate([45, 31, 30.5, 29, 1, 0])))

    results = prune(db, rules(), T0, batch_size=1000)

    by_table = {r.target: r.deleted for r in results}
    assert by_table["ingested_span"] == 3
    assert count(db, IngestedSpan) == 3
    assert count(db, IngestedSpan, IngestedSpan.received_at < T0 - 30 * DAY) == 0


def test_only_deliveries_set_aside_are_pruned_never_one_waiting_for_the_processor(
    db: Database,
) -> None:
    old = T0 - 40 * DAY
    add(
        db,
        IngestDelivery(received_at=old, span_count=1, spans="[]", set_aside="invalid"),
        IngestDelivery(received_at=old, span_count=1, spans="[]"),
        IngestDelivery(received_at=T0 - DAY, span_count=1, spans="[]", set_aside="rejected"),
    )

    prune(db, rules(), T0, batch_size=1000)

    assert count(db, IngestDelivery) == 2
    assert count(db, IngestDelivery, IngestDelivery.set_aside.is_(None)) == 1  # type: ignore[union-attr]


def test_outbox_prunes_rows_delivered_over_7_days_ago_and_keeps_pending_and_dead_ones(
    db: Database,
) -> None:
    add(
        db,
        outbox("dead", T0 - 30 * DAY),
        outbox("pending", T0 - 20 * DAY),
        outbox("delivered", T0 - 10 * DAY, delivered=T0 - 9 * DAY),  # pruned
        outbox("delivered", T0 - 10 * DAY, delivered=T0 - 2 * DAY),  # retried long: kept
        outbox("delivered", T0 - 3 * DAY, delivered=T0 - 3 * DAY),
    )

    prune(db, rules(), T0, batch_size=1000)

    assert count(db, OutboxRow) == 4
    assert count(db, OutboxRow, OutboxRow.status == "delivered") == 2
    assert count(db, OutboxRow, OutboxRow.status != "delivered") == 2


def test_outbox_prunes_rows_discarded_over_7_days_ago_and_never_in_flight_or_dead_ones(
    db: Database,
) -> None:
    old = T0 - 30 * DAY
    add(
        db,
        outbox("discarded", old, discarded=T0 - 9 * DAY),  # pruned
        outbox("discarded", old, discarded=T0 - 2 * DAY),  # discarded lately: kept
        outbox("in_flight", old),
        outbox("dead", old),
        outbox("pending", old),
    )

    (result,) = prune(db, rules(spans_days=0, webhook_events_days=0), T0, batch_size=1000)

    assert result.deleted == 1
    assert count(db, OutboxRow, OutboxRow.status == "discarded") == 1
    assert count(db, OutboxRow, OutboxRow.status.in_(["in_flight", "dead", "pending"])) == 3  # type: ignore[attr-defined]


def test_a_discard_starts_the_retention_clock_and_a_retry_stops_it(db: Database) -> None:
    """An old row discarded today is kept a full retention period; queued again, it is work."""
    created = T0 - 30 * DAY
    with db.transaction() as session:
        row = enqueue(session, kind=KIND_LOG, payload={}, now=created, dedup_key="x")
        assert row is not None
        row_id = row.id or 0
        discard_outbox_row(session, row_id, actor="ops", reason="target gone", now=T0 - DAY)
    only_outbox = rules(spans_days=0, webhook_events_days=0)

    prune(db, only_outbox, T0, batch_size=1000)
    assert count(db, OutboxRow) == 1  # discarded a day ago

    with db.transaction() as session:
        retry_outbox_row(session, row_id, actor="ops", now=T0)
        assert session.get(OutboxRow, row_id).discarded_at is None  # type: ignore[union-attr]
    prune(db, only_outbox, T0 + 30 * DAY, batch_size=1000)
    assert count(db, OutboxRow) == 1  # pending again: never pruned

    with db.transaction() as session:
        discard_outbox_row(session, row_id, actor="ops", reason="for good", now=T0 + DAY)
    prune(db, only_outbox, T0 + 8 * DAY, batch_size=1000)
    assert count(db, OutboxRow) == 1
    prune(db, only_outbox, T0 + 9 * DAY, batch_size=1000)
    assert count(db, OutboxRow) == 0


def test_pruning_a_delivered_alert_never_lets_its_dedup_key_send_it_again(db: Database) -> None:
    """An alert's key carries its window's start: once its row is pruned (the window long
    over), the same event opens a new window under a new key, and repeats in that window fold
    into one follow-up as before — never a second copy of an alert already sent."""
    alert = {"event": "demotion", "behavior": "seo", "reason": "fail"}
    with db.transaction() as session:
        (first,) = enqueue_alert(session, alert, channels=["ops"], now=T0)
        first.status, first.delivered_at = "delivered", T0
        session.add(first)
        first_key = first.dedup_key
    prune(db, rules(spans_days=0, webhook_events_days=0), T0 + 8 * DAY, batch_size=1000)
    assert count(db, OutboxRow) == 0

    later = T0 + 8 * DAY
    with db.transaction() as session:
        (again,) = enqueue_alert(session, alert, channels=["ops"], now=later)
        assert again.dedup_key != first_key
        repeats = [
            enqueue_alert(session, alert, channels=["ops"], now=later + n * timedelta(minutes=1))
            for n in (1, 2)
        ]
    assert [len(r) for r in repeats] == [1, 0]  # one follow-up, updated by the next repeat
    assert count(db, OutboxRow) == 2


def test_webhook_events_of_timestamped_sources_are_pruned_github_and_unprocessed_ones_kept(
    db: Database,
) -> None:
    old = T0 - 31 * DAY
    add(
        db,
        event(1, "deploys", old),  # pruned
        event(2, "payments", old),  # pruned
        event(3, "repo", old),  # GitHub: no signed timestamp, the row is the replay guard
        event(4, "deploys", old, processed=False),  # not processed yet
        event(5, "gone", old),  # a source no longer configured: its scheme is unknown
        event(6, "deploys", T0 - 29 * DAY),
    )

    prune(db, rules(), T0, batch_size=1000)

    with db.transaction() as session:
        left = set(session.execute(select(WebhookEvent.replay_key)).scalars())
    assert left == {"key-3", "key-4", "key-5", "key-6"}


def test_the_history_is_never_a_prune_target() -> None:
    tables = {t.table.name for t in rules()}
    assert tables == {"ingested_span", "ingest_delivery", "outbox", "webhook_event"}
    assert not tables & {"ledger_entry", "run", "gate_result", "approval", "promotion_proposal"}


def test_a_retention_of_0_days_keeps_that_table_whole() -> None:
    assert {t.name for t in rules(spans_days=0, webhook_events_days=0)} == {"outbox"}
    assert rules(spans_days=0, outbox_days=0, webhook_events_days=0) == []


def test_prune_works_in_batches_each_its_own_short_transaction(db: Database) -> None:
    add(db, *(span(n, T0 - 40 * DAY) for n in range(35)), span(99, T0))
    pauses: list[int] = []

    def between() -> bool:
        pauses.append(count(db, IngestedSpan))  # each batch already committed
        return True

    result = prune_target(db, rules()[0], T0, batch_size=10, between_batches=between)

    assert (result.deleted, result.batches, result.complete) == (35, 4, True)
    assert pauses == [26, 16, 6]


def test_the_walk_steps_over_old_rows_that_must_stay_to_reach_prunable_ones(
    db: Database,
) -> None:
    add(db, *(outbox("pending", T0 - 30 * DAY) for _ in range(25)))
    add(db, *(outbox("delivered", T0 - 20 * DAY, T0 - 20 * DAY) for _ in range(5)))

    (result,) = prune(db, rules(spans_days=0, webhook_events_days=0), T0, batch_size=10)

    assert result.deleted == 5
    assert count(db, OutboxRow) == 25


def test_stopping_between_batches_ends_the_prune_early_and_records_what_it_did(
    db: Database,
) -> None:
    add(db, *(span(n, T0 - 40 * DAY) for n in range(30)))

    results = prune(db, rules(), T0, batch_size=10, between_batches=lambda: False)

    assert [(r.target, r.deleted, r.complete) for r in results] == [("ingested_span", 10, False)]
    with db.transaction() as session:
        recorded = session.get(RetentionPrune, "ingested_span")
        assert recorded is not None and recorded.deleted == 10


def test_dry_run_counts_what_would_go_and_deletes_and_records_nothing(db: Database) -> None:
    add(db, *(span(n, T0 - 40 * DAY) for n in range(12)), span(99, T0))

    results = prune(db, rules(), T0, batch_size=5, dry_run=True)

    assert {r.target: r.deleted for r in results}["ingested_span"] == 12
    assert count(db, IngestedSpan) == 13
    assert count(db, RetentionPrune) == 0


def test_two_replicas_pruning_at_once_delete_each_row_exactly_once(db: Database) -> None:
    add(db, *(span(n, T0 - 40 * DAY) for n in range(300)), span(999, T0))
    start = threading.Barrier(2)
    deleted: list[int] = []
    errors: list[BaseException] = []

    def replica() -> None:
        other = Database.open(str(db.engine.url.render_as_string(hide_password=False)))
        try:
            start.wait()
            (result, *_rest) = prune(other, rules(), T0, batch_size=20)
            deleted.append(result.deleted)
        except BaseException as exc:
            errors.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert sum(deleted) == 300
    assert count(db, IngestedSpan) == 1


def test_status_shows_row_counts_and_the_last_prune_of_each_table(db: Database) -> None:
    add(db, *(span(n, T0 - 40 * DAY) for n in range(4)), span(99, T0))
    add(db, outbox("delivered", T0 - 9 * DAY, T0 - 9 * DAY))

    with db.transaction() as session:
        before = collect_storage(session)
    prune(db, rules(), T0, batch_size=1000)
    with db.transaction() as session:
        after = collect_storage(session)

    assert before.last_prunes == []
    assert {t.table: t.rows for t in before.tables}["ingested_span"] == 5
    sizes = {t.table: t.rows for t in after.tables}
    assert (sizes["ingested_span"], sizes["outbox"], sizes["ledger_entry"]) == (1, 0, 0)
    assert {p.table: (p.pruned_at, p.deleted) for p in after.last_prunes} == {
        "ingest_delivery": (T0, 0),
        "ingested_span": (T0, 4),
        "outbox": (T0, 1),
        "webhook_event": (T0, 0),
    }
    with db.transaction() as session:
        recorded = session.get(RetentionPrune, "ingested_span")
        assert recorded is not None and recorded.cutoff == T0 - 30 * DAY


def test_status_sizes_on_postgresql_are_the_planners_estimates_once_analyzed(
    db: Database,
) -> None:
    add(db, *(span(n, T0) for n in range(7)))
    postgres = db.engine.dialect.name == "postgresql"
    if postgres:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE ingested_span"))

    with db.transaction() as session:
        sizes = {t.table: t for t in collect_storage(session).tables}

    assert (sizes["ingested_span"].rows, sizes["ingested_span"].estimated) == (7, postgres)
    assert (sizes["run"].rows, sizes["run"].estimated) == (0, False)  # never analyzed: counted


async def test_the_daemon_prunes_at_start_up_with_its_clock(
    database_url: str, tmp_path: Path
) -> None:
    db = Database.open(database_url, migrate=True)
    try:
        add(db, *(span(n, T0 - 40 * DAY) for n in range(3)), span(99, T0 - DAY))
        settings = Settings(
            database_url=database_url, behaviors_dir=tmp_path / "behaviors", watch=False
        )
        services = await open_services(settings, db, FakeClock(T0), scheduler=False)
        try:
            for _ in range(600):  # until the first prune is recorded (at most a minute)
                if await asyncio.to_thread(count, db, RetentionPrune) == 3:
                    break
                await asyncio.sleep(0.1)
        finally:
            await services.close()
        assert count(db, RetentionPrune) == 3
        assert count(db, IngestedSpan) == 1
    finally:
        db.close()


@pytest.mark.parametrize("days", [1, 6])
def test_webhook_event_retention_shorter_than_the_replay_window_is_refused(days: int) -> None:
    with pytest.raises(ConfigError, match="at least 7 days"):
        load_settings(retention_webhook_events_days=days)


def test_webhook_event_retention_of_0_keeps_them_forever() -> None:
    assert load_settings(retention_webhook_events_days=0).retention_webhook_events_days == 0


def test_ledger_prune_dry_run_then_prune_then_status_shows_the_last_prune(
    sqlite_db: Database, tmp_path: Path
) -> None:
    env = {"LEDGER_DATABASE_URL": sqlite_db.engine.url.render_as_string(hide_password=False)}
    long_ago = datetime.now(UTC) - 40 * DAY  # the command prunes by the real clock
    add(sqlite_db, *(span(n, long_ago) for n in range(3)), span(9, datetime.now(UTC)))

    before = ledger("status", cwd=tmp_path, env=env)
    dry = ledger("prune", "--dry-run", cwd=tmp_path, env=env)
    assert count(sqlite_db, IngestedSpan) == 4
    pruning = datetime.now(UTC)
    done = ledger("prune", cwd=tmp_path, env=env)
    after = ledger("status", cwd=tmp_path, env=env)
    since_pruning = (datetime.now(UTC) - pruning).total_seconds()

    for result in (before, dry, done, after):
        assert result.returncode == 0, result.stdout + result.stderr
    assert "rows: ingested_span 4 · ingest_delivery 0 · outbox 0" in before.stdout
    assert "last prune: never (the daemon prunes at start-up, then every 1h)" in before.stdout
    assert "ingested_span: would delete 3 row(s) older than" in dry.stdout
    assert "ingested_span: deleted 3 row(s) older than" in done.stdout
    assert "rows: ingested_span 1 · " in after.stdout
    # The last prune is the one just made: its age is whole seconds (minutes on a crawling
    # machine), never more than the time since the prune command started.
    last = re.search(
        r"last prune: (\d+)([smhd]) ago, rows deleted: ingest_delivery 0 · ", after.stdout
    )
    assert last is not None, after.stdout
    age = int(last[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[last[2]]
    assert age <= since_pruning
    assert "ingested_span 3 · outbox 0" in after.stdout
    assert count(sqlite_db, IngestedSpan) == 1
