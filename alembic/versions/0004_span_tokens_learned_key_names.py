"""span tokens and learned key names: each broadcast generation's tokens on its span row,
spans indexed by run, and the key name ``ledger keys check`` learned for a behavior

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 11:30:00

Two nullable columns, added in place (no table rewrite on SQLite or PostgreSQL). Spans stored
before this revision keep NULL tokens; their ``data`` still holds the attributes. The partial
index (spans that belong to a run) serves a run's page, which sums its broadcast tokens.
``behavior.learned_key_name`` is NULL until ``ledger keys check`` learns one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HAS_RUN = sa.text("run_id IS NOT NULL")


def upgrade() -> None:
    op.add_column("ingested_span", sa.Column("prompt_tokens", sa.Integer(), nullable=True))
    op.add_column("ingested_span", sa.Column("completion_tokens", sa.Integer(), nullable=True))
    op.add_column("behavior", sa.Column("learned_key_name", sa.String(length=200), nullable=True))
    op.create_index(
        "ix_ingested_span_run_id",
        "ingested_span",
        ["run_id"],
        unique=False,
        postgresql_where=_HAS_RUN,
        sqlite_where=_HAS_RUN,
    )


def downgrade() -> None:
    op.drop_index(
        "ix_ingested_span_run_id",
        table_name="ingested_span",
        postgresql_where=_HAS_RUN,
        sqlite_where=_HAS_RUN,
    )
    with op.batch_alter_table("behavior", schema=None) as batch_op:
        batch_op.drop_column("learned_key_name")
    with op.batch_alter_table("ingested_span", schema=None) as batch_op:
        batch_op.drop_column("completion_tokens")
        batch_op.drop_column("prompt_tokens")
