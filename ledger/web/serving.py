"""``DaemonServer``: the uvicorn server that hosts the daemon's app, for ``ledger serve`` and
``ledger demo`` alike. When it stops it first ends the app's live-update streams (the
dashboard's change feed), which would otherwise keep their requests open for up to
``feed.STREAM_SECONDS`` while uvicorn waits for open requests, then stops as uvicorn does.
``welcome_lines``: what ``ledger serve`` says once it listens (where the dashboard is, how to
get a token)."""

from __future__ import annotations

import socket
from typing import Any

from ledger.config import Settings
from ledger.daemon import Daemon
from ledger.listen import ForegroundServer
from ledger.tokens import has_active_token
from ledger.web.dashboard.feed import ChangeFeed

__all__ = ["DaemonServer", "end_streams", "welcome_lines"]


async def end_streams(app: Any) -> None:
    """End every live-update stream of ``app`` (a ``create_app`` app) now; a stream opened
    afterwards ends at once. Nothing to do before the lifespan has started."""
    feed: ChangeFeed | None = getattr(app.state, "dashboard_feed", None)
    if feed is not None:
        await feed.close()


class DaemonServer(ForegroundServer):
    """uvicorn for the daemon's app (signals and ``on_listening`` as ``ForegroundServer``)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Before uvicorn waits for the requests still open: streams end, their requests finish.
        await end_streams(self.config.app)
        await super().shutdown(sockets)


HOW_TO_LOG_IN = (
    "create one with `ledger token create NAME --role operator` (it prints the token once; "
    "or set [api_tokens] in ledger.toml), then paste it on the login page"
)


def welcome_lines(app: Any, settings: Settings, base_url: str) -> list[str]:
    """What ``ledger serve`` prints once it listens: the dashboard's address and, when nobody
    could log in yet (auth on, no ``[api_tokens]``, no active named token), how to make a
    token. ``app`` is the ``create_app`` app, its lifespan started (it reads the database)."""
    host = settings.host
    shown = base_url
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (recognising the wildcard, not binding it)
        shown = f"http://127.0.0.1:{settings.port}"
        lines = [f"dashboard: {shown}/ (listening on every interface, port {settings.port})"]
    else:
        lines = [f"dashboard: {shown}/"]
    if settings.public_url:
        lines[0] += f" (public address {settings.public_url})"
    if settings.auth == "off":
        lines.append("LEDGER_AUTH=off: the dashboard needs no login")
    elif not settings.api_tokens and not _named_token_exists(app):
        lines.append(f"no API tokens yet: {HOW_TO_LOG_IN}")
    return lines


def _named_token_exists(app: Any) -> bool:
    daemon: Daemon | None = getattr(app.state, "ledger", None)
    if daemon is None:
        return True  # cannot tell: say nothing rather than something wrong
    with daemon.db.transaction() as session:
        return has_active_token(session)
