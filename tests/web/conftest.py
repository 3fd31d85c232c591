"""Fixtures for the web tests: a database a module's tests share."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ledger.db.session import Database
from tests.conftest import BACKENDS
from tests.databases import PG_URL, copy_sqlite, pg_schema_url


@pytest.fixture(scope="module", params=BACKENDS)
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database of each backend for a module's tests to share (a daemon several tests
    use): not the worker's per-test one, which the next test's ``database_url`` resets. Dropped
    after the module."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("_sqlite_template")
        yield copy_sqlite(template, tmp_path_factory.mktemp("module-db") / "ledger.db")
        return
    assert PG_URL is not None
    admin_url = PG_URL.replace("postgresql://", "postgresql+psycopg://")
    schema = f"m_{secrets.token_hex(6)}"
    admin = sa.create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = pg_schema_url(admin_url, schema)
        Database.open(url, migrate=True).close()
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
