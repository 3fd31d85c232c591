"""The Notion client built from ``Settings``: the token is a secret *reference*
(``LEDGER_NOTION_TOKEN=env:NAME`` or ``file:PATH``), resolved here and never stored."""

from __future__ import annotations

from pydantic import SecretStr

from ledger.config import Settings
from ledger.errors import ConfigError
from ledger.notion.api import NotionApi
from ledger.notion.limiter import TokenBucket
from ledger.secrets import is_reference, resolve

__all__ = ["limiter_for", "notion_token", "open_api"]


def notion_token(settings: Settings) -> SecretStr | None:
    """The integration token, or None when Notion is not configured. Raises ConfigError for a
    literal token and SecretError for a reference that does not resolve."""
    if settings.notion_token is None:
        return None
    raw = settings.notion_token.get_secret_value().strip()
    if not is_reference(raw):
        raise ConfigError(
            "LEDGER_NOTION_TOKEN must be a secret reference (env:NAME or file:PATH) naming where "
            "the Notion integration token is, never the token itself"
        )
    return resolve(raw)


def limiter_for(settings: Settings) -> TokenBucket:
    """The process's one Notion limiter: ``notion_requests_per_second`` averaged over any
    10-second window, bursts of up to 3."""
    burst = 3.0
    rate = max(0.1, (settings.notion_requests_per_second * 10 - burst) / 10)
    return TokenBucket(rate=rate, burst=burst)


def open_api(settings: Settings, limiter: TokenBucket | None = None) -> NotionApi:
    """The Notion client; raises ConfigError when Notion is not configured."""
    token = notion_token(settings)
    if token is None:
        raise ConfigError(
            "Notion is not configured: set LEDGER_NOTION_TOKEN=env:NAME (the integration's "
            "token in that environment variable); see docs/notion.md"
        )
    return NotionApi(
        token.get_secret_value(),
        base_url=settings.notion_base_url,
        limiter=limiter or limiter_for(settings),
    )
