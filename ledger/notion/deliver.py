"""What else goes to Notion through the outbox, on the mirror's client and limiter: behavior
actions (``action.notion_page`` / ``action.notion_append``), event-log lines, and alerts as
comments on a behavior's row (``NotionCommentChannel``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ledger.clock import json_times
from ledger.db.models import NotionPage
from ledger.errors import NotionError
from ledger.logging import mask_text
from ledger.notion.eventlog import KIND_EVENT_LOG
from ledger.notion.mirror import Mirror, delivery_error
from ledger.notion.props import chunks
from ledger.notion.render import behavior_key
from ledger.notion.store import record_page
from ledger.outbox.alerts import alert_text
from ledger.outbox.dispatcher import DeliveryError, Handler, OutboxItem
from ledger.outbox.enqueue import KIND_NOTION_APPEND, KIND_NOTION_PAGE

__all__ = ["NotionCommentChannel", "NotionDeliverer"]


def _paragraph(text: str) -> dict[str, Any]:
    return {
        "object": "block",
        "type": "paragraph",
        "paragraph": {"rich_text": [{"type": "text", "text": {"content": text}}]},
    }


def _fill(template: str, payload: Mapping[str, Any]) -> str:
    at = str(payload.get("at") or "")
    values = {
        "{date}": at[:10],
        "{behavior}": str(payload.get("behavior") or ""),
        "{run_id}": str(payload.get("run_id") or ""),
        "{tier}": str(payload.get("tier") or ""),
    }
    for name, value in values.items():
        template = template.replace(name, value)
    return template


@dataclass(slots=True)
class NotionDeliverer:
    """Delivers ``action.notion_*`` and event-log rows through the mirror's client."""

    mirror: Mirror
    event_log_page: str | None = None
    _sources: dict[str, tuple[str, str]] = field(default_factory=dict)

    def handlers(self) -> dict[str, Handler]:
        return {
            KIND_NOTION_PAGE: self.deliver_page,
            KIND_NOTION_APPEND: self.deliver_append,
            KIND_EVENT_LOG: self.deliver_event_line,
        }

    async def _data_source(self, database_id: str) -> tuple[str, str]:
        """A user-given database's (first) data source and its title property's name."""
        if database_id not in self._sources:
            api = self.mirror.api
            database = await api.retrieve_database(database_id)
            sources = database.get("data_sources") or []
            if not sources:
                raise NotionError(f"database {database_id} has no data source", permanent=True)
            source = await api.retrieve_data_source(str(sources[0]["id"]))
            title = next(
                (
                    n
                    for n, p in (source.get("properties") or {}).items()
                    if p.get("type") == "title"
                ),
                "Name",
            )
            self._sources[database_id] = (str(source["id"]), title)
        return self._sources[database_id]

    def _done(self, key: str) -> NotionPage | None:
        with self.mirror.db.transaction() as session:
            page = session.get(NotionPage, key)
            if page is not None:
                session.expunge(page)
            return page

    def _record(self, key: str, page_id: str, props: dict[str, Any]) -> None:
        with self.mirror.db.transaction() as session:
            record_page(session, key, page_id, props, self.mirror.clock.now())

    async def deliver_page(self, item: OutboxItem) -> None:
        """A new row in the behavior's ``database_id`` (resolved to its data source): the
        title from the template, the output (masked as stored) as the page's content."""
        p = item.payload
        options = p.get("options") or {}
        key = f"action:{p.get('run_id')}"
        try:
            if await asyncio.to_thread(self._done, key) is not None:
                return  # created before the outcome was recorded
            database_id = str(options.get("database_id") or "")
            if not database_id:
                raise DeliveryError("the notion_page action needs a database_id", permanent=True)
            source_id, title_name = await self._data_source(database_id)
            title = _fill(str(options.get("title") or "{behavior} {date}"), p)
            page = await self.mirror.api.create_page(
                {"type": "data_source_id", "data_source_id": source_id},
                {title_name: {"title": [{"type": "text", "text": {"content": title[:2000]}}]}},
                [_paragraph(piece) for piece in chunks(mask_text(str(p.get("output") or "")))],
            )
            await asyncio.to_thread(self._record, key, str(page["id"]), {"action": "page"})
        except NotionError as exc:
            raise delivery_error(exc) from exc

    async def deliver_append(self, item: OutboxItem) -> None:
        """The output appended to the behavior's ``page_id``, in batches of 100 blocks; the
        batches already appended are remembered, so a retry does not repeat them."""
        p = item.payload
        page_id = str((p.get("options") or {}).get("page_id") or "")
        if not page_id:
            raise DeliveryError("the notion_append action needs a page_id", permanent=True)
        key = f"action:{p.get('run_id')}"
        head = f"{p.get('behavior')} · run {p.get('run_id')} · {json_times(p.get('at'))}"
        blocks = [_paragraph(head)] + [
            _paragraph(piece) for piece in chunks(mask_text(str(p.get("output") or "")))
        ]
        try:
            done = await asyncio.to_thread(self._done, key)
            sent = int((done.properties or {}).get("blocks", 0)) if done else 0
            while sent < len(blocks):
                batch = blocks[sent : sent + 100]
                await self.mirror.api.append(page_id, batch)
                sent += len(batch)
                await asyncio.to_thread(self._record, key, page_id, {"blocks": sent})
        except NotionError as exc:
            raise delivery_error(exc) from exc

    async def deliver_event_line(self, item: OutboxItem) -> None:
        if not self.event_log_page:
            return  # the event log was switched off since the line was queued
        try:
            await self.mirror.api.append(
                self.event_log_page, [_paragraph(str(item.payload.get("line", ""))[:2000])]
            )
        except NotionError as exc:
            raise delivery_error(exc) from exc


@dataclass(frozen=True, slots=True)
class NotionCommentChannel:
    """An alert channel: a comment on the behavior's row in the Behaviors database, starting
    with @mentions of ``mentions`` (Notion user ids). Implements ``AlertChannel``.

    Build it with the daemon's ``Mirror`` (its client, limiter and database):
    ``NotionCommentChannel("notion", mirror, mentions=("<user id>",))``."""

    name: str
    mirror: Mirror
    mentions: tuple[str, ...] = ()

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        behavior = str(alert.get("behavior") or "")
        key = behavior_key(behavior)
        try:
            page = await asyncio.to_thread(self._page, key)
            if page is None:
                await self.mirror.apply(key)  # the row first (looked up by Key, or created)
                page = await asyncio.to_thread(self._page, key)
            if page is None:
                raise DeliveryError(f"{behavior} has no row in the Behaviors database yet")
            rich: list[dict[str, Any]] = []
            for user_id in self.mentions:
                rich.append(
                    {"type": "mention", "mention": {"type": "user", "user": {"id": user_id}}}
                )
                rich.append({"type": "text", "text": {"content": " "}})
            text = mask_text(alert_text(alert))
            rich += [{"type": "text", "text": {"content": piece}} for piece in chunks(text)]
            await self.mirror.api.comment(page, rich[:100])
        except NotionError as exc:
            raise delivery_error(exc) from exc

    def _page(self, key: str) -> str | None:
        with self.mirror.db.transaction() as session:
            page = session.get(NotionPage, key)
            return None if page is None else page.page_id
