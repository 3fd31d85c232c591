"""Benchmark: the dashboard's pages as a browser gets them (HTML rendered, in-process ASGI) with
10,000 behaviors and 1,000,000 runs, on SQLite and PostgreSQL — the tier board (three columns
of 50 cards), the board filtered, the live fragment, a behavior's page, the approvals queue and
the ledger page.

Run on demand:  python -m tests.benchmarks.bench_dashboard [--behaviors 10000]
                [--runs 1000000] [--repeat 5] [--only sqlite|postgresql] [--keep DIR]

Seeds with ``bench_board.seed`` (``--keep DIR`` shares its database: DIR/bench-board.db and the
PostgreSQL schema ``bench_board``). Prints each page's median and best time against the 300 ms
target, and, measured in the same run on the same data, the read model alone (the three
``ledger.board.board`` column queries, ``behavior_detail``) so the ratio shows what rendering
adds.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import FastAPI

from ledger.board import behavior_detail, board
from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.db.session import Database
from ledger.gates import Tier
from ledger.transitions import PolicyContext
from ledger.web.auth import TokenAuth
from ledger.web.dashboard import install_dashboard
from ledger.web.errors import install_error_handlers
from ledger.web.sessions import LoginRateLimit, SessionSigner
from tests.benchmarks.bench_board import (
    on_seeded_databases,
    seeded_arguments,
    settle_heap,
    timed,
)

TARGET = 0.300


def dashboard_app(db: Database, now: datetime) -> FastAPI:
    """The dashboard over ``db`` without the daemon's services, auth off on loopback."""
    settings = Settings(database_url=str(db.engine.url), auth="off", host="127.0.0.1")
    app = FastAPI()
    install_error_handlers(app)
    install_dashboard(app)
    app.state.auth = TokenAuth(settings)
    app.state.sessions = SessionSigner()
    app.state.login_limit = LoginRateLimit()
    app.state.ledger = SimpleNamespace(db=db, clock=FakeClock(now), settings=settings)
    return app


def measure(url: str, args: argparse.Namespace, now: datetime) -> list[str]:
    db = Database.open(url)
    settle_heap()
    ctx = PolicyContext()
    mid = f"bench-{args.behaviors // 2:05d}"
    app = dashboard_app(db, now)
    slow: list[str] = []

    def get(path: str) -> Callable[[], object]:
        async def fetch() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                response = await client.get(path)
                assert response.status_code == 200, (path, response.status_code)
                return len(response.content)

        return lambda: asyncio.run(fetch())

    def read(fn: Callable[[Any], object]) -> Callable[[], object]:
        def call() -> object:
            with db.transaction() as session:
                return fn(session)

        return call

    def add(label: str, fn: Callable[[], object], base: Callable[[], object] | None) -> None:
        median, best, cpu = timed(fn, args.repeat)
        extra = ""
        if base is not None:
            base_median, _, _ = timed(base, args.repeat)
            extra = (
                f"  (read model alone {base_median * 1000:,.1f} ms: x{median / base_median:.2f})"
            )
        size = fn()
        print(
            f"  {label:<34} {median * 1000:8.1f} ms median, {best * 1000:8.1f} best, "
            f"{cpu * 1000:7.1f} CPU, {int(str(size)) // 1024:,} KiB (target 300 ms){extra}",
            flush=True,
        )
        if median > TARGET:
            slow.append(label)

    def columns(session: Any, text: str | None = None) -> object:
        return [board(session, now=now, tier=t, text=text, limit=50, ctx=ctx) for t in Tier]

    add("GET / (tier board)", get("/"), read(columns))
    add("GET /?q=number 4242", get("/?q=number%204242"), read(lambda s: columns(s, "number 4242")))
    add("GET /fragments/board", get("/fragments/board"), read(columns))
    add(
        f"GET /behaviors/{mid}",
        get(f"/behaviors/{mid}"),
        read(lambda s: behavior_detail(s, mid, now=now, runs_limit=25, ctx=ctx)),
    )
    add("GET /approvals", get("/approvals"), None)
    add("GET /ledger (with verification)", get("/ledger"), None)
    add("GET /ledger?kind=demoted", get("/ledger?kind=demoted"), None)
    db.close()
    return slow


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    seeded_arguments(parser)
    args = parser.parse_args()

    def measure_one(name: str, url: str, now: datetime) -> None:
        slow = measure(url, args, now)
        print(f"  {name}: {'all within target' if not slow else 'over target: ' + ', '.join(slow)}")

    on_seeded_databases(args, measure_one)


if __name__ == "__main__":
    main()
