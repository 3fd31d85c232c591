"""Shared fixtures: real databases (SQLite always, PostgreSQL when LEDGER_TEST_DATABASE_URL is
set), migrated once per worker by ``alembic upgrade head`` and fresh for each test
(tests/databases.py)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from ledger.db.session import Database
from tests.databases import (
    PG_URL,
    PostgresSchemas,
    copy_sqlite,
    migrated_sqlite_template,
    pg_schema_url,
    sqlite_url,
)

# Kept importable from here for tests written against conftest: new tests import them from
# tests.factories and tests.servers.
from tests.factories import (  # noqa: F401
    T0,
    VALID_BEHAVIOR,
    registered_at_b_with_a_pending_approval,
    write_behavior,
)
from tests.servers import Daemon, daemon_starter, free_port  # noqa: F401

hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200)
hypothesis_settings.register_profile("dev", deadline=None, max_examples=100)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The broadcast processor runs in the daemon's own thread in tests (a child process per daemon
# would cost every test that opens one a second interpreter, and could not follow a test's
# clock); tests/ingest/test_worker.py and the crash test run it in its process, the default.
os.environ.setdefault("LEDGER_INGEST_PROCESSOR", "thread")

BACKENDS = ["sqlite", *(["postgresql"] if PG_URL else [])]


def _pg_schema_url(schema: str) -> str:
    assert PG_URL is not None
    return pg_schema_url(PG_URL, schema)


@pytest.fixture(autouse=True)
def _no_real_openrouter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the real OpenRouter: a daemon a test starts without naming a simulator
    talks to a closed local port (the model catalog's first fetch fails fast, offline)."""
    monkeypatch.setenv("LEDGER_OPENROUTER_BASE_URL", "http://127.0.0.1:9")


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This worker's SQLite file at schema head, copied for each test."""
    return migrated_sqlite_template(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def _postgres_schemas(worker_id: str) -> Iterator[PostgresSchemas]:
    """This worker's migrated PostgreSQL schema, reset before each test."""
    assert PG_URL is not None
    schemas = PostgresSchemas(PG_URL.replace("postgresql://", "postgresql+psycopg://"), worker_id)
    try:
        yield schemas
    finally:
        schemas.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to a fresh database of each backend at schema head, for this test alone: SQLite at
    ``tmp_path/ledger.db``, PostgreSQL in a schema of its own (``search_path``). Migrated once per
    worker, not per test (see tests/databases.py); ``Database.open(url, migrate=True)`` on it is a
    no-op. Use ``empty_database_url`` for a database that was never migrated."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        return copy_sqlite(template, tmp_path / "ledger.db")
    schemas: PostgresSchemas = request.getfixturevalue("_postgres_schemas")
    return schemas.fresh_url()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each backend (no tables, no schema revision), dropped after
    the test: for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "ledger.db")
        return
    assert PG_URL is not None
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """The database at ``database_url``, opened (at schema head already)."""
    database = Database.open(database_url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sqlite_db(tmp_path: Path, _sqlite_template: Path) -> Iterator[Database]:
    database = Database.open(copy_sqlite(_sqlite_template, tmp_path / "ledger.db"))
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``ledger serve`` processes (tests/servers.py); killed after the test."""
    yield from daemon_starter(tmp_path)
