"""ingest pending spend: ``ingest_delivery.pending_behavior_id`` / ``pending_usd``

Revision ID: 0013_ingest_pending_spend
Revises: 0012
Create Date: 2026-12-05 22:10:00

The receiver notes the cost a delivery reports for a behavior, so the budget check before a call
counts broadcast spend the processor has not applied yet (summed from a covering partial index).
Deliveries already waiting have none noted (they are counted when processed, as before). A
partial index on the set-aside rows lets the processor measure its backlog without them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_ingest_pending_spend"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


_PENDING = "pending_behavior_id IS NOT NULL AND set_aside IS NULL"
_SET_ASIDE = "set_aside IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("ingest_delivery") as batch:
        batch.add_column(sa.Column("pending_behavior_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pending_usd", sa.Float(), nullable=True))
        batch.create_index(
            "ix_ingest_delivery_pending",
            ["pending_behavior_id", "pending_usd", "set_aside"],
            postgresql_where=sa.text(_PENDING),
            sqlite_where=sa.text(_PENDING),
        )
        batch.create_index(
            "ix_ingest_delivery_set_aside",
            ["id"],
            postgresql_where=sa.text(_SET_ASIDE),
            sqlite_where=sa.text(_SET_ASIDE),
        )


def downgrade() -> None:
    with op.batch_alter_table("ingest_delivery") as batch:
        batch.drop_index(
            "ix_ingest_delivery_set_aside",
            postgresql_where=sa.text(_SET_ASIDE),
            sqlite_where=sa.text(_SET_ASIDE),
        )
        batch.drop_index(
            "ix_ingest_delivery_pending",
            postgresql_where=sa.text(_PENDING),
            sqlite_where=sa.text(_PENDING),
        )
        batch.drop_column("pending_usd")
        batch.drop_column("pending_behavior_id")
