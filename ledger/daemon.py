"""Builds the daemon's long-lived parts from Settings. For now: the one ``PolicyContext``
builder, used by the daemon, the API and the CLI alike, so an alert caused by an operator's
action reaches the same channels as one caused by a run."""

from __future__ import annotations

from ledger.config import Settings
from ledger.transitions import PolicyContext


def build_policy_context(settings: Settings) -> PolicyContext:
    """The context every decision is applied with: ``[policy]`` overrides, whether the Notion
    mirror is on, and the alert channels of ledger.toml (``[alert_channels.NAME]``)."""
    return PolicyContext(
        global_overrides=settings.policy,
        mirror=settings.notion_token is not None,
        alert_channels=tuple(settings.alert_channels),
    )
