"""Ingestion benchmark: sustained broadcast deliveries per second and p50/p99 latency.

Run on demand (pytest does not collect tests/benchmarks)::

    python -m tests.benchmarks.bench_ingest [--rounds 4] [--duration 8] [--connections 64]

In one run it measures, with the same load (a ~5 KB OpenRouter-shaped OTLP JSON delivery, a
distinct trace id per request, many keep-alive connections from a separate process):

1. ``bare-orjson`` and ``bare-typed``: FastAPI endpoints that parse the JSON and answer 200,
   storing nothing — the leanest (raw body + orjson) and the idiomatic one (a ``dict`` body
   parameter: stdlib json and validation);
2. ``sqlite``: ``ledger serve`` on a fresh SQLite file (every 200 is committed), with no
   backlog bound (``LEDGER_INGEST_MAX_BACKLOG_SPANS=0``), so that the receiver is measured and
   not the processor behind it (``--bounded`` keeps the bound; ``--sustained`` measures the
   processor);
3. ``postgresql``: ``ledger serve`` on a fresh schema of ``LEDGER_BENCH_DATABASE_URL`` (default
   ``LEDGER_TEST_DATABASE_URL``, else ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
   skipped when the server is unreachable;

then prints each one's numbers and its throughput ratios to both bare endpoints: against the
best round of each, and paired round by round (the median of those is what a machine whose
speed drifts between rounds cannot distort). The issue's baseline is ``bare-typed``, "a bare
FastAPI endpoint that parses the JSON"; ``bare-orjson`` is the stricter reference. The order of
the endpoints rotates from round to round. Every server runs as its own uvicorn process
(uvloop + httptools, access log off). The load generator is ``wrk`` with a Lua script when
installed (``apt-get install wrk``), else a Python asyncio client in a subprocess.
After each stored run the script checks that the database holds every acknowledged span; in
the first round it also times how long the processor takes to work off its backlog.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import sqlalchemy as sa

from ledger.sim.openrouter import GenerationRecord, build_broadcast

TOKEN = "bench-token-0123456789"
TEMPLATE_TRACE_ID = "0123456789abcdef0123456789abcdef"
SPANS_PER_DELIVERY = 3
TARGET_BYTES = 5 * 1024


def delivery_template(behavior: str = "bench") -> bytes:
    """An OpenRouter-shaped delivery of about 5 KB whose trace id is ``TEMPLATE_TRACE_ID``,
    made by ``behavior`` (its trace metadata, user and key name ``BEHAVIOR-key``)."""
    moment = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    words = "Summarise the week's changes to the site and list the pages whose titles changed. "
    prompt = ""
    body = b""
    while len(body) < TARGET_BYTES:
        prompt += words
        record = GenerationRecord(
            generation_id="gen-bench-0001",
            started_at=moment,
            ended_at=moment + timedelta(seconds=2),
            key_name=f"{behavior}-key",
            request_model="anthropic/claude-haiku-4.5",
            response_model="anthropic/claude-haiku-4.5",
            user=behavior,
            session_id="run-bench",
            trace={"trace_id": TEMPLATE_TRACE_ID, "behavior": behavior, "run_id": "run-bench"},
            messages=[{"role": "user", "content": prompt}],
            completion="The titles of three pages changed.",
            prompt_tokens=420,
            completion_tokens=40,
            input_unit_price=0.000001,
            output_unit_price=0.000005,
        )
        body = orjson.dumps(build_broadcast(record))
    return body


# --------------------------------------------------------------------------- servers

# Two bare endpoints: the leanest possible (raw body, orjson) and FastAPI's idiomatic JSON body
# parameter (stdlib json + a dict validation). Neither stores anything.
BARE_APP = """
from typing import Any

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.responses import Response

app = FastAPI()

