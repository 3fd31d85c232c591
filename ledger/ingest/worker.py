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
database they share one socket pair of length-prefixed messages (the framing of
``multiprocessing.connection``): the parent sends the child its version, its configuration,
whether the receiver is busy and "stop" (pickled: the parent is trusted); the child sends the
backlog it measured (the receiver's 429 bound) and what it counted for ``/metrics`` (gate
results, tier changes, runs) as JSON, which the parent parses without running anything the
child, which reads untrusted span data, could have put there. Neither side ever waits to send:
a message that does not fit the socket waits in its sender's memory, only the latest "busy" or
backlog is kept, and a child that has read nothing the parent sent for ``HUNG_SECONDS``
(stopped, or stuck) is killed and started again like one that crashed — the parent's event
loop (HTTP, ``/healthz``, signals) never blocks on its child. The end of the socket stops the
child too: a child whose parent died does not outlive it.

The child is ``python -P -m ledger.ingest.worker FD``, a fresh interpreter that imports only
what processing needs (not the program that started the daemon, as a ``multiprocessing`` spawn
would) and nothing from the daemon's working directory (``-P``). The package's directory is
added to its ``PYTHONPATH`` only when that interpreter would not import this same ``ledger``
otherwise (a source checkout run in place). Its environment is an allow-list
(``CHILD_ENVIRONMENT``: the search path, locale, time zone, temporary directory, TLS
certificates, libpq's ``PG*`` variables, ``CREDENTIALS_DIRECTORY`` and the interpreter's
``PYTHON*`` settings) plus the variable an ``env:`` reference in ``LEDGER_DATABASE_URL`` names;
no ``LEDGER_*`` setting (its configuration comes over the socket) and no variable holding a
secret the daemon resolved (signing secrets, API keys): the process that parses span data
holds only the database's credentials.

The parent first sends ``ledger.__version__`` and ``PROTOCOL``; a child installed from other
files (``pip install`` into the daemon's environment while it runs, then the child restarted)
exits with ``UPGRADED_EXIT`` before reading the configuration, and the parent stops restarting
it: its log says, and ``/readyz`` answers 503 with, "ledger was upgraded in place: restart the
daemon".

A daemon on a clock other than the system's (tests), or on an in-memory SQLite database, keeps
the processor in its own process's thread (``IngestProcessor``), as does
``LEDGER_INGEST_PROCESSOR=thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import SecretStr

import ledger
from ledger.config import WebhookSource
from ledger.ingest.writer import Backlog
from ledger.metrics import PROCESSOR_RESTARTS, add_counts
from ledger.secrets import known_secret_values
from ledger.transitions import PolicyContext

log = structlog.get_logger("ledger.ingest")

SYNC_SECONDS: Final = 0.05  # how often the parent checks its child and "busy"
METRICS_SECONDS: Final = 0.5  # how often the child sends what it counted
RESTART_DELAYS: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_SECONDS: Final = 60.0  # a child that ran this long restarts after the first delay
CRASH_LOOP: Final = 3  # exits in a row (none running HEALTHY_SECONDS) that make /readyz fail
STOP_SECONDS: Final = 8.0  # a stopping child finishes its batch within this, or is killed
# (within the 10 s the daemon gives each of its tasks to finish)
HUNG_SECONDS: Final = 30.0  # a child that reads nothing its parent sends for this long (its
# socket full: stopped, or stuck) is killed and started again. Only a full socket counts (some
# 200 KB unread), so a child still connecting to its database is not hung.
PROTOCOL: Final = 2  # the messages' shape: change it with them
UPGRADED_EXIT: Final = 78  # the child is another version than its parent: restart the daemon
UPGRADED_PROBLEM: Final = (
    "ledger was upgraded in place: restart the daemon (its broadcast processor process, started "
    "from the files installed now, is another version; broadcast deliveries are stored but not "
    "applied until then)"
)

# What the child's environment keeps of the daemon's (besides the variable an env: reference in
# the database URL names); everything else, secrets the daemon resolved first, stays behind.
CHILD_ENVIRONMENT: Final = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TZ", "TZDIR", "LANG", "LANGUAGE",
        "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME",
        "LC_MONETARY", "TERM", "NO_COLOR", "FORCE_COLOR", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "CREDENTIALS_DIRECTORY",
        # libpq (psycopg): where and how to reach PostgreSQL
        "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
        "PGSERVICE", "PGSERVICEFILE", "PGSYSCONFDIR", "PGOPTIONS", "PGAPPNAME",
        "PGCONNECT_TIMEOUT", "PGCLIENTENCODING", "PGTARGETSESSIONATTRS", "PGLOADBALANCEHOSTS",
        "PGCHANNELBINDING", "PGREQUIREAUTH", "PGSSLMODE", "PGREQUIRESSL", "PGSSLNEGOTIATION",
        "PGSSLCERT", "PGSSLKEY", "PGSSLCERTMODE", "PGSSLROOTCERT", "PGSSLCRL", "PGSSLCRLDIR",
        "PGSSLSNI", "PGREQUIREPEER", "PGSSLMINPROTOCOLVERSION", "PGSSLMAXPROTOCOLVERSION",
        "PGGSSENCMODE", "PGKRBSRVNAME", "PGGSSLIB", "PGGSSDELEGATION", "PGTZ", "PGDATESTYLE",
        # the interpreter
        "PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
        "PYTHONPLATLIBDIR", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX",
        "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONCOERCECLOCALE",
        "PYTHONWARNINGS", "PYTHONFAULTHANDLER", "PYTHONDEVMODE", "PYTHONHASHSEED",
        "PYTHONMALLOC", "PYTHONTRACEMALLOC", "PYTHONASYNCIODEBUG", "PYTHONINTMAXSTRDIGITS",
        # subprocess coverage (the test suite's, when measured)
        "COVERAGE_PROCESS_START", "COVERAGE_RCFILE",
    }
)  # fmt: skip


