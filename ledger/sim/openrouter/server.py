"""Running the OpenRouter simulator: in the foreground for ``ledger sim openrouter``, or on a
free loopback port for tests (in the event loop or in a thread)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from ledger.sim.hosting import run_asgi_in_background, run_asgi_in_thread, serve_foreground
from ledger.sim.openrouter.config import SimConfig
from ledger.sim.openrouter.routes import create_app


def serve(host: str, port: int, config: SimConfig, on_listening: Callable[[str], None]) -> None:
    """Run the simulator in the foreground until SIGINT/SIGTERM (``ledger sim openrouter``);
    ``on_listening`` gets its base URL once it listens. Raises ``hosting.CannotListen``."""
    # Like the real service: keep-alive connections live longer than the daemon's pool keeps
    # them idle (120 s), and a wave of connections at once is not refused. No access log: the
    # calls are recorded (GET /_sim/calls), and a line per request costs more than the request.
    serve_foreground(
        create_app(config),
        host,
        port,
        on_listening,
        ws="none",
        log_level="info",
        access_log=False,
        timeout_keep_alive=300,
        backlog=4096,
    )


@contextlib.asynccontextmanager
async def run_in_background(config: SimConfig) -> AsyncIterator[str]:
    """Run the OpenRouter simulator on a free loopback port; yields its base URL
    (``http://127.0.0.1:PORT``; the API is under ``/api/v1``)."""
    async with run_asgi_in_background(create_app(config)) as base_url:
        yield base_url


@contextlib.contextmanager
def run_in_thread(config: SimConfig) -> Iterator[str]:
    """Like ``run_in_background`` for synchronous code: the simulator runs in its own thread."""
    with run_asgi_in_thread(create_app(config), "the OpenRouter simulator") as base_url:
        yield base_url