@app.post("/orjson/v1/traces")
async def traces_orjson(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(b"{}", media_type="application/json")

@app.post("/typed/v1/traces")
async def traces_typed(payload: dict[str, Any] = Body()) -> dict[str, Any]:
    return {}
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int
    prefix: str = ""  # path before /v1/traces

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BEHAVIOR_FILE = """\
description: bench behavior (broadcast spend only; it never runs in the benchmark)
schedule: "0 0 1 1 *"
preset: bench
api_key: env:{key_env}
key_name: {name}-key
prompt: "unused"
budget:
  usd: 1000000
  reset: month
"""


@contextmanager
def server(
    kind: str,
    workdir: Path,
    database_url: str | None,
    behaviors: Sequence[str] = (),
    env_overrides: dict[str, str] | None = None,
) -> Iterator[Server]:
    port = free_port()
    log = workdir / f"{kind}.log"
    env = {**os.environ, **(env_overrides or {})}
    if kind.startswith("bare"):
        (workdir / "bare_app.py").write_text(BARE_APP)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        health = f"http://127.0.0.1:{port}/docs"
    else:
        folder = workdir / "behaviors"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        for index, name in enumerate(behaviors):
            key_env = f"LEDGER_BENCH_KEY_{index}"
            env[key_env] = f"sk-or-v1-{index:04d}{'0' * 60}"
            body = BEHAVIOR_FILE.format(key_env=key_env, name=name)
            (folder / f"{name}.yaml").write_text(body)
        env.update(
            LEDGER_DATABASE_URL=database_url or "",
            LEDGER_BEHAVIORS_DIR=str(workdir / "behaviors"),
            LEDGER_BROADCAST_TOKENS=TOKEN,
            LEDGER_LOG_FORMAT="json",
            LEDGER_LOG_LEVEL="warning",
            LEDGER_WATCH="false",
        )
        cmd = [sys.executable, "-m", "ledger", "serve", "--port", str(port)]
        health = f"http://127.0.0.1:{port}/healthz"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(health, proc, log)
        prefix = {"bare-orjson": "/orjson", "bare-typed": "/typed"}.get(kind, "")
        yield Server(f"http://127.0.0.1:{port}", proc.pid, prefix)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- load


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # server CPU time per request (robust to other load on the machine)
    backlog: int = 0  # spans stored but not yet processed when the load stopped
    drain_s: float = 0.0  # seconds the processor then took to work the backlog off

    @property
    def rate(self) -> float:
        """Deliveries acknowledged per second (a 429 or other error is not ingestion)."""
        return (self.requests - self.errors) / self.seconds


WRK_SCRIPT = """
local template = [==[%TEMPLATE%]==]
local counter = 0
local prefix = ""
local thread_index = 0
function setup(thread)
  thread:set("index", thread_index)
  thread:set("run", "%RUN%")
  thread_index = thread_index + 1
end
function init(args)
  prefix = string.format("%s%02x", run, index)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer %TOKEN%"
end
function request()
  counter = counter + 1
  local id = prefix .. string.format("%022x", counter)
  local body = string.gsub(template, "%PLACEHOLDER%", id)
  return wrk.format(nil, "%PREFIX%/v1/traces", nil, body)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %.3f %.3f\\n",
    summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout,
    summary.duration,
    summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def run_wrk(
    target: Server, template: bytes, duration: float, connections: int, workdir: Path
) -> Result:
    run_id = secrets.token_hex(4)
    script = (
        WRK_SCRIPT.replace("%TEMPLATE%", template.decode())
        .replace("%RUN%", run_id)
        .replace("%TOKEN%", TOKEN)
        .replace("%PLACEHOLDER%", TEMPLATE_TRACE_ID)
        .replace("%PREFIX%", target.prefix)
    )
    path = workdir / f"load-{run_id}.lua"
    path.write_text(script)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{duration:.0f}s",
            "--timeout",
            "10s",
            "-s",
            str(path),
            target.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if match is None:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    requests, errors, micros, _status, p50, p99 = match.groups()
    return Result(int(requests), int(errors), int(micros) / 1e6, float(p50), float(p99))


PY_LOAD = """
import asyncio, sys, time, secrets
host, port, duration, connections, token, placeholder, prefix = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6],
    sys.argv[7])
template = sys.stdin.buffer.read()
run = secrets.token_hex(4)
lat, errors = [], 0
async def worker(index):
    global errors
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    while time.monotonic() < end:
        n += 1
        trace = f"{run}{index:04x}{n:020x}".encode()
        body = template.replace(placeholder.encode(), trace)
        head = (f"POST {prefix}/v1/traces HTTP/1.1\\r\\nHost: {host}"
                "\\r\\nContent-Type: application/json"
                f"\\r\\nAuthorization: Bearer {token}"
                f"\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n")
        t0 = time.perf_counter()
        writer.write(head.encode() + body)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\\r\\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        lat.append(time.perf_counter() - t0)
        if not status.startswith(b"HTTP/1.1 200"):
            errors += 1
    writer.close()
