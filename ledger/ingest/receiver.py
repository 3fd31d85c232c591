"""What the ingestion routes need at hand: the broadcast token check, the webhook sources with
their secrets resolved, the group-commit span writer and the body limits. Built once by the
daemon (``ledger.daemon.open_ingest``); read by ``ledger.web.ingest_routes`` on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Final

import structlog

from ledger.clock import Clock
from ledger.db.session import Database
from ledger.ingest.otlp import Limits
from ledger.ingest.writer import SpanWriter
from ledger.signatures import Scheme

__all__ = ["BroadcastAuth", "Ingest", "WebhookSourceConfig"]

log = structlog.get_logger("ledger.ingest")

_UNCONFIGURED_LOG_EVERY_S: Final = 60.0


class BroadcastAuth:
    """The static-token check for broadcast deliveries (constant time, several tokens)."""

    def __init__(self, tokens: list[str], header: str) -> None:
        self._digests = [hashlib.sha256(t.encode("utf-8")).digest() for t in tokens]
        self.header = header.strip().lower()
        self.header_bytes = self.header.encode("latin-1")
        self.bearer = self.header == "authorization"
        self._last_unconfigured_log = -_UNCONFIGURED_LOG_EVERY_S

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def presented(self, value: str | None) -> str | None:
        """The token in the configured header's ``value`` (None if absent or not Bearer)."""
        if value is None:
            return None
        if self.bearer:
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        return value.strip()

    def check(self, value: str | None) -> str | None:
        """None if the configured header's ``value`` carries a configured token, else why the
        request is refused."""
        if not self._digests:
            now = time.monotonic()
            if now - self._last_unconfigured_log >= _UNCONFIGURED_LOG_EVERY_S:
                self._last_unconfigured_log = now
                log.warning(
                    "broadcast delivery refused: no broadcast token is configured "
                    "(set LEDGER_BROADCAST_TOKENS)"
                )
            return "broadcast ingestion is not configured on this daemon (no token)"
        token = self.presented(value)
        if not token:
            where = "Authorization: Bearer <token>" if self.bearer else f"the {self.header} header"
            return f"missing broadcast token: send it as {where}"
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        matched = False
        for expected in self._digests:  # no early exit: the time does not tell which matched
            matched |= hmac.compare_digest(digest, expected)
        return None if matched else "the broadcast token is not valid"


@dataclass(frozen=True, slots=True)
class WebhookSourceConfig:
    """A configured webhook source with its secrets resolved."""

    name: str
    scheme: Scheme
    secrets: tuple[str, ...]
    behavior: str | None


@dataclass(slots=True)
class Ingest:
    """Ingestion's resources, built by the daemon (``ledger.daemon.open_ingest``)."""

    db: Database
    clock: Clock
    writer: SpanWriter
    auth: BroadcastAuth
    limits: Limits
    sources: dict[str, WebhookSourceConfig] = field(default_factory=dict)

    async def close(self) -> None:
        """Commit what is queued, then stop the writer."""
        await self.writer.close()
