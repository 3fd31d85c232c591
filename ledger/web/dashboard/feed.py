"""The dashboard's change feed: one poller per daemon reads a cheap fingerprint of what the
board and the approvals queue show (the newest ledger entry, the newest run, approvals pending
and the newest request, behaviors registered; the Notion mirror's state, every 10 seconds) about
every second while someone watches, and wakes the server-sent event streams when it changes.
Browsers then fetch the board's or the queue's fragment again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ledger.db.models import Approval, BehaviorRow, LedgerEntry
from ledger.notion.health import mirror_status

POLL_SECONDS = 1.0
NOTION_SECONDS = 10.0  # the Notion mirror's state is read this often at most (an outbox scan)
STREAM_SECONDS = 25.0  # a stream ends after this (the browser reconnects), or at close()


def fingerprint(session: Session) -> str:
    last_entry = session.execute(select(func.max(LedgerEntry.id))).scalar_one()
    last_run = session.execute(select(func.max(BehaviorRow.last_run_at))).scalar_one()
    behaviors = session.execute(select(func.count()).select_from(BehaviorRow)).scalar_one()
    pending = session.execute(
        select(func.count()).where(col(Approval.status) == "pending")
    ).scalar_one()
    # The newest request (an arrival) beside the count pending (a decision, an expiry): one
    # arriving while another is decided changes the first, not the second.
    last_approval = session.execute(select(func.max(Approval.id))).scalar_one()
    last_run_at = last_run.timestamp() if last_run else 0
    return f"{last_entry or 0}-{last_run_at}-{behaviors}-{pending}-{last_approval or 0}"


class ChangeFeed:
    """Shared by every stream: polls only while at least one stream listens."""

    def __init__(self, read: Callable[[], str], poll_seconds: float = POLL_SECONDS) -> None:
        self._read = read
        self._poll = poll_seconds
        self._listeners = 0
        self._changed = asyncio.Condition()
        self.version = ""
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def _run(self) -> None:
        while self._listeners > 0 and not self._closed:
            try:
                version = await asyncio.to_thread(self._read)
            except Exception:
                version = self.version
            if version != self.version:
                self.version = version
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(self._poll)
        self._task = None

    async def stream(self, stream_seconds: float = STREAM_SECONDS) -> AsyncIterator[str]:
        """Yields the version now, then each new one, for ``stream_seconds`` at most."""
        self._listeners += 1
        if self._task is None and not self._closed:
            self.version = await asyncio.to_thread(self._read)
            self._task = asyncio.create_task(self._run(), name="dashboard-change-feed")
        try:
            yield self.version
            loop = asyncio.get_running_loop()
            deadline = loop.time() + stream_seconds
            seen = self.version
            while not self._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                await self._wait_for_change(seen, remaining)
                if self.version != seen:
                    seen = self.version
                    yield seen
        finally:
            self._listeners -= 1

    async def _wait_for_change(self, seen: str, timeout: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version != seen or self._closed),
                    timeout,
                )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        async with self._changed:
            self._changed.notify_all()


def database_fingerprint(
    state: Any,
    notion_seconds: float = NOTION_SECONDS,
    monotonic: Callable[[], float] = time.monotonic,
) -> Callable[[], str]:
    """The board's fingerprint, and with Notion configured the mirror's state, dead letters and
    writes queued (``ledger.notion.health``), read at most every ``notion_seconds``: a dead
    letter, the mirror falling behind or its queue draining ("1 write queued" → "in sync")
    changes what the board's indicator says without any ledger change."""
    read_at, mark = -notion_seconds, ""

    def notion_mark(session: Session) -> str:
        nonlocal read_at, mark
        if state.settings.notion_token is None:
            return ""
        if monotonic() - read_at >= notion_seconds:
            report = mirror_status(session, state.settings, state.clock.now())
            read_at, mark = monotonic(), f"{report.state}:{report.dead}:{report.queued}"
        return mark

    def read() -> str:
        with state.db.transaction() as session:
            return f"{fingerprint(session)}-{notion_mark(session)}"

    return read
