"""Outbox tests. ``capture_server`` is the loopback endpoint alerts and actions are sent to: a
tiny Starlette app served by uvicorn on 127.0.0.1 that records every request and answers as
scripted (``Capture.answer``), 200 otherwise."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.sim.openrouter import run_asgi_in_background


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
    capture = Capture()
    async with run_asgi_in_background(capture.app()) as base_url:
        capture.base_url = base_url
        yield capture
