"""Migrations from empty, down and up again, and the models match the migrated schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from ledger.db.engine import make_engine
from ledger.db.migrate import current_revision, upgrade


def test_upgrade_from_empty_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
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


def test_downgrade_to_base_and_back(database_url: str) -> None:
    engine = make_engine(database_url)
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
