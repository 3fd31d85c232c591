"""cost anomaly: ``behavior.recent_costs``

Revision ID: 0014_cost_anomaly
Revises: 0013_ingest_pending_spend
Create Date: 2026-12-06 01:40:00

The costs of each behavior's most recent runs that had one (oldest first), what the
``cost_anomaly`` gate judges a run against; kept on the behavior's row so recording a run reads
no run history. Filled here from each behavior's last 20 finished runs with a cost (the larger of
the runner's and broadcast's figures), so judging starts at once after the upgrade; one indexed
read per behavior (``ix_run_behavior_id_claimed_at``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_cost_anomaly"
down_revision: str | None = "0013_ingest_pending_spend"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL_RUNS = 20  # the default checks.cost_anomaly.window_runs

_RECENT = sa.text(
    "SELECT cost_usd, broadcast_cost_usd FROM run WHERE behavior_id = :bid "
    "AND status NOT IN ('claimed', 'running') "
    "AND (cost_usd > 0 OR broadcast_cost_usd > 0) "
    "ORDER BY claimed_at DESC LIMIT :n"
)


def upgrade() -> None:
    # A plain ADD COLUMN (SQLite has it): a batch copy of the table would trip the foreign
    # keys of the rows that point at it.
    op.add_column(
        "behavior",
        sa.Column("recent_costs", sa.JSON(), nullable=False, server_default=sa.text("'[]'")),
    )
    conn = op.get_bind()
    behavior = sa.table("behavior", sa.column("id", sa.Integer), sa.column("recent_costs", sa.JSON))
    for (bid,) in conn.execute(sa.select(behavior.c.id)).all():
        rows = conn.execute(_RECENT, {"bid": bid, "n": _BACKFILL_RUNS}).all()
        costs = [max(runner or 0.0, broadcast or 0.0) for runner, broadcast in reversed(rows)]
        if costs:
            conn.execute(sa.update(behavior).where(behavior.c.id == bid).values(recent_costs=costs))


def downgrade() -> None:
    with op.batch_alter_table("behavior") as batch:
        batch.drop_column("recent_costs")
