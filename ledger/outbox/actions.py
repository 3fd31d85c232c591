"""A behavior's action (what its output does at tier C, or at tier B once approved), delivered
through the outbox so that a target being down delays it and never loses it.

Actions: ``log`` (a log line with the output), ``webhook`` (a signed JSON POST), and
``notion_page`` / ``notion_append`` (delivered by ``ledger.notion.deliver`` when Notion is
configured; kept pending here until it is). The
row holds secret *references* (``env:NAME``, ``file:PATH``); they are resolved at delivery time,
so a rotated secret is picked up and no value ever reaches the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
import structlog
from sqlmodel import Session

from ledger.clock import Clock, json_times
from ledger.errors import SecretError
from ledger.gates import Gate, GateResult, Outcome
from ledger.outbox.dispatcher import (
    DeadLetterHook,
    DeliveryDeferred,
    DeliveryError,
    Handler,
    OutboxItem,
)
from ledger.outbox.enqueue import KIND_LOG, KIND_NOTION_APPEND, KIND_NOTION_PAGE, KIND_WEBHOOK
from ledger.outbox.urls import Resolver, post_json, system_resolver
from ledger.policy import Observation
from ledger.secrets import is_reference, resolve
from ledger.signatures import GENERIC_HEADER, sign_generic
from ledger.transitions import PolicyContext, apply_observation, lock_behavior, record_results

__all__ = [
    "NOTION_NOT_CONFIGURED",
    "ActionDeliverer",
    "action_handlers",
    "dead_letter_hook",
    "webhook_body",
]

log = structlog.get_logger("ledger.actions")

NOTION_NOT_CONFIGURED: Final = (
    "Notion is not configured (LEDGER_NOTION_TOKEN); the action waits in the outbox"
)
NOTION_RETRY_AFTER: Final = timedelta(hours=6)


def webhook_body(payload: Mapping[str, Any]) -> bytes:
    """The JSON a webhook action sends: what was produced, by whom, at which tier."""
    return orjson.dumps(
        {
            "behavior": payload["behavior"],
            "run_id": payload["run_id"],
            "tier": payload["tier"],
            "output": payload["output"],
            "payload_sha256": payload["payload_sha256"],
            "at": json_times(payload["at"]),  # a row queued before the "Z" form too
        }
    )


@dataclass(frozen=True, slots=True)
class ActionDeliverer:
    """Delivers action rows. ``client`` is the shared client created by the lifespan;
    ``base_dir`` anchors relative ``file:`` references (the behaviors folder)."""

    client: httpx.AsyncClient
    clock: Clock
    allow_private: bool = False
    resolver: Resolver = system_resolver
    base_dir: Path | None = None

    async def deliver_log(self, item: OutboxItem) -> None:
        p = item.payload
        log.info(
            "behavior output",
            behavior=p.get("behavior"),
            run_id=p.get("run_id"),
            tier=p.get("tier"),
            output=p.get("output"),
            payload_sha256=p.get("payload_sha256"),
        )

    def _resolve(self, reference: str, what: str, behavior: str) -> str:
        try:
            return resolve(reference, base_dir=self.base_dir).get_secret_value()
        except SecretError as exc:
            # Configuration, not conduct: retried, so fixing the environment is enough.
            raise DeliveryError(f"the webhook action of {behavior}: {what}: {exc}") from None

    async def deliver_webhook(self, item: OutboxItem) -> None:
        """POST the signed body; a target rejecting the content (400/409/413/415/422) is a
        permanent, attributable failure."""
        p = item.payload
        behavior = str(p.get("behavior"))
        raw_url = str(p.get("url", ""))
        url = self._resolve(raw_url, "url", behavior) if is_reference(raw_url) else raw_url
        secret = self._resolve(str(p.get("secret", "")), "secret", behavior)
        body = webhook_body(p)
        t = int(self.clock.now().timestamp())
        await post_json(
            self.client,
            url,
            body,
            target=f"the webhook action of {behavior}",
            headers={
                GENERIC_HEADER: sign_generic(secret, body, t),
                "X-Ledger-Delivery": str(p.get("run_id")),
            },
            allow_private=self.allow_private,
            resolver=self.resolver,
            attributable_rejections=True,
        )

    async def deliver_notion(self, item: OutboxItem) -> None:
        raise DeliveryDeferred(
            NOTION_NOT_CONFIGURED, retry_after=NOTION_RETRY_AFTER.total_seconds()
        )


def action_handlers(deliverer: ActionDeliverer) -> dict[str, Handler]:
    """Handlers for every action kind, ready to merge into the dispatcher's map."""
    return {
        KIND_LOG: deliverer.deliver_log,
        KIND_WEBHOOK: deliverer.deliver_webhook,
        KIND_NOTION_PAGE: deliverer.deliver_notion,
        KIND_NOTION_APPEND: deliverer.deliver_notion,
    }


def dead_letter_hook(ctx: PolicyContext, clock: Clock) -> DeadLetterHook:
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
