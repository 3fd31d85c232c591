"""The broadcast processor in a process of its own (``LEDGER_INGEST_PROCESSOR=process``, the
default).

Beside the receiver in one interpreter the processor shares a core and the GIL with it: under
load each of its many short database calls waits for the receiver's event loop to let go of
the interpreter, and a burst of deliveries slows the answers the receiver owes OpenRouter. In
a child process it runs on the machine's other core, and the backlog bound
(``LEDGER_INGEST_MAX_BACKLOG_SPANS``) still refuses deliveries with 429 before "acknowledged"
could mean "counted minutes later". It runs at the daemon's CPU priority: at a lower one
(``nice`` 5) it held SQLite's one write lock while descheduled, stalling the receiver's
commits (below).

Measured in one session on a quiet 2-CPU machine (``bench_ingest``: the receiver closed-loop
with ``wrk``, paired round by round against a bare FastAPI endpoint that parses the JSON, the
processor working beside it; ``--sustained`` 60 s at a fixed rate, 50 behaviors):

=========================================  ==============  ==============  ==============
                                           thread          process nice 5  process nice 0
=========================================  ==============  ==============  ==============
receiver / bare-typed, SQLite (median)     0.64x           0.96x           0.82x
receiver / bare-typed, PostgreSQL          0.55x           0.89x           0.92x
receiver max, SQLite (deliveries/s)        3,234           7,759
receiver max, PostgreSQL                   4,044           7,224
2,000/s sustained, SQLite: p99 freshness   1.16 s (kept)   429s (1,666/s)  0.26 s (kept)
2,000/s sustained, PostgreSQL: applied     1,871/s         1,941/s         1,851/s
1,000/s sustained p99, SQLite / PG         0.14 / 0.20 s   0.15 / 0.27 s   0.13 / 0.24 s
=========================================  ==============  ==============  ==============

Everything the two share is in the database — the deliveries waiting, what the processor
applied — so the split costs nothing in safety: a child that dies (killed, out of memory) loses
nothing, the parent logs it and starts another, which takes the same deliveries. Beside the
database they share one socket pair (``multiprocessing.connection`` messages): the parent sends
the child its configuration, whether the receiver is busy and "stop"; the child sends the
backlog it measured (the receiver's 429 bound) and what it counted for ``/metrics`` (gate
results, tier changes, runs). The end of the socket stops the child too: a child whose parent
died does not outlive it. The child is ``python -m ledger.ingest.worker FD``, a fresh
interpreter that imports only what processing needs (not the program that started the daemon,
as a ``multiprocessing`` spawn would).

A daemon on a clock other than the system's (tests), or on an in-memory SQLite database, keeps
the processor in its own process's thread (``IngestProcessor``), as does
``LEDGER_INGEST_PROCESSOR=thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import SecretStr

from ledger.config import WebhookSource
from ledger.ingest.writer import Backlog
from ledger.metrics import PROCESSOR_RESTARTS, add_counts
from ledger.transitions import PolicyContext

log = structlog.get_logger("ledger.ingest")

SYNC_SECONDS: Final = 0.05  # how often the parent checks its child and "busy"
METRICS_SECONDS: Final = 0.5  # how often the child sends what it counted
RESTART_DELAYS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_SECONDS: Final = 60.0  # a child that ran this long restarts after the first delay
CRASH_LOOP: Final = 3  # exits in a row (none running HEALTHY_SECONDS) that make /readyz fail
STOP_SECONDS: Final = 8.0  # a stopping child finishes its batch within this, or is killed
# (within the 10 s the daemon gives each of its tasks to finish)


class ProcessorProcess:
    """The parent's side: starts the child, tells it whether the receiver is busy, takes the
    backlog it measures into the receiver's ``Backlog``, adds what it counted to this
    process's metrics, restarts it when it dies and stops it with the daemon. Takes the place
    of ``IngestProcessor`` in the daemon (``run(stop)``, ``wake``)."""

    def __init__(
        self,
        database_url: str,
        ctx: PolicyContext,
        *,
        sources: Mapping[str, WebhookSource] | None = None,
        ingest_busy: Callable[[], bool] | None = None,
        backlog: Backlog | None = None,
        log_format: Any = "auto",
        log_level: Any = "info",
    ) -> None:
        self.config: dict[str, Any] = {
            "database_url": database_url,
            "ctx": ctx,
            # Webhook events are verified by the receiver: the child needs each source's
            # binding, not its signing secrets.
            "sources": {
                name: source.model_copy(update={"secrets": SecretStr("")})
                for name, source in (sources or {}).items()
            },
            "limit": backlog.limit if backlog is not None else 0,
            "log_format": log_format,
            "log_level": log_level,
        }
        self.ingest_busy = ingest_busy
        self.backlog = backlog
        self.wake = asyncio.Event()  # unused: the child polls the database itself
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.failures = 0  # exits in a row, none after running HEALTHY_SECONDS
        self.last_exit: int | None = None

    def problem(self) -> str | None:
        """Why broadcast deliveries are not being applied (for /readyz), or None: the child
        keeps exiting (``CRASH_LOOP`` times in a row)."""
        if self.failures < CRASH_LOOP:
            return None
        return (
            f"the broadcast processor process keeps exiting ({self.failures} times in a row, "
            f"last exit code {self.last_exit}): broadcast deliveries are stored but not applied; "
            "its log says why"
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                code = await self._run_child(stop)
            except Exception:
                log.exception("the broadcast processor process could not be started")
                code = None
            if stop.is_set():
                return
            if time.monotonic() - started >= HEALTHY_SECONDS:
                self.failures = 0
            delay = RESTART_DELAYS[min(self.failures, len(RESTART_DELAYS) - 1)]
            self.failures += 1
            self.last_exit = code
            self.restarts += 1
            PROCESSOR_RESTARTS.inc()
            log.error(
                "the broadcast processor process exited; starting another (deliveries wait in "
                "the database meanwhile, none is lost)",
                exitcode=code,
                restart_in_seconds=delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def _run_child(self, stop: asyncio.Event) -> int | None:
        mine, theirs = socket.socketpair()
        conn = Connection(mine.detach())
        try:
            fd = theirs.fileno()
            package_root = str(Path(__file__).resolve().parents[2])
            path = os.environ.get("PYTHONPATH")
            env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
            process = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, "-m", "ledger.ingest.worker", str(fd)],
                pass_fds=(fd,),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.process = process
        log.info("broadcast processor started in a process of its own", pid=process.pid)
        loop = asyncio.get_running_loop()
        try:
            conn.send(("config", self.config))
            loop.add_reader(conn.fileno(), self._receive, conn)
            busy: bool | None = None
            started = time.monotonic()
            while process.poll() is None and not stop.is_set():
                if self.failures and time.monotonic() - started >= HEALTHY_SECONDS:
                    self.failures = 0  # running well again: ready
                now_busy = bool(self.ingest_busy and self.ingest_busy())
                if now_busy != busy:
                    busy = now_busy
                    conn.send(("busy", busy))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=SYNC_SECONDS)
        except OSError:
            pass  # the child is gone: its socket too
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(conn.fileno())
        try:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    conn.send(("stop", None))
                try:
                    await asyncio.to_thread(process.wait, STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    log.warning("the broadcast processor process did not stop; killing it")
                    process.kill()
                    await asyncio.to_thread(process.wait, 5.0)
            self._receive(conn)  # what it counted last
        finally:
            conn.close()
        return process.returncode

    def _receive(self, conn: Connection) -> None:
        """The child's messages: the backlog it measured, what it counted. At the socket's end
        (the child is gone) it stops listening, so the loop does not spin on it."""
        try:
            while conn.poll():
                kind, value = conn.recv()
                if kind == "waiting" and self.backlog is not None:
                    self.backlog.resync(value)
                elif kind == "counts":
                    add_counts(value)
        except (EOFError, OSError):
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())


class _SentBacklog(Backlog):
    """The child's side of the receiver's ``Backlog``: what the processor measures is sent to
    the parent, whose receiver refuses deliveries past the bound."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection, limit: int) -> None:
        super().__init__(limit)
        self._conn = conn

    def resync(self, spans: int) -> None:
        super().resync(spans)
        with contextlib.suppress(OSError):
            self._conn.send(("waiting", spans))


