"""X-Forwarded-For / X-Forwarded-Proto count only from the reverse proxies named in
``forwarded_allow_ips`` (``LEDGER_FORWARDED_ALLOW_IPS``): the dashboard's Secure cookies, HSTS
and the login throttle's client address depend on them, so a forged header from any other peer
must change nothing. Driven through the exact uvicorn configuration ``ledger serve`` builds."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from ledger.cli import proxy_options
from ledger.config import Settings, load_settings
from ledger.errors import ConfigError
from ledger.web.security import SecurityHeaders

PROXY = "10.0.0.7"
OUTSIDER = "203.0.113.9"
FORGED = {"X-Forwarded-For": "198.51.100.1", "X-Forwarded-Proto": "https"}


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """What the app sees of the request: the client address and the scheme."""
    assert scope["type"] == "http"
    body = json.dumps({"client": scope["client"][0], "scheme": scope["scheme"]}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"json")]}
    )
    await send({"type": "http.response.body", "body": body})


async def _seen(settings: Settings, peer: str) -> tuple[dict[str, str], httpx.Headers]:
    config = uvicorn.Config(SecurityHeaders(_echo), log_config=None, **proxy_options(settings))
    config.load()
    transport = httpx.ASGITransport(app=config.loaded_app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client:
        response = await client.get("/", headers=FORGED)
    return response.json(), response.headers


def test_by_default_no_peer_is_trusted_not_even_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvicorn alone would trust 127.0.0.1 (or its own FORWARDED_ALLOW_IPS): ledger does not.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    settings = Settings()
    for peer in (OUTSIDER, "127.0.0.1"):
        seen, headers = asyncio.run(_seen(settings, peer))
        assert seen == {"client": peer, "scheme": "http"}
        assert "strict-transport-security" not in headers


def test_forged_headers_from_an_untrusted_peer_are_ignored() -> None:
    settings = Settings(forwarded_allow_ips=f"{PROXY}, 192.168.0.0/16")
    seen, headers = asyncio.run(_seen(settings, OUTSIDER))
    assert seen == {"client": OUTSIDER, "scheme": "http"}
    assert "strict-transport-security" not in headers


@pytest.mark.parametrize("allowed", [PROXY, "10.0.0.0/8", "*"])
def test_headers_from_a_configured_proxy_are_honoured(allowed: str) -> None:
    settings = Settings(forwarded_allow_ips=allowed)
    seen, headers = asyncio.run(_seen(settings, PROXY))
    assert seen == {"client": "198.51.100.1", "scheme": "https"}
    assert headers["strict-transport-security"].startswith("max-age=")


def test_the_setting_comes_from_the_environment_and_rejects_a_non_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGER_FORWARDED_ALLOW_IPS", "10.0.0.7,fd00::/8")
    assert load_settings().forwarded_allow_ips == "10.0.0.7,fd00::/8"
    monkeypatch.setenv("LEDGER_FORWARDED_ALLOW_IPS", "10.0.0.7,proxy.internal")
    with pytest.raises(
        ConfigError, match=r"^LEDGER_FORWARDED_ALLOW_IPS: 'proxy.internal' is not an IP"
    ):
        load_settings()
