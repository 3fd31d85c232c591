"""outbox discarded_at: when an operator discarded a row

Revision ID: 0015_outbox_discarded_at
Revises: 0014_cost_anomaly
Create Date: 2026-12-06 01:40:00

Retention prunes discarded outbox rows by how long ago they were discarded, as it prunes
delivered rows by ``delivered_at``. Rows discarded before this migration get the time of the
upgrade: they are kept a full retention period from now, never pruned early.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from ledger.db.models import UTCDateTime

revision: str = "0015_outbox_discarded_at"
down_revision: str | None = "0014_cost_anomaly"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("discarded_at", UTCDateTime(), nullable=True))
    outbox = sa.table(
        "outbox", sa.column("status", sa.String()), sa.column("discarded_at", UTCDateTime())
    )
    op.execute(
        outbox.update().where(outbox.c.status == "discarded").values(discarded_at=datetime.now(UTC))
    )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("discarded_at")
