"""Alerts: plain-English messages about a behavior (demotions first of all) and the channels
that carry them — a Slack-compatible incoming webhook, a signed generic webhook, the log.

An alert is a JSON mapping::

    {"event": "demotion", "behavior": "seo-audit", "from": "C", "to": "B",
     "reason": "...", "evidence": [...], "at": "2026-11-02T09:00:00+00:00"}

``enqueue_alert`` (the outbox write side, ``ledger.outbox.enqueue``) writes one outbox row per
channel (so a channel that is down delays only itself) with a dedup key per (channel, behavior,
event, reason, time bucket): the same alert within one ``window`` is sent once.
``alert_handler`` delivers those rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx
import orjson
import structlog
from pydantic import SecretStr

from ledger.clock import Clock
from ledger.gates import Tier
from ledger.outbox.dispatcher import DeliveryError, Handler, OutboxItem
from ledger.outbox.enqueue import KIND_ALERT, KIND_DEMOTION_ALERT
from ledger.outbox.urls import Resolver, post_json, system_resolver
from ledger.signatures import GENERIC_HEADER, sign_generic

__all__ = [
    "AlertChannel",
    "LogChannel",
    "SignedWebhookChannel",
    "SlackChannel",
    "alert_handler",
    "alert_handlers",
    "alert_headline",
    "alert_text",
    "slack_message",
]

log = structlog.get_logger("ledger.alerts")

_MAX_EVIDENCE_SHOWN: Final = 8
_SLACK_TEXT_LIMIT: Final = 2900  # section text allows 3000 characters


# --------------------------------------------------------------------------------------------
# Words (pure)
# --------------------------------------------------------------------------------------------


def _tier_label(value: Any) -> str:
    try:
        return Tier(str(value)).label
    except ValueError:
        return str(value)


def alert_headline(alert: Mapping[str, Any]) -> str:
    """One line: ``seo-audit demoted from C · autonomous to B · human-in-the-loop: <reason>``.

    The line states the change (and who made it, ``operator``); ``reason`` is its cause."""
    behavior = str(alert.get("behavior") or "a behavior")
    event = str(alert.get("event") or "alert")
    reason = str(alert.get("reason") or "").strip()
    tiers = f"from {_tier_label(alert.get('from'))} to {_tier_label(alert.get('to'))}"
    by = f" by {alert['operator']}" if alert.get("operator") else ""
    if event == "demotion":
        line = f"{behavior} demoted {tiers}{by}" + (" and paused" if alert.get("paused") else "")
    elif event == "promotion":
        line = f"{behavior} promoted {tiers}{by}"
    elif event == "promotion_proposed":
        line = f"{behavior} is proposed for promotion {tiers} (an operator must confirm)"
    elif event == "pause":
        line = f"{behavior} paused{by}"
    elif event == "auth_error":
        line = f"{behavior} paused after an auth error"
    else:
        line = f"{behavior}: {event.replace('_', ' ')}"
    return f"{line}: {reason}" if reason else line


def _evidence_line(item: Any) -> str:
    if isinstance(item, Mapping):
        return ", ".join(f"{key} {value}" for key, value in item.items())
    return str(item)


def _evidence(alert: Mapping[str, Any]) -> list[str]:
    raw = alert.get("evidence") or []
    items = raw if isinstance(raw, list | tuple) else [raw]
    return [_evidence_line(item) for item in items]


def alert_text(alert: Mapping[str, Any]) -> str:
    """The whole alert as plain text: the headline, the evidence, the time."""
    lines = [alert_headline(alert)]
    evidence = _evidence(alert)
    if evidence:
        lines.append("Evidence:")
        lines.extend(f"- {line}" for line in evidence[:_MAX_EVIDENCE_SHOWN])
        if len(evidence) > _MAX_EVIDENCE_SHOWN:
            lines.append(f"- …and {len(evidence) - _MAX_EVIDENCE_SHOWN} more")
    if alert.get("at"):
        lines.append(f"At {alert['at']}")
    return "\n".join(lines)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = _SLACK_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_message(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The body of a Slack-compatible incoming webhook: ``{"text": ..., "blocks": [...]}``
    (``text`` is the notification fallback; the blocks carry the same words, formatted)."""
    headline = _slack_escape(alert_headline(alert))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(headline)}}
    ]
    evidence = _evidence(alert)
    if evidence:
        shown = "\n".join(f"• {_slack_escape(line)}" for line in evidence[:_MAX_EVIDENCE_SHOWN])
        if len(evidence) > _MAX_EVIDENCE_SHOWN:
            shown += f"\n• …and {len(evidence) - _MAX_EVIDENCE_SHOWN} more"
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(f"*Evidence*\n{shown}")}}
        )
    if alert.get("at"):
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _slack_escape(f"At {alert['at']}")}],
            }
        )
    return {"text": _clip(alert_headline(alert)), "blocks": blocks}