async def main():
    global end
    start = time.monotonic(); end = start + duration
    await asyncio.gather(*(worker(i) for i in range(connections)))
    return time.monotonic() - start
secs = asyncio.run(main())
lat.sort()
print("RESULT", len(lat), errors, secs, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000)
"""


def run_python_load(target: Server, template: bytes, duration: float, connections: int) -> Result:
    url = httpx.URL(target.url)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            PY_LOAD,
            url.host,
            str(url.port),
            str(duration),
            str(connections),
            TOKEN,
            TEMPLATE_TRACE_ID,
            target.prefix,
        ],
        input=template,
        capture_output=True,
        check=True,
    ).stdout.decode()
    fields = out.split()
    return Result(
        int(fields[1]), int(fields[2]), float(fields[3]), float(fields[4]), float(fields[5])
    )


def measure(target: Server, template: bytes, args: argparse.Namespace, workdir: Path) -> Result:
    def once(seconds: float) -> Result:
        if args.loader == "wrk":
            return run_wrk(target, template, seconds, args.connections, workdir)
        return run_python_load(target, template, seconds, args.connections)

    once(args.warmup)
    cpu = target.cpu_seconds()
    result = once(args.duration)
    cpu_us = (target.cpu_seconds() - cpu) * 1e6 / max(1, result.requests)
    return replace(result, cpu_us=cpu_us)


# --------------------------------------------------------------------------- databases


def postgres_url() -> str | None:
    url = os.environ.get("LEDGER_BENCH_DATABASE_URL") or os.environ.get(
        "LEDGER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except sa.exc.OperationalError:
        return None
    return url


@contextmanager
def fresh_postgres_schema(url: str) -> Iterator[str]:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def drain(database_url: str, timeout: float = 300.0) -> tuple[int, float]:
    """The processor's backlog when the load stopped, and the seconds it took to reach zero."""
    engine = sa.create_engine(database_url)
    query = sa.text(
        "SELECT coalesce(sum(span_count), 0) FROM ingest_delivery WHERE set_aside IS NULL"
    )
    try:
        start = time.monotonic()
        backlog = -1
        while time.monotonic() - start < timeout:
            with engine.connect() as conn:
                left = int(conn.execute(query).scalar_one())
            backlog = left if backlog < 0 else backlog
            if left == 0:
                return backlog, time.monotonic() - start
            time.sleep(0.2)
        raise SystemExit(f"the processor did not work off {backlog} spans in {timeout:.0f} s")
    finally:
        engine.dispose()


def stored_spans(database_url: str) -> int:
    """Spans stored: processed (``ingested_span``) and not yet (still in their delivery), read
    in one statement, so one snapshot."""
    engine = sa.create_engine(database_url)
    query = sa.text(
        "SELECT (SELECT count(*) FROM ingested_span)"
        " + (SELECT coalesce(sum(span_count), 0) FROM ingest_delivery)"
    )
    try:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- sustained

# Open-loop load: delivery i is offered at start + i / rate whatever the server's answers (a
# closed loop would slow down with the server and hide a backlog). Each ack's monotonic time is
# reported (CLOCK_MONOTONIC is one clock for every process), so the parent can match it against
# the spend it sees in the database.
SUSTAINED_LOAD = """
import asyncio, json, sys, time, secrets
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
host, port, rate, duration, connections, token, placeholder = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
    sys.argv[6], sys.argv[7].encode())
templates = [t.encode() for t in json.loads(sys.stdin.buffer.read())]
run = secrets.token_hex(4)
total = int(rate * duration)
acks = [None] * total
async def worker(queue):
    reader, writer = await asyncio.open_connection(host, port)
    while True:
        index = await queue.get()
        if index is None:
            break
        body = templates[index % len(templates)].replace(placeholder, f"{run}{index:024x}".encode())
        writer.write((f"POST /v1/traces HTTP/1.1\\r\\nHost: {host}"
                      "\\r\\nContent-Type: application/json"
                      f"\\r\\nAuthorization: Bearer {token}"
                      f"\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n").encode() + body)
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\\r\\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        acks[index] = (time.monotonic(), int(status.split()[1]))
    writer.close()
async def main():
    queue = asyncio.Queue()
    workers = [asyncio.create_task(worker(queue)) for _ in range(connections)]
    await asyncio.sleep(0.2)
    start = time.monotonic()
    offered = 0
    while offered < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        for index in range(offered, due):
            queue.put_nowait(index)
        offered = due
        await asyncio.sleep(0.002)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    print(json.dumps({"start": start, "end": time.monotonic(), "acks": acks}))
asyncio.run(main())
"""


