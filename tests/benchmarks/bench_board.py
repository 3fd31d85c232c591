"""Benchmark: the tier board, a behavior's page, ``GET /api/status``, ``ledger status`` and a
page of ``GET /api/behaviors`` with 10,000 behaviors and 1,000,000 runs, on SQLite and
PostgreSQL.

Run on demand:  python -m tests.benchmarks.bench_board [--behaviors 10000] [--runs 1000000]
                [--repeat 5] [--only sqlite|postgresql] [--keep DIR] [--no-baseline]

Seeds (driver-level bulk inserts): behaviors with valid definitions, a mix of tiers, flags,
schedules and budgets, and policy windows; runs spread over the last 29 days with one or two
gate results each (a few attributable warns and fails); ledger entries (registrations,
tier changes, demotions in the last 24 hours); budget windows per day/week/month; pending
approvals and proposals; attributed and unattributed broadcast spans. PostgreSQL is analyzed
after seeding (as autovacuum would); SQLite is not (nobody runs ANALYZE on it).

Prints the median and best of ``--repeat`` timings of each read against its target (300 ms
for the board and a behavior page, 1 s for ``ledger status`` / ``GET /api/status``), and,
measured in the same run on the same data, the code that served ``ledger status``,
``GET /api/status`` and ``GET /api/behaviors`` before (``ledger/status.py`` at commit
``BASELINE_COMMIT``, loaded from git: it validated every definition and read spend per
behavior).

``--keep DIR`` keeps the SQLite file (DIR/bench-board.db) and the PostgreSQL schema
``bench_board`` and reuses them when their behavior count matches (seeding takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

from ledger.behaviors.schema import Behavior
from ledger.board import behavior_detail, board
from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.db.bulk import driver_insert
from ledger.db.models import (
    Approval,
    BehaviorRow,
    BudgetWindow,
    ChainHead,
    GateResultRow,
    IngestedSpan,
    LedgerEntry,
    PromotionProposal,
    Run,
)
from ledger.db.session import Database
from ledger.heap import settle_heap
from ledger.policy import PolicyWindow, RunVerdict
from ledger.spend import window_start
from ledger.status import status_document
from ledger.transitions import PolicyContext
from ledger.web.api import router as api_router
from ledger.web.auth import TokenAuth
from ledger.web.errors import install_error_handlers
from ledger.web.read_routes import router as read_router
from tests.benchmarks.bench_ingest import postgres_url

REPO = Path(__file__).resolve().parents[2]
BASELINE_COMMIT = "6f1aeef"  # ledger/status.py before the read model
TARGET_PAGE = 0.300
TARGET_STATUS = 1.0
CHUNK = 20_000
SCHEDULES = ("15m", "1h", "6h", "0 6 * * 1", "*/30 * * * *", "0 0 * * *", "30 2 * * *", "1d")
RESETS = ("day", "week", "month")


# --------------------------------------------------------------------------- seeding


def _definition(i: int) -> dict[str, Any]:
    behavior = Behavior.model_validate(
        {
            "name": f"bench-{i:05d}",
            "description": f"benchmark behavior number {i}",
            "schedule": SCHEDULES[i % len(SCHEDULES)],
            "timezone": "Europe/Berlin" if i % 5 == 0 else "UTC",
            "preset": "bench-preset",
            "api_key": f"env:BENCH_KEY_{i}",
            "key_name": f"bench-{i:05d}-key",
            "prompt": "Say hello",
            "budget": {"usd": 5, "reset": RESETS[i % 3]} if i % 4 else None,
            "promotion": "confirm" if i % 10 == 0 else "auto",
        }
    )
    return behavior.model_dump(mode="json")


def _window(rng: random.Random, now: datetime) -> dict[str, Any]:
    clean = rng.randrange(0, 25)
    first = now - timedelta(days=rng.uniform(0, 6)) if clean else None
    recent = tuple(
        RunVerdict(
            f"r-{rng.randrange(10**9)}",
            now - timedelta(hours=7 * k),
            rng.choices(("clean", "warn", "fail"), (90, 8, 2))[0],  # type: ignore[arg-type]
        )
        for k in range(10)
    )
    return PolicyWindow(
        window_started_at=now - timedelta(days=10),
        clean_runs=clean,
        first_clean_at=first,
        last_clean_at=now - timedelta(hours=1) if clean else None,
        approved=rng.randrange(0, 30),
        rejected=rng.randrange(0, 2),
        recent_runs=recent,
        last_demotion_at=now - timedelta(days=rng.uniform(0, 20)) if rng.random() < 0.1 else None,
    ).to_json()


def _insert(conn: sa.Connection, table: Any, rows: Iterator[dict[str, Any]]) -> int:
    """Bulk-insert ``rows`` (model values) through the driver, in chunks."""
    columns: list[str] | None = None
    stmt = None
    converters: dict[str, Callable[[Any], Any]] = {}
    batch: list[dict[str, Any]] = []
    count = 0

    def flush() -> None:
        assert stmt is not None
        stmt.execute(
            conn, stmt.params([{k: converters[k](v) for k, v in r.items()} for r in batch])
        )

    for row in rows:
        if stmt is None:
            columns = list(row)
            stmt = driver_insert(table.__table__, columns, (), conn.dialect)
            converters = {c: stmt.converter(c) for c in columns}
        batch.append(row)
        if len(batch) >= CHUNK:
            flush()
            count += len(batch)
            batch = []
    if batch:
        flush()
        count += len(batch)
    return count


def seed(url: str, n_behaviors: int, n_runs: int, now: datetime) -> None:
    rng = random.Random(7)
    db = Database.open(url, migrate=True)
    started = time.monotonic()
    per = max(1, n_runs // n_behaviors)
    tiers = rng.choices("ABC", (50, 30, 20), k=n_behaviors)
    definitions = [_definition(i) for i in range(min(n_behaviors, 400))]

    def definition(i: int) -> dict[str, Any]:
        base = dict(definitions[i % len(definitions)])
        base["name"] = f"bench-{i:05d}"
        base["key_name"] = f"bench-{i:05d}-key"
        base["api_key"] = f"env:BENCH_KEY_{i}"
        base["description"] = f"benchmark behavior number {i}"
        return base

    def behaviors() -> Iterator[dict[str, Any]]:
        for i in range(n_behaviors):
            last = now - timedelta(hours=rng.uniform(0, 7))
            yield {
                "id": i + 1,
                "name": f"bench-{i:05d}",
                "tier": tiers[i],
                "max_tier": "C",
                "paused": i % 50 == 1,
                "pinned": i % 50 == 2,
                "retired": i % 100 == 3,
                "enabled": i % 100 != 4,
                "definition_hash": f"{i:064x}",
                "definition": definition(i),
                "prompt_text": "Say hello",
                "source_path": f"/srv/behaviors/bench-{i:05d}.yaml",
                "problem": "bench.yaml:1:1: schedule: invalid" if i % 100 == 5 else None,
                "policy_window": _window(rng, now),
                "created_at": now - timedelta(days=60),
                "updated_at": now - timedelta(days=1),
                "last_run_at": last,
                "last_run_id": f"r{i:05d}-{per - 1:05d}",
                "last_run_status": "succeeded",
                "key_problem": "BENCH_KEY is not set" if i % 100 == 6 else None,
            }

    def runs() -> Iterator[dict[str, Any]]:
        step = timedelta(days=29) / per
        for i in range(n_behaviors):
            for k in range(per):
                at = now - step * (per - k) + timedelta(seconds=i % 600)
                cost = 0.001 + (k % 7) * 0.0001
                yield {
                    "id": f"r{i:05d}-{k:05d}",
                    "behavior_id": i + 1,
                    "scheduled_for": at,
                    "claimed_at": at,
                    "started_at": at,
                    "finished_at": at + timedelta(seconds=3),
                    "trigger": "schedule",
                    "status": "interrupted" if (i + k) % 997 == 0 else "succeeded",
                    "tier": tiers[i],
                    "preset": "bench-preset",
                    "model": "bench/model",
                    "via_fallback": False,
                    "reserved_usd": 0.0,
                    "cost_usd": cost,
                    "broadcast_cost_usd": cost * (1.5 if (i + k) % 101 == 0 else 1.0),
                    "prompt_tokens": 100,
                    "completion_tokens": 50,
                    "output": "hello",
                    "disposition": "proposal",
                }

    def gates() -> Iterator[dict[str, Any]]:
        step = timedelta(days=29) / per
        for i in range(n_behaviors):
            for k in range(per):
                at = now - step * (per - k) + timedelta(seconds=i % 600 + 3)
                roll = (i * 31 + k * 17) % 200
                outcome = "fail" if roll == 0 else ("warn" if roll < 6 else "pass")
                yield {
                    "behavior_id": i + 1,
                    "run_id": f"r{i:05d}-{k:05d}",
                    "gate": "output_check",
                    "outcome": outcome,
                    "attributable": True,
                    "source": "runner",
                    "evidence": {"checks": ["max_length"]},
                    "created_at": at,
                }
                if roll < 6:
                    yield {
                        "behavior_id": i + 1,
                        "run_id": f"r{i:05d}-{k:05d}",
                        "gate": "provider_error",
                        "outcome": "fail",
                        "attributable": False,
                        "source": "runner",
                        "evidence": {"reason": "a 503 from the provider"},
                        "created_at": at,
                    }

    def entries() -> Iterator[dict[str, Any]]:
        entry_id = 0
        for i in range(n_behaviors):
            for kind, at, data in (
                ("registered", now - timedelta(days=60), {"tier": "A"}),
                ("promoted", now - timedelta(days=30), {"from": "A", "to": "B", "evidence": []}),
                (
                    "demoted",
                    now - timedelta(hours=rng.uniform(0, 23))
                    if i % 40 == 0
                    else now - timedelta(days=20),
                    {"from": "B", "to": "A", "evidence": []},
                ),
            ):
                entry_id += 1
                yield {
                    "id": entry_id,
                    "behavior_id": i + 1,
                    "behavior_name": f"bench-{i:05d}",
                    "kind": kind,
                    "actor": "policy",
                    "reason": f"{kind} by the benchmark",
                    "data": data,
                    "created_at": at,
                    "prev_hash": f"{entry_id - 1:064x}",
                    "hash": f"{entry_id:064x}",
                }

    def windows() -> Iterator[dict[str, Any]]:
        for i in range(n_behaviors):
            reset = RESETS[i % 3]
            seen: set[datetime] = set()
            for day in range(30):
                start = window_start(reset, now - timedelta(days=day))
                if start in seen:
                    continue
                seen.add(start)
                yield {
                    "behavior_id": i + 1,
                    "window_start": start,
                    "reserved_usd": 0.0,
                    "spent_usd": 0.01 * (day + 1),
                    "updated_at": now,
                }

    def approvals() -> Iterator[dict[str, Any]]:
        for i in range(0, n_behaviors, 97):
            yield {
                "run_id": f"r{i:05d}-{per - 1:05d}",
                "behavior_id": i + 1,
                "status": "pending",
                "payload": {"text": "hello"},
                "payload_sha256": "0" * 64,
                "requested_at": now - timedelta(hours=1),
                "expires_at": now + timedelta(hours=23),
            }

    def proposals() -> Iterator[dict[str, Any]]:
        for i in range(0, n_behaviors, 10):
            if tiers[i] != "C":
                yield {
                    "behavior_id": i + 1,
                    "from_tier": tiers[i],
                    "to_tier": "B" if tiers[i] == "A" else "C",
                    "reason": "earned",
                    "evidence": {"ids": []},
                    "status": "pending",
                    "created_at": now - timedelta(hours=2),
                }

    def spans() -> Iterator[dict[str, Any]]:
        total = min(50_000, n_runs)
        for s in reversed(range(total)):  # oldest first, as they arrive
            attributed = s % 10 != 0
            yield {
                "trace_id": f"{s:032x}",
                "span_id": f"{s:016x}",
                "name": "chat",
                "source": "broadcast",
                "data": {"model": "bench/model"},
                "received_at": now - timedelta(seconds=s * 12),
                "processed_at": now,
                "behavior_id": (s % n_behaviors) + 1 if attributed else None,
                "run_id": None,
                "attribution": "key_name" if attributed else "unattributed",
                "cost_usd": 0.001,
                "prompt_tokens": 100,
                "completion_tokens": 50,
            }

    counts: dict[str, int] = {}
    with db.engine.begin() as conn:
        for name, table, rows in (
            ("behavior", BehaviorRow, behaviors()),
            ("run", Run, runs()),
            ("gate_result", GateResultRow, gates()),
            ("ledger_entry", LedgerEntry, entries()),
            ("budget_window", BudgetWindow, windows()),
            ("approval", Approval, approvals()),
            ("promotion_proposal", PromotionProposal, proposals()),
            ("ingested_span", IngestedSpan, spans()),
        ):
            counts[name] = _insert(conn, table, rows)
            print(f"  seeded {name}: {counts[name]:,} rows ({time.monotonic() - started:.0f} s)")
        conn.execute(
            sa.update(ChainHead)
            .where(ChainHead.id == 1)  # type: ignore[arg-type]
            .values(
                last_entry_id=counts["ledger_entry"], last_hash=f"{counts['ledger_entry']:064x}"
            )
        )
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    db.close()
    print(f"  seeded in {time.monotonic() - started:.0f} s")


# --------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(median, best) wall seconds of ``repeat`` calls after one warm-up call, and the median
    CPU seconds they took in this process and its children (on a shared, loaded machine the
    wall time mostly measures the wait for a core; PostgreSQL's own work is not in it)."""
    fn()
    samples = []
    cpu = []
    for _ in range(repeat):
        before = os.times()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        after = os.times()
        cpu.append(sum(after[:4]) - sum(before[:4]))
    return statistics.median(samples), min(samples), statistics.median(cpu)


