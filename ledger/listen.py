"""Listening on a TCP port in the foreground, as ``ledger serve`` and the simulators do: the bind
check made before anything starts (one line naming the address, not uvicorn's ``[Errno 98]``
after a line claiming it listens) and ``ForegroundServer``, uvicorn that stops cleanly on
SIGINT/SIGTERM (exit status 0) and says where it listens only once it does. Imports nothing
else of the ledger, so the simulators use it too."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

__all__ = ["ForegroundServer", "listen_problem"]

DEFAULT_HINT = "is another process using it? stop it or choose another --port"


def listen_problem(host: str, port: int, *, hint: str = DEFAULT_HINT) -> str | None:
    """Why ``host:port`` cannot be listened on (one line: what, where, what to do), or None
    when a bind succeeds now. The probe binds as uvicorn does (SO_REUSEADDR) and lets go."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {host}: {exc.strerror} (check --host)"
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror} ({hint})"
    return None


class ForegroundServer(uvicorn.Server):
    """uvicorn for a command that serves until stopped. ``own_signals``: SIGINT/SIGTERM stop it
    (a clean exit, status 0, not a death by signal); False leaves the process's signal handlers
    to the caller, who stops it with ``should_exit``. ``on_listening`` is called with the base
    URL (``http://host:port``) once the socket listens and the app has started."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        own_signals: bool = True,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._own_signals = own_signals
        self._on_listening = on_listening

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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self._on_listening(f"http://{shown}:{port}")
