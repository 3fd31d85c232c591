"""The Notion mirror: brings Notion rows up to date with the database, idempotently.

- ``Mirror.apply`` (the outbox handler for ``mirror`` rows) renders the row a Key names from
  the database, finds its page (recorded locally, else looked up by Key in Notion — so a crash
  between "created in Notion" and "recorded here" never makes a duplicate), creates it if
  there is none, and otherwise sends only the properties that changed since the last write.
  Rows of one Key are applied one at a time; each renders the newest state.
- ``Mirror.feed`` turns what happened since its cursors (ledger entries, finished runs, new
  approval requests, changed behaviors) into row-shaped ``mirror`` work, in the transaction
  that advances the cursors: nothing is skipped, even across crashes.
- ``Mirror.sync`` compares every row with what Notion holds and writes only the differences
  (``ledger notion sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
import structlog
from sqlmodel import Session, col, select

from ledger.clock import Clock
from ledger.db.models import (
    Approval,
    BehaviorRow,
    LedgerEntry,
    NotionPage,
    NotionWorkspace,
    Run,
    WebhookEvent,
)
from ledger.db.session import Database
from ledger.errors import NotionError
from ledger.notion.api import NotionApi
from ledger.notion.eventlog import TIER_CHANGES, enqueue_event_line, tier_change_line, webhook_line
from ledger.notion.props import changed, chunks, plain, read_properties, write_properties
from ledger.notion.render import (
    RowSpec,
    approval_key,
    behavior_key,
    entry_key,
    iter_keys,
    render_key,
)
from ledger.notion.schema import TABLES, Table
from ledger.notion.store import load_workspace, record_page
from ledger.outbox.dispatcher import DeliveryDeferred, DeliveryError, OutboxItem
from ledger.outbox.enqueue import enqueue_mirror
from ledger.transitions import PolicyContext

__all__ = ["FEED_OVERLAP", "Mirror", "SyncReport", "delivery_error"]

log = structlog.get_logger("ledger.notion")

FEED_BATCH: Final = 500
FIRST_SYNC_MIN_SECONDS: Final = 60.0  # the first full comparison at least this long after start
# Runs and behaviors are read by timestamp; a transaction that committed late with an earlier
# stamp is still seen if it is within this overlap (re-queued rows are no-ops when unchanged).
FEED_OVERLAP: Final = timedelta(seconds=60)
NOT_INITIALIZED_RETRY: Final = 600.0
# Creating a row, per Key, across the Mirror instances of this process (SQLite).
_LOCAL_CREATE_LOCKS: dict[tuple[int, str], asyncio.Lock] = {}
GONE: Final = frozenset({400, 404})  # updating a page deleted (404) or archived (400)
_APPROVAL_KINDS: Final = frozenset({"approved", "rejected", "approval_expired"})


def delivery_error(error: NotionError) -> DeliveryError:
    """A Notion failure as the outbox understands it (retry decision carried over)."""
    return DeliveryError(
        str(error),
        permanent=error.permanent,
        retry_after=error.retry_after,
        status_code=error.status_code,
    )


def data_source_of(ws: NotionWorkspace, table: Table) -> str:
    return str(getattr(ws, f"{table.name}_data_source_id"))


def _paragraphs(text: str) -> list[dict[str, Any]]:
    return [
        {
            "object": "block",
            "type": "paragraph",
            "paragraph": {"rich_text": [{"type": "text", "text": {"content": piece}}]},
        }
        for piece in chunks(text)
    ]


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What ``sync`` did: rows compared, created, updated, requests sent, duplicates seen."""

    compared: int
    created: int
    updated: int
    requests: int
    duplicates: int

    def describe(self) -> str:
        return (
            f"{self.compared} rows compared: {self.created} created, {self.updated} updated, "
            f"{self.compared - self.created - self.updated} already up to date "
            f"({self.requests} Notion requests)"
            + (f"; {self.duplicates} duplicate Key(s) in Notion" if self.duplicates else "")
        )


