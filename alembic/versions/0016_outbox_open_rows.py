"""outbox: a partial index of the rows not yet done (pending, in flight, dead) by kind

Revision ID: 0016_outbox_open_rows
Revises: 0015_outbox_discarded_at
Create Date: 2026-12-06 02:45:00

The Notion mirror's health (``ledger notion status``, ``GET /api/notion``, the board's
indicator) counts the Notion rows waiting or dead; without this index that read scanned the
whole outbox, delivered rows included, on every board render.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016_outbox_open_rows"
down_revision: str | None = "0015_outbox_discarded_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "status IN ('pending', 'in_flight', 'dead')"


def upgrade() -> None:
    op.create_index(
        "ix_outbox_open_kind",
        "outbox",
        ["kind", "status", "created_at"],
        postgresql_where=sa.text(_OPEN),
        sqlite_where=sa.text(_OPEN),
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_open_kind", table_name="outbox")
