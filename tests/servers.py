"""Hosting things for tests, one way each, always on loopback and always with a readiness wait:

- an ASGI app in this process: ``serve_app`` (a thread of its own, for synchronous tests) and
  ``serve_app_async`` (in the test's event loop) — both on a free port, yielding the base URL;
- the daemon's app in this process without a port: ``app_client`` (``httpx.ASGITransport``,
  the lifespan run around it) — for API tests that need no signal, crash or second replica;
- ``python -m ledger ...`` as a real process: ``ledger`` (a command that exits), ``ledger_process``
  (one that serves: started, waited for, killed) and ``daemon_starter`` (``ledger serve`` with
  the test's database and behaviors folder; the ``start_daemon`` fixture);
- ``ledger ...`` in this process: ``cli`` (what a command prints and its exit status, seconds
  faster than a process; what the command sets for the whole process is put back);
- ``capture_server``: the loopback endpoint alerts and actions are sent to;
- ``wait_until`` / ``wait_until_async``: a condition polled with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ledger.clock import Clock
from ledger.config import Settings
from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from ledger.sim.hosting import run_asgi_in_background, run_asgi_in_thread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` every 0.1 s until it is true; AssertionError naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_until_async(
    check: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
) -> None:
    """``wait_until`` for a test's event loop: ``check`` (quick, non-blocking) polled every
    10 ms while the loop runs everything else."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def answers(url: str, status: int | None = 200) -> bool:
    """Whether a GET of ``url`` is answered (with ``status``, unless None): a readiness probe."""
    try:
        response = httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return status is None or response.status_code == status


# --------------------------------------------------------------------------- in this process


@contextlib.contextmanager
def serve_app(app: ASGIApp, name: str = "the app under test") -> Iterator[str]:
    """Serve ``app`` (its lifespan included) under uvicorn on a free loopback port in a thread of
    its own; yields its base URL once it listens, stops it on exit."""
    with run_asgi_in_thread(app, name) as base_url:
        yield base_url


@contextlib.asynccontextmanager
async def serve_app_async(app: ASGIApp) -> AsyncIterator[str]:
    """Like ``serve_app``, in the test's own event loop."""
    async with run_asgi_in_background(app) as base_url:
        yield base_url


