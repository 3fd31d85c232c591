"""the daemon's view of each behavior's key: why it cannot be resolved in the daemon's
environment (``ledger status`` shows it as a problem instead of ``active``)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 10:00:00

A nullable column; the daemon fills it at its next reconcile of the behaviors folder.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("behavior", sa.Column("key_problem", sa.String(length=1000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("behavior") as batch:
        batch.drop_column("key_problem")
