"""API authentication: named bearer tokens (``api_tokens``), compared in constant time, and
the roles that say what a caller may do (viewer < operator < admin).

Routes declare the least role they need with ``ViewerDep`` (reads), ``OperatorDep`` (actions on
behaviors and approvals) or ``AdminDep`` (managing tokens). Tokens from ``[api_tokens]`` act with
the operator role.

``LEDGER_AUTH=off`` disables it, and is refused unless the daemon listens on loopback only.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from fastapi import Depends, HTTPException, Request

from ledger.config import Settings
from ledger.errors import ConfigError
from ledger.secrets import is_reference, register_secret_value, resolve

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
    """Resolves the configured tokens once; ``authenticate`` maps a bearer token to a name."""

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

    def authenticate(self, header: str | None) -> Operator | None:
        if not self.enabled:
            return Operator("anonymous (auth off)", "admin")
        if not header or not header.lower().startswith("bearer "):
            return None
        given = header[7:].strip().encode()
        found: str | None = None
        for name, token in self._tokens:  # no early exit: constant time over all tokens
            if hmac.compare_digest(given, token):
                found = name
        return Operator(f"api:{found}") if found else None


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
            "(tokens are configured in api_tokens)",
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
