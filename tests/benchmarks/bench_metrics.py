"""Benchmark: a ``/metrics`` scrape's database part and a named token's lookup stay cheap
from 100 to 10,000 behaviors.

Run on demand (not part of the test suite):

    python -m tests.benchmarks.bench_metrics [--pg URL] [--sizes 100,10000] [--n 50]

For each database and size it bulk-inserts that many behaviors (spread over the tiers), 50
outbox rows per 100 behaviors (one in ten pending), a broadcast backlog and 100 named tokens,
then times N renders of the metrics exposition (``ledger.metrics.render``: counters plus the
gauges' aggregate queries) and N lookups of a named token (``ledger.tokens.find_token``, what
every request with a named token costs). Baseline, in the same run: a transaction running
``SELECT 1``. Prints medians and p99, and the ratios to the baseline and to the smallest size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from ledger.db.models import ApiToken, BehaviorRow, IngestDelivery, OutboxRow
from ledger.db.session import Database
from ledger.metrics import render
from ledger.tokens import create_token, digest, find_token

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fill(db: Database, behaviors: int) -> str:
    """The rows for ``behaviors`` behaviors; returns a named token's value."""
    table = BehaviorRow.__table__  # type: ignore[attr-defined]
    rows = [
        {
            "name": f"b{i:05d}",
            "tier": "ABC"[i % 3],
            "max_tier": "C",
            "paused": False,
            "pinned": False,
            "retired": i % 50 == 0,
            "enabled": True,
            "definition_hash": "0" * 64,
            "definition": {},
            "prompt_text": "",
            "source_path": f"behaviors/b{i:05d}.yaml",
            "policy_window": {},
            "created_at": T0,
            "updated_at": T0,
        }
        for i in range(behaviors)
    ]
    outbox = [
        {
            "kind": "alert",
            "payload": {},
            "status": "pending" if i % 10 == 0 else "delivered",
            "attempts": 1,
            "next_attempt_at": T0 + timedelta(seconds=i),
            "created_at": T0 + timedelta(seconds=i),
        }
        for i in range(behaviors // 2)
    ]
    deliveries = [
        {"received_at": T0, "span_count": 3, "spans": "[]"} for _ in range(max(1, behaviors // 100))
    ]
    tokens = [
        {
            "name": f"t{i}",
            "role": "viewer",
            "token_sha256": digest(f"ldg_bench-{i}"),
            "created_at": T0,
            "created_by": "bench",
        }
        for i in range(100)
    ]
    with db.engine.begin() as conn:
        conn.execute(sa.insert(table), rows)
        conn.execute(sa.insert(OutboxRow.__table__), outbox)  # type: ignore[attr-defined]
        conn.execute(sa.insert(IngestDelivery.__table__), deliveries)  # type: ignore[attr-defined]
        conn.execute(sa.insert(ApiToken.__table__), tokens)  # type: ignore[attr-defined]
    with db.transaction() as session:
        value, _ = create_token(session, "bench", "viewer", actor="bench", now=T0)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return value


def timed(n: int, work: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        work()
        out.append(time.perf_counter() - t)
    return out


def summary(timings: list[float]) -> tuple[float, float]:
    ordered = sorted(timings)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def bench(url: str, size: int, n: int) -> dict[str, float]:
    db = Database.open(url, migrate=True)
    try:
        token = fill(db, size)
        now = T0 + timedelta(days=1)

        def baseline() -> None:
            with db.transaction() as session:
                session.execute(sa.text("SELECT 1"))

        def lookup() -> None:
            with db.transaction() as session:
                assert find_token(session, token, now=now) is not None

        timed(3, lambda: render(db, now))  # warm up
        base = summary(timed(n, baseline))
        scrape = summary(timed(n, lambda: render(db, now)))
        auth = summary(timed(n, lookup))
        return {
            "baseline_ms": base[0] * 1000,
            "scrape_ms": scrape[0] * 1000,
            "scrape_p99_ms": scrape[1] * 1000,
            "token_ms": auth[0] * 1000,
            "token_p99_ms": auth[1] * 1000,
            "bytes": float(len(render(db, now))),
        }
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", help="PostgreSQL URL of an empty database (schema is created)")
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for backend in ["sqlite", *(["postgresql"] if args.pg else [])]:
        first: dict[str, float] | None = None
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                if backend == "sqlite":
                    url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                else:
                    url = args.pg
                    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
                    with engine.begin() as conn:
                        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                    engine.dispose()
                result = bench(url, size, args.n)
            first = first or result
            print(
                f"{backend:10} behaviors={size:6}  scrape median {result['scrape_ms']:7.2f} ms "
                f"p99 {result['scrape_p99_ms']:7.2f} ms ({result['bytes']:.0f} bytes; "
                f"x{result['scrape_ms'] / result['baseline_ms']:.1f} of SELECT 1 "
                f"{result['baseline_ms']:.2f} ms; x{result['scrape_ms'] / first['scrape_ms']:.2f} "
                f"of {sizes[0]})  token lookup median {result['token_ms']:.2f} ms "
                f"p99 {result['token_p99_ms']:.2f} ms"
            )


if __name__ == "__main__":
    main()