def child_environment(database_url: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the allowed variables of ``environ`` whose values are not a
    secret this process resolved, the variable ``database_url``'s ``env:`` reference names
    (the child resolves it), and a ``PYTHONPATH`` that finds this ``ledger``."""
    secrets = known_secret_values()
    env = {
        name: value
        for name, value in environ.items()
        if (name in CHILD_ENVIRONMENT or name.startswith("LC_")) and value not in secrets
    }
    reference = database_url.strip()
    if reference.startswith("env:") and reference[4:] in environ:
        env[reference[4:]] = environ[reference[4:]]
    path = _pythonpath(sys.executable, tuple(sorted(env.items())))
    if path is not None:
        env["PYTHONPATH"] = path
    return env


@functools.cache
def _pythonpath(executable: str, environ: tuple[tuple[str, str], ...]) -> str | None:
    """The child's ``PYTHONPATH`` when ``executable`` in ``environ`` (the child's, with the
    daemon's ``PYTHONPATH``) would not import this ``ledger``, else None: the package's
    directory appended when no ``ledger`` is found (a source checkout run in place), first when
    another copy would be (this one must win). An installed ``ledger`` (a wheel, an editable
    install) needs nothing: putting site-packages first would put it before the standard
    library."""
    ours = Path(ledger.__file__).resolve()
    root = str(ours.parents[1])
    path = dict(environ).get("PYTHONPATH")
    probe = (
        "import importlib.util as u; s = u.find_spec('ledger'); "
        "print(s.origin if s is not None and s.origin else '')"
    )
    try:
        found = subprocess.run(  # noqa: S603 - this interpreter, a constant program
            [executable, "-P", "-c", probe],
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found = ""
    if found and Path(found).resolve() == ours:
        return None
    if not path:
        return root
    return path + os.pathsep + root if not found else root + os.pathsep + path


_HEADER: Final = struct.Struct("!i")  # multiprocessing.connection's length prefix
_MAX_MESSAGE: Final = 64 * 1024 * 1024


class _Channel:
    """One end of the socket pair, never blocking: ``send`` queues a message and writes what
    the socket takes; ``receive`` returns the messages that arrived whole."""

    def __init__(
        self, sock: socket.socket, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any]
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._dumps = dumps
        self._loads = loads
        self._out = bytearray()
        self._in = bytearray()
        self.stalled_since: float | None = None  # when the socket last refused what is queued
        self.closed = False  # the other end is gone

    @property
    def pending(self) -> bool:
        """Whether an earlier message still waits for room in the socket."""
        return bool(self._out)

    def send(self, kind: str, value: Any) -> None:
        data = self._dumps((kind, value))
        self._out += _HEADER.pack(len(data)) + data
        self.flush()

    def flush(self) -> None:
        if self.closed:
            self._out.clear()
        while self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                if self.stalled_since is None:
                    self.stalled_since = time.monotonic()
                return
            except OSError:
                self.closed = True
                self._out.clear()
                break
            del self._out[:sent]
            self.stalled_since = None if not self._out else time.monotonic()
        self.stalled_since = None

    def stalled_for(self) -> float:
        return 0.0 if self.stalled_since is None else time.monotonic() - self.stalled_since

    def receive(self) -> list[tuple[str, Any]]:
        messages = []
        for data in self.receive_frames():
            kind, value = self._loads(data)
            messages.append((str(kind), value))
        return messages

    def receive_frames(self) -> list[bytes]:
        """The messages that arrived whole, not decoded yet."""
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
            self._in += data
        frames = []
        while len(self._in) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._in)
            if not 0 <= size <= _MAX_MESSAGE:
                self.closed = True
                raise ValueError(f"a message of {size} bytes")
            if len(self._in) < _HEADER.size + size:
                break
            frames.append(bytes(self._in[_HEADER.size : _HEADER.size + size]))
            del self._in[: _HEADER.size + size]
        return frames

    def drain(self, timeout: float) -> None:
        """Write what is queued, waiting up to ``timeout`` seconds (the child, exiting)."""
        with contextlib.suppress(OSError):
            self.sock.settimeout(timeout)
            self.sock.sendall(self._out)
        self._out.clear()


def _to_json(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


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
        # Sent first: a child of another version exits (``UPGRADED_EXIT``) before unpickling
        # a configuration whose classes may have changed shape.
        self.hello: dict[str, Any] = {"version": ledger.__version__, "protocol": PROTOCOL}
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
        self.upgraded = False  # the child is another version: not restarted
        self.channel: _Channel | None = None  # the current child's socket

    def problem(self) -> str | None:
        """Why broadcast deliveries are not being applied (for /readyz), or None: ledger was
        upgraded under the running daemon, or the child keeps exiting (``CRASH_LOOP`` times in
        a row)."""
        if self.upgraded:
            return UPGRADED_PROBLEM
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
            if code == UPGRADED_EXIT:
                self.upgraded = True
                self.last_exit = code
                log.error(UPGRADED_PROBLEM, version=ledger.__version__, protocol=PROTOCOL)
                await stop.wait()
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
        """One child, from its start to its exit. Whatever ends this (the child's exit, the
        daemon stopping, an error, the task cancelled), no child outlives it."""
        mine, theirs = socket.socketpair()
        channel = self.channel = _Channel(mine, pickle.dumps, json.loads)
        loop = asyncio.get_running_loop()
        process: subprocess.Popen[bytes] | None = None
        try:
            try:
                fd = theirs.fileno()
                env = await asyncio.to_thread(
                    child_environment, self.config["database_url"], dict(os.environ)
                )
                # Not in a thread: a task cancelled meanwhile would leave a child no one stops
                # (this returns once the interpreter is executed, in milliseconds).
                process = subprocess.Popen(  # noqa: S603 - this interpreter, this module
                    [sys.executable, "-P", "-m", "ledger.ingest.worker", str(fd)],
                    pass_fds=(fd,),
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                theirs.close()
            self.process = process
            log.info("broadcast processor started in a process of its own", pid=process.pid)
            channel.send("hello", self.hello)
            channel.send("config", self.config)
            loop.add_reader(mine.fileno(), self._receive, channel)
            busy: bool | None = None  # what the child was last sent
            started = time.monotonic()
            while process.poll() is None and not stop.is_set():
                if self.failures and time.monotonic() - started >= HEALTHY_SECONDS:
                    self.failures = 0  # running well again: ready
                channel.flush()
                now_busy = bool(self.ingest_busy and self.ingest_busy())
                if now_busy != busy and not channel.pending:  # else the latest, next time
                    busy = now_busy
                    channel.send("busy", busy)
                if channel.stalled_for() >= HUNG_SECONDS:
                    log.error(
                        "the broadcast processor process has read nothing for "
                        f"{HUNG_SECONDS:.0f} s (stopped or stuck); killing it",
                        pid=process.pid,
                    )
                    process.kill()
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=SYNC_SECONDS)
            if process.poll() is None and stop.is_set():
                channel.send("stop", None)
                deadline = time.monotonic() + STOP_SECONDS
                while process.poll() is None and time.monotonic() < deadline:
                    channel.flush()
                    await asyncio.sleep(SYNC_SECONDS)
                if process.poll() is None:
                    log.warning("the broadcast processor process did not stop; killing it")
                    process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(process.wait, 5.0)
            self._receive(channel)  # what it counted last
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(mine.fileno())
            if process is not None and process.poll() is None:
                process.kill()  # an error, or the daemon's task cancelled
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(5.0)
            mine.close()
        return process.returncode

    def _receive(self, channel: _Channel) -> None:
        """The child's messages: the backlog it measured, what it counted. At the socket's end
        (the child is gone) it stops listening, so the loop does not spin on it."""
        try:
            messages = channel.receive()
        except (TypeError, ValueError):  # not from this version's child
            log.warning("the broadcast processor process sent a message it does not send")
            messages = []
            channel.closed = True
        for kind, value in messages:
            try:
                if kind == "waiting" and self.backlog is not None:
                    self.backlog.resync(int(value))
                elif kind == "counts":
                    add_counts({(str(n), tuple(map(str, ls))): float(v) for n, ls, v in value})
            except (TypeError, ValueError):
                log.warning("the broadcast processor process sent a malformed message", kind=kind)
        if channel.closed:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(channel.sock.fileno())


class _SentBacklog(Backlog):
    """The child's side of the receiver's ``Backlog``: what the processor measures is sent to
    the parent, whose receiver refuses deliveries past the bound. Only the latest measure
    waits while the socket is full."""

    __slots__ = ("_channel", "unsent")

    def __init__(self, channel: _Channel, limit: int) -> None:
        super().__init__(limit)
        self._channel = channel
        self.unsent: int | None = None

    def resync(self, spans: int) -> None:
        super().resync(spans)
        self.unsent = spans
        self.send()

    def send(self) -> None:
        self._channel.flush()
        if self.unsent is not None and not self._channel.pending:
            self._channel.send("waiting", self.unsent)
            self.unsent = None


def main(fd: int) -> None:
    """The child process: the processor's loop until the parent says stop or is gone."""
    # Ctrl-C, a terminal's hang-up and a service manager's SIGTERM reach the whole process
    # group: the parent stops its child (its "stop", or the socket's end), which is not a crash
    # to restart and count. No priority or resource changes here (nice, setrlimit): the systemd
    # unit in deploy/ filters those system calls (@resources), and SIGSYS would kill the child.
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)
    channel = _Channel(socket.socket(fileno=fd), _to_json, pickle.loads)
    frames: deque[bytes] = deque()
    try:
        first = _next_frame(channel, frames)
    except EOFError:
        return  # the parent is gone already
    try:
        kind, hello = pickle.loads(first)  # noqa: S301 - from the parent
    except Exception:  # a message this version cannot read
        kind, hello = "", None
    expected = {"version": ledger.__version__, "protocol": PROTOCOL}
    if kind != "hello" or hello != expected:
        # Installed from other files than the daemon's (upgraded in place): the daemon says so.
        # The configuration, pickled by another version's classes, is not read.
        raise SystemExit(UPGRADED_EXIT)
    try:
        kind, config = pickle.loads(_next_frame(channel, frames))  # noqa: S301 - same version
    except EOFError:
        return
    if kind != "config":
        raise SystemExit(f"ledger.ingest.worker: expected the configuration, got {kind!r}")
    from ledger.logging import configure_logging

    configure_logging(config["log_format"], config["log_level"])
    messages = deque((str(kind), value) for kind, value in map(pickle.loads, frames))
    asyncio.run(_child(channel, config, messages))


