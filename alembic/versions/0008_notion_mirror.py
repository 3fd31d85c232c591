"""the Notion mirror: the databases ``ledger notion init`` created or adopted (with their data
sources and the feeder's cursors), and every Notion row the mirror wrote (its page id and the
properties last sent); event-shaped ``mirror`` outbox rows of older versions are dropped

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 01:30:00

Queued ``mirror`` rows written by older versions described events, not rows; the mirror now
renders each row from the database, and ``ledger notion sync`` (or the first feed after
``ledger notion init``) writes every row, so those rows are deleted here (counted in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.db.models import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    op.create_table(
        "notion_workspace",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("parent_page_id", sa.String(length=64), nullable=False),
        sa.Column("behaviors_database_id", sa.String(length=64), nullable=False),
        sa.Column("behaviors_data_source_id", sa.String(length=64), nullable=False),
        sa.Column("ledger_database_id", sa.String(length=64), nullable=False),
        sa.Column("ledger_data_source_id", sa.String(length=64), nullable=False),
        sa.Column("approvals_database_id", sa.String(length=64), nullable=False),
        sa.Column("approvals_data_source_id", sa.String(length=64), nullable=False),
        sa.Column("entry_cursor", sa.Integer(), nullable=False),
        sa.Column("approval_cursor", sa.Integer(), nullable=False),
        sa.Column("event_cursor", sa.Integer(), nullable=False),
        sa.Column("run_cursor", UTCDateTime(), nullable=True),
        sa.Column("behavior_cursor", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_sync_at", UTCDateTime(), nullable=True),
        sa.Column("last_poll_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notion_workspace")),
    )
    op.create_table(
        "notion_page",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("page_id", sa.String(length=64), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=False),
        sa.Column("content_chars", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_notion_page")),
    )
    outbox = sa.table("outbox", sa.column("kind", sa.String), sa.column("status", sa.String))
    dropped = op.get_bind().execute(
        sa.delete(outbox).where(
            outbox.c.kind == "mirror", outbox.c.status.in_(("pending", "in_flight", "dead"))
        )
    )
    if dropped.rowcount:
        log.warning(
            "dropped %d event-shaped Notion mirror row(s) queued by an older version; "
            "`ledger notion sync` writes every row as it is now",
            dropped.rowcount,
        )


def downgrade() -> None:
    op.drop_table("notion_page")
    op.drop_table("notion_workspace")
