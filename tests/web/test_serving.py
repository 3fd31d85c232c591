"""The daemon's uvicorn server (``DaemonServer``) as ``ledger demo`` hosts it: in the caller's
event loop, signal handlers left alone. ``ledger serve``'s own stop is in test_serve.py."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx

from ledger.config import Settings
from ledger.sim.hosting import run_asgi_in_background
from ledger.web.app import create_app
from ledger.web.serving import DaemonServer


async def test_stopping_the_server_ends_an_open_dashboard_stream_cleanly(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'serving.db'}",
        behaviors_dir=tmp_path / "behaviors",
        watch=False,
        auth="off",
    )
    async with httpx.AsyncClient(timeout=30) as client:
        # A 1 s grace: a stream still open after it would be cut (an incomplete response).
        async with run_asgi_in_background(
            create_app(settings),
            graceful_seconds=1,
            server_factory=partial(DaemonServer, own_signals=False),
        ) as base_url:
            request = client.build_request("GET", base_url + "/events/board")
            stream = await client.send(request, stream=True)
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert [await anext(lines) for _ in range(3)] == ["retry: 1000", "", "event: changed"]
        # The server stopped with the stream open: the stream had ended, a complete response.
        rest = [line async for line in lines]
        await stream.aclose()
    assert rest[0].startswith("data: ")
    assert rest[1:] == [""]
