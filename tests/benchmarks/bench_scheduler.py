"""Benchmark: 1,000 behaviors due at the same instant, against the OpenRouter simulator.

Run on demand:  python -m tests.benchmarks.bench_scheduler [--n 1000] [--pg URL] [--memory 10000]
                [--lead 5 --lead 0] [--transport lean --transport httpx --transport aiohttp]
                [--rounds 3] [--baseline /path/to/other/checkout] [--waves 2] [--wait 120]

Recording: for each wave, how long after the slot its last run was recorded (finished, judged,
decided on), the runs recorded per second over that time, and how long a run waited from its
answer to its record (the recording queue: p99 and max). ``--baseline DIR`` measures the
same waves, in the same run, with the ``ledger`` package of another checkout (e.g. main before
a change), alternating with this one round by round, and closes with a table of both and their
ratio. For 10,000 due at once give the waves room: ``--n 10000 --interval 90 --waves 1``.

Reports, for every run of the measured slots (a cold and a warm connection pool), three moments
relative to the slot time: the request written to its socket (the dispatch lag: the request
really sent), the call handed to the OpenRouter client (before the slot when the run is
prepared ahead) and its arrival at the simulator; runs completed per second; next to
APScheduler alone firing the same number of empty jobs in the same run (its floor); for each
``--lead`` (seconds a run is prepared before its slot; 0 = everything at the slot, as before
preparation existed); and the peak memory (RSS) of ``ledger serve`` with --memory behaviors
registered.

``--transport`` picks the HTTP transport under the OpenRouter client: ``lean`` (the daemon's
own, which writes a held request at its slot's instant), ``httpx`` (httpcore's pool) or
``aiohttp`` (the ``httpx-aiohttp`` transport); the last two wait at the slot's gate and send
then, as the client does for any transport that cannot hold requests. With several transports
and ``--rounds``, each round runs every transport once, the order rotating round by round (the
machine is shared: paired, alternating rounds), and a table of medians and min-max per
transport and pool closes the report.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import httpx
import uvloop
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from httpx_aiohttp import AiohttpTransport
from sqlmodel import col, func, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.models import Run
from ledger.db.session import Database
from ledger.heap import settle_heap
from ledger.runner.call import call_model
from ledger.runner.lean_http import LeanTransport
from ledger.runner.openrouter import KEEPALIVE_EXPIRY, MAX_CONNECTIONS, OpenRouterClient
from ledger.runner.run import CallOutcome, RunPlan
from ledger.runner.scheduler import DEFAULT_LEAD_SECONDS, RunnerService, calls_that_fit
from ledger.schedule import INTERVAL_EPOCH
from ledger.transitions import PolicyContext

INTERVAL = 20  # seconds: every behavior's slots fall on the same instants (--interval)
MAX_CALLS = MAX_CONNECTIONS  # calls in flight at once (--max-calls)
WAVES = 2  # slots measured: a cold connection pool, then a warm one (--waves)
WAIT = 120.0  # seconds after its slot to wait for a wave to be recorded (--wait)


class SentAt(httpx.AsyncBaseTransport):
    """Records when each request's body was completely written to its socket, by run id."""

    def __init__(self, inner: httpx.AsyncBaseTransport, sink: dict[str, float]) -> None:
        self.inner = inner
        self.sink = sink

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        match = re.search(rb'"session_id":\s*"([^"]+)"', request.content)
        run_id = match.group(1).decode() if match else ""

        async def trace(event: str, info: dict[str, object]) -> None:
            if event == "http11.send_request_body.complete":
                written = info.get("written_at")  # a held request: when its wave was written
                self.sink[run_id] = written if isinstance(written, float) else time.time()

        request.extensions = {**request.extensions, "trace": trace}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


TRANSPORTS = ("lean", "httpx", "aiohttp")


def limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=MAX_CALLS,
        max_keepalive_connections=MAX_CALLS,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )


