"""run leases and masked outputs: a lease on every live run (runs left behind by a crash are
closed as ``interrupted``), the spend window of its reservation, and the model's answer stored
masked with its findings and the original's SHA-256; budget windows realigned on UTC midnight

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 10:00:00

Columns are added in place (nullable). Runs still ``claimed``/``running`` at upgrade get a
lease 15 minutes from now (longer than any call's timeout), so a replica still running an
older version during a rolling upgrade keeps its runs; a daemon that crashed before the upgrade
has its leftovers closed as ``interrupted`` 15 minutes later. Outputs stored before this
revision are not rewritten.

Budget windows used to start at the behavior's local midnight when it had a ``timezone``; they
start at midnight UTC now. Rows whose start is not a UTC midnight are folded into the window
that starts at the nearest UTC midnight (every offset is under 15 hours), so the spend of the
current window is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

from ledger.db.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = sa.text("status IN ('claimed', 'running')")
LEASE_AT_UPGRADE = timedelta(minutes=15)


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("output_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("output_findings", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reserved_window", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_run_live_lease_until",
        "run",
        ["lease_until"],
        unique=False,
        postgresql_where=_LIVE,
        sqlite_where=_LIVE,
    )
    run = sa.table(
        "run",
        sa.column("status", sa.String()),
        sa.column("lease_until", UTCDateTime()),
    )
    op.execute(
        run.update()
        .where(run.c.status.in_(["claimed", "running"]))
        .values(lease_until=datetime.now(UTC) + LEASE_AT_UPGRADE)
    )
    _realign_budget_windows()


def _realign_budget_windows() -> None:
    window = sa.table(
        "budget_window",
        sa.column("behavior_id", sa.Integer()),
        sa.column("window_start", UTCDateTime()),
        sa.column("reserved_usd", sa.Float()),
        sa.column("spent_usd", sa.Float()),
        sa.column("updated_at", UTCDateTime()),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(window)).all()
    totals: dict[tuple[int, datetime], list[float]] = {}
    moved: list[tuple[int, datetime]] = []
    for behavior_id, start, reserved, spent, _updated in rows:
        key = (behavior_id, _nearest_midnight(start))
        total = totals.setdefault(key, [0.0, 0.0])
        total[0] += reserved
        total[1] += spent
        if key[1] != start:
            moved.append((behavior_id, start))
    if not moved:
        return
    now = datetime.now(UTC)
    targets = {(b, _nearest_midnight(s)) for b, s in moved}
    for behavior_id, start in moved + sorted(targets):
        bind.execute(
            window.delete().where(
                window.c.behavior_id == behavior_id, window.c.window_start == start
            )
        )
    for behavior_id, start in sorted(targets):
        reserved, spent = totals[(behavior_id, start)]
        bind.execute(
            window.insert().values(
                behavior_id=behavior_id,
                window_start=start,
                reserved_usd=reserved,
                spent_usd=spent,
                updated_at=now,
            )
        )


def _nearest_midnight(start: datetime) -> datetime:
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(days=1) if start - midnight >= timedelta(hours=12) else midnight


def downgrade() -> None:
    op.drop_index(
        "ix_run_live_lease_until", table_name="run", postgresql_where=_LIVE, sqlite_where=_LIVE
    )
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_column("reserved_window")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("output_findings")
        batch_op.drop_column("output_sha256")
