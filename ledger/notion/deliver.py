"""What else goes to Notion through the outbox, on the mirror's client and limiter: behavior
actions (``action.notion_page`` / ``action.notion_append``), event-log lines, and alerts as
comments on a behavior's row (``NotionCommentChannel``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ledger.clock import json_times
from ledger.db.models import NotionPage
from ledger.errors import NotionError
from ledger.logging import mask_text
from ledger.notion.api import MAX_CHILDREN
from ledger.notion.eventlog import KIND_EVENT_LOG
from ledger.notion.mirror import Mirror, delivery_error
from ledger.notion.props import chunks
from ledger.notion.render import behavior_key
from ledger.notion.store import record_page
from ledger.outbox.alerts import alert_text
from ledger.outbox.dispatcher import DeliveryError, Handler, OutboxItem
from ledger.outbox.enqueue import KIND_NOTION_APPEND, KIND_NOTION_PAGE

__all__ = ["RUN_PROPERTY", "NotionCommentChannel", "NotionDeliverer"]


RUN_PROPERTY: Final = "Ledger run"  # the run id on a notion_page action's page
_PAGE: Final[dict[str, Any]] = {"action": "page"}


def _text(content: str) -> dict[str, Any]:
    return {"type": "text", "text": {"content": content}}


def _paragraph(text: str) -> dict[str, Any]:
    return {"object": "block", "type": "paragraph", "paragraph": {"rich_text": [_text(text)]}}


def _plain(block: Mapping[str, Any]) -> str:
    """A block's text, as we send it (``text.content``) or as Notion reads it (``plain_text``)."""
    rich = (block.get(str(block.get("type"))) or {}).get("rich_text") or []
    return "".join(
        str(r.get("plain_text") if "plain_text" in r else (r.get("text") or {}).get("content"))
        for r in rich
    )


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


