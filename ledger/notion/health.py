"""How the Notion mirror is doing, and what to do about it: ``mirror_status`` gathers the facts
(its databases, the Notion work queued and dead, the last full sync and the last approvals
poll) and ``judge`` turns them into one word (``state``) and one line (``advice``). The CLI
(``ledger notion status``), ``GET /api/notion`` and the dashboard's indicator all show this one
document. Read-only; the caller owns the session.

The rules, first match wins (docs/notion.md, "Is it healthy?"):

- ``off``: no ``LEDGER_NOTION_TOKEN``; nothing is mirrored (Notion work waits in the outbox).
- ``not_set_up``: a token, but no ``ledger notion init`` yet.
- ``failing``: Notion work is dead (Notion refused it for good: a revoked token, a page no
  longer shared with the integration…); it stays so until the dead letters are retried or
  discarded.
- ``behind``: Notion work has waited more than ``QUEUE_LATE`` (10 minutes); or Notion has not
  been read for ``POLL_LATE`` (10 minutes) or four poll intervals, whichever is longer (counted
  from ``ledger notion init`` before the first read): the daemon is down or cannot reach
  Notion; or no full comparison for ``SYNC_LATE`` (24 hours; the daemon runs one every 6).
- ``ok``: none of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlmodel import Session, col

from ledger.clock import json_time
from ledger.config import Settings
from ledger.db.models import OUTBOX_OPEN, NotionWorkspace, OutboxRow
from ledger.notion.store import NOTION_KINDS, dead_notion_rows, load_workspace

__all__ = [
    "POLL_LATE",
    "QUEUE_LATE",
    "SYNC_LATE",
    "Judgement",
    "MirrorFacts",
    "MirrorState",
    "MirrorStatus",
    "judge",
    "mirror_status",
]

MirrorState = Literal["off", "not_set_up", "ok", "behind", "failing"]

QUEUE_LATE: Final = timedelta(minutes=10)
POLL_LATE: Final = timedelta(minutes=10)
POLL_LATE_INTERVALS: Final = 4
SYNC_LATE: Final = timedelta(hours=24)
TABLES: Final = ("behaviors", "ledger", "approvals")
_WAITING: Final = ("pending", "in_flight")


@dataclass(frozen=True, slots=True)
class MirrorFacts:
    """What ``judge`` needs: whether a token is set and ``ledger notion init`` was run (and
    when), the Notion work waiting (and since when) and dead (and the newest one's error),
    the last full sync and the last approvals poll."""

    token_set: bool
    configured: bool
    set_up_at: datetime | None
    queued: int
    oldest_queued_at: datetime | None
    dead: int
    newest_dead_error: str | None
    last_sync_at: datetime | None
    last_poll_at: datetime | None


@dataclass(frozen=True, slots=True)
class Judgement:
    state: MirrorState
    advice: str


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def judge(facts: MirrorFacts, now: datetime, poll_seconds: float) -> Judgement:
    """The mirror's state and what to do about it (module docstring: the rules). Pure."""
    if not facts.token_set:
        waiting = f" ({_plural(facts.queued, 'Notion write')} wait in the outbox)"
        return Judgement(
            "off",
            "Notion is off: set LEDGER_NOTION_TOKEN (a secret reference) and restart to "
            f"mirror to Notion{waiting if facts.queued else ''}.",
        )
    if not facts.configured:
        return Judgement(
            "not_set_up",
            "Run `ledger notion init --parent PAGE_ID` (a page shared with the integration).",
        )
    if facts.dead:
        error = (facts.newest_dead_error or "no message").splitlines()[0][:200]
        return Judgement(
            "failing",
            f"{_plural(facts.dead, 'Notion write')} failed for good (newest: {error}). Fix the "
            "cause (a revoked LEDGER_NOTION_TOKEN, a page no longer shared with the "
            "integration), then `ledger outbox list --status dead` and `ledger outbox retry ID`.",
        )
    if facts.oldest_queued_at is not None and now - _aware(facts.oldest_queued_at) > QUEUE_LATE:
        waited = _span(now - _aware(facts.oldest_queued_at))
        return Judgement(
            "behind",
            f"{_plural(facts.queued, 'Notion write')} waiting, the oldest for {waited}: check "
            "that `ledger serve` runs and reaches Notion (its log says why; they are retried).",
        )
    poll_late = max(POLL_LATE, timedelta(seconds=POLL_LATE_INTERVALS * poll_seconds))
    read_at = facts.last_poll_at or facts.set_up_at
    if read_at is not None and now - _aware(read_at) > poll_late:
        since = _span(now - _aware(read_at))
        return Judgement(
            "behind",
            f"Notion not read for {since} (the daemon reads it every {poll_seconds:g} s): check "
            "that `ledger serve` runs and reaches LEDGER_NOTION_BASE_URL (its log says why).",
        )
    synced_at = facts.last_sync_at or facts.set_up_at
    if synced_at is not None and now - _aware(synced_at) > SYNC_LATE:
        return Judgement(
            "behind",
            f"No full comparison with Notion for {_span(now - _aware(synced_at))}: run "
            "`ledger notion sync`.",
        )
    return Judgement("ok", "Nothing to do: Notion follows the ledger.")


def _aware(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    kind: str
    error: str | None


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    """The mirror's status document (``as_json`` is what the CLI and the API print)."""

    state: MirrorState
    advice: str
    checked_at: datetime
    token_set: bool
    base_url: str
    workspace: dict[str, Any] | None  # parent_page_id, databases, entry_cursor
    queued: int
    oldest_queued_at: datetime | None
    dead: int
    dead_letters: list[DeadLetter]
    last_sync_at: datetime | None
    last_poll_at: datetime | None

    @property
    def last_contact_at(self) -> datetime | None:
        """The last time the daemon read Notion successfully (a poll or a full sync)."""
        times = [_aware(t) for t in (self.last_poll_at, self.last_sync_at) if t is not None]
        return max(times) if times else None

    def as_json(self) -> dict[str, Any]:
        def at(value: datetime | None) -> str | None:
            return json_time(value) if value is not None else None

        ws = self.workspace
        return {
            "state": self.state,
            "advice": self.advice,
            "checked_at": json_time(self.checked_at),
            "configured": ws is not None,
            "token": "set" if self.token_set else "not set",
            "base_url": self.base_url,
            "databases": ws["databases"] if ws else None,
            "parent_page_id": ws["parent_page_id"] if ws else None,
            "queued": self.queued,
            "oldest_queued_at": at(self.oldest_queued_at),
            "dead": self.dead,
            "dead_letters": [
                {"id": d.id, "kind": d.kind, "error": d.error} for d in self.dead_letters
            ],
            "last_sync_at": at(self.last_sync_at),
            "last_poll_at": at(self.last_poll_at),
            "ledger_entries_fed": ws["entry_cursor"] if ws else 0,
        }


def _workspace_json(ws: NotionWorkspace) -> dict[str, Any]:
    return {
        "parent_page_id": ws.parent_page_id,
        "databases": {
            t: {
                "database_id": getattr(ws, f"{t}_database_id"),
                "data_source_id": getattr(ws, f"{t}_data_source_id"),
            }
            for t in TABLES
        },
        "entry_cursor": ws.entry_cursor,
    }


def mirror_status(session: Session, settings: Settings, now: datetime) -> MirrorStatus:
    """The mirror's status document as of ``now``, judged (``judge``). Reads the outbox's
    Notion rows that are not delivered (one query) and the workspace row."""
    ws = load_workspace(session)
    by_status: dict[str, tuple[int, datetime | None]] = {
        str(status): (int(n), oldest)
        for status, n, oldest in session.execute(
            sa.select(
                col(OutboxRow.status), sa.func.count(), sa.func.min(col(OutboxRow.created_at))
            )
            .where(col(OutboxRow.kind).in_(NOTION_KINDS), sa.text(OUTBOX_OPEN))
            .group_by(col(OutboxRow.status))
        ).all()
    }
    queued = sum(by_status.get(s, (0, None))[0] for s in _WAITING)
    oldest = [o for s in _WAITING if (o := by_status.get(s, (0, None))[1]) is not None]
    dead_count = by_status.get("dead", (0, None))[0]
    dead = dead_notion_rows(session) if dead_count else []
    facts = MirrorFacts(
        token_set=settings.notion_token is not None,
        configured=ws is not None,
        set_up_at=ws.created_at if ws else None,
        queued=queued,
        oldest_queued_at=min(_aware(o) for o in oldest) if oldest else None,
        dead=dead_count,
        newest_dead_error=dead[0].last_error if dead else None,
        last_sync_at=ws.last_sync_at if ws else None,
        last_poll_at=ws.last_poll_at if ws else None,
    )
    verdict = judge(facts, now, settings.notion_poll_seconds)
    return MirrorStatus(
        state=verdict.state,
        advice=verdict.advice,
        checked_at=now,
        token_set=facts.token_set,
        base_url=settings.notion_base_url,
        workspace=_workspace_json(ws) if ws else None,
        queued=queued,
        oldest_queued_at=facts.oldest_queued_at,
        dead=dead_count,
        dead_letters=[DeadLetter(r.id or 0, r.kind, r.last_error) for r in dead],
        last_sync_at=facts.last_sync_at,
        last_poll_at=facts.last_poll_at,
    )
