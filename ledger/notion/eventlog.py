"""The event log page: one line per verified signed-webhook event and per tier change,
appended to a configured Notion page through the outbox (``notion.event_log`` rows, queued by
the mirror's feeder). Lines are compact JSON, masked, and cut to fit one rich-text object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import orjson
from sqlmodel import Session

from ledger.db.models import LedgerEntry, WebhookEvent
from ledger.logging import MASK, mask_text
from ledger.notion.props import format_date
from ledger.outbox.enqueue import enqueue

__all__ = [
    "EVENT_LINE_CHARS",
    "KIND_EVENT_LOG",
    "TIER_CHANGES",
    "enqueue_event_line",
    "event_line",
    "tier_change_line",
    "webhook_line",
]

TIER_CHANGES: Final = frozenset({"promoted", "demoted"})
KIND_EVENT_LOG: Final = "notion.event_log"
EVENT_LINE_CHARS: Final = 2000
_SECRET_KEY = re.compile(r"secret|token|passw|authori[sz]ation|signature|api[_-]?key|cookie", re.I)


def _mask_values(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            str(k): MASK if _SECRET_KEY.search(str(k)) else _mask_values(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask_values(v) for v in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def event_line(at: datetime, source: str, event: str, payload: Any) -> str:
    """``🔔 2026-05-21T02:54:44.452Z [github:push] {"ref":"refs/heads/main",…}``: compact JSON
    with secret-looking fields and values masked, cut to fit one rich-text object."""
    head = f"🔔 {format_date(at)} [{source}:{event}] "
    body = mask_text(orjson.dumps(_mask_values(payload)).decode())
    room = EVENT_LINE_CHARS - len(head)
    if len(body) > room:
        body = body[: room - 1] + "…"
    return head + body


def enqueue_event_line(
    session: Session,
    *,
    line: str,
    dedup_key: str,
    now: datetime,
    behavior_id: int | None = None,
) -> None:
    enqueue(
        session,
        kind=KIND_EVENT_LOG,
        payload={"line": line},
        now=now,
        behavior_id=behavior_id,
        dedup_key=dedup_key,
    )


def webhook_line(event: WebhookEvent) -> str:
    return event_line(event.received_at, event.source, event.event, event.payload)


def tier_change_line(entry: LedgerEntry) -> str:
    data = entry.data or {}
    return event_line(
        entry.created_at,
        "ledger",
        entry.kind,
        {
            "behavior": entry.behavior_name,
            "from": data.get("from"),
            "to": data.get("to"),
            "actor": entry.actor,
            "reason": entry.reason,
        },
    )