def _next_frame(channel: _Channel, frames: deque[bytes]) -> bytes:
    """The parent's next message, not decoded, waiting for it (before the event loop runs)."""
    while not frames:
        if channel.closed:
            raise EOFError
        select.select([channel.sock], [], [])
        frames.extend(channel.receive_frames())
    return frames.popleft()


async def _child(
    channel: _Channel, config: dict[str, Any], messages: deque[tuple[str, Any]]
) -> None:
    from ledger.clock import SystemClock
    from ledger.db.session import Database
    from ledger.ingest.process import IngestProcessor
    from ledger.metrics import counts, install_event_counters

    install_event_counters()
    db = await asyncio.to_thread(Database.open, config["database_url"])
    stop = asyncio.Event()
    busy = False
    backlog = _SentBacklog(channel, config["limit"])
    processor = IngestProcessor(
        db,
        SystemClock(),
        config["ctx"],
        sources=config["sources"],
        ingest_busy=lambda: busy,
        backlog=backlog,
    )

    def stop_now() -> None:
        stop.set()
        processor.wake.set()

    def on_message() -> None:
        nonlocal busy
        messages.extend(channel.receive())
        while messages:
            kind, value = messages.popleft()
            if kind == "busy":
                busy = bool(value)
            elif kind == "stop":
                stop_now()
        if channel.closed:
            loop.remove_reader(channel.sock.fileno())  # the parent is gone: stop listening
            stop_now()

    loop = asyncio.get_running_loop()
    loop.add_reader(channel.sock.fileno(), on_message)
    on_message()  # what came with the configuration
    sent: dict[Any, float] = {}

    def send_counts() -> None:
        backlog.send()
        if channel.pending:
            return  # the parent has not read the last ones: these wait, added up
        now = counts()
        delta = [
            [name, list(labels), value - sent.get((name, labels), 0.0)]
            for (name, labels), value in now.items()
            if value != sent.get((name, labels), 0.0)
        ]
        if delta:
            channel.send("counts", delta)
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
        channel.drain(1.0)
        send_counts()
        channel.drain(1.0)
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(channel.sock.fileno())
        db.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
