"""alerts: dedup windows per (channel, behavior, event) and operator silences

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05 01:30:00

Two new tables; nothing existing changes. Outbox rows may now also be ``discarded`` (a status
value, no schema change).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert_window",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=200), nullable=False),
        sa.Column("behavior", sa.String(length=63), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_window")),
        sa.UniqueConstraint(
            "channel", "behavior", "event", name=op.f("uq_alert_window_channel_behavior_event")
        ),
    )
    op.create_table(
        "silence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("behavior_id", sa.Integer(), nullable=True),
        sa.Column("behavior_name", sa.String(length=63), nullable=True),
        sa.Column("reason", sa.String(length=4000), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=200), nullable=True),
        sa.Column("muted", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["behavior_id"], ["behavior.id"], name=op.f("fk_silence_behavior_id_behavior")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_silence")),
    )
    op.create_index("ix_silence_ended_at_ends_at", "silence", ["ended_at", "ends_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_silence_ended_at_ends_at", table_name="silence")
    op.drop_table("silence")
    op.drop_table("alert_window")
