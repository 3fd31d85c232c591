"""Outbound HTTP for alerts and actions: which URLs we may call, and what an answer means.

``check_outbound_url`` refuses anything but http(s) to public addresses (a behavior file or an
alert setting must not point the daemon at its own network) unless private addresses are allowed
(loopback-only installs, the tests). ``post_json`` checks the URL, posts once, and turns every
outcome into ``None`` (delivered) or a ``DeliveryError`` carrying the retry decision; httpx's
exceptions are translated here and nowhere else. Messages never contain a URL: webhook URLs are
credentials. Redirects are never followed (the target of a redirect would escape the check).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

import httpx

from ledger.errors import LedgerError
from ledger.http import parse_retry_after
from ledger.outbox.dispatcher import DeliveryError

__all__ = [
    "CONTENT_REJECTIONS",
    "DEFAULT_TIMEOUT",
    "OutboundURLError",
    "Resolver",
    "check_outbound_url",
    "delivery_error_for_status",
    "make_client",
    "post_json",
    "system_resolver",
    "translate_http_error",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port → the IP addresses (as text) a connection could go to.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)

# Statuses by which a target rejects what it was sent (the content), as opposed to how it was
# sent (401/403/404/405/410…: the URL or the secret is wrong — configuration, not conduct).
CONTENT_REJECTIONS: Final = frozenset({400, 409, 413, 415, 422})
_RETRY_STATUSES: Final = frozenset({408, 425, 429})

# Address kinds refused even when private addresses are allowed: nothing to talk HTTP to.
_NEVER: Final = frozenset({"an unspecified", "a multicast", "a reserved"})
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


class OutboundURLError(LedgerError):
    """An outbound URL is refused (``permanent``) or its host cannot be resolved right now."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (blocking: call it from a worker thread)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address (``"a loopback"``, ``"a private"``…), or None
    when it is one."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return address_kind(embedded)
    if ip.is_unspecified:
        return "an unspecified"
    if ip.is_multicast:
        return "a multicast"
    if ip.is_loopback:
        return "a loopback"
    if ip.is_link_local:
        return "a link-local"
    if ip.version == 4 and ip.is_reserved:
        return "a reserved"
    if ip.is_global:
        return None
    return "a private"


def _addresses(host: str, port: int, resolver: Resolver) -> Sequence[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass  # a name, not an address literal
    try:
        addresses = resolver(host, port)
    except OSError as exc:
        raise OutboundURLError(
            f"cannot resolve {host}: {exc.strerror or exc}", permanent=False
        ) from None
    if not addresses:
        raise OutboundURLError(f"{host} resolves to no address", permanent=False)
    return addresses


def check_outbound_url(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> None:
    """Refuse ``url`` unless it is http(s) and every address its host resolves to is public
    (or private addresses are allowed). Raises ``OutboundURLError``: permanent for a refused
    URL, not permanent when the host cannot be resolved now. Blocking when ``resolver`` is."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundURLError("the URL is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise OutboundURLError(
            f"only http and https URLs may be called, not {parts.scheme or 'no scheme'!r}"
        )
    host = parts.hostname
    if not host:
        raise OutboundURLError("the URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port, resolver)
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise OutboundURLError(f"{host} resolves to an invalid address") from None
        kind = address_kind(ip)
        if kind is None or (allow_private and kind not in _NEVER):
            continue
        where = host if host == str(ip) else f"{host} ({ip})"
        hint = "" if kind in _NEVER else " (set LEDGER_ALLOW_PRIVATE_URLS=true to allow it)"
        raise OutboundURLError(f"{where} is {kind} address, which may not be called{hint}")


def delivery_error_for_status(
    status: int,
    headers: Mapping[str, str],
    *,
    target: str,
    attributable_rejections: bool,
    now: datetime,
) -> DeliveryError | None:
    """None for 2xx; otherwise the ``DeliveryError`` that says whether and when to retry.

    429/503 (and any 5xx, 408, 425) are retried, honouring ``Retry-After``; 3xx is permanent
    (redirects are not followed); a content rejection (``CONTENT_REJECTIONS``) is permanent and
    attributable when ``attributable_rejections``; any other 4xx is permanent configuration.
    """
    if 200 <= status < 300:
        return None
    retry_after = parse_retry_after(headers.get("retry-after"), now)
    if status in _RETRY_STATUSES or status >= 500:
        return DeliveryError(
            f"{target} answered HTTP {status}; will retry",
            retry_after=retry_after,
            status_code=status,
        )
    if 300 <= status < 400:
        return DeliveryError(
            f"{target} answered HTTP {status} (a redirect, which is not followed): configure "
            "the final URL",
            permanent=True,
            status_code=status,
        )
    if status in CONTENT_REJECTIONS:
        return DeliveryError(
            f"{target} rejected the content with HTTP {status}",
            permanent=True,
            attributable=attributable_rejections,
            status_code=status,
        )
    return DeliveryError(
        f"{target} answered HTTP {status}: check its URL and secret",
        permanent=True,
        status_code=status,
    )


def translate_http_error(exc: Exception, *, target: str) -> DeliveryError:
    """httpx's exceptions → ``DeliveryError`` (the one place they are translated)."""
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryError(f"{target} did not answer in time ({name}); will retry")
    if isinstance(exc, httpx.TooManyRedirects | httpx.UnsupportedProtocol | httpx.InvalidURL):
        return DeliveryError(f"{target} cannot be called: {name}", permanent=True)
    if isinstance(exc, httpx.LocalProtocolError):
        return DeliveryError(f"the request to {target} was malformed ({name})", permanent=True)
    if isinstance(exc, httpx.HTTPStatusError):
        return DeliveryError(
            f"{target} answered HTTP {exc.response.status_code}",
            status_code=exc.response.status_code,
        )
    if isinstance(exc, httpx.HTTPError | httpx.StreamError):
        return DeliveryError(f"cannot reach {target} ({name}); will retry")
    return DeliveryError(f"calling {target} failed ({name}); will retry")


def make_client(timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """The one client for alerts and actions (the lifespan creates it and closes it)."""
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False)


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    target: str,
    headers: Mapping[str, str] | None = None,
    allow_private: bool = False,
    resolver: Resolver = system_resolver,
    attributable_rejections: bool = False,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
) -> None:
    """POST ``body`` (JSON bytes) to ``url`` once. Returns when the target answered 2xx; raises
    ``DeliveryError`` otherwise. ``target`` names the destination in messages (never the URL).
    """
    try:
        await asyncio.to_thread(check_outbound_url, url, allow_private, resolver)
    except OutboundURLError as exc:
        raise DeliveryError(f"{target}: {exc}", permanent=exc.permanent) from None
    try:
        response = await client.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=timeout,
            follow_redirects=False,
        )
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        raise translate_http_error(exc, target=target) from exc
    error = delivery_error_for_status(
        response.status_code,
        response.headers,
        target=target,
        attributable_rejections=attributable_rejections,
        now=datetime.now(UTC),
    )
    if error is not None:
        raise error
