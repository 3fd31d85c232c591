"""Requests prepared before their slot, held, and written together at the slot's instant.

The runner prepares a wave of runs a few seconds before their slot (claim, budget, prompt,
request bytes, a connection). Each prepared request then waits at the slot's ``SendGate``:
``LeanTransport`` hands the gate its connection and bytes (``hold``), and one event-loop
callback at the instant writes every held request, so a thousand requests leave within a few
milliseconds of the slot instead of one after another. A transport that cannot hand over its
bytes waits for the gate to open instead (``wait``) and sends one request after another from
the instant on (aiohttp's transport: 1,000 in 1.1-1.5 s; the measurements are in
``ledger.runner.lean_http``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

__all__ = ["SEND_GATE", "SendGate", "SendGates", "Writable", "gate_of"]

# The request extension that carries a request's gate (``httpx.Request.extensions``).
SEND_GATE: Final = "ledger.send_gate"


class Writable(Protocol):
    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


class SendGate:
    """One instant's held requests. ``hold`` parks bytes to write at the instant; ``wait`` is
    for callers that send themselves. After the instant (``opened``) both return at once."""

    __slots__ = ("_handle", "_held", "_on_open", "_opened", "_waiters", "at", "opened_at")

    def __init__(
        self,
        at: float,
        delay: float,
        loop: asyncio.AbstractEventLoop,
        on_open: Callable[[SendGate], None] | None = None,
    ) -> None:
        self.at = at  # the instant, wall-clock seconds (the runs' slot)
        self.opened_at: float | None = None  # wall-clock seconds when the writes went out
        self._held: list[tuple[Writable, bytes, asyncio.Future[float]]] = []
        self._waiters: list[asyncio.Future[float]] = []
        self._opened = False
        self._on_open = on_open
        self._handle = loop.call_later(max(0.0, delay), self.open)

    @property
    def opened(self) -> bool:
        return self._opened

    def hold(self, writer: Writable, data: bytes) -> asyncio.Future[float] | None:
        """Park ``data`` for ``writer`` until the instant; the future resolves to the wall time
        it was written (or raises what writing raised). None: the gate is open, write now."""
        if self._opened:
            return None
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._held.append((writer, data, future))
        return future

    async def wait(self) -> float:
        """Until the instant; returns the wall time the gate opened."""
        if self._opened:
            assert self.opened_at is not None  # noqa: S101 — set when opened
            return self.opened_at
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return await future

    def open(self) -> None:
        """Write every held request now (a request whose caller gave up is not written)."""
        if self._opened:
            return
        self._opened = True
        self._handle.cancel()
        held, self._held = self._held, []
        for writer, data, future in held:
            if future.done():  # cancelled while waiting: its connection is being discarded
                continue
            try:
                if writer.is_closing():
                    raise ConnectionResetError("the connection closed while the request waited")
                writer.write(data)
            except Exception as exc:  # a broken connection fails its own request only
                future.set_exception(exc)
            else:
                future.set_result(time.time())
        self.opened_at = time.time()
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(self.opened_at)
        if self._on_open is not None:
            self._on_open(self)


class SendGates:
    """The gates of the instants requests are waiting for, one per instant."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._gates: dict[float, SendGate] = {}

    def __len__(self) -> int:
        return len(self._gates)

    def gate_for(self, at: float) -> SendGate | None:
        """The gate of instant ``at`` (wall-clock seconds); None when it has passed."""
        gate = self._gates.get(at)
        if gate is not None:
            return gate
        delay = at - self._wall()
        if delay <= 0:
            return None
        gate = SendGate(at, delay, asyncio.get_running_loop(), self._forget)
        self._gates[at] = gate
        return gate

    def _forget(self, gate: SendGate) -> None:
        if self._gates.get(gate.at) is gate:
            del self._gates[gate.at]


def gate_of(extensions: dict[str, Any]) -> SendGate | None:
    """The request's gate, if it has one that is still closed."""
    gate = extensions.get(SEND_GATE)
    return gate if isinstance(gate, SendGate) and not gate.opened else None
