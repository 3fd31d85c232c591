"""Alert channels and the outbox dispatcher, as the daemon runs them.

Global channels come from ``[alert_channels.NAME]`` in ledger.toml; a behavior file's own
``alerts.channels`` become channels named ``<behavior>#<index>``, refreshed on every registry
reconcile. Secret references are resolved when a channel is built, never stored."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import httpx
import structlog
from pydantic import SecretStr
from sqlmodel import Session

from ledger.clock import Clock
from ledger.config import Settings
from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from ledger.errors import LedgerError
from ledger.gates import Gate, GateResult, Outcome
from ledger.outbox.actions import ActionDeliverer, action_handlers
from ledger.outbox.alerts import (
    AlertChannel,
    LogChannel,
    SignedWebhookChannel,
    SlackChannel,
    alert_handlers,
)
from ledger.outbox.dispatcher import (
    DeliveryDeferred,
    DeliveryError,
    Dispatcher,
    Handler,
    OutboxItem,
)
from ledger.policy import Observation
from ledger.secrets import is_reference, resolve
from ledger.transitions import (
    PolicyContext,
    apply_observation,
    behavior_channel_name,
    lock_behavior,
    record_results,
)

log = structlog.get_logger("ledger.alerts")
MIRROR_RETRY_SECONDS = 6 * 3600.0


def _secret(value: str | None) -> SecretStr | None:
    if value is None:
        return None
    return resolve(value) if is_reference(value) else SecretStr(value)


def build_channel(
    name: str,
    kind: str,
    url: str | None,
    secret: str | None,
    client: httpx.AsyncClient,
    clock: Clock,
    allow_private: bool,
) -> AlertChannel:
    if kind == "log":
        return LogChannel(name)
    resolved_url = _secret(url)
    if resolved_url is None:
        raise LedgerError(f"alert channel {name}: {kind} needs a url")
    if kind == "slack":
        return SlackChannel(name, resolved_url, client, allow_private)
    resolved_secret = _secret(secret)
    if resolved_secret is None:
        raise LedgerError(f"alert channel {name}: a webhook channel needs a signing secret")
    return SignedWebhookChannel(name, resolved_url, resolved_secret, client, clock, allow_private)


class AlertChannels(dict[str, AlertChannel]):
    """The live channel map the alert handler reads at delivery time."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient, clock: Clock) -> None:
        super().__init__()
        self.client = client
        self.clock = clock
        self.allow_private = settings.allow_private_urls
        self["log"] = LogChannel("log")
        for name, cfg in settings.alert_channels.items():
            self[name] = build_channel(
                name,
                cfg.type,
                cfg.url.get_secret_value() if cfg.url else None,
                cfg.secret.get_secret_value() if cfg.secret else None,
                client,
                clock,
                self.allow_private,
            )

    def refresh(self, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Rebuild the behavior-owned channels from the registry's definitions."""
        for key in [k for k in self if "#" in k]:
            del self[key]
        for behavior, definition in rows:
            channels = ((definition or {}).get("alerts") or {}).get("channels") or []
            for index, channel in enumerate(channels):
                name = behavior_channel_name(behavior, index)
                try:
                    self[name] = build_channel(
                        name,
                        channel["type"],
                        channel.get("url"),
                        channel.get("secret"),
                        self.client,
                        self.clock,
                        self.allow_private,
                    )
                except LedgerError as exc:
                    log.warning(
                        "alert channel unavailable", behavior=behavior, channel=name, error=str(exc)
                    )


async def _mirror_later(item: OutboxItem) -> None:
    raise DeliveryDeferred(
        "Notion mirror not built yet; the update waits in the outbox",
        retry_after=MIRROR_RETRY_SECONDS,
    )


def dead_letter_hook(ctx: PolicyContext, clock: Clock) -> Any:
    """When an action's target rejected the content (a 4xx other than 408/429), the behavior
    caused it: record an ``output_check`` warn for its run."""

    def on_dead(session: Session, item: OutboxItem, error: DeliveryError) -> None:
        if not error.attributable or not item.kind.startswith("action.") or not item.behavior_id:
            return
        now: datetime = clock.now()
        row = lock_behavior(session, id=item.behavior_id)
        run_id = item.payload.get("run_id")
        stored = record_results(
            session,
            row,
            [
                GateResult(
                    Gate.OUTPUT_CHECK,
                    Outcome.WARN,
                    True,
                    {
                        "check": "action_target",
                        "reason": str(error)[:500],
                        "status": error.status_code,
                        "action": item.kind,
                    },
                )
            ],
            now=now,
            source="outbox",
            run_id=run_id if isinstance(run_id, str) else None,
        )
        apply_observation(session, row, Observation.result(now, stored[0]), now=now, ctx=ctx)

    return on_dead


def build_dispatcher(
    settings: Settings,
    db: Database,
    clock: Clock,
    ctx: PolicyContext,
    client: httpx.AsyncClient,
    channels: AlertChannels,
) -> Dispatcher:
    handlers: dict[str, Handler] = {
        **alert_handlers(channels),
        **action_handlers(
            ActionDeliverer(
                client,
                clock,
                allow_private=settings.allow_private_urls,
                base_dir=settings.behaviors_dir,
            )
        ),
        "mirror": _mirror_later,
    }
    return Dispatcher(db, handlers, clock, on_dead=dead_letter_hook(ctx, clock))


def registry_definitions(db: Database) -> list[tuple[str, Mapping[str, Any]]]:
    from sqlmodel import select

    with db.transaction() as session:
        return [(n, d) for n, d in session.exec(select(BehaviorRow.name, BehaviorRow.definition))]
