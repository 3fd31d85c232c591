"""Migration 0008: event-shaped ``mirror`` rows queued by an older version are dropped (the
mirror renders rows from the database now); everything else in the outbox stays."""

from __future__ import annotations

from sqlalchemy import text

from ledger.db.engine import make_engine
from ledger.db.migrate import upgrade
from tests.conftest import T0


def test_0008_drops_queued_event_shaped_mirror_rows(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine, "0007")
        rows = [
            ("mirror", "pending", "m1"),
            ("mirror", "dead", "m2"),
            ("mirror", "delivered", "m3"),
            ("alert", "pending", "a1"),
        ]
        with engine.begin() as conn:
            for kind, status, key in rows:
                conn.execute(
                    text(
                        "INSERT INTO outbox (kind, dedup_key, payload, status, attempts, "
                        "next_attempt_at, created_at) VALUES (:k, :d, :p, :s, 0, :t, :t)"
                    ),
                    {"k": kind, "d": key, "p": '{"event": "demotion"}', "s": status, "t": T0},
                )
        upgrade(engine)
        with engine.connect() as conn:
            left = conn.execute(text("SELECT dedup_key FROM outbox ORDER BY dedup_key")).all()
        assert [r[0] for r in left] == ["a1", "m3"]
    finally:
        engine.dispose()
