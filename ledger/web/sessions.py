"""Browser sessions for the dashboard: a signed, expiring session cookie made at login from a
pasted API token, the CSRF token every state-changing form carries, flash messages, and the
login rate limit per client address.

The cookie holds who (name, role), a random session id and the expiry, signed with HMAC-SHA256
under a secret (``LEDGER_SESSION_SECRET`` — a reference such as ``env:NAME`` — else one made
at start-up, so sessions end when the daemon restarts). The CSRF token is bound to the session
id (``HMAC(secret, "csrf|" + sid)``); before login, to a random nonce in a short-lived cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from ledger.config import Settings
from ledger.errors import ConfigError, LedgerError
from ledger.secrets import is_reference, register_secret_value, resolve
from ledger.web.auth import ROLE_RANK, Operator, Role

SESSION_COOKIE: Final = "ledger_session"
LOGIN_COOKIE: Final = "ledger_login"
FLASH_COOKIE: Final = "ledger_flash"
SESSION_SECONDS: Final = 8 * 3600
LOGIN_NONCE_SECONDS: Final = 3600
CSRF_FIELD: Final = "csrf_token"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """A logged-in browser: who, the session id its CSRF token is bound to, when it ends."""

    operator: Operator
    sid: str
    expires_at: float
    # The SHA-256 of the token logged in with: a named token's session ends when it is revoked
    # (and takes its current role); a configured token's when its value or name changes.
    token_sha256: str | None = None


class SessionSigner:
    """Signs and reads the dashboard's cookies; one per app, made in the lifespan."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    def _sign(self, purpose: str, payload: bytes) -> str:
        return _b64(
            hmac.new(self.secret, purpose.encode() + b"|" + payload, hashlib.sha256).digest()
        )

    def seal(self, purpose: str, data: dict[str, object]) -> str:
        payload = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{self._sign(purpose, payload)}"

    def unseal(self, purpose: str, value: str | None) -> dict[str, object] | None:
        """The data sealed under ``purpose``, or None when absent, malformed or forged."""
        if not value or value.count(".") != 1 or len(value) > 4096:
            return None
        body, signature = value.split(".")
        try:
            payload = _unb64(body)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(purpose, payload)):
            return None
        try:
            data = json.loads(payload)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # -- sessions ------------------------------------------------------------------------

    def issue(
        self, operator: Operator, now: float | None = None, token_sha256: str | None = None
    ) -> tuple[str, BrowserSession]:
        expires = int((now if now is not None else time.time()) + SESSION_SECONDS)
        sid = secrets.token_urlsafe(18)
        session = BrowserSession(operator, sid, float(expires), token_sha256)
        data: dict[str, object] = {"n": operator.name, "r": operator.role, "s": sid, "e": expires}
        if token_sha256 is not None:
            data["h"] = token_sha256
        return self.seal("session", data), session

    def read(self, value: str | None, now: float | None = None) -> BrowserSession | None:
        data = self.unseal("session", value)
        if data is None:
            return None
        name, role, sid, expires = data.get("n"), data.get("r"), data.get("s"), data.get("e")
        if not (isinstance(name, str) and isinstance(sid, str) and isinstance(expires, int)):
            return None
        if role not in ROLE_RANK or expires <= (now if now is not None else time.time()):
            return None
        digest = data.get("h")
        valid_role: Role = role  # type: ignore[assignment]  # checked against ROLE_RANK above
        return BrowserSession(
            Operator(name, valid_role),
            sid,
            float(expires),
            digest if isinstance(digest, str) else None,
        )

    # -- CSRF ----------------------------------------------------------------------------

    def csrf_token(self, binding: str) -> str:
        return self._sign("csrf", binding.encode())

    def csrf_ok(self, binding: str | None, given: str | None) -> bool:
        if not binding or not given:
            return False
        return hmac.compare_digest(self.csrf_token(binding), given)


def secure_cookies(request: Request) -> bool:
    """Cookies are ``Secure`` when the browser reached us over TLS (directly, or through a
    proxy uvicorn trusts to say so with X-Forwarded-Proto)."""
    return request.url.scheme == "https"


def set_cookie(
    response: Response, request: Request, name: str, value: str, max_age: int | None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
    )


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name, path="/", httponly=True, samesite="lax", secure=secure_cookies(request)
    )


class LoginRateLimit:
    """At most ``attempts`` failed logins per client address in ``window`` seconds; further
    attempts are refused (without checking the token) until the oldest failure ages out."""

    def __init__(self, attempts: int = 10, window: float = 300.0, max_clients: int = 10_000):
        self.attempts = attempts
        self.window = window
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        now = time.monotonic() if now is None else now
        failures = self._recent(client, now)
        if len(failures) < self.attempts:
            return None
        return max(1, math.ceil(failures[0] + self.window - now))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if client not in self._failures and len(self._failures) >= self.max_clients:
            # Forget the clients whose failures all aged out; else the oldest one.
            for key in [k for k, v in self._failures.items() if not self._recent(k, now)]:
                del self._failures[key]
            if len(self._failures) >= self.max_clients:
                del self._failures[next(iter(self._failures))]
        self._failures.setdefault(client, deque()).append(now)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


MIN_SECRET_LENGTH: Final = 32


def session_secret(settings: Settings) -> bytes | None:
    """``session_secret`` resolved (a reference or a value); None when unset (the signer then
    makes a random one). Raises ConfigError when it is too short to sign with."""
    if settings.session_secret is None:
        return None
    raw = settings.session_secret.get_secret_value()
    value = resolve(raw).get_secret_value() if is_reference(raw) else raw
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"session_secret is {len(value)} characters; use at least {MIN_SECRET_LENGTH} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    register_secret_value(value)
    return value.encode()


def config_token_digests(settings: Settings) -> dict[str, str]:
    """``api:NAME`` → SHA-256 of each ``[api_tokens]`` value, as the daemon resolved them at
    start: a session made with one lasts while the same value is configured under that name."""
    digests: dict[str, str] = {}
    for name, raw in settings.api_tokens.items():
        value = raw.get_secret_value()
        try:
            token = resolve(value).get_secret_value() if is_reference(value) else value
        except LedgerError:
            continue  # startup_problems refuses to start without it
        digests[f"api:{name}"] = hashlib.sha256(
            token.encode("utf-8", "surrogateescape")
        ).hexdigest()
    return digests
