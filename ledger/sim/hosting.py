"""Hosting a simulator (or any ASGI app): in the foreground until SIGINT/SIGTERM
(``serve_foreground``, for ``ledger sim …``), or on a free loopback port for tests and demos in
the caller's event loop (``run_asgi_in_background``) or in a thread of its own
(``run_asgi_in_thread``), signal handlers staying the caller's. Also the JSON plumbing the
simulators' routes share: ``JSONResponse`` (orjson) and ``json_object`` (a request's body)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ledger.listen import ForegroundServer, listen_problem

__all__ = [
    "CannotListen",
    "JSONResponse",
    "json_object",
    "run_asgi_in_background",
    "run_asgi_in_thread",
    "serve_foreground",
]


class JSONResponse(Response):
    """A JSON answer rendered by orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def json_object(
    request: Request, *, not_json: Callable[[str], Exception], not_object: Exception
) -> dict[str, Any]:
    """The request's body as a JSON object (``{}`` when empty). Raises ``not_json(reason)`` for
    a body that is not JSON, ``not_object`` for JSON that is not an object: each simulator says
    it in its service's words."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise not_json(str(exc)) from exc
    if not isinstance(body, dict):
        raise not_object
    return body


class CannotListen(Exception):
    """The port a simulator was asked to serve on cannot be listened on (the message says
    which and what to do)."""


def serve_foreground(
    app: ASGIApp, host: str, port: int, on_listening: Callable[[str], None], **options: Any
) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT/SIGTERM, then return (a clean stop).
    ``on_listening`` gets the base URL once the port listens. ``options``: uvicorn's. Raises
    CannotListen, before anything starts, when the port is taken."""
    problem = listen_problem(
        host, port, hint="is the simulator already running? stop it or choose another --port"
    )
    if problem is not None:
        raise CannotListen(problem)
    config = uvicorn.Config(app, host=host, port=port, **options)
    server = ForegroundServer(config, on_listening=on_listening)
    server.run()
    if not server.started:  # lost a race for the port, or the app failed to start
        raise CannotListen(f"cannot listen on {host}:{port}: the server did not start")


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone (tests own them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


ServerFactory = Callable[[uvicorn.Config], uvicorn.Server]


def _uvicorn_server(
    app: ASGIApp, graceful_seconds: int | None = None, factory: ServerFactory = _QuietServer
) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=300,
        backlog=4096,
        timeout_graceful_shutdown=graceful_seconds,
    )
    return factory(config)


def _base_url(server: uvicorn.Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def run_asgi_in_background(
    app: ASGIApp,
    *,
    sock: socket.socket | None = None,
    graceful_seconds: int | None = None,
    server_factory: ServerFactory = _QuietServer,
) -> AsyncIterator[str]:
    """Serve any ASGI app on a free loopback port in this event loop (or on ``sock``, a socket
    the caller bound); yields its base URL. ``graceful_seconds`` caps the wait for requests
    still open at shutdown. ``server_factory`` builds the uvicorn server from its config (one that
    leaves signal handlers alone, as the default does)."""
    server = _uvicorn_server(app, graceful_seconds, server_factory)
    task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise the start-up failure
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        yield _base_url(server)
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def run_asgi_in_thread(app: ASGIApp, name: str) -> Iterator[str]:
    """Like ``run_asgi_in_background`` for synchronous code: the app is served by a thread of
    its own, called ``name`` (e.g. "the Notion simulator"; a failed start says so)."""
    server = _uvicorn_server(app)
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"{name} failed to start")
            thread.join(0.01)
        yield _base_url(server)
    finally:
        server.should_exit = True
        thread.join()
