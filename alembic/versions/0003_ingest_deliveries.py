"""ingest deliveries: the receiver stores one row per delivery; spans are written processed

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 15:07:07.226911

Spans still waiting for the processor (``processed_at IS NULL``) move into ``ingest_delivery``
(one delivery per trace), so the new processor picks them up; nothing is lost or applied twice.
On PostgreSQL the delivery's text is compressed with lz4 where the server has it (pglz costs
about ten times the rest of the insert), else stored uncompressed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ingest_delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("span_count", sa.Integer(), nullable=False),
        sa.Column("spans", sa.Text(), nullable=False),
        sa.Column("set_aside", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_delivery")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        lz4 = bind.execute(
            sa.text(
                "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
                "AND 'lz4' = ANY(enumvals)"
            )
        ).first()
        op.execute(
            "ALTER TABLE ingest_delivery ALTER COLUMN spans "
            + ("SET COMPRESSION lz4" if lz4 else "SET STORAGE EXTERNAL")
        )
    _move_unprocessed_spans(bind)
    with op.batch_alter_table("ingested_span", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
        batch_op.drop_index(
            "ix_ingested_span_unprocessed_id",
            postgresql_where=sa.text("processed_at IS NULL"),
            sqlite_where=sa.text("processed_at IS NULL"),
        )


def _move_unprocessed_spans(bind: sa.Connection) -> None:
    rows = bind.execute(
        sa.text(
            "SELECT id, trace_id, span_id, name, data, received_at FROM ingested_span "
            "WHERE processed_at IS NULL ORDER BY id"
        )
    ).all()
    by_trace: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_trace[row.trace_id].append(row)
    insert = sa.text(
        "INSERT INTO ingest_delivery (received_at, span_count, spans) "
        "VALUES (:received_at, :span_count, :spans)"
    )
    for trace_rows in by_trace.values():
        entries = [
            [
                r.trace_id,
                r.span_id,
                r.name,
                json.loads(r.data) if isinstance(r.data, str) else r.data,
            ]
            for r in trace_rows
        ]
        bind.execute(
            insert,
            {
                "received_at": trace_rows[0].received_at,  # as stored: same format back
                "span_count": len(entries),
                "spans": json.dumps(entries, separators=(",", ":")),
            },
        )
        bind.execute(
            sa.text("DELETE FROM ingested_span WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": [r.id for r in trace_rows]},
        )


def downgrade() -> None:
    with op.batch_alter_table("ingested_span", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ingested_span_unprocessed_id",
            ["id"],
            unique=False,
            postgresql_where=sa.text("processed_at IS NULL"),
            sqlite_where=sa.text("processed_at IS NULL"),
        )
        batch_op.drop_column("cost_usd")
    # Deliveries not processed yet go back to unprocessed span rows, as 0002 stored them (those
    # set aside, which the processor could not read, are dropped with the table).
    from ledger.ingest.otlp import spans_from_stored_request
    from ledger.ingest.writer import span_data

    bind = op.get_bind()
    for received_at, spans in bind.execute(
        sa.text(
            "SELECT received_at, spans FROM ingest_delivery WHERE set_aside IS NULL ORDER BY id"
        )
    ).all():
        if spans.startswith("{"):  # a request stored as it came
            entries = [
                [r.trace_id, r.span_id, r.name, span_data(r)]
                for r in spans_from_stored_request(spans)
            ]
        else:
            entries = json.loads(spans)
        for trace_id, span_id, name, data in entries:
            bind.execute(
                sa.text(
                    "INSERT INTO ingested_span (trace_id, span_id, name, source, data, "
                    "received_at) VALUES (:t, :s, :n, 'broadcast', :d, :r) "
                    "ON CONFLICT (trace_id, span_id) DO NOTHING"
                ),
                {"t": trace_id, "s": span_id, "n": name, "d": json.dumps(data), "r": received_at},
            )
    op.drop_table("ingest_delivery")