# --------------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------------


class AlertChannel(Protocol):
    @property
    def name(self) -> str: ...

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        """Deliver once; raise ``DeliveryError`` with the retry decision."""


@dataclass(frozen=True, slots=True)
class SlackChannel:
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat…). The URL is a
    credential: resolved at start-up, held as ``SecretStr``, never logged."""

    name: str
    url: SecretStr
    client: httpx.AsyncClient
    allow_private: bool = False
    resolver: Resolver = system_resolver

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        await post_json(
            self.client,
            self.url.get_secret_value(),
            orjson.dumps(slack_message(alert)),
            target=f"alert channel {self.name}",
            allow_private=self.allow_private,
            resolver=self.resolver,
        )


@dataclass(frozen=True, slots=True)
class SignedWebhookChannel:
    """POSTs ``{"event", "behavior", "text", "alert", "delivery"}`` signed with
    ``X-Ledger-Signature`` (see ``ledger.signatures``). ``X-Ledger-Delivery`` carries
    the outbox id: the same id means the same alert (receivers deduplicate on it)."""

    name: str
    url: SecretStr
    secret: SecretStr
    client: httpx.AsyncClient
    clock: Clock
    allow_private: bool = False
    resolver: Resolver = system_resolver

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        body = orjson.dumps(
            {
                "event": alert.get("event"),
                "behavior": alert.get("behavior"),
                "text": alert_text(alert),
                "alert": dict(alert),
                "delivery": item.id,
            }
        )
        t = int(self.clock.now().timestamp())
        await post_json(
            self.client,
            self.url.get_secret_value(),
            body,
            target=f"alert channel {self.name}",
            headers={
                GENERIC_HEADER: sign_generic(self.secret.get_secret_value(), body, t),
                "X-Ledger-Delivery": str(item.id),
            },
            allow_private=self.allow_private,
            resolver=self.resolver,
        )


@dataclass(frozen=True, slots=True)
class LogChannel:
    """Alerts as log lines (warning level), for installs without a chat."""

    name: str = "log"

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        log.warning(
            alert_headline(alert),
            alert_event=alert.get("event"),
            behavior=alert.get("behavior"),
            evidence=_evidence(alert),
            at=alert.get("at"),
            channel=self.name,
        )


def alert_handler(channels: Mapping[str, AlertChannel]) -> Handler:
    """The outbox handler for ``alert`` and ``alert.demotion`` rows: send through the channel
    named in the row. A channel that is no longer configured is a permanent failure."""

    async def deliver(item: OutboxItem) -> None:
        name = str(item.payload.get("channel"))
        alert = item.payload.get("alert")
        if not isinstance(alert, Mapping):
            raise DeliveryError("the alert row has no alert", permanent=True)
        channel = channels.get(name)
        if channel is None:
            raise DeliveryError(
                f"alert channel {name!r} is not configured (requeue it once it is)",
                permanent=True,
            )
        await channel.send(alert, item)

    return deliver


def alert_handlers(channels: Mapping[str, AlertChannel]) -> dict[str, Handler]:
    """Handlers for both alert kinds, ready to merge into the dispatcher's map."""
    handler = alert_handler(channels)
    return {KIND_DEMOTION_ALERT: handler, KIND_ALERT: handler}
