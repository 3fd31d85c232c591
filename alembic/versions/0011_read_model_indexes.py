"""indexes for the tier board, behavior pages and ``ledger status`` at 10,000 behaviors and
millions of runs: attributable failures by time (a partial index), runs by claim time, budget
windows by start, ledger entries by kind and time

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-12 10:00:00

Indexes only; nothing is rewritten. On a big PostgreSQL database, build them beforehand with
``CREATE INDEX CONCURRENTLY`` under the same names to avoid the write lock, then upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PROBLEM_PG = sa.text("attributable AND outcome <> 'pass'")
_PROBLEM_SQLITE = sa.text("attributable = 1 AND outcome <> 'pass'")


def upgrade() -> None:
    op.create_index(
        "ix_gate_result_problem_created_at",
        "gate_result",
        ["created_at", "behavior_id"],
        postgresql_where=_PROBLEM_PG,
        sqlite_where=_PROBLEM_SQLITE,
    )
    # Covering: the last 24 hours' cost disagreements are read from the index alone.
    op.create_index(
        "ix_run_claimed_at", "run", ["claimed_at", "behavior_id", "cost_usd", "broadcast_cost_usd"]
    )
    op.create_index("ix_budget_window_window_start", "budget_window", ["window_start"])
    op.create_index("ix_ledger_entry_kind_created_at", "ledger_entry", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_entry_kind_created_at", table_name="ledger_entry")
    op.drop_index("ix_budget_window_window_start", table_name="budget_window")
    op.drop_index("ix_run_claimed_at", table_name="run")
    op.drop_index("ix_gate_result_problem_created_at", table_name="gate_result")