@dataclass(frozen=True, slots=True)
class Sustained:
    """One sustained run: ``rate`` deliveries/s offered for ``seconds``."""

    rate: float
    seconds: float
    acknowledged: int
    refused: int  # 429 (pushed back) and other non-2xx answers
    freshness_ms: tuple[float, float, float]  # p50, p99, max: 2xx → cost visible in spend
    backlog: list[tuple[float, int]]  # (seconds since start, deliveries acknowledged, not applied)
    slope: float  # backlog growth over the second half, deliveries/s
    drain_s: float  # after the load stopped, until every acknowledged cost was visible

    @property
    def bounded(self) -> bool:
        """The backlog stopped growing: over the run's second half it grew by less than 2 % of
        the offered rate (processing kept up with at least 98 % of what was acknowledged)."""
        return self.slope < 0.02 * self.rate

    @property
    def kept_up(self) -> bool:
        """Bounded without pushing back: every offered delivery acknowledged."""
        return self.bounded and self.refused == 0

    @property
    def verdict(self) -> str:
        if self.kept_up:
            return "kept up"
        return "bounded by 429s" if self.bounded else "GROWING"

    @property
    def backlog_max(self) -> int:
        return max((b for _, b in self.backlog), default=0)


def delivery_cost(template: bytes) -> float:
    """The dollars one delivery adds to its behavior's spend."""
    from ledger.ingest.otlp import Limits, charges_of, decode_request

    (charge,) = charges_of(decode_request(template, "application/json", None, Limits()))
    return charge.usd


def sample_spend(
    database_url: str, until: list[bool], samples: list[tuple[float, float]], every: float = 0.05
) -> None:
    """Append ``(monotonic time, total dollars spent)`` every ``every`` seconds until
    ``until[0]``: what any reader of the behaviors' spend sees at that moment."""
    engine = sa.create_engine(database_url)
    query = sa.text("SELECT coalesce(sum(spent_usd), 0) FROM budget_window")
    try:
        with engine.connect() as conn:
            while not until[0]:
                value = float(conn.execute(query).scalar_one())
                conn.rollback()  # a fresh snapshot next time
                samples.append((time.monotonic(), value))
                time.sleep(every)
    finally:
        engine.dispose()


