"""Benchmark: recording a result and deciding costs the same with 10 or 1,000,000 past results.

Run on demand (not part of the test suite):

    python -m tests.benchmarks.bench_policy [--pg URL] [--sizes 10,10000,1000000] [--n 300]

For each database and history size it fills a behavior's past with that many gate results
(bulk insert), then times N full decisions: one transaction that locks the behavior, stores a
gate result, folds it into the policy window, decides and applies. Prints median and p99 per
size and the ratio to the smallest size, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from ledger.behaviors.registry import reconcile_directory
from ledger.db.models import GateResultRow
from ledger.db.session import Database
from ledger.gates import Gate, GateResult, Outcome
from ledger.policy import Observation
from ledger.transitions import PolicyContext, apply_observation, lock_behavior, record_results

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BEHAVIOR = """schedule: 15m
preset: bench
api_key: env:BENCH_KEY
prompt: hi
policy:
  warn_limit: 100
  warn_window_runs: 100
"""


def fill(db: Database, behavior_id: int, count: int) -> None:
    """Insert ``count`` past results for the behavior (bulk, outside the timed part)."""
    batch = 20_000
    table = GateResultRow.__table__  # type: ignore[attr-defined]
    done = 0
    while done < count:
        n = min(batch, count - done)
        rows = [
            {
                "behavior_id": behavior_id,
                "run_id": None,
                "gate": "output_check",
                "outcome": "pass" if i % 7 else "warn",
                "attributable": True,
                "source": "runner",
                "evidence": {},
                "created_at": T0 + timedelta(seconds=done + i),
            }
            for i in range(n)
        ]
        with db.engine.begin() as conn:
            conn.execute(sa.insert(table), rows)
        done += n
    if db.engine.dialect.name == "postgresql":
        # Measure the steady state, not autovacuum catching up with a bulk load.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE gate_result")
            conn.exec_driver_sql("CHECKPOINT")


def measure(db: Database, name: str, n: int, start: datetime) -> list[float]:
    ctx = PolicyContext()
    timings: list[float] = []
    for i in range(n):
        at = start + timedelta(seconds=i)
        outcome = Outcome.PASS if i % 5 else Outcome.WARN
        t = time.perf_counter()
        with db.transaction() as session:
            row = lock_behavior(session, name=name)
            stored = record_results(
                session,
                row,
                [GateResult(Gate.OUTPUT_CHECK, outcome, True)],
                now=at,
                source="bench",
            )
            apply_observation(session, row, Observation.result(at, stored[0]), now=at, ctx=ctx)
        timings.append(time.perf_counter() - t)
    return timings


def bench(url: str, label: str, sizes: list[int], n: int) -> None:
    db = Database.open(url, migrate=True)
    folder = Path(tempfile.mkdtemp())
    try:
        base: float | None = None
        for size in sizes:
            name = f"bench-{size}"
            (folder / f"{name}.yaml").write_text(BEHAVIOR.replace("BENCH_KEY", f"BENCH_KEY_{size}"))
            with db.transaction() as session:
                reconcile_directory(session, folder, T0)
                bid = lock_behavior(session, name=name).id or 0
            t = time.perf_counter()
            fill(db, bid, size)
            fill_s = time.perf_counter() - t
            measure(db, name, 20, T0 + timedelta(days=400))  # warm-up
            timings = sorted(measure(db, name, n, T0 + timedelta(days=500)))
            median = statistics.median(timings) * 1000
            p99 = timings[int(len(timings) * 0.99) - 1] * 1000
            base = base or median
            print(
                f"{label:10s} past={size:>9,d}  median={median:7.3f} ms  p99={p99:7.3f} ms  "
                f"ratio_vs_smallest={median / base:5.2f}  (fill {fill_s:.1f}s)",
                flush=True,
            )
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg", default=None, help="PostgreSQL URL (a scratch database)")
    parser.add_argument("--sizes", default="10,10000,1000000")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp()) / "bench.db"
    bench(f"sqlite:///{tmp}", "sqlite", sizes, args.n)
    if args.pg:
        bench(args.pg, "postgresql", sizes, args.n)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
