"""How long a test waits for its fresh database: migrated per test (``alembic upgrade head`` on an
empty SQLite file or PostgreSQL schema, as the fixtures did) against migrated once per worker
(a copy of the template file; the worker's schema reset). On demand:

    .venv/bin/python -m tests.benchmarks.bench_databases [--rounds 20]

PostgreSQL is measured when LEDGER_TEST_DATABASE_URL is set. Both ways are measured in the same
run, interleaved, so the ratio holds on a loaded machine.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from ledger.db.session import Database
from tests.databases import (
    PG_URL,
    PostgresSchemas,
    copy_sqlite,
    migrated_sqlite_template,
    pg_schema_url,
    sqlite_url,
)


def _timed(step: Callable[[], object]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def _sqlite(rounds: int, folder: Path) -> tuple[list[float], list[float]]:
    template = migrated_sqlite_template(folder)
    per_test, copied = [], []
    for i in range(rounds):

        def migrate(i: int = i) -> None:
            Database.open(sqlite_url(folder / f"m{i}.db"), migrate=True).close()

        per_test.append(_timed(migrate))
        copied.append(_timed(lambda i=i: copy_sqlite(template, folder / f"c{i}.db")))
    return per_test, copied


def _postgres(rounds: int, admin_url: str) -> tuple[list[float], list[float]]:
    admin = sa.create_engine(admin_url)
    schemas = PostgresSchemas(admin_url, "bench")
    schemas.fresh_url()  # the worker's one migration, before the clock starts
    per_test, reset = [], []
    try:
        for _ in range(rounds):
            schema = f"bench_{secrets.token_hex(4)}"

            def migrate(schema: str = schema) -> None:
                with admin.begin() as conn:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
                Database.open(pg_schema_url(admin_url, schema), migrate=True).close()
                with admin.begin() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')

            per_test.append(_timed(migrate))
            reset.append(_timed(schemas.fresh_url))
        assert schemas.migrations == 1, "a reset fell back to migrating"
    finally:
        schemas.close()
        admin.dispose()
    return per_test, reset


def _report(backend: str, before: list[float], after: list[float]) -> None:
    b, a = statistics.median(before) * 1000, statistics.median(after) * 1000
    print(
        f"{backend:<11} migrate per test {b:8.1f} ms   once per worker {a:7.1f} ms   "
        f"{b / a:6.1f}x faster (medians of {len(before)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        _report("SQLite", *_sqlite(args.rounds, Path(folder)))
    if PG_URL:
        _report(
            "PostgreSQL",
            *_postgres(args.rounds, PG_URL.replace("postgresql://", "postgresql+psycopg://")),
        )
    else:
        print("PostgreSQL  skipped: set LEDGER_TEST_DATABASE_URL")


if __name__ == "__main__":
    main()