def run_sustained(
    target: Server,
    database_url: str,
    templates: list[bytes],
    rate: float,
    seconds: float,
    connections: int,
    drain_timeout: float = 180.0,
) -> Sustained:
    import threading

    cost = delivery_cost(templates[0])
    samples: list[tuple[float, float]] = []
    stop = [False]
    sampler = threading.Thread(target=sample_spend, args=(database_url, stop, samples))
    sampler.start()
    url = httpx.URL(target.url)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                SUSTAINED_LOAD,
                url.host,
                str(url.port),
                str(rate),
                str(seconds),
                str(connections),
                TOKEN,
                TEMPLATE_TRACE_ID,
            ],
            input=orjson.dumps([t.decode() for t in templates]),
            capture_output=True,
            check=True,
        ).stdout
        load = orjson.loads(out)
        acked = sorted(t for t, status in (a for a in load["acks"] if a) if 200 <= status < 300)
        refused = sum(1 for a in load["acks"] if a is None or not 200 <= a[1] < 300)
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline:  # until every acknowledged cost is visible
            if samples and round(samples[-1][1] / cost) >= len(acked):
                break
            time.sleep(0.1)
    finally:
        stop[0] = True
        sampler.join()
    start, end = load["start"], load["end"]
    visible = [(t, round(usd / cost)) for t, usd in samples]
    # Deliveries are applied in the order they were stored (= acknowledged): the k-th
    # acknowledged delivery's cost is visible at the first sample counting k or more.
    delays: list[float] = []
    pointer = 0
    for k, acked_at in enumerate(acked, start=1):
        while pointer < len(visible) and (
            visible[pointer][1] < k or visible[pointer][0] < acked_at
        ):
            pointer += 1
        if pointer == len(visible):
            delays.append(float("inf"))
            continue
        delays.append(visible[pointer][0] - acked_at)
    delays.sort()

    def pct(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))] * 1000 if delays else 0.0

    series: list[tuple[float, int]] = []
    acked_index = 0
    for t, count in visible:
        if t > end:
            break
        while acked_index < len(acked) and acked[acked_index] <= t:
            acked_index += 1
        series.append((t - start, max(0, acked_index - count)))
    half = [(t, b) for t, b in series if t >= (end - start) / 2]
    slope = _slope(half)
    done = next((t for t, count in visible if t >= end and count >= len(acked)), None)
    return Sustained(
        rate=rate,
        seconds=seconds,
        acknowledged=len(acked),
        refused=refused,
        freshness_ms=(pct(0.5), pct(0.99), delays[-1] * 1000 if delays else 0.0),
        backlog=series,
        slope=slope,
        drain_s=(done - end) if done is not None else float("inf"),
    )


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of ``points`` (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [float(y) for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0


def backlog_line(series: list[tuple[float, int]], every: float = 5.0) -> str:
    """The backlog every ``every`` seconds, as ``t:deliveries``."""
    shown: list[str] = []
    next_at = 0.0
    for t, backlog in series:
        if t >= next_at:
            shown.append(f"{t:.0f}s:{backlog}")
            next_at += every
    return " ".join(shown)


def parse_rates(text: str, receiver_max: float | None) -> list[float]:
    """``1000,3000,0.5x``: absolute rates, or fractions of the receiver's measured maximum."""
    rates = []
    for item in text.split(","):
        item = item.strip()
        if item.endswith("x"):
            if receiver_max is None:
                raise SystemExit(f"{item}: a fraction of the receiver's max needs --receiver-max")
            rates.append(round(float(item[:-1]) * receiver_max))
        else:
            rates.append(float(item))
    return rates


def sustained_main(args: argparse.Namespace) -> None:
    behaviors = (
        ["bench"] if args.behaviors == 1 else [f"bench-{i:03d}" for i in range(args.behaviors)]
    )
    templates = [delivery_template(name) for name in behaviors]
    print(
        f"sustained: {len(behaviors)} behavior(s), {args.sustain_seconds:.0f} s per rate, "
        f"{args.sustained_connections} connections, {os.cpu_count()} CPUs; freshness = from a "
        "delivery's 2xx to its cost in the behaviors' spend (sampled every 50 ms)",
        flush=True,
    )
    endpoints: list[tuple[str, str]] = [("sqlite", "sqlite")]
    pg = postgres_url()
    if pg is None:
        print("postgresql: skipped (server unreachable)")
    else:
        endpoints.append(("postgresql", pg))
    if args.databases:
        endpoints = [e for e in endpoints if e[0] in args.databases.split(",")]
    rows: list[tuple[str, float, Sustained, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        workdir = Path(tmp)
        for name, db_url in endpoints:
            receiver_max: float | None = None
            if args.receiver_max or any(r.strip().endswith("x") for r in args.rates.split(",")):
                # The receiver's maximum: the closed-loop measurement, same deliveries, with
                # no backlog bound (its 429s would measure the processor instead).
                unbounded = {"LEDGER_INGEST_MAX_BACKLOG_SPANS": "0"}
                with (
                    fresh_database(name, db_url, workdir) as url,
                    server(name, workdir, url, behaviors, unbounded) as target,
                ):
                    receiver_max = measure(target, templates[0], args, workdir).rate
                print(f"{name}: receiver max {receiver_max:.0f} deliveries/s", flush=True)
            for rate in parse_rates(args.rates, receiver_max):
                with (
                    fresh_database(name, db_url, workdir) as url,
                    server(name, workdir, url, behaviors) as target,
                ):
                    result = run_sustained(
                        target,
                        url,
                        templates,
                        rate,
                        args.sustain_seconds,
                        args.sustained_connections,
                    )
                rows.append((name, rate, result, receiver_max))
                p50, p99, worst = result.freshness_ms
                print(
                    f"{name:<11} offered {rate:6.0f}/s  acked {result.acknowledged:7d}  "
                    f"refused {result.refused:6d}  freshness p50 {p50:7.0f} ms  p99 {p99:7.0f} ms"
                    f"  max {worst:7.0f} ms  backlog max {result.backlog_max:6d}  "
                    f"growth {result.slope:7.1f}/s  {result.verdict}"
                    f"  drained in {result.drain_s:.1f} s",
                    flush=True,
                )
                print(f"{'':<11} backlog (deliveries): {backlog_line(result.backlog)}", flush=True)
    print()
    for name, _ in endpoints:
        mine = [(rate, r, m) for n, rate, r, m in rows if n == name]
        kept = [rate for rate, r, _ in mine if r.kept_up]
        best = max(kept, default=None)
        receiver_max = next((m for _, _, m in mine if m), None)
        ratio = f" = {best / receiver_max:.2f}x the receiver's max" if best and receiver_max else ""
        print(
            f"{name}: highest offered rate whose backlog stayed bounded without a 429: "
            f"{best}{ratio}"
        )
        for rate, r, _ in mine:
            if not r.kept_up:
                applied = (r.acknowledged - (r.backlog[-1][1] if r.backlog else 0)) / r.seconds
                print(f"  at {rate:.0f}/s the processor applied about {applied:.0f} deliveries/s")


# --------------------------------------------------------------------------- main


def run_endpoint(
    name: str,
    db_url: str | None,
    template: bytes,
    args: argparse.Namespace,
    workdir: Path,
    *,
    drain_backlog: bool,
) -> Result:
    if name.startswith("bare"):
        with server(name, workdir, None) as target:
            return measure(target, template, args, workdir)
    assert db_url is not None
    # The receiver's throughput: no backlog bound (its 429s would measure the processor, which
    # ``--sustained`` measures); what it acknowledged is checked below, span by span.
    extra = None if args.bounded else {"LEDGER_INGEST_MAX_BACKLOG_SPANS": "0"}
    with fresh_database(name, db_url, workdir) as url:
        with server(name, workdir, url, env_overrides=extra) as target:
            result = measure(target, template, args, workdir)
            if drain_backlog:
                backlog, drain_s = drain(url)
                result = replace(result, backlog=backlog, drain_s=drain_s)
        spans = stored_spans(url)
    acknowledged = result.requests - result.errors
    if spans < acknowledged * SPANS_PER_DELIVERY:
        raise SystemExit(
            f"{name}: {spans} spans stored but {acknowledged} deliveries acknowledged: data lost"
        )
    return result


# The baseline is "a bare FastAPI endpoint that parses the JSON": bare-typed, FastAPI's
# idiomatic JSON body (about 5,000/s on a 2-core machine, where a lean orjson route does about
# 10,000). bare-orjson is the stricter reference printed beside it.
BASELINE = "bare-typed"
LEAN = "bare-orjson"


def paired_ratios(runs: dict[str, list[Result]], name: str, base: str) -> list[float]:
    """``name``'s throughput over ``base``'s, round by round (both measured minutes apart)."""
    return [mine.rate / theirs.rate for mine, theirs in zip(runs[name], runs[base], strict=True)]


def summarize(runs: dict[str, list[Result]]) -> None:
    best = {name: max(results, key=lambda r: r.rate) for name, results in runs.items()}
    cpu = {name: min(r.cpu_us for r in results) for name, results in runs.items()}
    print()
    print("best round of each (other load on the machine only ever slows a round down):")
    print(
        f"{'endpoint':<13}{'deliv/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs':>9}"
        f"{'/typed':>9}{'/orjson':>9}{'CPU/orjson':>12}"
    )
    for name, result in best.items():
        print(
            f"{name:<13}{result.rate:>9.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
            f"{cpu[name]:>9.0f}{result.rate / best[BASELINE].rate:>9.2f}"
            f"{result.rate / best[LEAN].rate:>9.2f}"
            f"{cpu[LEAN] / cpu[name]:>12.2f}"
        )
    print(
        "/typed, /orjson: throughput relative to each bare endpoint's best round; CPU/orjson: "
        "bare-orjson's server CPU per delivery divided by this endpoint's"
    )
    print()
    print(
        "paired, round by round (each ratio against the bare endpoint measured in the same "
        "round: robust to a machine whose speed drifts between rounds):"
    )
    for name in runs:
        if name.startswith("bare"):
            continue
        for base in (BASELINE, LEAN):
            ratios = paired_ratios(runs, name, base)
            listed = " ".join(f"{ratio:.2f}" for ratio in ratios)
            short = base.removeprefix("bare-")
            print(
                f"{name:<11} /{short:<7} median {statistics.median(ratios):.2f}"
                f"  min {min(ratios):.2f}  max {max(ratios):.2f}  rounds: {listed}"
            )
    print(
        f"the issue's baseline is {BASELINE} (a bare FastAPI endpoint that parses the JSON); "
        "targets: sqlite 1.00, postgresql 0.80; required: 0.50"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument(
        "--bounded",
        action="store_true",
        help="closed loop: keep the processor's backlog bound (429s past it), so the stored "
        "endpoints measure the processor rather than the receiver",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="alternate the endpoints N times")
    parser.add_argument(
        "--loader", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    parser.add_argument(
        "--sustained",
        action="store_true",
        help="instead: offer fixed rates (--rates) for --sustain-seconds against `ledger serve` "
        "and report freshness (2xx → cost visible in the behavior's spend), the backlog over "
        "time and the highest rate whose backlog stays bounded",
    )
    parser.add_argument(
        "--rates",
        default="1000,3000",
        help="sustained: deliveries/s, or fractions of the receiver's max (e.g. 0.5x)",
    )
    parser.add_argument("--sustain-seconds", type=float, default=60.0)
    parser.add_argument("--sustained-connections", type=int, default=256)
    parser.add_argument(
        "--behaviors",
        type=int,
        default=50,
        help="sustained: deliveries spread over N behaviors (1: one busy behavior)",
    )
    parser.add_argument(
        "--receiver-max",
        action="store_true",
        help="sustained: measure the receiver's max first (closed loop) and report ratios",
    )
    parser.add_argument("--databases", default="", help="sustained: e.g. sqlite or postgresql")
    args = parser.parse_args()
    if args.sustained:
        sustained_main(args)
        return

    template = delivery_template()
    print(
        f"delivery: {len(template)} bytes, {SPANS_PER_DELIVERY} spans; load: {args.loader}, "
        f"{args.connections} connections, {args.duration:.0f} s (+{args.warmup:.0f} s warm-up) "
        f"per measurement, {args.rounds} rounds; {os.cpu_count()} CPUs"
    )
    endpoints: list[tuple[str, str | None]] = [
        (LEAN, None),
        (BASELINE, None),
        ("sqlite", "sqlite"),
    ]
    pg = postgres_url()
    if pg is None:
        print("postgresql: skipped (server unreachable)")
    else:
        endpoints.append(("postgresql", pg))
    runs: dict[str, list[Result]] = {name: [] for name, _ in endpoints}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        workdir = Path(tmp)
        for round_number in range(1, args.rounds + 1):
            # Each round starts one endpoint further on, so none is always first or last.
            shift = (round_number - 1) % len(endpoints)
            for name, db_url in endpoints[shift:] + endpoints[:shift]:
                # The processor's backlog is drained (and timed) in the first round only: it
                # takes longer than the measurement, and the load it measures is the same.
                first = round_number == 1
                result = run_endpoint(name, db_url, template, args, workdir, drain_backlog=first)
                runs[name].append(result)
                drained = (
                    f"  processor backlog {result.backlog} spans, drained in {result.drain_s:.1f} s"
                    if first and not name.startswith("bare")
                    else ""
                )
                print(
                    f"round {round_number} {name:<11} {result.rate:7.0f} deliveries/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"server CPU {result.cpu_us:5.0f} µs/delivery  errors {result.errors}{drained}",
                    flush=True,
                )
    summarize(runs)


@contextmanager
def fresh_database(name: str, url: str, workdir: Path) -> Iterator[str]:
    if name == "postgresql":
        with fresh_postgres_schema(url) as schema_url:
            yield schema_url
        return
    path = workdir / f"bench-{secrets.token_hex(4)}.db"
    yield f"sqlite:///{path}"


if __name__ == "__main__":
    main()
