"""Alerts: plain-English messages about a behavior (demotions first of all) and the channels
that carry them — a Slack-compatible incoming webhook (text + Block Kit), a signed generic
webhook, email over SMTP, the log, and (plugged in by the daemon) a Notion comment.

An alert is a JSON mapping::

    {"event": "demotion", "behavior": "seo-audit", "from": "C", "to": "B",
     "reason": "...", "evidence": [...], "at": "2026-11-02T09:00:00Z"}

``enqueue_alert`` (the outbox write side, ``ledger.outbox.enqueue``) writes one outbox row per
channel (so a channel that is down delays only itself); repeats of a behavior's event within
the dedup window fold into one follow-up row carrying ``count``. ``alert_handler`` delivers
those rows; ``build_channel`` makes a channel from its configuration.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx
import orjson
import structlog
from pydantic import SecretStr
from sqlmodel import Session

from ledger.clock import Clock, json_times
from ledger.errors import LedgerError
from ledger.gates import Tier
from ledger.logging import mask_text
from ledger.outbox.dispatcher import (
    DeadLetterHook,
    DeliveryDeferred,
    DeliveryError,
    Handler,
    OutboxItem,
)
from ledger.outbox.enqueue import KIND_ALERT, KIND_DEMOTION_ALERT
from ledger.outbox.urls import Resolver, post_json, system_resolver
from ledger.secrets import is_reference, resolve
from ledger.signatures import GENERIC_HEADER, sign_generic
from ledger.transitions import PolicyContext, note_dead_letter

__all__ = [
    "AlertChannel",
    "ChannelDeps",
    "ChannelFactory",
    "ChannelSpec",
    "EmailChannel",
    "LogChannel",
    "SignedWebhookChannel",
    "SlackChannel",
    "alert_handler",
    "alert_handlers",
    "alert_headline",
    "alert_text",
    "alert_tiers",
    "alert_title",
    "build_channel",
    "chain_dead_letter_hooks",
    "dashboard_link",
    "dead_letter_alert_hook",
    "email_message",
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


_VERBS: Final[Mapping[str, str]] = {
    "demotion": "demoted",
    "promotion": "promoted",
    "promotion_proposed": "proposed for promotion",
    "pause": "paused",
    "auth_error": "paused after an auth error",
    "recovery": "recovered",
    "provider_error": "failing with provider errors",
    "spend": "over 80 % of its budget",
    "dead_letter": "had an outbox delivery dead-lettered",
}


def _span(seconds: Any) -> str:
    """``900`` → ``15 min``; ``7200`` → ``2 h``."""
    try:
        total = int(seconds)
    except (TypeError, ValueError):
        return "the window"
    if total % 3600 == 0 and total >= 3600:
        return f"{total // 3600} h"
    if total % 60 == 0 and total >= 60:
        return f"{total // 60} min"
    return f"{total} s"


def alert_tiers(alert: Mapping[str, Any]) -> str | None:
    """``C · autonomous → B · human-in-the-loop`` when the alert is about a tier change."""
    if not alert.get("from") or not alert.get("to"):
        return None
    return f"{_tier_label(alert.get('from'))} → {_tier_label(alert.get('to'))}"


def alert_title(alert: Mapping[str, Any]) -> str:
    """A short title: ``seo-audit demoted`` or ``seo-audit demoted 4 times in 15 min``."""
    behavior = str(alert.get("behavior") or "a behavior")
    event = str(alert.get("event") or "alert")
    if event == "silence_ended":
        return f"{behavior}: silence ended"
    verb = _VERBS.get(event, event.replace("_", " "))
    count = alert.get("count")
    if isinstance(count, int) and count > 1:
        return f"{behavior} {verb} {count} times in {_span(alert.get('window_seconds'))}"
    return f"{behavior} {verb}"


def alert_headline(alert: Mapping[str, Any]) -> str:
    """One line: ``seo-audit demoted from C · autonomous to B · human-in-the-loop: <reason>``.

    The line states the change (and who made it, ``operator``); ``reason`` is its cause. A
    folded alert (``count`` > 1) starts with how often it happened: ``seo-audit demoted 4
    times in 15 min; latest: from … to …: <reason>``."""
    behavior = str(alert.get("behavior") or "a behavior")
    event = str(alert.get("event") or "alert")
    reason = str(alert.get("reason") or "").strip()
    tiers = f"from {_tier_label(alert.get('from'))} to {_tier_label(alert.get('to'))}"
    by = f" by {alert['operator']}" if alert.get("operator") else ""
    count = alert.get("count")
    if isinstance(count, int) and count > 1:
        detail = tiers + by if alert.get("from") and alert.get("to") else ""
        line = f"{alert_title(alert)}; latest" + (f" {detail}" if detail else "")
    elif event == "demotion":
        line = f"{behavior} demoted {tiers}{by}" + (" and paused" if alert.get("paused") else "")
    elif event == "promotion":
        line = f"{behavior} promoted {tiers}{by}"
    elif event == "promotion_proposed":
        line = f"{behavior} is proposed for promotion {tiers} (an operator must confirm)"
    elif event == "recovery":
        line = f"{behavior} recovered: promoted {tiers}, back where it was before its demotion"
    elif event == "pause":
        line = f"{behavior} paused{by}"
    elif event == "auth_error":
        line = f"{behavior} paused after an auth error"
    elif event == "silence_ended":
        line = f"{behavior}: silence ended"
    else:
        line = alert_title(alert)
    return f"{line}: {reason}" if reason else line


def _evidence_line(item: Any) -> str:
    if isinstance(item, Mapping):
        return ", ".join(f"{key} {value}" for key, value in item.items())
    if isinstance(item, int) and not isinstance(item, bool):
        return f"gate result {item}"  # a decision's evidence: the ids of its gate results
    return str(item)


def _evidence_heading(alert: Mapping[str, Any]) -> str:
    """The evidence's heading; where ids of gate results are listed, where to read them."""
    raw = alert.get("cited") or alert.get("evidence") or []
    items = raw if isinstance(raw, list | tuple) else [raw]
    behavior = alert.get("behavior")
    if behavior and any(isinstance(i, int) and not isinstance(i, bool) for i in items):
        return f"Evidence (`ledger explain {behavior}` shows each gate result's run):"
    return "Evidence:"