def machine_speed() -> float:
    """Microseconds per ``datetime.isoformat()``: the same on every idle machine of a kind, so
    a large value says the timings beside it were taken on a crowded one."""
    stamp = datetime.now(UTC)
    start = time.perf_counter()
    for _ in range(100_000):
        stamp.isoformat()
    return (time.perf_counter() - start) * 10


def baseline_status_module() -> ModuleType | None:
    """``ledger/status.py`` as it was before the read model, loaded from git."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BASELINE_COMMIT}:ledger/status.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("ledger_status_baseline", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ledger_status_baseline"] = module
    try:
        exec(compile(source, "ledger/status.py@baseline", "exec"), module.__dict__)  # noqa: S102
    except ImportError:
        return None
    return module


def api_app(db: Database, now: datetime) -> FastAPI:
    """The daemon's API routers over ``db`` without the daemon's services (no scheduler that
    would run the seeded behaviors), auth off on loopback."""
    settings = Settings(database_url=str(db.engine.url), auth="off", host="127.0.0.1")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(read_router)
    app.state.auth = TokenAuth(settings)
    app.state.ledger = SimpleNamespace(db=db, clock=FakeClock(now), settings=settings)
    return app


def measure(
    name: str, url: str, args: argparse.Namespace, now: datetime
) -> list[tuple[str, float, float, float | None, float | None]]:
    db = Database.open(url)
    settle_heap()  # as the daemon does once started
    rows: list[tuple[str, float, float, float | None, float | None]] = []
    ctx = PolicyContext()
    mid = f"bench-{args.behaviors // 2:05d}"
    baseline = None if args.no_baseline else baseline_status_module()

    def read(fn: Callable[[Any], object]) -> Callable[[], object]:
        def call() -> object:
            with db.transaction() as session:
                return fn(session)

        return call

    def add(
        label: str,
        fn: Callable[[], object],
        target: float,
        base: Callable[[], object] | None = None,
    ) -> None:
        median, best, cpu = timed(fn, args.repeat)
        base_median = None
        if base is not None:
            base_median, _, _ = timed(base, max(1, min(args.repeat, 2)))
        rows.append((label, median, best, target, base_median))
        extra = (
            f"  (before: {base_median * 1000:,.0f} ms, {base_median / median:,.0f}x)"
            if base_median
            else ""
        )
        timing = f"{median * 1000:8.1f} ms median, {best * 1000:8.1f} best, {cpu * 1000:7.1f} CPU"
        print(f"  {label:<44} {timing}  (target {target * 1000:.0f} ms){extra}", flush=True)

    add(
        "board: first page (50 cards, all tiers)",
        read(lambda s: board(s, now=now, ctx=ctx)),
        TARGET_PAGE,
    )
    for tier in "ABC":
        add(
            f"board: column {tier} (50 cards)",
            read(lambda s, t=tier: board(s, now=now, tier=t, ctx=ctx)),
            TARGET_PAGE,
        )
    add(
        "board: text filter",
        read(lambda s: board(s, now=now, text="number 4242", ctx=ctx)),
        TARGET_PAGE,
    )
    first = read(lambda s: board(s, now=now, ctx=ctx))()
    cursor = getattr(first, "next_cursor", None)
    add(
        "board: second page", read(lambda s: board(s, now=now, cursor=cursor, ctx=ctx)), TARGET_PAGE
    )
    add(
        "behavior page (detail, 20 runs)",
        read(lambda s: behavior_detail(s, mid, now=now, ctx=ctx)),
        TARGET_PAGE,
    )

    app = api_app(db, now)

    def get(path: str) -> Callable[[], object]:
        async def fetch() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                response = await client.get(path)
                response.raise_for_status()
                return len(response.content)

        return lambda: asyncio.run(fetch())

    base_status = None
    base_behaviors = None
    if baseline is not None:
        base_status = read(lambda s: baseline.status_document(s, now, 3600.0))
        base_behaviors = read(lambda s: baseline.collect_status(s, now))
    add("GET /api/status (in-process ASGI)", get("/api/status"), TARGET_STATUS, base_status)
    add("status_document()", read(lambda s: status_document(s, now, 3600.0)), TARGET_STATUS)
    add("GET /api/behaviors (page of 100)", get("/api/behaviors"), TARGET_PAGE, base_behaviors)
    add("GET /api/board", get("/api/board"), TARGET_PAGE)
    add(f"GET /api/behaviors/{mid}", get(f"/api/behaviors/{mid}"), TARGET_PAGE)
    add(
        f"GET /api/behaviors/{mid}/runs?gate=output_check",
        get(f"/api/behaviors/{mid}/runs?gate=output_check&outcome=warn"),
        TARGET_PAGE,
    )
    add(
        "GET /api/ledger?kind=demoted (newest first)",
        get("/api/ledger?kind=demoted&before_id=9223372036854775807&limit=50"),
        TARGET_PAGE,
    )
    db.close()

    env = {k: v for k, v in os.environ.items() if k != "LEDGER_CONFIG"}
    env["LEDGER_DATABASE_URL"] = url
    workdir = tempfile.mkdtemp(prefix="bench-board-cli-")  # no ledger.toml there
    ledger = str(Path(sys.executable).with_name("ledger"))

    def cli(*extra: str) -> Callable[[], object]:
        def run() -> object:
            return subprocess.run(
                [ledger, "status", *extra],
                env=env,
                cwd=workdir,
                capture_output=True,
                check=True,
                timeout=120,
            )

        return run

    add("ledger status (subprocess)", cli(), TARGET_STATUS)
    add("ledger status --json (subprocess)", cli("--json"), TARGET_STATUS)

    def help_only() -> object:
        return subprocess.run(
            [ledger, "--help"], env=env, cwd=workdir, capture_output=True, check=True
        )

    median, _best, cpu = timed(help_only, args.repeat)
    print(
        f"  (for scale: `ledger --help`, Python and the CLI's imports alone: "
        f"{median * 1000:.0f} ms median, {cpu * 1000:.0f} ms CPU)"
    )
    return rows


# --------------------------------------------------------------------------- main


def behavior_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM behavior")).scalar_one())
    except sa.exc.SQLAlchemyError:
        return -1
    finally:
        engine.dispose()


@contextmanager
def postgres_schema(url: str, keep: bool) -> Iterator[str]:
    schema = "bench_board" if keep else f"bench_board_{os.getpid()}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        if not keep:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def seeded_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark over ``seed``'s data (this one's and bench_dashboard's)."""
    parser.add_argument("--behaviors", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--keep", type=Path, help="keep and reuse the seeded databases here")


def on_seeded_databases(
    args: argparse.Namespace, measure_one: Callable[[str, str, datetime], None]
) -> None:
    """Seed SQLite, then PostgreSQL (``--only`` one of them; ``--keep`` reuses a database whose
    behavior count matches) with ``seed``'s data and call ``measure_one(name, url, now)`` on
    each."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "sqlite"):
            _seeded("sqlite", f"sqlite:///{folder / 'bench-board.db'}", args, measure_one)
        if args.only in (None, "postgresql"):
            pg = postgres_url()
            if pg is None:
                print("postgresql: skipped (server unreachable)")
            else:
                with postgres_schema(pg, args.keep is not None) as url:
                    _seeded("postgresql", url, args, measure_one)


def _seeded(
    name: str,
    url: str,
    args: argparse.Namespace,
    measure_one: Callable[[str, str, datetime], None],
) -> None:
    now = datetime.now(UTC)
    print(f"{name}: {args.behaviors:,} behaviors, {args.runs:,} runs")
    if behavior_count(url) != args.behaviors:
        seed(url, args.behaviors, args.runs, now)
    else:
        print("  reusing the seeded database (--keep)")
    measure_one(name, url, now)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    seeded_arguments(parser)
    parser.add_argument("--no-baseline", action="store_true", help="skip the old code path")
    args = parser.parse_args()

    def measure_one(name: str, url: str, now: datetime) -> None:
        speed = machine_speed()
        print(
            f"  machine: {speed:.2f} µs per datetime.isoformat() (lower = a less crowded machine)"
        )
        rows = measure(name, url, args, now)
        slow = [label for label, median, _b, target, _base in rows if target and median > target]
        print(f"  {name}: {'all within target' if not slow else 'over target: ' + ', '.join(slow)}")

    on_seeded_databases(args, measure_one)


if __name__ == "__main__":
    main()
