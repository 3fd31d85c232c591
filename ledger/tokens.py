"""Named API tokens (``ledger token create NAME --role viewer|operator|admin``), stored hashed.

A token is 32 random bytes from ``secrets`` (256 bits, URL-safe, prefixed ``ldg_`` so a leaked
one is recognisable in a scanner's report); it is shown once, when it is created, and only its
SHA-256 digest is stored.

Why a plain SHA-256 and not a password hash (bcrypt, scrypt, argon2): a slow, salted hash
protects *low-entropy* secrets chosen by people against guessing after a database leak. A
256-bit random token cannot be guessed whatever the hash's speed, so a fast unsalted digest
loses nothing, and it lets a token be found by an indexed equality lookup on its digest instead
of trying a slow hash against every row on every request. Timing: the lookup compares digests,
not tokens, so how long it takes reveals at most something about the digest of what the caller
sent, which says nothing about any stored token's plaintext; the found row's digest is compared
again with ``hmac.compare_digest``.

Revocation is a column, not a deleted row (the name stays in the record of who did what); every
request looks its token up, so a revoked token stops working at once on every replica.
``last_used_at`` is written at most once per ``TOUCH_EVERY`` per token, by a conditional update
(no write per request).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from ledger.clock import json_time
from ledger.db.models import ApiToken
from ledger.errors import ConflictError, LedgerError, NotFoundError

TokenRole = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[TokenRole, ...]] = ("viewer", "operator", "admin")
TOKEN_PREFIX: Final = "ldg_"  # noqa: S105 (a prefix, not a secret)
NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,62}$"
TOUCH_EVERY: Final = timedelta(minutes=1)
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token: never its value or digest."""

    name: str
    role: TokenRole
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": json_time(self.created_at),
            "created_by": self.created_by,
            "last_used_at": json_time(self.last_used_at) if self.last_used_at else None,
            "revoked_at": json_time(self.revoked_at) if self.revoked_at else None,
            "active": self.active,
        }


def _info(row: ApiToken) -> TokenInfo:
    role: TokenRole = row.role if row.role in ROLES else "viewer"
    return TokenInfo(
        name=row.name,
        role=role,
        created_at=row.created_at,
        created_by=row.created_by,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def digest(token: str) -> str:
    """The stored form of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise LedgerError(
            f"token name {name!r} is not valid: 1-63 characters, lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_role(role: str) -> TokenRole:
    if role not in ROLES:
        raise LedgerError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def create_token(
    session: Session, name: str, role: str, *, actor: str, now: datetime
) -> tuple[str, TokenInfo]:
    """A new token named ``name`` with ``role``: its value (shown once) and what is stored.
    A name in use by an active token is a ConflictError; a revoked token's name may be reused
    (the revoked row is replaced)."""
    check_name(name)
    checked = check_role(role)
    existing = session.exec(select(ApiToken).where(col(ApiToken.name) == name)).first()
    if existing is not None:
        if existing.revoked_at is None:
            raise ConflictError(
                f"a token named {name!r} exists: revoke it first (`ledger token revoke {name}`) "
                "or choose another name"
            )
        session.delete(existing)
        session.flush()
    value = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        name=name,
        role=checked,
        token_sha256=digest(value),
        created_at=now,
        created_by=actor,
    )
    session.add(row)
    session.flush()
    return value, _info(row)


def list_tokens(session: Session) -> list[TokenInfo]:
    """Every token, active and revoked, by name."""
    return [_info(r) for r in session.exec(select(ApiToken).order_by(col(ApiToken.name)))]


def has_active_token(session: Session) -> bool:
    """Whether any named token (``ledger token create``) is active."""
    query = select(ApiToken.name).where(col(ApiToken.revoked_at).is_(None)).limit(1)
    return session.exec(query).first() is not None


def revoke_token(session: Session, name: str, *, now: datetime) -> TokenInfo:
    """Revoke ``name`` at ``now``: it stops working at the next request."""
    row = session.exec(select(ApiToken).where(col(ApiToken.name) == name)).first()
    if row is None:
        raise NotFoundError(f"no token named {name!r} (`ledger token list` shows them)")
    if row.revoked_at is not None:
        raise ConflictError(
            f"the token {name!r} was already revoked at {row.revoked_at:%Y-%m-%d %H:%M} UTC"
        )
    row.revoked_at = now
    session.add(row)
    session.flush()
    return _info(row)


def find_token(session: Session, token: str, *, now: datetime) -> TokenInfo | None:
    """The active token whose value is ``token``, or None. Records ``now`` as its last use
    when the recorded one is older than ``TOUCH_EVERY``."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None  # not one of ours: no query
    wanted = digest(token)
    row = session.exec(select(ApiToken).where(col(ApiToken.token_sha256) == wanted)).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_sha256, wanted):
        return None
    if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
        session.execute(
            update(ApiToken)
            .where(
                col(ApiToken.id) == row.id,
                or_(
                    col(ApiToken.last_used_at).is_(None),
                    col(ApiToken.last_used_at) <= now - TOUCH_EVERY,
                ),
            )
            .values(last_used_at=now)
        )
    return _info(row)