def _evidence(alert: Mapping[str, Any]) -> list[str]:
    # "cited": the evidence's gate results with their gate, outcome and run (the ids stay
    # under "evidence"), written by the transitions; else the evidence as given.
    raw = alert.get("cited") or alert.get("evidence") or []
    items = raw if isinstance(raw, list | tuple) else [raw]
    return [_evidence_line(item) for item in items]


def alert_text(alert: Mapping[str, Any]) -> str:
    """The whole alert as plain text: the headline, the evidence, the time."""
    lines = [alert_headline(alert)]
    evidence = _evidence(alert)
    if evidence:
        lines.append(_evidence_heading(alert))
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


def dashboard_link(public_url: str | None, behavior: Any) -> str | None:
    """The behavior's page on the dashboard, when a public base URL is configured."""
    if not public_url or not behavior:
        return None
    return f"{public_url.rstrip('/')}/behaviors/{quote(str(behavior), safe='')}"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(text)}


def slack_message(alert: Mapping[str, Any], public_url: str | None = None) -> dict[str, Any]:
    """The body of a Slack-compatible incoming webhook: ``{"text": ..., "blocks": [...]}``.

    ``text`` is the notification fallback (the headline); the Block Kit blocks carry a header,
    the behavior and its tier change with meanings (``C · autonomous → B ·
    human-in-the-loop``), the reason, the evidence, how often it happened (a folded alert), a
    link to the dashboard (``public_url``) and the time."""
    behavior = str(alert.get("behavior") or "")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(alert_title(alert), 150)},
        }
    ]
    fields = [_mrkdwn(f"*Behavior*\n{_slack_escape(behavior)}")]
    tiers = alert_tiers(alert)
    if tiers:
        fields.append(_mrkdwn(f"*Tier*\n{_slack_escape(tiers)}"))
    elif alert.get("tier"):
        fields.append(_mrkdwn(f"*Tier*\n{_slack_escape(_tier_label(alert['tier']))}"))
    if alert.get("operator"):
        fields.append(_mrkdwn(f"*By*\n{_slack_escape(str(alert['operator']))}"))
    blocks.append({"type": "section", "fields": fields})
    reason = str(alert.get("reason") or "").strip()
    if reason:
        blocks.append({"type": "section", "text": _mrkdwn(f"*Reason*\n{_slack_escape(reason)}")})
    evidence = _evidence(alert)
    if evidence:
        shown = "\n".join(f"• {_slack_escape(line)}" for line in evidence[:_MAX_EVIDENCE_SHOWN])
        if len(evidence) > _MAX_EVIDENCE_SHOWN:
            shown += f"\n• …and {len(evidence) - _MAX_EVIDENCE_SHOWN} more"
        blocks.append({"type": "section", "text": _mrkdwn(f"*Evidence*\n{shown}")})
    link = dashboard_link(public_url, behavior)
    if link:
        blocks.append(
            {
                "type": "section",
                "text": _mrkdwn(f"<{link}|Open {_slack_escape(behavior)} in the dashboard>"),
            }
        )
    context = []
    count = alert.get("count")
    if isinstance(count, int) and count > 1:
        context.append(
            f"{count} times in {_span(alert.get('window_seconds'))}, "
            f"first at {alert.get('first_at')}"
        )
    if alert.get("at"):
        context.append(f"At {alert['at']}")
    if context:
        blocks.append(
            {
                "type": "context",
                "elements": [_mrkdwn(_slack_escape(line)) for line in context],
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

    public_url: str | None = None

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        await post_json(
            self.client,
            self.url.get_secret_value(),
            orjson.dumps(slack_message(alert, self.public_url)),
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


# --------------------------------------------------------------------------------------------
# Email over SMTP
# --------------------------------------------------------------------------------------------


def email_message(
    alert: Mapping[str, Any],
    *,
    sender: str,
    to: Sequence[str],
    public_url: str | None = None,
    delivery: int | None = None,
) -> EmailMessage:
    """The alert as a plain-text email: the title as subject, the whole text and the dashboard
    link as body; ``Message-ID`` carries the outbox id (the same id means the same alert)."""
    message = EmailMessage()
    message["Subject"] = f"[ledger] {alert_title(alert)}"[:200]
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or "ledger"
    message["Message-ID"] = (
        make_msgid("ledger-alert", domain)
        if delivery is None
        else f"<ledger-alert-{delivery}@{domain}>"
    )
    body = alert_text(alert)
    link = dashboard_link(public_url, alert.get("behavior"))
    if link:
        body += f"\n\nDashboard: {link}"
    message.set_content(body + "\n")
    return message


def smtp_delivery_error(exc: Exception, *, target: str) -> DeliveryError:
    """An SMTP failure as a retry decision: 5xx answers and refused logins are permanent (the
    address or the configuration is wrong), 4xx answers and network trouble are retried."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return DeliveryError(
            f"{target}: the SMTP server refused the login ({exc.smtp_code}); check username "
            "and password",
            permanent=True,
            status_code=exc.smtp_code,
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        permanent = bool(codes) and all(500 <= code < 600 for code in codes)
        return DeliveryError(
            f"{target}: the SMTP server refused every recipient ({', '.join(map(str, codes))})",
            permanent=permanent,
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code
        return DeliveryError(
            f"{target}: the SMTP server answered {code}",
            permanent=500 <= code < 600,
            status_code=code,
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError | ssl.SSLError):
        return DeliveryError(
            f"{target}: TLS with the SMTP server failed ({type(exc).__name__}); check "
            "security = starttls | tls | none",
            permanent=True,
        )
    if isinstance(exc, smtplib.SMTPException | OSError):
        return DeliveryError(f"{target}: SMTP failed: {type(exc).__name__}")
    raise exc


@dataclass(frozen=True, slots=True)
class EmailChannel:
    """Email over SMTP (stdlib ``smtplib`` in a worker thread; every socket operation has
    ``timeout``). The password is a ``SecretStr``, resolved at start-up, never logged."""

    name: str
    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    security: str = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = 10.0
    public_url: str | None = None

    def _send_sync(self, message: EmailMessage) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.security == "tls":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with smtp:
            if self.security == "starttls":
                smtp.starttls(context=context)
            if self.username and self.password is not None:
                smtp.login(self.username, self.password.get_secret_value())
            smtp.send_message(message, from_addr=self.sender, to_addrs=list(self.to))

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        message = email_message(
            alert, sender=self.sender, to=self.to, public_url=self.public_url, delivery=item.id
        )
        try:
            await asyncio.to_thread(self._send_sync, message)
        except (smtplib.SMTPException, OSError) as exc:
            raise smtp_delivery_error(exc, target=f"alert channel {self.name}") from exc


# --------------------------------------------------------------------------------------------
# Building channels from configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One channel as configured (``[alert_channels.NAME]`` or a behavior file's
    ``alerts.channels``): secrets still as written (references), resolved by the builder."""

    name: str
    type: str
    url: str | None = None
    secret: str | None = None
    mention: tuple[str, ...] = ()
    host: str | None = None
    port: int | None = None
    security: str = "starttls"
    username: str | None = None
    password: str | None = None
    sender: str | None = None
    to: tuple[str, ...] = ()
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ChannelDeps:
    """What channels share: the outbound HTTP client, the clock, the outbound-URL setting and
    the dashboard's public base URL."""

    client: httpx.AsyncClient
    clock: Clock
    allow_private: bool = False
    public_url: str | None = None


# A constructor for a channel type this module does not build itself (``notion``: the Notion
# comment channel is plugged in by the daemon's wiring). Raises LedgerError when the spec is
# unusable.
ChannelFactory = Callable[[ChannelSpec, ChannelDeps], AlertChannel]

NOT_WIRED_RETRY_SECONDS: Final = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class UnwiredChannel:
    """A channel whose type is valid but has no constructor in this build (``notion`` until the
    Notion comment channel is plugged in): its alerts wait in the outbox, deferred."""

    name: str
    type: str

    async def send(self, alert: Mapping[str, Any], item: OutboxItem) -> None:
        raise DeliveryDeferred(
            f"alert channel {self.name}: {self.type} alerts are not available in this build; "
            "the alert waits in the outbox",
            retry_after=NOT_WIRED_RETRY_SECONDS,
        )


def _resolved(value: str | None) -> SecretStr | None:
    if value is None:
        return None
    return resolve(value) if is_reference(value) else SecretStr(value)


def build_channel(
    spec: ChannelSpec, deps: ChannelDeps, types: Mapping[str, ChannelFactory] | None = None
) -> AlertChannel:
    """The channel ``spec`` describes, its secret references resolved now. ``types`` adds (or
    overrides) constructors by type, e.g. ``{"notion": ...}``. Raises LedgerError (or
    SecretError) naming the channel when the spec is unusable."""
    factory = (types or {}).get(spec.type)
    if factory is not None:
        return factory(spec, deps)
    if spec.type == "log":
        return LogChannel(spec.name)
    if spec.type == "notion":
        return UnwiredChannel(spec.name, spec.type)
    if spec.type == "email":
        if not spec.host or not spec.sender or not spec.to:
            raise LedgerError(f"alert channel {spec.name}: email needs host, sender and to")
        return EmailChannel(
            spec.name,
            spec.host,
            spec.port or (465 if spec.security == "tls" else 587),
            spec.sender,
            spec.to,
            security=spec.security,
            username=spec.username,
            password=_resolved(spec.password),
            timeout=spec.timeout,
            public_url=deps.public_url,
        )
    url = _resolved(spec.url)
    if url is None:
        raise LedgerError(f"alert channel {spec.name}: {spec.type} needs a url")
    if spec.type == "slack":
        return SlackChannel(
            spec.name, url, deps.client, deps.allow_private, public_url=deps.public_url
        )
    if spec.type == "webhook":
        secret = _resolved(spec.secret)
        if secret is None:
            raise LedgerError(
                f"alert channel {spec.name}: a webhook channel needs a signing secret"
            )
        return SignedWebhookChannel(
            spec.name, url, secret, deps.client, deps.clock, deps.allow_private
        )
    raise LedgerError(f"alert channel {spec.name}: unknown type {spec.type!r}")


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------


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
        await channel.send(json_times(alert), item)  # a row queued before the "Z" form too

    return deliver


def alert_handlers(channels: Mapping[str, AlertChannel]) -> dict[str, Handler]:
    """Handlers for both alert kinds, ready to merge into the dispatcher's map."""
    handler = alert_handler(channels)
    return {KIND_DEMOTION_ALERT: handler, KIND_ALERT: handler}


def dead_letter_alert_hook(ctx: PolicyContext, clock: Clock) -> DeadLetterHook:
    """A dispatcher ``on_dead`` hook: a ``dead_letter`` alert for the row that went dead (in
    the same transaction), never for an alert about a dead letter."""

    def hook(session: Session, item: OutboxItem, error: DeliveryError) -> None:
        note_dead_letter(
            session,
            outbox_id=item.id,
            kind=item.kind,
            behavior_id=item.behavior_id,
            payload=item.payload,
            error=mask_text(str(error) or type(error).__name__),
            now=clock.now(),
            ctx=ctx,
        )

    return hook


def chain_dead_letter_hooks(*hooks: DeadLetterHook) -> DeadLetterHook:
    """One ``on_dead`` hook that runs ``hooks`` in order (in the same transaction)."""

    def chained(session: Session, item: OutboxItem, error: DeliveryError) -> None:
        for hook in hooks:
            hook(session, item, error)

    return chained
