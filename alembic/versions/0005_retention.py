"""retention: the last prune of each table that the daemon prunes

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 13:00:00

A new, small table (one row per pruned table); nothing existing changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "retention_prune",
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_retention_prune")),
    )


def downgrade() -> None:
    op.drop_table("retention_prune")