def _missing_run_property(exc: NotionError) -> bool:
    """Notion refused a request naming the ``Ledger run`` property (400: it no longer exists,
    or is no longer text)."""
    return exc.status_code == 400 and RUN_PROPERTY in str(exc)


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
        """A user-given database's (first) data source and its title property's name. The data
        source gets a ``Ledger run`` text property (added once, if missing): the run id a page
        carries, so that a retry finds the page an interrupted attempt created."""
        if database_id not in self._sources:
            api = self.mirror.api
            database = await api.retrieve_database(database_id)
            sources = database.get("data_sources") or []
            if not sources:
                raise NotionError(f"database {database_id} has no data source", permanent=True)
            source = await api.retrieve_data_source(str(sources[0]["id"]))
            properties = source.get("properties") or {}
            title = next(
                (n for n, p in properties.items() if p.get("type") == "title"),
                "Name",
            )
            kind = (properties.get(RUN_PROPERTY) or {}).get("type")
            if kind is None:
                await api.update_data_source(
                    str(source["id"]), properties={RUN_PROPERTY: {"rich_text": {}}}
                )
            elif kind != "rich_text":
                raise DeliveryError(
                    f"database {database_id} has a {RUN_PROPERTY!r} property of type {kind}; "
                    "the notion_page action writes the run id there as text: rename it",
                    permanent=True,
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

    async def _created_page(self, source_id: str, run_id: str) -> str | None:
        """The page an earlier attempt created for ``run_id`` (found by its ``Ledger run``)."""
        where = {"property": RUN_PROPERTY, "rich_text": {"equals": run_id}}
        async for row in self.mirror.api.query(source_id, where):
            return str(row["id"])
        return None

    async def _present(self, target: str, blocks: list[dict[str, Any]], *, own: bool) -> int:
        """How many of ``blocks`` ``target``'s children already hold: on a page of its own
        (``own``) its children are ours; on a shared page, the ones that follow, in order, the
        last copy of the first (a head that names the run, so no other delivery writes it)."""
        texts = [_plain(block) async for block in self.mirror.api.children(target)]
        if own:
            return min(len(texts), len(blocks))
        heads = [i for i, text in enumerate(texts) if text == _plain(blocks[0])]
        if not heads:
            return 0
        matched = 1
        for text in texts[heads[-1] + 1 :]:
            if matched < len(blocks) and text == _plain(blocks[matched]):
                matched += 1
        return matched

    async def _append_rest(
        self,
        key: str,
        target: str,
        blocks: list[dict[str, Any]],
        state: Mapping[str, Any],
        *,
        own: bool,
        extra: Mapping[str, Any],
    ) -> None:
        """Append ``blocks`` to ``target`` from where ``state`` (the recorded progress) says,
        100 at a time. Each batch is recorded as being sent before it is sent and as sent
        after, so a retry after an attempt that died in between (or whose answer was lost)
        reads the page to learn whether that batch arrived, rather than sending it twice."""
        sent = int(state.get("blocks", 0))
        sending = int(state.get("sending", sent))
        if sending > sent:  # the last attempt may have appended blocks[sent:sending]
            present = await self._present(target, blocks, own=own)
            sent = sending if present >= sending else sent
        while sent < len(blocks):
            batch = blocks[sent : sent + MAX_CHILDREN]
            progress = {**extra, "blocks": sent, "sending": sent + len(batch)}
            await asyncio.to_thread(self._record, key, target, progress)
            await self.mirror.api.append(target, batch)
            sent += len(batch)
            await asyncio.to_thread(self._record, key, target, {**extra, "blocks": sent})

    async def _create_page(
        self,
        database_id: str,
        run_id: str,
        p: Mapping[str, Any],
        first: list[dict[str, Any]],
        state: Mapping[str, Any],
    ) -> str:
        """The page for ``run_id`` in ``database_id``: the one an earlier attempt created (when
        ``state`` says one was being created), else a new one holding ``first``."""
        source_id, title_name = await self._data_source(database_id)
        found = await self._created_page(source_id, run_id) if state else None
        if found is not None:
            return found
        await asyncio.to_thread(self._record, f"action:{run_id}", "", _PAGE | {"creating": True})
        options = p.get("options") or {}
        title = _fill(str(options.get("title") or "{behavior} {date}"), p)
        page = await self.mirror.api.create_page(
            {"type": "data_source_id", "data_source_id": source_id},
            {
                title_name: {"title": [_text(title[:2000])]},
                RUN_PROPERTY: {"rich_text": [_text(run_id)]},
            },
            first,
        )
        return str(page["id"])

    async def deliver_page(self, item: OutboxItem) -> None:
        """A new row in the behavior's ``database_id`` (resolved to its data source): the
        title from the template, the run id in ``Ledger run``, the output (masked as stored)
        as the page's content. Created once: an attempt notes that it is creating the page
        before it asks, so a retry after an attempt that died before recording the page (or
        lost Notion's answer) looks the page up by its run id instead of making another."""
        p = item.payload
        options = p.get("options") or {}
        run_id = str(p.get("run_id"))
        key = f"action:{run_id}"
        content = [_paragraph(piece) for piece in chunks(mask_text(str(p.get("output") or "")))]
        first = content[:MAX_CHILDREN]
        try:
            done = await asyncio.to_thread(self._done, key)
            state: Mapping[str, Any] = (done.properties or {}) if done is not None else {}
            page_id = done.page_id if done is not None else ""
            if page_id and "blocks" not in state:
                return  # recorded whole by an earlier version
            if not page_id:
                database_id = str(options.get("database_id") or "")
                if not database_id:
                    raise DeliveryError(
                        "the notion_page action needs a database_id", permanent=True
                    )
                try:
                    found = await self._create_page(database_id, run_id, p, first, state)
                except NotionError as exc:
                    if not _missing_run_property(exc) or database_id not in self._sources:
                        raise
                    # The operator removed or renamed the column since this process cached the
                    # data source: read it again (which adds the property back) and go on.
                    del self._sources[database_id]
                    found = await self._create_page(database_id, run_id, p, first, state)
                page_id, state = found, _PAGE | {"blocks": len(first)}
                await asyncio.to_thread(self._record, key, page_id, dict(state))
            await self._append_rest(key, page_id, content, state, own=True, extra=_PAGE)
        except NotionError as exc:
            raise delivery_error(exc) from exc

    async def deliver_append(self, item: OutboxItem) -> None:
        """The output appended to the behavior's ``page_id`` under a head line naming the run,
        in batches of 100 blocks; the batches already appended are remembered, and a batch an
        interrupted attempt may have sent is looked for on the page, so a retry repeats
        nothing."""
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
            state = (done.properties or {}) if done is not None else {}
            await self._append_rest(key, page_id, blocks, state, own=False, extra={})
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
