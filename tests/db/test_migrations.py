"""Migrations from empty, down and up again, and the models match the migrated schema."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import column, inspect, select, table, text
from sqlmodel import SQLModel

from ledger.db.engine import make_engine
from ledger.db.migrate import current_revision, upgrade
from ledger.db.models import UTCDateTime
from tests.factories import T0


def test_upgrade_from_empty_matches_the_models(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        tables = set(inspect(engine).get_table_names())
        assert {"behavior", "run", "gate_result", "ledger_entry", "approval", "outbox"} <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine)
        head = current_revision(engine)
        upgrade_to = "base"
        from alembic import command

        from ledger.db.migrate import alembic_config

        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, upgrade_to)
        assert current_revision(engine) is None
        assert "behavior" not in inspect(engine).get_table_names()
        upgrade(engine)
        assert current_revision(engine) == head
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_with_foreign_keys_and_busy_timeout(tmp_path: object) -> None:
    from pathlib import Path

    engine = make_engine(f"sqlite:///{Path(str(tmp_path)) / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        engine.dispose()


def _downgrade(engine: Any, revision: str) -> None:
    from alembic import command

    from ledger.db.migrate import alembic_config

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_0003_moves_spans_waiting_for_the_processor_into_deliveries(
    empty_database_url: str,
) -> None:
    """Spans 0002 stored but had not processed reach the new processor; processed ones stay;
    down again, deliveries not processed yet become unprocessed spans."""
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine, "0002")
        raw = {"otlp": {"traceId": "a" * 32, "spanId": "1" * 16, "name": "x"}, "resource": []}
        with engine.begin() as conn:
            for trace, span, processed in (("a", "1", None), ("a", "2", None), ("b", "1", T0)):
                conn.execute(
                    text(
                        "INSERT INTO ingested_span (trace_id, span_id, name, source, data, "
                        "received_at, processed_at) VALUES (:t, :s, 'x', 'broadcast', :d, "
                        ":r, :p)"
                    ),
                    {
                        "t": trace * 32,
                        "s": span * 16,
                        "d": orjson.dumps(raw).decode(),
                        "r": T0,
                        "p": processed,
                    },
                )
        upgrade(engine)
        with engine.connect() as conn:
            spans = conn.execute(text("SELECT trace_id FROM ingested_span")).scalars().all()
            deliveries = conn.execute(text("SELECT span_count, spans FROM ingest_delivery")).all()
        assert spans == ["b" * 32]
        assert [count for count, _ in deliveries] == [2]
        entries = orjson.loads(deliveries[0][1])
        assert [(t, s) for t, s, _n, _d in entries] == [("a" * 32, "1" * 16), ("a" * 32, "2" * 16)]
        assert entries[0][3] == raw
        # A request stored as it came and a delivery set aside, then down again.
        request = {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {"spans": [{"traceId": "c" * 32, "spanId": "3" * 16, "name": "req"}]}
                    ]
                }
            ]
        }
        with engine.begin() as conn:
            for spans, aside in ((orjson.dumps(request).decode(), None), ("[[oops", "invalid")):
                conn.execute(
                    text(
                        "INSERT INTO ingest_delivery (received_at, span_count, spans, set_aside) "
                        "VALUES (:r, 1, :s, :a)"
                    ),
                    {"r": T0, "s": spans, "a": aside},
                )
        _downgrade(engine, "0002")
        with engine.connect() as conn:
            back = conn.execute(
                text("SELECT trace_id, span_id FROM ingested_span WHERE processed_at IS NULL")
            ).all()
        assert sorted(back) == [("a" * 32, "1" * 16), ("a" * 32, "2" * 16), ("c" * 32, "3" * 16)]
    finally:
        engine.dispose()


def test_head_revision_read_from_the_files_is_alembics_head(tmp_path: object) -> None:
    from pathlib import Path

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from ledger.db.migrate import head_revision, migrations_dir
    from ledger.errors import ConfigError

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()

    # Two heads (two branches each adding a migration after the same parent) are refused.
    folder = Path(str(tmp_path))
    (folder / "versions").mkdir()
    for name, down in (("0001", None), ("0002a", "0001"), ("0002b", "0001")):
        (folder / "versions" / f"{name}_x.py").write_text(
            f'revision: str = "{name}"\ndown_revision: str | None = {down!r}\n'
        )
    with pytest.raises(ConfigError, match=r"2 heads \(0002a, 0002b\)"):
        head_revision(folder)
    # A merge revision joins them again.
    (folder / "versions" / "0003_merge.py").write_text(
        'revision = "0003"\ndown_revision = ("0002a", "0002b")\n'
    )
    assert head_revision(folder) == "0003"


def test_0014_fills_each_behaviors_recent_costs_from_its_last_runs_with_a_cost(
    empty_database_url: str,
) -> None:
    """Oldest first, the larger of the runner's and broadcast's figures, at most 20; runs
    without a cost and live runs left out; a behavior without runs starts empty."""
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine, "0013_ingest_pending_spend")
        with engine.begin() as conn:
            for bid, name in ((1, "busy"), (2, "idle")):
                conn.execute(
                    text(
                        "INSERT INTO behavior (id, name, tier, max_tier, paused, pinned, retired, "
                        "enabled, definition_hash, definition, prompt_text, source_path, "
                        "policy_window, created_at, updated_at) VALUES (:id, :n, 'A', 'C', "
                        "false, false, false, true, 'h', '{}', '', :p, '{}', :t, :t)"
                    ),
                    {"id": bid, "n": name, "p": f"{name}.yaml", "t": T0},
                )
            runs = [(i, 0.01 * (i + 1), None, "succeeded") for i in range(25)]
            runs += [(25, 0.0, None, "failed"), (26, 0.5, 0.7, "succeeded")]
            runs += [(27, None, None, "skipped"), (28, 0.9, None, "running")]
            for i, cost, broadcast, status in runs:
                conn.execute(
                    text(
                        "INSERT INTO run (id, behavior_id, scheduled_for, claimed_at, trigger, "
                        "status, tier, via_fallback, reserved_usd, cost_usd, "
                        "broadcast_cost_usd, kind) VALUES (:id, 1, :at, :at, 'schedule', :s, "
                        "'A', false, 0, :c, :b, 'single')"
                    ),
                    {
                        "id": f"run-{i:02d}",
                        "at": T0 + timedelta(minutes=i),
                        "s": status,
                        "c": cost,
                        "b": broadcast,
                    },
                )
        upgrade(engine)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, recent_costs FROM behavior ORDER BY id")).all()
        recent = {bid: v if isinstance(v, list) else orjson.loads(v) for bid, v in rows}
        assert recent[2] == []
        assert recent[1] == pytest.approx([0.01 * (i + 1) for i in range(6, 25)] + [0.7])
    finally:
        engine.dispose()


def test_0015_gives_rows_discarded_before_it_the_upgrade_time(empty_database_url: str) -> None:
    """Retention counts a discarded row's age from ``discarded_at``: rows discarded before the
    column existed count from the upgrade, so none is pruned early."""
    engine = make_engine(empty_database_url)
    try:
        upgrade(engine, "0014_cost_anomaly")
        with engine.begin() as conn:
            for status in ("discarded", "delivered", "dead"):
                conn.execute(
                    text(
                        "INSERT INTO outbox (kind, payload, status, attempts, next_attempt_at, "
                        "created_at) VALUES ('action.log', '{}', :s, 1, :t, :t)"
                    ),
                    {"s": status, "t": T0},
                )
        upgrade(engine)
        outbox = table("outbox", column("status"), column("discarded_at", UTCDateTime()))
        with engine.connect() as conn:
            rows = {s: at for s, at in conn.execute(select(outbox.c.status, outbox.c.discarded_at))}
        assert rows["discarded"] is not None and rows["discarded"] > T0
        assert rows["delivered"] is None and rows["dead"] is None
        _downgrade(engine, "0014_cost_anomaly")
        assert "discarded_at" not in {c["name"] for c in inspect(engine).get_columns("outbox")}
    finally:
        engine.dispose()
