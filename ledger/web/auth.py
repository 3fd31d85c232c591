"""API authentication: named bearer tokens (``api_tokens``), compared in constant time.

``LEDGER_AUTH=off`` disables it, and is refused unless the daemon listens on loopback only.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from ledger.config import Settings
from ledger.errors import ConfigError
from ledger.secrets import is_reference, register_secret_value, resolve


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is calling: recorded as the actor of every operator action."""

    name: str


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
            return Operator("anonymous (auth off)")
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


def require_operator(request: Request) -> Operator:
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


OperatorDep = Annotated[Operator, Depends(require_operator)]
