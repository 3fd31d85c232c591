"""multi-model runs: ``run.kind`` and ``run.summary``, the per-call record ``run_call`` and the
canvas skip list ``model_health``

Revision ID: 0012
Revises: 0007
Create Date: 2026-12-05 01:30:00

Existing runs are ``single``; the new tables start empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from ledger.db.models import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), server_default="single", nullable=False)
        )
        batch.add_column(sa.Column("summary", sa.JSON(), nullable=True))
    op.create_table(
        "run_call",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("behavior_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("model_asked", sa.String(length=200), nullable=False),
        sa.Column("model_answered", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("gate", sa.String(length=32), nullable=True),
        sa.Column("error", sa.String(length=2000), nullable=True),
        sa.Column("timeout_seconds", sa.Float(), nullable=True),
        sa.Column("latency_seconds", sa.Float(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("reserved_usd", sa.Float(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("generation_id", sa.String(length=100), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("output_sha256", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["behavior_id"], ["behavior.id"], name="fk_run_call_behavior_id_behavior"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], name="fk_run_call_run_id_run"),
        sa.PrimaryKeyConstraint("id", name="pk_run_call"),
        sa.UniqueConstraint("run_id", "round", "slot", name="uq_run_call_run_id_round_slot"),
    )
    op.create_index("ix_run_call_run_id", "run_call", ["run_id"])
    op.create_table(
        "model_health",
        sa.Column("behavior_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("last_run_id", sa.String(length=40), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["behavior_id"], ["behavior.id"], name="fk_model_health_behavior_id_behavior"
        ),
        sa.PrimaryKeyConstraint("behavior_id", "model", name="pk_model_health"),
    )


def downgrade() -> None:
    op.drop_table("model_health")
    op.drop_index("ix_run_call_run_id", table_name="run_call")
    op.drop_table("run_call")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("summary")
        batch.drop_column("kind")
