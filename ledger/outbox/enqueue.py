"""The write side of the outbox: what must happen after a state change, added as rows in the
caller's transaction. The apply layer (``transitions``) and the services call this module and
nothing else of the outbox; the dispatcher and the channels that deliver the rows import it.

- ``enqueue`` adds a row (a duplicate ``dedup_key`` is a no-op);
- kinds: ``alert`` / ``alert.demotion`` (one row per channel, deduplicated per time bucket by
  ``alert_dedup_key``), ``mirror`` (row-shaped Notion work: "bring the row with this Key up to
  date", see ``enqueue_mirror``), ``action.*`` (a behavior's action);
- ``enqueue_alert`` and ``enqueue_action`` build those rows' payloads and dedup keys.

Payloads are JSON and hold secret *references*, never resolved values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session

from ledger.db.models import OutboxRow
from ledger.errors import SecretError
from ledger.secrets import is_reference

__all__ = [
    "ACTION_KINDS",
    "DEAD",
    "DEFAULT_DEDUP_WINDOW",
    "DELIVERED",
    "IN_FLIGHT",
    "KIND_ALERT",
    "KIND_DEMOTION_ALERT",
    "KIND_LOG",
    "KIND_MIRROR",
    "KIND_NOTION_APPEND",
    "KIND_NOTION_PAGE",
    "KIND_WEBHOOK",
    "PENDING",
    "alert_dedup_key",
    "enqueue",
    "enqueue_action",
    "enqueue_alert",
    "enqueue_mirror",
    "mirror_row_key",
]

PENDING: Final = "pending"
IN_FLIGHT: Final = "in_flight"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"

KIND_DEMOTION_ALERT: Final = "alert.demotion"
KIND_ALERT: Final = "alert"
KIND_MIRROR: Final = "mirror"

KIND_LOG: Final = "action.log"
KIND_WEBHOOK: Final = "action.webhook"
KIND_NOTION_PAGE: Final = "action.notion_page"
KIND_NOTION_APPEND: Final = "action.notion_append"
ACTION_KINDS: Final[Mapping[str, str]] = {
    "log": KIND_LOG,
    "webhook": KIND_WEBHOOK,
    "notion_page": KIND_NOTION_PAGE,
    "notion_append": KIND_NOTION_APPEND,
}

DEFAULT_DEDUP_WINDOW: Final = timedelta(hours=1)


def enqueue(
    session: Session,
    *,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    behavior_id: int | None = None,
    dedup_key: str | None = None,
    not_before: datetime | None = None,
) -> OutboxRow | None:
    """Add an outbox row in the caller's open transaction (flushed, not committed).

    Returns the row, or None when a row with the same ``dedup_key`` already exists (whatever its
    status): the duplicate is dropped without error. ``payload`` must be JSON and must hold
    secret *references*, never resolved values. ``not_before`` delays the first attempt.
    """
    values: dict[str, Any] = {
        "kind": kind,
        "behavior_id": behavior_id,
        "dedup_key": dedup_key,
        "payload": payload,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": not_before or now,
        "created_at": now,
    }
    table = OutboxRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table classes
    if session.get_bind().dialect.name == "postgresql":
        pg_stmt = pg_dialect.insert(table).values(**values)
        stmt: Any = pg_stmt.on_conflict_do_nothing(index_elements=["dedup_key"])
    else:
        lite_stmt = sqlite_dialect.insert(table).values(**values)
        stmt = lite_stmt.on_conflict_do_nothing(index_elements=["dedup_key"])
    new_id = session.execute(stmt.returning(table.c.id)).scalar_one_or_none()
    if new_id is None:
        return None
    return session.get(OutboxRow, new_id)


# --------------------------------------------------------------------------------------------
# Alerts
# --------------------------------------------------------------------------------------------


def alert_dedup_key(
    channel: str, alert: Mapping[str, Any], now: datetime, window: timedelta
) -> str:
    """Same channel, behavior, event and reason in the same ``window``-long time bucket → the
    same key (buckets are aligned to the epoch, so two alerts either side of a boundary are
    both sent)."""
    bucket = int(now.timestamp() // max(window.total_seconds(), 1.0))
    identity = "\x1f".join(
        [channel, str(alert.get("behavior")), str(alert.get("event")), str(alert.get("reason"))]
    )
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
    event = str(alert.get("event"))[:40]
    return f"alert:{event}:{digest}:{bucket}"


def enqueue_alert(
    session: Session,
    alert: Mapping[str, Any],
    *,
    channels: Sequence[str],
    now: datetime,
    behavior_id: int | None = None,
    window: timedelta = DEFAULT_DEDUP_WINDOW,
) -> list[OutboxRow]:
    """Queue ``alert`` for each channel name, in the caller's open transaction. Returns the new
    rows; a channel that already has the same alert in this window gets none. Demotion alerts
    get the ``alert.demotion`` kind, which the dispatcher claims before anything else."""
    if not alert.get("event") or not alert.get("behavior"):
        raise ValueError("an alert needs an event and a behavior")
    body = {**alert, "at": alert.get("at") or now.isoformat()}
    kind = KIND_DEMOTION_ALERT if alert["event"] == "demotion" else KIND_ALERT
    rows: list[OutboxRow] = []
    for channel in channels:
        row = enqueue(
            session,
            kind=kind,
            payload={"channel": channel, "behavior": body["behavior"], "alert": body},
            now=now,
            behavior_id=behavior_id,
            dedup_key=alert_dedup_key(channel, body, now, window),
        )
        if row is not None:
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------


def enqueue_action(
    session: Session,
    *,
    action: str,
    behavior: str,
    run_id: str,
    tier: str,
    output: str,
    now: datetime,
    behavior_id: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> OutboxRow | None:
    """Queue ``action`` for a run's output in the caller's open transaction. One action of a
    kind per run: queuing it again is a no-op that returns None.

    ``options`` for ``webhook``: ``url`` (a secret reference, or a URL without credentials) and
    ``secret`` (a secret reference, required). Raises ``ValueError`` for an unknown action and
    ``SecretError`` when a secret is given as a value instead of a reference.
    """
    kind = ACTION_KINDS.get(action)
    if kind is None:
        raise ValueError(f"unknown action {action!r}: use one of {', '.join(ACTION_KINDS)}")
    payload: dict[str, Any] = {
        "behavior": behavior,
        "run_id": run_id,
        "tier": tier,
        "output": output,
        "payload_sha256": hashlib.sha256(output.encode("utf-8")).hexdigest(),
        "at": now.isoformat(),
    }
    opts = dict(options or {})
    if kind == KIND_WEBHOOK:
        url, secret = str(opts.pop("url", "")), str(opts.pop("secret", ""))
        if not url:
            raise ValueError(f"{behavior}: the webhook action needs a url")
        if not is_reference(secret):
            raise SecretError(
                f"{behavior}: the webhook action's secret must be a reference (env:NAME or "
                "file:PATH), never a value"
            )
        payload["url"], payload["secret"] = url, secret
    if opts:
        payload["options"] = opts
    return enqueue(
        session,
        kind=kind,
        payload=payload,
        now=now,
        behavior_id=behavior_id,
        dedup_key=f"{kind}:{run_id}",
    )


# --------------------------------------------------------------------------------------------
# The Notion mirror
# --------------------------------------------------------------------------------------------


def mirror_row_key(table: str, ident: object) -> str:
    """The stable Key of a mirrored Notion row: ``behavior:NAME``, ``entry:ID``,
    ``approval:RUN``."""
    return f"{table}:{ident}"


def enqueue_mirror(
    session: Session,
    *,
    key: str,
    now: datetime,
    behavior_id: int | None = None,
    dedup_key: str | None = None,
) -> OutboxRow | None:
    """Queue row-shaped mirror work in the caller's open transaction: "the Notion row ``key``
    must say what the database says now". The mirror renders the row when it delivers, so
    the newest state always wins, whatever order the work is delivered in."""
    return enqueue(
        session,
        kind=KIND_MIRROR,
        payload={"key": key},
        now=now,
        behavior_id=behavior_id,
        dedup_key=dedup_key,
    )