@dataclass(slots=True)
class Mirror:
    """The mirror of one database into the Notion databases of ``ledger notion init``."""

    db: Database
    api: NotionApi
    clock: Clock
    ctx: PolicyContext = field(default_factory=PolicyContext)
    dashboard_url: str | None = None
    event_log_page: str | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    # -- database side (run in a worker thread) -------------------------------------------

    def _workspace(self) -> NotionWorkspace:
        with self.db.transaction() as session:
            ws = load_workspace(session)
            if ws is None:
                raise DeliveryDeferred(
                    "Notion is not set up: run `ledger notion init --parent PAGE_ID`; the "
                    "mirror waits in the outbox",
                    retry_after=NOT_INITIALIZED_RETRY,
                )
            session.expunge(ws)
            return ws

    def _render(self, key: str) -> tuple[RowSpec | None, NotionPage | None]:
        with self.db.transaction() as session:
            spec = render_key(session, key, self.clock.now(), self.ctx, self.dashboard_url)
            page = session.get(NotionPage, key)
            if page is not None:
                session.expunge(page)
            return spec, page

    def _forget(self, key: str) -> None:
        with self.db.transaction() as session:
            page = session.get(NotionPage, key)
            if page is not None:
                session.delete(page)

    def _record(
        self, key: str, page_id: str, props: dict[str, Any], content: int | None = None
    ) -> None:
        with self.db.transaction() as session:
            record_page(session, key, page_id, props, self.clock.now(), content)

    # -- one row ---------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def handle(self, item: OutboxItem) -> None:
        """The outbox handler for ``mirror`` rows."""
        key = item.payload.get("key")
        if not isinstance(key, str):
            log.warning(
                "dropped an event-shaped Notion mirror row of an older version; "
                "`ledger notion sync` writes every row as it is now",
                outbox_id=item.id,
            )
            return
        try:
            await self.apply(key)
        except NotionError as exc:
            raise delivery_error(exc) from exc

    async def apply(self, key: str) -> int:
        """Bring the row ``key`` up to date; returns the write requests sent (0 when it
        already was). Raises ``NotionError`` or ``DeliveryDeferred`` (not set up)."""
        ws = await asyncio.to_thread(self._workspace)
        async with self._lock(key):
            spec, page = await asyncio.to_thread(self._render, key)
            if spec is None:
                return 0
            values = await self._with_relation(ws, spec)
            schema = spec.table.properties
            desired = plain(schema, values)
            if page is not None:
                try:
                    return await self._update(
                        spec, page.page_id, desired, dict(page.properties), recorded=True
                    )
                except NotionError as exc:
                    if exc.status_code not in GONE:
                        raise
                    # Deleted or archived in Notion: find the row by its Key, or write it anew.
                    log.warning("a mirrored Notion page is gone", key=key, error=str(exc))
                    await asyncio.to_thread(self._forget, key)
            async with self._creating(key):
                # Another replica may have written the row while we waited for the lock.
                _spec, page = await asyncio.to_thread(self._render, key)
                if page is not None:
                    return await self._update(
                        spec, page.page_id, desired, dict(page.properties), recorded=True
                    )
                existing = await self._lookup(ws, spec)
                if existing is None:
                    return await self._create(ws, spec, values, desired)
                current = read_properties(schema, existing)
                return await self._update(spec, str(existing["id"]), desired, current)

    @contextlib.asynccontextmanager
    async def _creating(self, key: str) -> AsyncIterator[None]:
        """Held while looking a row up and creating it, so that two replicas never both
        create it: a PostgreSQL advisory lock (released if the process dies), or a lock of this
        process on SQLite (one process writes a SQLite database)."""
        if self.db.engine.dialect.name != "postgresql":
            lock_key = (id(asyncio.get_running_loop()), key)
            async with _LOCAL_CREATE_LOCKS.setdefault(lock_key, asyncio.Lock()):
                yield
            return
        ident = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        conn = await asyncio.to_thread(self.db.engine.connect)
        try:
            await asyncio.to_thread(
                conn.execute, sa.text("SELECT pg_advisory_lock(:k)"), {"k": ident}
            )
            try:
                yield
            finally:
                await asyncio.to_thread(
                    conn.execute, sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ident}
                )
        finally:
            await asyncio.to_thread(conn.close)

    async def _with_relation(self, ws: NotionWorkspace, spec: RowSpec) -> dict[str, Any]:
        values = dict(spec.values)
        if spec.table.relation and spec.behavior is not None:
            page_id = await self._page_id(ws, spec.behavior)
            values[spec.table.relation] = [page_id] if page_id else []
        return values

    async def _page_id(self, ws: NotionWorkspace, key: str) -> str | None:
        """The page of row ``key`` (a behavior's), written first if it has none yet."""
        _spec, page = await asyncio.to_thread(self._render, key)
        if page is None:
            await self.apply(key)
            _spec, page = await asyncio.to_thread(self._render, key)
        return None if page is None else page.page_id

    async def _lookup(self, ws: NotionWorkspace, spec: RowSpec) -> dict[str, Any] | None:
        """The Notion row whose Key is ``spec.key`` (the oldest, should there be several)."""
        found = [
            row
            async for row in self.api.query(
                data_source_of(ws, spec.table),
                {"property": "Key", "rich_text": {"equals": spec.key}},
            )
        ]
        found.sort(key=lambda r: str(r.get("created_time", "")))
        return found[0] if found else None

    async def _create(
        self, ws: NotionWorkspace, spec: RowSpec, values: Mapping[str, Any], desired: dict[str, Any]
    ) -> int:
        before = self.api.requests
        page = await self.api.create_page(
            {"type": "data_source_id", "data_source_id": data_source_of(ws, spec.table)},
            write_properties(spec.table.properties, values),
            _paragraphs(spec.content),
        )
        await asyncio.to_thread(self._record, spec.key, str(page["id"]), desired, len(spec.content))
        return self.api.requests - before

    async def _update(
        self,
        spec: RowSpec,
        page_id: str,
        desired: dict[str, Any],
        current: dict[str, Any],
        *,
        recorded: bool = False,
    ) -> int:
        """Send the properties that differ from ``current`` (what the page has: as recorded
        here when ``recorded``, else as just read from Notion) and record the result."""
        delta = changed(desired, current, skip=spec.human)
        if not delta and recorded:
            return 0
        if delta:
            await self.api.update_page(page_id, write_properties(spec.table.properties, delta))
        merged = {**current, **delta}
        for name in spec.human:
            merged.setdefault(name, desired.get(name))
        await asyncio.to_thread(self._record, spec.key, page_id, merged)
        return 1 if delta else 0

    # -- feeding the outbox ----------------------------------------------------------------

    def feed(self, limit: int = FEED_BATCH) -> int:
        """Queue mirror work for what happened past the cursors, advancing them in the same
        transaction. Returns how many rows were queued (0: nothing new, or not set up)."""
        now = self.clock.now()
        with self.db.transaction() as session:
            ws = session.exec(
                select(NotionWorkspace).where(col(NotionWorkspace.id) == 1).with_for_update()
            ).first()
            if ws is None:
                return 0
            # Key → (behavior id, dedup key): re-reading an event queues nothing twice.
            keys: dict[str, tuple[int | None, str]] = {}
            entries = list(
                session.exec(
                    select(LedgerEntry)
                    .where(col(LedgerEntry.id) > ws.entry_cursor)
                    .order_by(col(LedgerEntry.id))
                    .limit(limit)
                )
            )
            for entry in entries:
                owner, tag = entry.behavior_id, f"e{entry.id}"
                keys[entry_key(entry.id or 0)] = (owner, tag)
                if entry.behavior_name:
                    keys[behavior_key(entry.behavior_name)] = (owner, tag)
                for run_id in _approval_runs(entry):
                    keys[approval_key(run_id)] = (owner, tag)
            if entries:
                ws.entry_cursor = entries[-1].id or ws.entry_cursor
            if self.event_log_page:
                self._feed_event_log(session, ws, entries, now, limit)
            approvals = list(
                session.exec(
                    select(Approval.id, Approval.run_id, Approval.behavior_id, BehaviorRow.name)
                    .join(BehaviorRow, col(BehaviorRow.id) == col(Approval.behavior_id))
                    .where(col(Approval.id) > ws.approval_cursor)
                    .order_by(col(Approval.id))
                    .limit(limit)
                )
            )
            for approval_id, run_id, behavior_id, name in approvals:
                keys[approval_key(run_id)] = (behavior_id, f"a{approval_id}")
                keys[behavior_key(name)] = (behavior_id, f"a{approval_id}")
                ws.approval_cursor = max(ws.approval_cursor, approval_id or 0)
            ws.run_cursor = self._feed_by_time(
                session,
                keys,
                select(Run.finished_at, Run.id, BehaviorRow.id, BehaviorRow.name)
                .join(BehaviorRow, col(BehaviorRow.id) == col(Run.behavior_id))
                .where(col(Run.finished_at).is_not(None)),
                col(Run.finished_at),
                ws.run_cursor,
                limit,
            )
            ws.behavior_cursor = self._feed_by_time(
                session,
                keys,
                select(
                    BehaviorRow.updated_at, BehaviorRow.updated_at, BehaviorRow.id, BehaviorRow.name
                ),
                col(BehaviorRow.updated_at),
                ws.behavior_cursor,
                limit,
            )
            # Behaviors after their ledger rows: a ledger row makes its behavior's row first.
            for key, (owner, tag) in sorted(keys.items(), key=_order):
                enqueue_mirror(
                    session, key=key, now=now, behavior_id=owner, dedup_key=f"mirror:{key}:{tag}"
                )
            session.add(ws)
            return len(keys)

    @staticmethod
    def _feed_event_log(
        session: Session,
        ws: NotionWorkspace,
        entries: list[LedgerEntry],
        now: datetime,
        limit: int,
    ) -> None:
        """Event-log lines for tier changes and verified webhook events past the cursors."""
        for entry in entries:
            if entry.kind in TIER_CHANGES:
                enqueue_event_line(
                    session,
                    line=tier_change_line(entry),
                    dedup_key=f"eventlog:entry:{entry.id}",
                    now=now,
                    behavior_id=entry.behavior_id,
                )
        events = list(
            session.exec(
                select(WebhookEvent)
                .where(col(WebhookEvent.id) > ws.event_cursor)
                .order_by(col(WebhookEvent.id))
                .limit(limit)
            )
        )
        for event in events:
            enqueue_event_line(
                session,
                line=webhook_line(event),
                dedup_key=f"eventlog:webhook:{event.id}",
                now=now,
                behavior_id=event.behavior_id,
            )
        if events:
            ws.event_cursor = events[-1].id or ws.event_cursor

    @staticmethod
    def _feed_by_time(
        session: Session,
        keys: dict[str, tuple[int | None, str]],
        query: Any,
        stamp: Any,
        cursor: datetime | None,
        limit: int,
    ) -> datetime | None:
        if cursor is not None:
            query = query.where(stamp > cursor - FEED_OVERLAP)
        rows = list(session.exec(query.order_by(stamp).limit(limit * 10)))
        newest = cursor
        for at, ident, behavior_id, name in rows:
            tag = ident.isoformat() if isinstance(ident, datetime) else ident
            keys.setdefault(behavior_key(name), (behavior_id, f"t{tag}"))
            newest = at if newest is None or at > newest else newest
        return newest

    async def run(
        self,
        stop: asyncio.Event,
        wake: Any = None,
        every: float = 2.0,
        sync_every: float | None = None,
    ) -> None:
        """Feed the outbox every ``every`` seconds until ``stop``; with ``sync_every``, also
        compare every row with Notion that often (what changes with time alone — failures
        leaving the window, the next promotion drawing near — and hand edits)."""
        loop = asyncio.get_running_loop()
        next_sync = loop.time()
        if sync_every:
            try:
                next_sync += await asyncio.to_thread(self._first_sync_in, sync_every)
            except Exception:  # the database at start: the feed below must run regardless
                log.exception("reading the last Notion sync failed; the next one is due later")
                next_sync += sync_every
        while not stop.is_set():
            try:
                queued = await asyncio.to_thread(self.feed)
                if queued and wake is not None:
                    wake()
                if queued >= FEED_BATCH:
                    continue
                if sync_every and loop.time() >= next_sync:
                    next_sync = loop.time() + sync_every
                    report = await self.sync()
                    log.info("Notion mirror synced", summary=report.describe())
            except DeliveryDeferred:
                pass  # not set up yet
            except NotionError as exc:
                log.warning("Notion mirror sync failed; retrying later", error=str(exc))
            except Exception:
                log.exception("feeding the Notion mirror failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    def _first_sync_in(self, sync_every: float) -> float:
        """Seconds until the first full comparison: ``sync_every`` after the last one recorded
        (a daemon restarted more often than that still compares), at least
        ``FIRST_SYNC_MIN_SECONDS`` after start (the start itself stays light)."""
        with self.db.transaction() as session:
            ws = load_workspace(session)
            last = ws.last_sync_at if ws is not None else None
        if last is None:
            return sync_every
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        due = (last - self.clock.now()).total_seconds() + sync_every
        return min(sync_every, max(FIRST_SYNC_MIN_SECONDS, due))

    # -- full comparison -------------------------------------------------------------------

    async def sync(self) -> SyncReport:
        """Compare every row with Notion and write only what differs (creating what is
        missing). Raises ``NotionError``."""
        ws = await asyncio.to_thread(self._workspace)
        before, started = self.api.requests, self.clock.now()
        remote: dict[str, dict[str, Any]] = {}
        duplicates = 0
        for table in TABLES.values():
            async for row in self.api.query(data_source_of(ws, table)):
                key = read_properties({"Key": "rich_text"}, row)["Key"]
                if not key:
                    continue
                if key in remote:
                    duplicates += 1
                    continue
                remote[key] = row
        keys = await asyncio.to_thread(self._all_keys)
        created = updated = 0
        for key in keys:
            async with self._lock(key):
                spec, _page = await asyncio.to_thread(self._render, key)
                if spec is None:
                    continue
                values = await self._with_relation(ws, spec)
                desired = plain(spec.table.properties, values)
                found = remote.get(key)
                if found is None:
                    if _page is not None and _page.updated_at >= started:
                        continue  # written during this sync (as the relation of a row)
                    async with self._creating(key):
                        _spec, _page = await asyncio.to_thread(self._render, key)
                        if _page is None:  # nobody wrote it meanwhile
                            await self._create(ws, spec, values, desired)
                            created += 1
                    continue
                current = read_properties(spec.table.properties, found)
                updated += await self._update(spec, str(found["id"]), desired, current)
        await asyncio.to_thread(self._synced)
        return SyncReport(len(keys), created, updated, self.api.requests - before, duplicates)

    def _all_keys(self) -> list[str]:
        with self.db.transaction() as session:
            return list(iter_keys(session))

    def _synced(self) -> None:
        with self.db.transaction() as session:
            ws = session.get(NotionWorkspace, 1)
            if ws is not None:
                ws.last_sync_at = self.clock.now()
                session.add(ws)


def _approval_runs(entry: LedgerEntry) -> Iterable[str]:
    data = entry.data or {}
    if entry.kind in _APPROVAL_KINDS and isinstance(data.get("run_id"), str):
        yield data["run_id"]
    if entry.kind == "approvals_withdrawn":
        yield from (r for r in data.get("run_ids") or () if isinstance(r, str))


def _order(item: tuple[str, tuple[int | None, str]]) -> tuple[int, str]:
    key = item[0]
    return ({"entry": 0, "approval": 1, "behavior": 2}.get(key.split(":")[0], 3), key)
