"""The mirror's own tables: where its databases are (``notion_workspace``) and which Notion
page holds each row it wrote, with the properties last sent (``notion_page``). Helpers add and
flush; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlmodel import Session, col, select

from ledger.db.models import NotionPage, NotionWorkspace, OutboxRow
from ledger.notion.schema import WorkspaceIds

__all__ = [
    "NOTION_KINDS",
    "dead_notion_rows",
    "load_workspace",
    "notion_queue",
    "record_page",
    "save_workspace",
]

NOTION_KINDS: Final = (
    "mirror",
    "notion.event_log",
    "action.notion_page",
    "action.notion_append",
)


def load_workspace(session: Session) -> NotionWorkspace | None:
    """The configured databases, or None before ``ledger notion init``."""
    return session.get(NotionWorkspace, 1)


def save_workspace(session: Session, ids: WorkspaceIds, now: datetime) -> NotionWorkspace:
    """Store (or replace) the databases ``init_workspace`` created or adopted. Replacing them
    forgets the pages recorded for the old ones (``ledger notion sync`` finds them by Key)."""
    row = session.get(NotionWorkspace, 1)
    if row is None:
        row = NotionWorkspace(
            id=1,
            created_at=now,
            parent_page_id=ids.parent_page_id,
            behaviors_database_id=ids.databases["behaviors"],
            behaviors_data_source_id=ids.data_sources["behaviors"],
            ledger_database_id=ids.databases["ledger"],
            ledger_data_source_id=ids.data_sources["ledger"],
            approvals_database_id=ids.databases["approvals"],
            approvals_data_source_id=ids.data_sources["approvals"],
        )
    else:
        if row.behaviors_data_source_id != ids.data_sources["behaviors"]:
            session.execute(sa.delete(NotionPage))
        row.parent_page_id = ids.parent_page_id
        for table in ("behaviors", "ledger", "approvals"):
            setattr(row, f"{table}_database_id", ids.databases[table])
            setattr(row, f"{table}_data_source_id", ids.data_sources[table])
    session.add(row)
    session.flush()
    return row


def record_page(
    session: Session,
    key: str,
    page_id: str,
    properties: dict[str, Any],
    now: datetime,
    content_chars: int | None = None,
) -> None:
    """Remember the page holding row ``key`` and the properties it now has."""
    page = session.get(NotionPage, key)
    if page is None:
        page = NotionPage(key=key, page_id=page_id, properties=properties, updated_at=now)
    else:
        page.page_id = page_id
        page.properties = properties
        page.updated_at = now
    if content_chars is not None:
        page.content_chars = content_chars
    session.add(page)
    session.flush()


def notion_queue(session: Session) -> dict[str, int]:
    """Notion work in the outbox by status (``pending``, ``in_flight``, ``dead``…)."""
    stmt = (
        sa.select(col(OutboxRow.status), sa.func.count())
        .where(col(OutboxRow.kind).in_(NOTION_KINDS))
        .group_by(col(OutboxRow.status))
    )
    return {str(status): int(n) for status, n in session.execute(stmt).all()}


def dead_notion_rows(session: Session, limit: int = 10) -> list[OutboxRow]:
    """Notion work that will not be retried (newest first), with Notion's message."""
    stmt = (
        select(OutboxRow)
        .where(col(OutboxRow.kind).in_(NOTION_KINDS), col(OutboxRow.status) == "dead")
        .order_by(col(OutboxRow.id).desc())
        .limit(limit)
    )
    return list(session.exec(stmt).all())
