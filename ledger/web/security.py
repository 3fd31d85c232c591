"""Security headers on every response the app builds (pure ASGI middleware).

- ``Content-Security-Policy``: everything from the daemon itself, no inline script, no plugin,
  no framing (``frame-ancestors 'none'``), forms post only to the daemon. ``img-src`` allows
  ``data:`` URIs (small icons in a style sheet). A response that carries its own policy keeps
  it (the API docs page allows its one inline script by hash).
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``,
  ``X-Frame-Options: DENY`` (for browsers older than ``frame-ancestors``),
  ``Cross-Origin-Opener-Policy: same-origin``.
- ``Strict-Transport-Security`` only when the request came over TLS (``https``, as uvicorn sees
  it: directly, or behind a proxy that sets ``X-Forwarded-Proto`` with ``--proxy-headers``):
  sent over plain HTTP it would be ignored anyway, and a loopback install must stay reachable.

``POST /v1/traces`` is answered before the middleware (``LedgerApp``): its answers are OTLP
messages for the collector, never rendered by a browser.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HSTS: Final = b"max-age=31536000"

_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """Adds the headers above to every HTTP response, keeping any the route set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _HEADERS + (((b"strict-transport-security", HSTS),) if _tls(scope) else ())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend((n, v) for n, v in extra if n not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _tls(scope: Scope) -> bool:
    return scope.get("scheme") == "https"