def timed_transport(kind: str, sink: dict[str, float]) -> httpx.AsyncBaseTransport:
    """The transport ``kind`` as the daemon would build it, reporting when each request's body
    was written to its socket into ``sink`` (by run id)."""
    if kind == "lean":
        return SentAt(LeanTransport(MAX_CALLS, KEEPALIVE_EXPIRY), sink)
    if kind == "httpx":  # what httpx.AsyncClient(limits=...) builds for itself
        return SentAt(httpx.AsyncHTTPTransport(limits=limits(), http2=False), sink)

    async def chunk_sent(
        _session: object, _ctx: object, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        # Called just before aiohttp writes the body (with the headers, for a small one).
        match = re.search(rb'"session_id":\s*"([^"]+)"', params.chunk)
        if match:
            sink[match.group(1).decode()] = time.time()

    def session() -> aiohttp.ClientSession:  # AiohttpTransport's own, plus the trace
        traced = aiohttp.TraceConfig()
        traced.on_request_chunk_sent.append(chunk_sent)
        connector = aiohttp.TCPConnector(limit=MAX_CALLS, keepalive_timeout=KEEPALIVE_EXPIRY)
        return aiohttp.ClientSession(connector=connector, trace_configs=[traced])

    return AiohttpTransport(limits=limits(), client=session)


class GCPauses:
    """Time the cyclic garbage collector stopped the process, by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def reset(self) -> None:
        for pauses in self.pauses.values():
            pauses.clear()

    def summary(self) -> str:
        return "; ".join(
            f"gen{g} {len(p)}x {sum(p):.2f} s (max {max(p, default=0) * 1000:.0f} ms)"
            for g, p in self.pauses.items()
        )


GC = GCPauses()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


def next_slot(after: datetime, margin: float) -> datetime:
    interval = timedelta(seconds=INTERVAL)
    slot = INTERVAL_EPOCH + (int((after - INTERVAL_EPOCH) / interval) + 1) * interval
    return slot if (slot - after).total_seconds() > margin else slot + interval


async def apscheduler_floor(n: int) -> list[float]:
    lags: list[float] = []
    done = asyncio.Event()
    interval = timedelta(seconds=INTERVAL)

    async def job() -> None:
        # Time since the latest slot: the slot a job fires for (the lag is under an interval).
        lags.append(((datetime.now(UTC) - INTERVAL_EPOCH) % interval).total_seconds())
        if len(lags) == n:
            done.set()

    scheduler = AsyncIOScheduler(timezone=UTC)
    for i in range(n):
        scheduler.add_job(
            job,
            IntervalTrigger(seconds=INTERVAL, start_date=INTERVAL_EPOCH),
            id=f"j{i}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=10,
        )
    scheduler.start()
    await asyncio.wait_for(done.wait(), timeout=INTERVAL * 3)
    scheduler.shutdown(wait=False)
    return lags


def write_behaviors(folder: Path, n: int, env: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    keys = []
    for i in range(n):
        key = f"sk-or-v1-bench{i:05d}" + "0" * 40
        env[f"BENCH_KEY_{i}"] = key
        keys.append(f"  - {{key: {key}, name: b{i:05d}}}\n")
        (folder / f"b{i:05d}.yaml").write_text(
            f"schedule: {INTERVAL}s\npreset: fast\napi_key: env:BENCH_KEY_{i}\n"
            f"key_name: b{i:05d}\nprompt: 'work {i}'\nmax_output_tokens: 16\n"
        )
    presets = folder.parent / "sim.yaml"
    presets.write_text("presets:\n  fast: {model: m/fast}\nkeys:\n" + "".join(keys))
    return presets


async def ledger_lags(url: str, n: int, lead: float, kind: str) -> tuple[list[Wave], str]:
    tmp = Path(tempfile.mkdtemp())
    env: dict[str, str] = {}
    presets = write_behaviors(tmp / "behaviors", n, env)
    os.environ.update(env)
    port = 8700 + os.getpid() % 200
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger",
            "sim",
            "openrouter",
            "--port",
            str(port),
            "--presets",
            str(presets),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/_sim/calls", timeout=1)
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        db = Database.open(url, migrate=True)
        with db.transaction() as session:
            reconcile_directory(session, tmp / "behaviors", datetime.now(UTC))
        wire: dict[str, float] = {}
        # The transport (new_http_client's for lean), with the socket-write hook around it.
        http = httpx.AsyncClient(transport=timed_transport(kind, wire), follow_redirects=False)
        client = OpenRouterClient(base_url=base, http=http, transport_holds_sends=kind == "lean")
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}

        async def timed_call(plan: RunPlan) -> CallOutcome:
            sent[plan.run_id] = time.time()  # the moment the request is handed to the client
            outcome = await call_model(client, plan)
            answered[plan.run_id] = time.time()  # handed to the recording queue
            return outcome

        service = RunnerService(
            db,
            SystemClock(),
            timed_call,
            PolicyContext(),
            lead_seconds=lead,
            max_concurrency=MAX_CALLS,
        )
        # Start outside the misfire grace of the previous slot, so no catch-up wave of runs
        # overlaps the measured slot.
        interval = timedelta(seconds=INTERVAL)
        since = (datetime.now(UTC) - INTERVAL_EPOCH) % interval
        if since < interval / 2 + timedelta(seconds=0.5):
            await asyncio.sleep((interval / 2 + timedelta(seconds=0.5) - since).total_seconds())
        await service.start()
        settle_heap()  # as `ledger serve` does once started
        GC.reset()
        first = next_slot(datetime.now(UTC), 1)
        # The first wave opens the connections, the second reuses them.
        slots = [first + interval * i for i in range(WAVES)]
        await asyncio.sleep((first - datetime.now(UTC)).total_seconds() + 0.1)

        def finished(slot: datetime) -> int:
            with db.transaction() as session:
                return session.exec(
                    select(func.count()).where(
                        col(Run.scheduled_for) == slot, col(Run.finished_at).is_not(None)
                    )
                ).one()

        for slot in slots:  # counted in a thread, so the wait costs the daemon's loop nothing
            deadline = slot.timestamp() + WAIT
            while time.time() < deadline and await asyncio.to_thread(finished, slot) < n:
                await asyncio.sleep(0.5)
        gc_summary = GC.summary()
        await service.stop()
        await client.aclose()
        await http.aclose()
        calls = httpx.get(base + "/_sim/calls", timeout=30).json()["calls"]
        with db.transaction() as session:
            by_slot = [
                {r.id: r for r in session.exec(select(Run).where(col(Run.scheduled_for) == slot))}
                for slot in slots
            ]
        db.close()
    finally:
        sim.terminate()
        sim.wait(10)
    arrived = {
        c["body"]["session_id"]: datetime.fromisoformat(c["at"]).timestamp()
        for c in calls
        if c["path"] == "/api/v1/chat/completions"
    }
    waves = []
    for slot, runs in zip(slots, by_slot, strict=True):
        at = slot.timestamp()
        lags = [t - at for rid, t in sent.items() if rid in runs]
        on_wire = [t - at for rid, t in wire.items() if rid in runs]
        received = [t - at for rid, t in arrived.items() if rid in runs]
        done = [r for r in runs.values() if r.finished_at is not None]
        span = max((r.finished_at - slot).total_seconds() for r in done) if done else 0.0
        rate = len(done) / span if span else 0.0
        # How long each run waited from its answer to being recorded (the recording queue).
        waits = [r.finished_at.timestamp() - answered[r.id] for r in done if r.id in answered] or [
            0.0
        ]
        waves.append(
            Wave(lags, on_wire, received, rate, len(done), span, pct(waits, 0.99), max(waits))
        )
    return waves, gc_summary


@dataclass
class Wave:
    """One slot's runs, in seconds after the slot time."""

    lags: list[float]  # handed to the OpenRouter client
    on_wire: list[float]  # last byte of the request written to its socket
    received: list[float]  # arrival at the simulator
    rate: float  # runs recorded per second (slot time → last recorded)
    done: int
    recorded_in: float = 0.0  # seconds from the slot to its last run recorded
    record_p99: float = 0.0  # seconds from a run's answer to its record: p99
    record_max: float = 0.0  # and the longest


def serve_memory(n: int) -> float:
    tmp = Path(tempfile.mkdtemp())
    env = dict(os.environ)
    folder = tmp / "behaviors"
    write_behaviors(folder, n, env)
    env.update(
        {
            "LEDGER_DATABASE_URL": f"sqlite:///{tmp / 'mem.db'}",
            "LEDGER_BEHAVIORS_DIR": str(folder),
            "LEDGER_LOG_FORMAT": "json",
        }
    )
    port = 8900 + os.getpid() % 50
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        time.sleep(5)
        rss = 0.0
        with open(f"/proc/{proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
        return rss
    finally:
        proc.terminate()
        proc.wait(30)


def print_table(
    table: dict[tuple[str, float, str, str], list[tuple[float, float, bool]]], n: int
) -> None:
    """Dispatch lag per transport over the rounds: median [min-max] of each round's p50 and
    p99, and how many rounds' waves were not wholly prepared before their slot (the previous
    wave still busy: those runs were prepared late, whatever the transport)."""
    print(f"\ndispatch lag, n={n}, ms: median [min-max] over rounds")
    print(
        f"{'database':10s} {'lead':>5s} {'pool':9s} {'transport':9s} {'p50':>20s} {'p99':>20s}"
        "  late"
    )
    for (label, lead, pool, kind), rounds in sorted(table.items()):
        cells = []
        for values in (sorted(r[0] for r in rounds), sorted(r[1] for r in rounds)):
            cells.append(
                f"{statistics.median(values):6.0f} [{values[0]:.0f}-{values[-1]:.0f}]".rjust(20)
            )
        late = sum(1 for r in rounds if lead > 0 and not r[2])
        where = f"{label:10s} {lead:4g}s {pool:9s} {kind:9s}"
        print(f"{where} {cells[0]} {cells[1]}  {late}/{len(rounds)}", flush=True)


THIS = "this"  # the code of this checkout, as opposed to --baseline's


def measure(
    code: str, baseline: Path | None, url: str, n: int, lead: float, kind: str
) -> tuple[list[Wave], str]:
    """The waves of one configuration, with this checkout's ``ledger`` (in this process, or
    in a fresh one when comparing) or the ``--baseline`` checkout's (in a fresh process with
    that checkout first on its path), so that both sides start alike."""
    if baseline is None:
        return uvloop.run(ledger_lags(url, n, lead, kind))
    root = baseline if code != THIS else Path(__file__).resolve().parents[2]
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        target = Path(out.name)
    argv = [
        str(Path(__file__).resolve()),
        "--child",
        json.dumps([url, n, lead, kind, str(target)]),
        "--interval",
        str(INTERVAL),
        "--max-calls",
        str(MAX_CALLS),
        "--waves",
        str(WAVES),
        "--wait",
        str(WAIT),
    ]
    script = (
        "import runpy, sys; "
        f"sys.path.insert(0, {str(root)!r}); sys.argv = {argv!r}; "
        f"runpy.run_path({argv[0]!r}, run_name='__main__')"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    data = json.loads(target.read_text())
    target.unlink()
    return [Wave(**w) for w in data["waves"]], data["gc"]


def child(spec: str) -> None:
    """``--child``: measure one configuration and write its waves to a JSON file."""
    url, n, lead, kind, target = json.loads(spec)
    waves, gc_summary = uvloop.run(ledger_lags(url, n, lead, kind))
    Path(target).write_text(json.dumps({"waves": [asdict(w) for w in waves], "gc": gc_summary}))


def print_recording(table: dict[tuple[str, float, str, str, str], list[Wave]], n: int) -> None:
    """Recording per configuration: seconds from the slot to its last run recorded and runs
    recorded per second (median over rounds), this checkout against the baseline."""
    print(f"\nrecording, n={n}: median over rounds (runs recorded/s; ratio this / baseline)")
    print(
        f"{'database':10s} {'lead':>5s} {'pool':9s} {'code':8s} {'recorded':>9s} "
        f"{'all in':>8s} {'runs/s':>7s} {'dispatch p99':>12s} {'queue p99':>9s}  ratio"
    )
    for (label, lead, pool, kind, code), waves in sorted(table.items()):
        rate = statistics.median(w.rate for w in waves)
        span = statistics.median(w.recorded_in for w in waves)
        done = min(w.done for w in waves)
        p99 = statistics.median(pct(w.on_wire, 0.99) * 1000 if w.on_wire else 0 for w in waves)
        queue = statistics.median(w.record_p99 for w in waves) * 1000
        other = table.get((label, lead, pool, kind, "baseline"))
        ratio = ""
        if code == THIS and other:
            base = statistics.median(w.rate for w in other)
            ratio = f"x{rate / base:.2f}" if base else ""
        print(
            f"{label:10s} {lead:4g}s {pool:9s} {code:8s} {done:9d} {span:7.1f}s {rate:7.0f} "
            f"{p99:9.1f} ms {queue:6.0f} ms  {ratio}",
            flush=True,
        )


def main() -> None:
    global INTERVAL, MAX_CALLS, WAVES, WAIT
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--pg", default=None)
    parser.add_argument("--memory", type=int, default=10000)
    parser.add_argument(
        "--lead",
        type=float,
        action="append",
        help="seconds a run is prepared before its slot (repeat to compare; default 5 and 0)",
    )
    parser.add_argument("--interval", type=int, default=INTERVAL, help="the behaviors' interval")
    parser.add_argument("--max-calls", type=int, default=MAX_CALLS, help="calls in flight")
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        action="append",
        help="the HTTP transport under the client (repeat to compare; default lean)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of every transport, order rotating"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. main) to measure the same waves with, round by round",
    )
    parser.add_argument("--waves", type=int, default=WAVES, help="slots measured (1 or 2)")
    parser.add_argument(
        "--wait", type=float, default=WAIT, help="seconds after a slot to wait for its runs"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    leads = args.lead or [DEFAULT_LEAD_SECONDS, 0.0]
    kinds = args.transport or ["lean"]
    INTERVAL, MAX_CALLS = args.interval, calls_that_fit(args.max_calls)
    WAVES, WAIT = max(1, min(2, args.waves)), args.wait
    if args.child:
        child(args.child)
        return
    if args.baseline is not None and not (args.baseline / "ledger" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline}: no ledger package there")
    floor = uvloop.run(apscheduler_floor(args.n))
    print(
        f"apscheduler alone  n={args.n}: lag p50={statistics.median(floor) * 1000:7.1f} ms "
        f"p99={pct(floor, 0.99) * 1000:7.1f} ms",
        flush=True,
    )
    targets = [("sqlite", f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}")]
    if args.pg:
        targets.append(("postgresql", args.pg))
    floor99 = pct(floor, 0.99) * 1000
    codes = [THIS] if args.baseline is None else [THIS, "baseline"]
    # (database, lead, pool, transport) -> (p50, p99 of the dispatch lag in ms, whether every
    # run of the wave was handed to the client before its slot) per round
    table: dict[tuple[str, float, str, str], list[tuple[float, float, bool]]] = {}
    recording: dict[tuple[str, float, str, str, str], list[Wave]] = {}
    for round_ in range(args.rounds):
        order = kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]
        code_order = codes[round_ % len(codes) :] + codes[: round_ % len(codes)]
        print(f"round {round_ + 1}/{args.rounds}: {', '.join(order)}", flush=True)
        for label, url in targets:
            for lead in leads:
                for kind in order:
                    for code in code_order:
                        database = (
                            url
                            if label != "sqlite"
                            else f"sqlite:///{Path(tempfile.mkdtemp())}/b.db"
                        )
                        waves, gc_summary = measure(
                            code, args.baseline, database, args.n, lead, kind
                        )
                        for name, wave in zip(("cold pool", "warm pool"), waves, strict=False):
                            tag = f"ledger {label:10s} n={args.n} lead={lead:g}s {kind:7s} {name}"
                            if code != THIS:
                                tag += " (baseline)"
                            recording.setdefault((label, lead, name, kind, code), []).append(wave)
                            if not wave.on_wire:
                                print(f"{tag}: no runs", flush=True)
                                continue
                            w50 = statistics.median(wave.on_wire) * 1000
                            w99 = pct(wave.on_wire, 0.99) * 1000
                            ahead = lead > 0 and max(wave.lags, default=0.0) < 0
                            if code == THIS:
                                table.setdefault((label, lead, name, kind), []).append(
                                    (w50, w99, ahead)
                                )
                            h50 = statistics.median(wave.lags) * 1000
                            h99 = pct(wave.lags, 0.99) * 1000
                            r50 = statistics.median(wave.received) * 1000
                            r99 = pct(wave.received, 0.99) * 1000
                            print(
                                f"{tag}: dispatch lag (slot -> request written to its socket) "
                                f"p50={w50:7.1f} ms p99={w99:7.1f} ms (x{w99 / floor99:.2f} of "
                                f"APScheduler's p99; {len(wave.on_wire)} written); handed to "
                                f"the client p50={h50:.0f} ms p99={h99:.0f} ms; at the "
                                f"simulator p50={r50:.0f} ms p99={r99:.0f} ms; {wave.done} runs "
                                f"recorded, the last {wave.recorded_in:.1f} s after the slot: "
                                f"{wave.rate:.0f} runs/s; answer -> recorded "
                                f"p99={wave.record_p99 * 1000:.0f} ms "
                                f"max={wave.record_max * 1000:.0f} ms",
                                flush=True,
                            )
                        print(f"  garbage collector pauses: {gc_summary}", flush=True)
    if args.rounds > 1 or len(kinds) > 1:
        print_table(table, args.n)
    print_recording(recording, args.n)
    if args.memory:
        rss = serve_memory(args.memory)
        print(f"ledger serve with {args.memory} behaviors: peak RSS {rss:.0f} MiB", flush=True)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process: peak RSS {own:.0f} MiB)")


if __name__ == "__main__":
    main()
