"""Test databases migrated once per test process (each xdist worker) and handed to each test fresh.

SQLite: ``alembic upgrade head`` builds one template file; each test gets a byte copy of it.
PostgreSQL: one migrated schema per worker; before each test it is put back to the state the
migration left (every table emptied, the rows the migrations seed put back, sequences restored),
which takes milliseconds where a new migrated schema takes half a second. The reset is checked:
when a test changed the schema itself (a table renamed and not back, a column added…), a table
was analyzed (its planner estimate is no longer a new table's), or a connection left from an
earlier test still holds a lock on it, the worker migrates a new schema instead.
Tests that exercise migrations use an empty database (``empty_database_url``), never these.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ledger.db.session import Database

# PostgreSQL to test against as well as SQLite (CI sets it): a database the tests may create and
# drop schemas in.
PG_URL = os.environ.get("LEDGER_TEST_DATABASE_URL")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def migrated_sqlite_template(folder: Path) -> Path:
    """A SQLite file at schema head, closed (its write-ahead log checkpointed into the file)."""
    path = folder / "template.db"
    Database.open(sqlite_url(path), migrate=True).close()
    assert not path.with_name(path.name + "-wal").exists(), "the template's log was not merged"
    return path


def copy_sqlite(template: Path, destination: Path) -> str:
    """A fresh migrated database at ``destination`` (a copy of ``template``); its URL. A test
    that asks for two fixtures at the same path (``database_url`` and ``sqlite_db``) shares it,
    as it did when each migrated the file."""
    if not destination.exists():
        shutil.copyfile(template, destination)
    return sqlite_url(destination)


def pg_schema_url(base_url: str, schema: str) -> str:
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options=-csearch_path%3D{schema}"


# Everything that makes up the schema's shape: relations and their columns, constraints, indexes,
# triggers and functions; and each relation's planner estimate (``reltuples``: -1 until the table
# is first analyzed or vacuumed, which ``ledger status`` shows). Compared before each reset: a
# test that changed the shape, or a table analyzed since the migration, gets the worker a new
# schema.
_SHAPE = sa.text(
    """
    WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()),
    rel AS (SELECT c.* FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns))
    SELECT md5(coalesce(string_agg(item, E'\\n' ORDER BY item), '')) FROM (
      SELECT 'r:' || c.relname || ':' || c.relkind::text || ':' || c.reltuples::text || ':'
             || coalesce(a.attname, '') || ':'
             || coalesce(format_type(a.atttypid, a.atttypmod), '') || ':'
             || coalesce(a.attnotnull::text, '') || ':'
             || coalesce(pg_get_expr(d.adbin, d.adrelid), '') AS item
        FROM rel c
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
      UNION ALL
      SELECT 'c:' || conrelid::regclass::text || ':' || conname || ':' || pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = (SELECT oid FROM ns)
      UNION ALL
      SELECT 'i:' || pg_get_indexdef(c.oid) FROM rel c WHERE c.relkind = 'i'
      UNION ALL
      SELECT 't:' || t.tgrelid::regclass::text || ':' || t.tgname
        FROM pg_trigger t JOIN rel c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
      UNION ALL
      SELECT 'f:' || proname FROM pg_proc WHERE pronamespace = (SELECT oid FROM ns)
    ) items
    """
)


# Whether a connection other than ours holds a lock on anything in the schema: one left by an
# earlier test (a daemon's writer still finishing, a transaction never closed). Rows deleted
# under it could come back, and DDL a test runs would wait for it: the worker moves on to a new
# schema instead (the old one is dropped at the end).
_LOCKED_BY_OTHERS = sa.text(
    """
    SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
       AND l.pid <> pg_backend_pid()
    """
)


@dataclass
class _Baseline:
    """What ``alembic upgrade head`` left in a schema: its shape, rows and sequence positions."""

    shape: str
    tables: list[sa.Table]  # parents before children
    rows: dict[str, list[dict[str, Any]]]
    sequences: dict[str, tuple[int, bool]]

    @property
    def empty_all(self) -> str:
        """One round trip that deletes every row, children first."""
        # Table names reflected from the schema the migration made, not input.
        return "; ".join(f'DELETE FROM "{t.name}"' for t in reversed(self.tables))  # noqa: S608

    @property
    def restore_sequences(self) -> str:
        """One round trip that puts every sequence back where the migration left it."""
        calls = ", ".join(
            f"setval('\"{name}\"', {value}, {'true' if called else 'false'})"
            for name, (value, called) in self.sequences.items()
        )
        return f"SELECT {calls}"


@dataclass
class PostgresSchemas:
    """One migrated schema for this worker, reset before each test (see the module docstring)."""

    admin_url: str
    worker: str
    schema: str = ""
    baseline: _Baseline | None = None
    engine: sa.Engine | None = None
    used: bool = False
    abandoned: list[str] = field(default_factory=list)
    migrations: int = 0

    def fresh_url(self) -> str:
        """The URL of a schema at head holding only what the migrations put there."""
        if self.engine is None or (self.used and not self._reset()):
            self._new_schema()
        self.used = True
        return pg_schema_url(self.admin_url, self.schema)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        admin = sa.create_engine(self.admin_url)
        try:
            for schema in [*self.abandoned, self.schema]:
                if schema:
                    try:
                        with admin.begin() as conn:
                            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                    except sa.exc.OperationalError:
                        pass  # held by a connection a test leaked; the database is a test one
        finally:
            admin.dispose()

    def _new_schema(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.abandoned.append(self.schema)
        self.schema = f"t_{self.worker}_{secrets.token_hex(4)}"
        admin = sa.create_engine(self.admin_url)
        try:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
        finally:
            admin.dispose()
        url = pg_schema_url(self.admin_url, self.schema)
        Database.open(url, migrate=True).close()
        self.migrations += 1
        self.engine = sa.create_engine(url, pool_size=1, max_overflow=0)
        self.baseline = self._snapshot()
        self.used = False

    def _snapshot(self) -> _Baseline:
        assert self.engine is not None
        metadata = sa.MetaData()
        with self.engine.connect() as conn:
            metadata.reflect(conn)
            shape = conn.execute(_SHAPE).scalar_one()
            rows = {
                table.name: [dict(row) for row in conn.execute(sa.select(table)).mappings()]
                for table in metadata.sorted_tables
            }
            # A sequence never used has no last_value: setval(start, is_called=false) is its
            # state.
            sequences = {
                name: (value, called)
                for name, value, called in conn.exec_driver_sql(
                    "SELECT sequencename, coalesce(last_value, start_value), last_value IS NOT NULL"
                    " FROM pg_sequences WHERE schemaname = current_schema()"
                )
            }
        return _Baseline(shape, list(metadata.sorted_tables), rows, sequences)

    def _reset(self) -> bool:
        """Put the schema back to its baseline; False when that cannot be done safely."""
        assert self.engine is not None and self.baseline is not None
        baseline = self.baseline
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
                if conn.execute(_LOCKED_BY_OTHERS).scalar_one():
                    return False
                if conn.execute(_SHAPE).scalar_one() != baseline.shape:
                    return False
                conn.exec_driver_sql(baseline.empty_all)
                for table in baseline.tables:
                    if baseline.rows[table.name]:
                        conn.execute(table.insert(), baseline.rows[table.name])
                if baseline.sequences:
                    conn.exec_driver_sql(baseline.restore_sequences)
        except sa.exc.DBAPIError:
            return False
        return True
