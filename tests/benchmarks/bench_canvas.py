"""Benchmark: a broad canvas of 200 models finishes in about its slowest model's time.

Run on demand (not part of the test suite):

    python -m tests.benchmarks.bench_canvas [--models 200] [--compress 10]
        [--concurrency 200 --concurrency 16] [--pg URL]

The OpenRouter simulator runs as a process of its own, each model answering after a latency
spread log-uniformly from 0.5 s to 40 s (realistic: most models answer in seconds, a few heavy
reasoning ones take most of a minute), divided by ``--compress``. The canvas runs through the
daemon's own path (``RunnerService.run_now`` → ``MultiModelRunner`` → the OpenRouter client,
every call recorded in the database the moment it returns) and the benchmark prints, per
``--concurrency``: the wall time, its ratio to the slowest model's latency (the floor) and to
the sum of all latencies (one model after the other), the ratio to a bare ``asyncio.gather``
of the same 200 calls with the same client and no database (measured in the same run), the
peak concurrency the run reached, and the memory (peak RSS, and what the run added to it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import SecretStr
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.models import RunCall
from ledger.db.session import Database
from ledger.runner.multi import MultiModelRunner
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.scheduler import RunnerService
from ledger.transitions import PolicyContext

KEY = "sk-or-v1-benchcanvas" + "0" * 44
LOW, HIGH = 0.5, 40.0


def latencies(n: int) -> list[float]:
    """``n`` latencies from 0.5 s to 40 s, log-uniformly spread (deterministic)."""
    if n == 1:
        return [HIGH]
    return [LOW * (HIGH / LOW) ** (i / (n - 1)) for i in range(n)]


def models(n: int) -> list[str]:
    return [f"vendor{i % 13}/model-{i:03d}" for i in range(n)]


def start_sim(
    folder: Path, names: list[str], spread: list[float], compress: float
) -> tuple[subprocess.Popen[bytes], str]:
    lines = ["keys:", f"  - {{key: {KEY}, name: bench}}", "models:"]
    # Shuffled: the slow models are not all at the end of the list.
    order = list(range(len(names)))
    random.Random(7).shuffle(order)
    for i in order:
        seconds = spread[i] / compress
        lines.append(f"  {names[i]}: {{latency: [{seconds:.4f}, {seconds:.4f}]}}")
    (folder / "sim.yaml").write_text("\n".join(lines) + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger",
            "sim",
            "openrouter",
            "--port",
            str(port),
            "--presets",
            str(folder / "sim.yaml"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/_sim/calls", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the simulator did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def behavior(names: list[str], concurrency: int) -> str:
    listed = "\n".join(f"    - {m}" for m in names)
    return f"""schedule: 1d
kind: broad_canvas
api_key: env:BENCH_CANVAS_KEY
key_name: bench
prompt: Name one risk of message queues
max_output_tokens: 40
canvas:
  max_concurrency: {concurrency}
  models:
{listed}
"""


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bare_gather(url: str, names: list[str]) -> float:
    """The same calls with the same client, all at once, nothing recorded: the floor."""
    client = OpenRouterClient(base_url=url)
    try:
        started = time.monotonic()
        await asyncio.gather(
            *(
                client.chat(
                    key=SecretStr(KEY),
                    body={
                        "model": m,
                        "messages": [{"role": "user", "content": "Name one risk"}],
                        "max_completion_tokens": 40,
                    },
                    deadline=time.monotonic() + 600,
                    run_id="bench-bare",
                )
                for m in names
            )
        )
        return time.monotonic() - started
    finally:
        await client.aclose()


async def canvas_once(db: Database, url: str, folder: Path, name: str) -> tuple[float, int, str]:
    client = OpenRouterClient(base_url=url)
    try:
        multi = MultiModelRunner(db, SystemClock(), client, base_url=url)
        service = RunnerService(db, SystemClock(), multi.run, PolicyContext())
        started = time.monotonic()
        run_id = await service.run_now(name)
        wall = time.monotonic() - started
    finally:
        await client.aclose()
    assert run_id is not None
    return wall, multi.peak_concurrency, run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--pg", help="a PostgreSQL URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    levels = args.concurrency or [args.models]
    os.environ["BENCH_CANVAS_KEY"] = KEY
    names = models(args.models)
    spread = latencies(args.models)
    slowest, total = max(spread) / args.compress, sum(spread) / args.compress
    tmp = Path(tempfile.mkdtemp())
    sim, url = start_sim(tmp, names, spread, args.compress)
    try:
        db = Database.open(args.pg or f"sqlite:///{tmp / 'bench.db'}", migrate=True)
        print(
            f"{args.models} models, latencies {LOW}-{HIGH} s / {args.compress:g} = "
            f"{LOW / args.compress:.3f}-{slowest:.2f} s (sum {total:.1f} s); "
            f"database {'PostgreSQL' if args.pg else 'SQLite'}"
        )
        bare = asyncio.run(bare_gather(url, names))
        print(
            f"baseline: bare asyncio.gather of the {args.models} calls, nothing recorded: "
            f"{bare:.2f} s ({bare / slowest:.2f} x the slowest model)"
        )
        for level in levels:
            name = f"canvas-{level}"
            folder = tmp / name
            folder.mkdir()
            (folder / f"{name}.yaml").write_text(behavior(names, level))
            with db.transaction() as session:
                reconcile_directory(session, folder, datetime.now(UTC))
            before = rss_mb()
            wall, peak, run_id = asyncio.run(canvas_once(db, url, folder, name))
            after = rss_mb()
            with db.transaction() as session:
                rows = session.execute(
                    select(RunCall.status, RunCall.started_at, RunCall.finished_at).where(
                        col(RunCall.run_id) == run_id
                    )
                ).all()
                statuses = [status for status, _s, _f in rows]
                first = min(started for _st, started, _f in rows if started is not None)
                last = max(finished for _st, _s, finished in rows if finished is not None)
                slowest_call = max(
                    (f - s_).total_seconds() for _st, s_, f in rows if s_ is not None and f
                )
            answered = statuses.count("answered")
            print(
                f"concurrency {level:>4}: wall {wall:6.2f} s = {wall / slowest:5.2f} x slowest, "
                f"{wall / total:5.3f} x sum, {wall / bare:5.2f} x bare gather; "
                f"peak concurrency {peak}; answered {answered}/{len(statuses)}; "
                f"peak RSS {after:.0f} MB (+{after - before:.0f} MB)"
            )
            span = (last - first).total_seconds()
            print(
                f"{'':18}first call started to last recorded {span:.2f} s; the longest call "
                f"(reserved to recorded) {slowest_call:.2f} s; before and after the calls "
                f"{wall - span:.2f} s"
            )
        db.close()
    finally:
        sim.kill()
        sim.wait(10)


if __name__ == "__main__":
    main()