@contextlib.asynccontextmanager
async def app_client(
    settings: Settings, *, clock: Clock | None = None, headers: Mapping[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The daemon's app built from ``settings`` (``create_app``), its lifespan running (the
    daemon open: database, registry, scheduler, ingestion…), and an ``httpx.AsyncClient`` that
    calls it in process (no socket; ``request.client`` is 127.0.0.1). Closed in reverse."""
    from ledger.web.app import create_app

    app = create_app(settings, clock=clock)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers, timeout=30
        ) as client,
    ):
        yield client


# --------------------------------------------------------------------------- real processes


def ledger(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m ledger ARGS`` as an operator runs it (JSON logs, 60 s at most)."""
    full_env = {**os.environ, "LEDGER_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ledger ARGS`` run in this process through the console entry point (``ledger.cli.main``),
    as ``ledger`` runs it in a process of its own: the same environment and working directory,
    stdout and stderr apart, the exit status. Seconds faster (no interpreter start, no imports),
    for a test that checks what a command prints and its exit status; a test of what only a
    process shows (a signal, a port held, the entry point itself) uses ``ledger``.

    What the command sets for the whole process is put back afterwards: the environment, the
    working directory, sys.argv and the standard streams, logging (the root logger's handlers
    and levels, structlog's configuration), the CLI's --config holder and root options, and
    the secret values the log masker learned. A command that gets as far as serving (``serve``,
    ``sim`` with a valid configuration and a free port) fails the test instead of blocking."""
    import io
    import logging

    import structlog
    import uvicorn

    import ledger.cli as ledger_cli
    from ledger import secrets

    full_env = {**os.environ, "LEDGER_LOG_FORMAT": "json", **(env or {})}
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_streams = sys.stdout, sys.stderr
    loggers = [logging.getLogger(), *map(logging.getLogger, _CLI_LOGGERS)]
    saved_logging = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    saved_structlog = structlog.get_config()
    saved_given = ledger_cli._given.root, ledger_cli._given.config
    saved_options = dict(ledger_cli._ROOT_OPTIONS)
    saved_secrets = set(secrets._known_values), {k: list(v) for k, v in secrets._prefixes.items()}
    saved_serving = uvicorn.Server.run, uvicorn.Server.serve

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError(f"ledger {' '.join(args)} started serving in the test's process")

    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ.clear()
        os.environ.update(full_env)
        os.chdir(cwd)
        sys.argv = ["ledger", *args]
        sys.stdout, sys.stderr = out, err
        uvicorn.Server.run = uvicorn.Server.serve = refuse  # type: ignore[assignment,method-assign]
        try:
            ledger_cli.main()
        except SystemExit as exc:
            if isinstance(exc.code, str):  # as the interpreter does with sys.exit("text")
                print(exc.code, file=err)
            code = 1 if isinstance(exc.code, str) else exc.code or 0
    finally:
        uvicorn.Server.run, uvicorn.Server.serve = saved_serving  # type: ignore[method-assign]
        sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for logger, handlers, level in saved_logging:
            logger.handlers[:] = handlers
            logger.setLevel(level)
        structlog.configure(**saved_structlog)
        ledger_cli._given.root, ledger_cli._given.config = saved_given
        ledger_cli._ROOT_OPTIONS.clear()
        ledger_cli._ROOT_OPTIONS.update(saved_options)
        secrets._known_values.clear()
        secrets._known_values.update(saved_secrets[0])
        secrets._prefixes.clear()
        secrets._prefixes.update(saved_secrets[1])
    return subprocess.CompletedProcess(["ledger", *args], code, out.getvalue(), err.getvalue())


# Loggers whose level ``configure_logging`` sets (``cli`` puts them back).
_CLI_LOGGERS = ("httpx", "httpcore", "apscheduler", "alembic")


@contextlib.contextmanager
def process(
    argv: list[str],
    *,
    log: Path,
    ready: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` as a process of its own (output to ``log``; ``env`` is its whole environment
    when given), yielded once a GET of ``ready`` answers 200; killed on exit unless it ended. A
    process that dies before it is ready fails the wait with its log."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv,
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            return answers(ready)

        wait_until(up, timeout=timeout, what=f"{' '.join(argv[-4:])} to answer {ready}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def ledger_process(
    args: list[str],
    *,
    log: Path,
    ready: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``python -m ledger ARGS`` as a process of its own: see ``process``."""
    argv = [sys.executable, "-m", "ledger", *args]
    return process(argv, log=log, ready=ready, env=env, cwd=cwd, timeout=timeout)


class Daemon:
    """A ``ledger serve`` process started by ``start_daemon``."""

    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text()


def daemon_starter(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``start(database_url, env=None) -> Daemon``: ``ledger serve`` on a free port with the
    database, ``tmp_path/behaviors``, JSON logs and a 1-second rescan, returned once
    ``/healthz`` answers; every daemon started is killed after the test."""
    with contextlib.ExitStack() as stack:

        def start(database_url: str, env: dict[str, str] | None = None) -> Daemon:
            port = free_port()
            log_path = tmp_path / f"serve-{port}.log"
            full_env = {
                **os.environ,
                "LEDGER_DATABASE_URL": database_url,
                "LEDGER_BEHAVIORS_DIR": str(tmp_path / "behaviors"),
                "LEDGER_LOG_FORMAT": "json",
                "LEDGER_RESCAN_SECONDS": "1",
                **(env or {}),
            }
            base = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(
                ledger_process(
                    ["serve", "--port", str(port)],
                    log=log_path,
                    ready=base + "/healthz",
                    env=full_env,
                    cwd=tmp_path,
                )
            )
            return Daemon(proc, base, log_path)

        yield start


@contextlib.contextmanager
def operator_api(
    start: Callable[..., Daemon], database_url: str, token: str
) -> Iterator[httpx.Client]:
    """``ledger serve`` (started by ``start``, a ``daemon_starter``) with one operator token
    (``[api_tokens] ops``) and an OpenRouter nobody listens on, and a client sending the token."""
    daemon = start(
        database_url,
        {
            "LEDGER_API_TOKENS": '{"ops": "env:OPS_TOKEN"}',
            "OPS_TOKEN": token,
            "LEDGER_OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}",
        },
    )
    with httpx.Client(
        base_url=daemon.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


def names(database_url: str) -> dict[str, bool]:
    """The registered behaviors of the database at ``database_url``: name → retired."""
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            return {r.name: r.retired for r in session.execute(select(BehaviorRow)).scalars()}
    finally:
        db.close()


# --------------------------------------------------------------------------- capture server


@dataclass(frozen=True, slots=True)
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = 0.0  # when it arrived (time.time())

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class Capture:
    """What a capture server received, and what it answers next."""

    base_url: str = ""
    requests: list[Captured] = field(default_factory=list)
    _script: dict[str, deque[tuple[int, dict[str, str]]]] = field(
        default_factory=lambda: defaultdict(deque)
    )

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def answer(
        self, path: str, status: int, headers: dict[str, str] | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests to ``path`` with ``status`` (then 200 again)."""
        for _ in range(times):
            self._script["/" + path.lstrip("/")].append((status, headers or {}))

    def to(self, path: str) -> list[Captured]:
        return [r for r in self.requests if r.path == "/" + path.lstrip("/")]

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        self.requests.append(Captured(request.url.path, dict(request.headers), body, time.time()))
        script = self._script.get(request.url.path)
        status, headers = script.popleft() if script else (200, {})
        return Response(b"{}", status_code=status, headers=headers, media_type="application/json")

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["POST"])])


@contextlib.asynccontextmanager
async def capture_server() -> AsyncIterator[Capture]:
    """A loopback endpoint (a tiny Starlette app in the test's event loop) that records every
    POST and answers as scripted (``Capture.answer``), 200 otherwise."""
    capture = Capture()
    async with serve_app_async(capture.app()) as base_url:
        capture.base_url = base_url
        yield capture
