"""Running the Notion simulator: in the foreground for ``ledger sim notion``, or on a free
loopback port for tests (in the event loop or in a thread)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

from ledger.sim.hosting import run_asgi_in_background, run_asgi_in_thread, serve_foreground
from ledger.sim.notion.config import NotionSimConfig
from ledger.sim.notion.routes import create_app


def serve(
    host: str, port: int, config: NotionSimConfig, on_listening: Callable[[str], None]
) -> None:
    """Run the simulator in the foreground until SIGINT/SIGTERM (``ledger sim notion``);
    ``on_listening`` gets its base URL once it listens. Raises ``hosting.CannotListen``. No
    access log: requests are logged in memory (``GET /_sim/requests``)."""
    serve_foreground(
        create_app(config), host, port, on_listening, ws="none", log_level="info", access_log=False
    )


@contextlib.asynccontextmanager
async def run_in_background(config: NotionSimConfig) -> AsyncIterator[str]:
    """Run the Notion simulator on a free loopback port; yields its base URL (the API is
    under ``/v1``; give the base URL to ``notion_client.Client(base_url=...)``)."""
    async with run_asgi_in_background(create_app(config)) as base_url:
        yield base_url


@contextlib.contextmanager
def run_in_thread(config: NotionSimConfig) -> Iterator[str]:
    """Like ``run_in_background`` for synchronous code (notion-client's ``Client``)."""
    with run_asgi_in_thread(create_app(config), "the Notion simulator") as base_url:
        yield base_url
