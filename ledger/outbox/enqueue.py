"""The write side of the outbox: what must happen after a state change, added as rows in the
caller's transaction. The apply layer (``transitions``) and the services call this module and
nothing else of the outbox; the dispatcher and the channels that deliver the rows import it.

- ``enqueue`` adds a row (a duplicate ``dedup_key`` is a no-op);
- kinds: ``alert`` / ``alert.demotion`` (one row per channel; repeats of a behavior's event
  within a window fold into one follow-up row with a count; a silence mutes them),
  ``mirror`` (row-shaped Notion work: "bring the row with this Key up to date", see
  ``enqueue_mirror``), ``action.*`` (a behavior's action);
- ``enqueue_alert`` and ``enqueue_action`` build those rows' payloads and dedup keys.

Payloads are JSON and hold secret *references*, never resolved values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session, col, select

from ledger.clock import json_time, json_times
from ledger.db.models import AlertWindow, OutboxRow, Silence
from ledger.errors import SecretError
from ledger.secrets import is_reference

__all__ = [
    "ACTION_KINDS",
    "DEAD",
    "DEFAULT_DEDUP_WINDOW",
    "DELIVERED",
    "DISCARDED",
    "IN_FLIGHT",
    "KIND_ALERT",
    "KIND_DEMOTION_ALERT",
    "KIND_LOG",
    "KIND_MIRROR",
    "KIND_NOTION_APPEND",
    "KIND_NOTION_PAGE",
    "KIND_WEBHOOK",
    "PENDING",
    "STATUSES",
    "active_silences",
    "alert_dedup_key",
    "alerted_channels",
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
DISCARDED: Final = "discarded"
STATUSES: Final = (PENDING, IN_FLIGHT, DELIVERED, DEAD, DISCARDED)

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

DEFAULT_DEDUP_WINDOW: Final = timedelta(minutes=15)


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
    status): the duplicate is dropped without error. Retention prunes delivered and discarded
    rows, after which their key is free again: a key must name one occurrence (a run, a
    window's start, an entry id), never something that can happen again later. ``payload``
    must be JSON and must hold secret *references*, never resolved values. ``not_before``
    delays the first attempt.
    """
    values: dict[str, Any] = {
        "kind": kind,
        "behavior_id": behavior_id,
        "dedup_key": dedup_key,
        "payload": json_times(payload),  # times as the API writes them: "…Z"
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


def alert_dedup_key(channel: str, alert: Mapping[str, Any], started_at: datetime) -> str:
    """The key of the alert that opens a dedup window: channel, behavior, event and the
    window's start (never the reason or a run id, which differ between repeats)."""
    identity = "\x1f".join([channel, str(alert.get("behavior")), str(alert.get("event"))])
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
    event = str(alert.get("event"))[:40]
    return f"alert:{event}:{digest}:{int(started_at.timestamp() * 1000)}"


def active_silences(session: Session, behavior: str, now: datetime) -> list[Silence]:
    """The silences muting ``behavior`` at ``now`` (its own and those for all behaviors)."""
    stmt = select(Silence).where(
        col(Silence.ended_at).is_(None),
        col(Silence.starts_at) <= now,
        col(Silence.ends_at) > now,
        sa.or_(col(Silence.behavior_name).is_(None), col(Silence.behavior_name) == behavior),
    )
    return list(session.exec(stmt.order_by(col(Silence.id)).with_for_update()).all())


def _mute(session: Session, silences: Sequence[Silence], event: str) -> None:
    """Count an alert the silences held back (for the summary when they end)."""
    for silence in silences:
        muted = dict(silence.muted or {})
        muted[event] = int(muted.get(event, 0)) + 1
        silence.muted = muted  # a new dict: the JSON column sees the change
        session.add(silence)


def _window_row(session: Session, channel: str, behavior: str, event: str) -> AlertWindow:
    """The (channel, behavior, event) dedup row, created if missing, locked (PostgreSQL)."""

    def find() -> AlertWindow | None:
        stmt = select(AlertWindow).where(
            col(AlertWindow.channel) == channel,
            col(AlertWindow.behavior) == behavior,
            col(AlertWindow.event) == event,
        )
        return session.exec(stmt.with_for_update()).first()

    found = find()
    if found is not None:
        return found
    table = AlertWindow.__table__  # type: ignore[attr-defined]  # SQLModel sets it on tables
    epoch = datetime.fromtimestamp(0, UTC)
    values = {
        "channel": channel,
        "behavior": behavior,
        "event": event,
        "started_at": epoch,
        "ends_at": epoch,
        "count": 0,
    }
    keys = ["channel", "behavior", "event"]
    if session.get_bind().dialect.name == "postgresql":
        stmt: Any = (
            pg_dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
        )
    else:
        stmt = (
            sqlite_dialect.insert(table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=keys)
        )
    session.execute(stmt)
    created = find()
    assert created is not None  # noqa: S101 — inserted or found just now
    return created


def alerted_channels(session: Session, behavior: str, event: str) -> list[str]:
    """The channels that were sent ``event`` about ``behavior`` (at least once, ever)."""
    stmt = select(AlertWindow.channel).where(
        col(AlertWindow.behavior) == behavior,
        col(AlertWindow.event) == event,
        col(AlertWindow.count) > 0,
    )
    return sorted(session.exec(stmt).all())


def _fold(
    session: Session,
    *,
    channel: str,
    body: dict[str, Any],
    kind: str,
    now: datetime,
    window: timedelta,
    behavior_id: int | None,
) -> OutboxRow | None:
    state = _window_row(session, channel, str(body["behavior"]), str(body["event"]))
    if now >= state.ends_at:
        # A new window: this alert goes out at once; repeats until ``ends_at`` fold.
        state.started_at, state.ends_at = now, now + window
        state.count, state.followup_id = 1, None
        session.add(state)
        return enqueue(
            session,
            kind=kind,
            payload={"channel": channel, "behavior": body["behavior"], "alert": body},
            now=now,
            behavior_id=behavior_id,
            dedup_key=alert_dedup_key(channel, body, now),
        )
    state.count += 1
    session.add(state)
    payload = {
        "channel": channel,
        "behavior": body["behavior"],
        "alert": {
            **body,
            "count": state.count,
            "window_seconds": int(window.total_seconds()),
            "first_at": json_time(state.started_at),
        },
    }
    if state.followup_id is not None:
        updated = session.exec(
            update(OutboxRow)
            .where(col(OutboxRow.id) == state.followup_id, col(OutboxRow.status) == PENDING)
            .values(payload=payload)
        )
        if updated.rowcount == 1:
            return None
    row = enqueue(
        session,
        kind=kind,
        payload=payload,
        now=now,
        behavior_id=behavior_id,
        dedup_key=f"{alert_dedup_key(channel, body, state.started_at)}:+{state.count}",
        not_before=state.ends_at,
    )
    state.followup_id = None if row is None else row.id
    return row


def enqueue_alert(
    session: Session,
    alert: Mapping[str, Any],
    *,
    channels: Sequence[str],
    now: datetime,
    behavior_id: int | None = None,
    window: timedelta = DEFAULT_DEDUP_WINDOW,
) -> list[OutboxRow]:
    """Queue ``alert`` for each channel name, in the caller's open transaction, unless a
    silence mutes its behavior (then the silence counts it). Returns the new rows.

    Dedup: per (channel, behavior, event), the first alert is sent at once and opens a
    ``window``; repeats inside it fold into one follow-up row, due when the window ends, that
    carries the latest alert with ``count`` (all occurrences in the window) — so a flapping
    behavior yields at most two alerts per channel and window. Demotion alerts get the
    ``alert.demotion`` kind, which the dispatcher claims before anything else."""
    if not alert.get("event") or not alert.get("behavior"):
        raise ValueError("an alert needs an event and a behavior")
    body = json_times({**alert, "at": alert.get("at") or json_time(now)})
    silences = active_silences(session, str(body["behavior"]), now)
    if silences:
        _mute(session, silences, str(body["event"]))
        return []
    kind = KIND_DEMOTION_ALERT if alert["event"] == "demotion" else KIND_ALERT
    rows: list[OutboxRow] = []
    for channel in dict.fromkeys(channels):
        row = _fold(
            session,
            channel=channel,
            body=body,
            kind=kind,
            now=now,
            window=window,
            behavior_id=behavior_id,
        )
        if row is not None:
            rows.append(row)
    session.flush()
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
        "at": json_time(now),
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
