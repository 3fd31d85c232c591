"""API authentication: bearer tokens and the roles that say what a caller may do
(viewer < operator < admin).

Two kinds of token are accepted:
- named tokens in the database (``ledger token create NAME --role viewer|operator|admin``,
  ``/api/tokens``), stored hashed (``ledger.tokens``), each with its role; the actor recorded for
  what they do is ``token:NAME``;
- tokens from ``[api_tokens]`` in ledger.toml, compared in constant time, which act with the
  operator role (as before roles existed); their actor is ``api:NAME``.

Routes declare the least role they need with ``ViewerDep`` (reads), ``OperatorDep`` (actions on
behaviors and approvals) or ``AdminDep`` (managing tokens). ``authenticate_token`` is the same
check for a token that did not come in a header (the dashboard's login form).

``LEDGER_AUTH=off`` disables it, and is refused unless the daemon listens on loopback only; the
app then has ``app.state.auth_disabled`` set (the dashboard shows a banner) and logs a warning
at start.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from fastapi import Depends, FastAPI, HTTPException, Request

from ledger.clock import Clock
from ledger.config import Settings
from ledger.db.session import Database
from ledger.errors import ConfigError
from ledger.secrets import is_reference, register_secret_value, resolve
from ledger.tokens import find_token

Role = Literal["viewer", "operator", "admin"]
ROLE_RANK: Final[dict[str, int]] = {"viewer": 0, "operator": 1, "admin": 2}
CONFIG_TOKEN_ROLE: Final[Role] = "operator"  # noqa: S105 (a role name, not a secret)


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is calling: recorded as the actor of every operator action, with their role."""

    name: str
    role: Role = CONFIG_TOKEN_ROLE

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


class TokenAuth:
    """Resolves the configured tokens once; ``authenticate`` maps a bearer token to a caller.
    The database's named tokens are checked once ``use_database`` has been called (the
    lifespan does, after opening the daemon)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth == "on"
        if not self.enabled and not is_loopback(settings.host):
            raise ConfigError(
                f"LEDGER_AUTH=off is only allowed when listening on loopback, not {settings.host}"
            )
        self._tokens: list[tuple[str, bytes]] = []
        for name, raw in settings.api_tokens.items():
            value = raw.get_secret_value()
            token = resolve(value).get_secret_value() if is_reference(value) else value
            register_secret_value(token)
            self._tokens.append((name, token.encode()))
        self._db: Database | None = None
        self._clock: Clock | None = None

    def use_database(self, db: Database, clock: Clock) -> None:
        """Check the database's named tokens too (``ledger token create``)."""
        self._db = db
        self._clock = clock

    def authenticate(self, header: str | None) -> Operator | None:
        """The caller an ``Authorization: Bearer <token>`` header names, or None."""
        if not self.enabled:
            return ANONYMOUS
        if not header or not header.lower().startswith("bearer "):
            return None
        return self.authenticate_token(header[7:].strip())

    def authenticate_token(self, token: str) -> Operator | None:
        """The caller ``token`` names (a configured token, then a named one), or None. Runs a
        query: call it off the event loop."""
        if not self.enabled:
            return ANONYMOUS
        if not token:
            return None
        given = token.encode("utf-8", "surrogateescape")
        found: str | None = None
        for name, expected in self._tokens:  # no early exit: constant time over all tokens
            if hmac.compare_digest(given, expected):
                found = name
        if found is not None:
            return Operator(f"api:{found}", CONFIG_TOKEN_ROLE)
        if self._db is None or self._clock is None:
            return None
        with self._db.transaction() as session:
            info = find_token(session, token, now=self._clock.now())
        return Operator(f"token:{info.name}", info.role) if info is not None else None


ANONYMOUS: Final = Operator("anonymous (auth off)", "admin")


def authenticate_token(request_or_app: Request | FastAPI, token: str) -> Operator | None:
    """The caller ``token`` names, for a token that came some other way than a header (the
    dashboard's login form), or None when it is not a valid, unrevoked token. Runs a query:
    call it off the event loop (``asyncio.to_thread``) from async code."""
    app = request_or_app.app if isinstance(request_or_app, Request) else request_or_app
    auth: TokenAuth = app.state.auth
    return auth.authenticate_token(token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authenticated(request: Request) -> Operator:
    auth: TokenAuth = request.app.state.auth
    operator = auth.authenticate(request.headers.get("authorization"))
    if operator is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid API token: send Authorization: Bearer <token> "
            "(ledger token create NAME --role ..., or [api_tokens] in ledger.toml)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return operator


def require_role(role: Role) -> Callable[[Request], Operator]:
    """A dependency that admits callers whose role is ``role`` or higher (403 otherwise)."""

    def dependency(request: Request) -> Operator:
        caller = authenticated(request)
        if not caller.may(role):
            raise HTTPException(
                status_code=403,
                detail=f"{caller.name} has the {caller.role} role; this needs {role}",
            )
        return caller

    dependency.__name__ = f"require_{role}"
    return dependency


require_operator = require_role("operator")

ViewerDep = Annotated[Operator, Depends(require_role("viewer"))]
OperatorDep = Annotated[Operator, Depends(require_operator)]
AdminDep = Annotated[Operator, Depends(require_role("admin"))]
