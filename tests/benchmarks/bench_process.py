"""Broadcast processor benchmark: the processor alone, on a backlog filled beforehand.

Run on demand (pytest does not collect tests/benchmarks)::

    python -m tests.benchmarks.bench_process [--deliveries 4000] [--behaviors 50]
        [--limit 200] [--databases sqlite,postgresql] [--profile]

Stores ``--deliveries`` deliveries as the receiver does (the same ~5 KB OpenRouter-shaped OTLP
JSON as ``bench_ingest``, a distinct trace id each, kept as they came, with their pending
spend), then times ``process_pending`` working the backlog off with nothing else running:
deliveries applied per second and CPU time per delivery (this process's, so another load on the
machine does not count). With ``--profile`` the drain runs under cProfile and the top functions
by own time are printed. ``bench_ingest --sustained`` measures the same processor beside the
receiver, as a user sees it (freshness).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.behaviors.registry import reconcile_directory
from ledger.db.session import Database
from ledger.ingest.otlp import Limits, RawRequest, decode_for_storage
from ledger.ingest.process import BATCH, DbLookup, process_pending
from ledger.ingest.writer import _DeliveryInsert, _Pending
from ledger.transitions import PolicyContext
from tests.benchmarks.bench_ingest import (
    BEHAVIOR_FILE,
    TEMPLATE_TRACE_ID,
    delivery_template,
    fresh_postgres_schema,
    postgres_url,
)

NOW = datetime(2026, 11, 2, 9, 0, 5, tzinfo=UTC)


@contextmanager
def fresh_database(name: str, workdir: Path) -> Iterator[Database]:
    if name == "postgresql":
        url = postgres_url()
        if url is None:
            raise SystemExit("postgresql: server unreachable")
        with fresh_postgres_schema(url) as schema_url:
            db = Database.open(schema_url, migrate=True)
            try:
                yield db
            finally:
                db.close()
        return
    db = Database.open(f"sqlite:///{workdir / 'bench.db'}", migrate=True)
    try:
        yield db
    finally:
        db.close()


def register(db: Database, workdir: Path, behaviors: list[str]) -> None:
    folder = workdir / "behaviors"
    folder.mkdir(exist_ok=True)
    for index, name in enumerate(behaviors):
        key_env = f"LEDGER_BENCH_KEY_{index}"
        os.environ[key_env] = f"sk-or-v1-{index:04d}{'0' * 60}"
        (folder / f"{name}.yaml").write_text(BEHAVIOR_FILE.format(key_env=key_env, name=name))
    with db.transaction() as session:
        reconcile_directory(session, folder, NOW)


def fill(db: Database, behaviors: list[str], deliveries: int) -> None:
    """Store ``deliveries`` deliveries as the receiver does, round-robin over the behaviors."""
    templates = [delivery_template(name) for name in behaviors]
    insert = _DeliveryInsert(db.engine)
    rows: list[tuple[Any, ...]] = []
    for index in range(deliveries):
        body = templates[index % len(templates)].replace(
            TEMPLATE_TRACE_ID.encode(), f"{index:032x}".encode()
        )
        spans = decode_for_storage(body, "application/json", None, Limits())
        assert isinstance(spans, RawRequest)
        rows.append(insert.row(_Pending(spans, NOW, None)))  # type: ignore[arg-type]
    with db.engine.connect() as conn:
        for start in range(0, len(rows), 500):
            insert.commit(conn, rows[start : start + 500])


def drain(db: Database, limit: int) -> tuple[int, int, float, float]:
    """Process until the backlog is empty: (deliveries, spans, wall seconds, CPU seconds)."""
    lookup = DbLookup(db)
    ctx = PolicyContext()
    deliveries = spans = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while True:
        stats = process_pending(db, lookup, NOW, ctx, limit)
        deliveries += stats.deliveries
        spans += stats.spans
        if stats.fetched < limit:
            break
    return deliveries, spans, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=4000)
    parser.add_argument("--behaviors", type=int, default=50)
    parser.add_argument("--limit", type=int, default=BATCH, help="deliveries per pass")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the drain")
    parser.add_argument("--sort", default="tottime", help="profile order: tottime, cumulative")
    parser.add_argument("--top", type=int, default=30, help="profile lines")
    args = parser.parse_args()
    behaviors = (
        ["bench"] if args.behaviors == 1 else [f"bench-{i:03d}" for i in range(args.behaviors)]
    )
    print(
        f"processor: {args.deliveries} deliveries over {len(behaviors)} behavior(s), "
        f"{args.limit} per pass, {os.cpu_count()} CPUs",
        flush=True,
    )
    for round_number in range(1, args.rounds + 1):
        for name in args.databases.split(","):
            with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
                workdir = Path(tmp)
                with fresh_database(name, workdir) as db:
                    register(db, workdir, behaviors)
                    fill(db, behaviors, args.deliveries)
                    profiler = cProfile.Profile() if args.profile else None
                    if profiler is not None:
                        profiler.enable()
                    done, spans, wall, cpu = drain(db, args.limit)
                    if profiler is not None:
                        profiler.disable()
                    if done != args.deliveries:
                        raise SystemExit(f"{name}: applied {done} of {args.deliveries}")
                    print(
                        f"round {round_number} {name:<11} {done / wall:7.0f} deliveries/s  "
                        f"{spans / wall:7.0f} spans/s  CPU {cpu / done * 1e6:6.0f} µs/delivery"
                        f"  (wall {wall:.2f} s)",
                        flush=True,
                    )
                    if profiler is not None:
                        stats = pstats.Stats(profiler).sort_stats(args.sort)
                        stats.print_stats(args.top)


if __name__ == "__main__":
    main()