def main(fd: int) -> None:
    """The child process: the processor's loop until the parent says stop or is gone."""
    from ledger.logging import configure_logging

    # Ctrl-C, a terminal's hang-up and a service manager's SIGTERM reach the whole process
    # group: the parent stops its child (its "stop", or the socket's end), which is not a crash
    # to restart and count. No priority or resource changes here (nice, setrlimit): the systemd
    # unit in deploy/ filters those system calls (@resources), and SIGSYS would kill the child.
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        kind, config = conn.recv()
    except (EOFError, OSError):
        return  # the parent is gone already
    if kind != "config":
        raise SystemExit(f"ledger.ingest.worker: expected the configuration first, got {kind!r}")
    configure_logging(config["log_format"], config["log_level"])
    asyncio.run(_child(conn, config))


async def _child(conn: Connection, config: dict[str, Any]) -> None:
    from ledger.clock import SystemClock
    from ledger.db.session import Database
    from ledger.ingest.process import IngestProcessor
    from ledger.metrics import counts, install_event_counters

    install_event_counters()
    db = await asyncio.to_thread(Database.open, config["database_url"])
    stop = asyncio.Event()
    busy = False
    processor = IngestProcessor(
        db,
        SystemClock(),
        config["ctx"],
        sources=config["sources"],
        ingest_busy=lambda: busy,
        backlog=_SentBacklog(conn, config["limit"]),
    )

    def stop_now() -> None:
        stop.set()
        processor.wake.set()

    def on_message() -> None:
        nonlocal busy
        try:
            while conn.poll():
                kind, value = conn.recv()
                if kind == "busy":
                    busy = bool(value)
                elif kind == "stop":
                    stop_now()
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())  # the parent is gone: stop listening, and stop
            stop_now()

    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), on_message)
    sent: dict[Any, float] = {}

    def send_counts() -> None:
        now = counts()
        delta = {key: value - sent.get(key, 0.0) for key, value in now.items()}
        delta = {key: value for key, value in delta.items() if value}
        if delta:
            with contextlib.suppress(OSError):
                conn.send(("counts", delta))
            sent.update(now)

    async def ship() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=METRICS_SECONDS)
            send_counts()

    shipper = asyncio.create_task(ship())
    try:
        await processor.run(stop)
    finally:
        stop.set()
        await shipper
        send_counts()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
        db.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
