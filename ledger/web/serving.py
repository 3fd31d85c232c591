"""``DaemonServer``: the uvicorn server that hosts the daemon's app, for ``ledger serve`` and
``ledger demo`` alike. When it stops it first ends the app's live-update streams (the
dashboard's change feed), which would otherwise keep their requests open for up to
``feed.STREAM_SECONDS`` while uvicorn waits for open requests, then stops as uvicorn does."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from ledger.web.dashboard.feed import ChangeFeed

__all__ = ["DaemonServer", "end_streams"]


async def end_streams(app: Any) -> None:
    """End every live-update stream of ``app`` (a ``create_app`` app) now; a stream opened
    afterwards ends at once. Nothing to do before the lifespan has started."""
    feed: ChangeFeed | None = getattr(app.state, "dashboard_feed", None)
    if feed is not None:
        await feed.close()


class DaemonServer(uvicorn.Server):
    """uvicorn for the daemon's app. ``own_signals``: SIGINT/SIGTERM stop it (a clean exit,
    status 0, not a death by signal); False leaves the process's signal handlers to the caller,
    who stops it with ``should_exit``."""

    def __init__(self, config: uvicorn.Config, *, own_signals: bool = True) -> None:
        super().__init__(config)
        self._own_signals = own_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self._own_signals:
            yield
            return
        with super().capture_signals():
            yield

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # uvicorn would re-raise the signal after the graceful shutdown.
        self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn waits for the requests still open: streams end, their requests finish.
        await end_streams(self.config.app)
        await super().shutdown(sockets)
