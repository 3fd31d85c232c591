"""What the dashboard's pages show, shaped for the templates: the tier board's columns and a
behavior's page (from the read model, ``ledger.board``), the approvals queue and the webhook
events. Read-only; the caller owns the session."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import func
from sqlmodel import Session, col, select

from ledger import board as read
from ledger.db.models import (
    Approval,
    BehaviorRow,
    GateResultRow,
    OutboxRow,
    Run,
    WebhookEvent,
)
from ledger.gates import Tier
from ledger.outbox.enqueue import ACTION_KINDS
from ledger.runs import approval_requests, gate_reason, run_json
from ledger.transitions import PolicyContext

COLUMN_LIMIT = 50  # cards per column and page (the read model's page size)
LEDGER_KINDS = (
    "approval_expired",
    "approvals_withdrawn",
    "approved",
    "definition_changed",
    "demoted",
    "paused",
    "pinned",
    "promoted",
    "promotion_proposed",
    "proposal_declined",
    "registered",
    "rejected",
    "restored",
    "resumed",
    "retired",
    "unpinned",
)


def badges(card: read.Card) -> list[str]:
    flags = card.flags
    return [
        name
        for name, on in (
            ("paused", flags.paused),
            ("pinned", flags.pinned),
            ("disabled", flags.disabled),
            ("invalid file", flags.invalid_file),
            ("missing key", flags.missing_key),
        )
        if on
    ]


@dataclass(frozen=True, slots=True)
class Column:
    tier: Tier
    count: int
    cards: list[read.Card]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class BoardPage:
    """The three columns (a page of cards each), the demotions of the last 24 h (and each
    demoted card's reason), and what the filter matched."""

    columns: list[Column]
    demotions: list[read.Demotion]
    demoted_reason: dict[str, str]  # a card still at the tier a recent demotion put it
    total: int
    query: str
    cursors: dict[str, str]
    pending_approvals: int

    @property
    def shown(self) -> int:
        return sum(len(c.cards) for c in self.columns)

    def search_text(self, card: read.Card) -> str:
        return " ".join((card.name, card.description, *badges(card))).lower()


def board(
    session: Session,
    now: datetime,
    ctx: PolicyContext,
    query: str = "",
    cursors: dict[str, str] | None = None,
) -> BoardPage:
    """A page of each tier's column (``cursors`` by tier letter pages one of them on)."""
    cursors = {k: v for k, v in (cursors or {}).items() if v}
    text = query.strip() or None
    pages = [
        read.board(
            session,
            now=now,
            tier=tier,
            text=text,
            cursor=cursors.get(tier.value),
            limit=COLUMN_LIMIT,
            ctx=ctx,
        )
        for tier in Tier
    ]
    first = pages[0]
    columns = [
        Column(
            tier,
            next(c.count for c in first.counts if c.tier == tier.value),
            p.cards,
            p.next_cursor,
        )
        for tier, p in zip(Tier, pages, strict=True)
    ]
    demoted: dict[str, str] = {}
    current = {card.name: card.tier for column in columns for card in column.cards}
    for d in first.demotions_24h:  # newest first: a card shows its latest demotion's reason
        name = d.behavior or ""
        if name not in demoted and current.get(name) == d.to_tier:
            demoted[name] = d.reason
    pending = session.execute(
        select(func.count()).where(col(Approval.status) == "pending")
    ).scalar_one()
    return BoardPage(
        columns=columns,
        demotions=first.demotions_24h,
        demoted_reason=demoted,
        total=first.total,
        query=query,
        cursors=cursors,
        pending_approvals=int(pending),
    )


# -- the behavior page --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BehaviorPage:
    detail: read.BehaviorDetail
    key_problem: str | None
    spend_points: list[tuple[datetime, float]]  # (day, spend that day)
    definition_yaml: str


def _set_fields(value: Any) -> Any:
    """The definition as its file would say it: fields left unset (None, empty) omitted."""
    if isinstance(value, dict):
        kept = {k: _set_fields(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_set_fields(v) for v in value]
    return value


def _yaml(definition: dict[str, Any]) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(_set_fields(definition), out)
    return out.getvalue()


def behavior_page(
    session: Session, name: str, now: datetime, ctx: PolicyContext, runs_cursor: str | None
) -> BehaviorPage:
    """Raises ``NotFoundError`` (no such behavior) and ``InvalidRequestError`` (bad cursor)."""
    detail = read.behavior_detail(
        session, name, now=now, runs_cursor=runs_cursor, runs_limit=25, ctx=ctx
    )
    behavior_id = session.execute(
        select(BehaviorRow.id).where(col(BehaviorRow.name) == name)
    ).scalar_one()
    since = (now - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = func.date(col(Run.claimed_at))
    spend_rows = session.execute(
        select(day, func.coalesce(func.sum(Run.cost_usd), 0.0))
        .where(col(Run.behavior_id) == behavior_id, col(Run.claimed_at) >= since)
        .group_by(day)
        .order_by(day)
    ).all()
    return BehaviorPage(
        detail=detail,
        key_problem=detail.card.key_problem,
        spend_points=[(_as_day(d), float(usd)) for d, usd in spend_rows],
        definition_yaml=_yaml(detail.definition),
    )


def _as_day(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return datetime(value.year, value.month, value.day)  # noqa: DTZ001 (a calendar day)


# -- approvals ----------------------------------------------------------------------------


def approvals(session: Session, limit: int = 100) -> dict[str, list[dict[str, Any]]]:
    """Pending requests with their run's gate results, and the recently closed ones."""
    pending = approval_requests(session, "pending", limit)
    run_ids = [a["run_id"] for a in pending]
    gates: dict[str, list[tuple[str, str, bool, str]]] = {}
    if run_ids:
        for r in session.exec(
            select(GateResultRow)
            .where(col(GateResultRow.run_id).in_(run_ids))
            .order_by(col(GateResultRow.id))
        ).all():
            gates.setdefault(r.run_id or "", []).append(
                (r.gate, r.outcome, r.attributable, gate_reason(r.outcome, r.evidence))
            )
    for a in pending:
        a["gates"] = gates.get(a["run_id"], [])
    closed = session.exec(
        select(Approval, BehaviorRow.name)
        .join(BehaviorRow, col(BehaviorRow.id) == col(Approval.behavior_id))
        .where(col(Approval.status) != "pending")
        .order_by(col(Approval.id).desc())
        .limit(30)
    ).all()
    actions: dict[str, OutboxRow] = {}
    keys = [f"{kind}:{a.run_id}" for a, _ in closed for kind in ACTION_KINDS.values()]
    if keys:
        for row in session.exec(select(OutboxRow).where(col(OutboxRow.dedup_key).in_(keys))):
            actions[(row.dedup_key or "").split(":", 1)[1]] = row
    return {
        "pending": pending,
        "closed": [
            {
                "run_id": a.run_id,
                "behavior": name,
                "status": a.status,
                "decided_at": a.decided_at,
                "decided_by": a.decided_by,
                "reason": a.reason,
                "expires_at": a.expires_at,
                "executed_at": a.executed_at,
                "action": _action_state(actions.get(a.run_id)),
            }
            for a, name in closed
        ],
    }


def _action_state(row: OutboxRow | None) -> str | None:
    """What became of an approved run's action: delivered, waiting (with the last error), dead."""
    if row is None:
        return None
    kind = row.kind.removeprefix("action.")
    if row.status == "delivered":
        at = row.delivered_at.strftime("%Y-%m-%d %H:%M:%S UTC") if row.delivered_at else ""
        return f"{kind} action executed {at}".strip()
    if row.status == "dead":
        return f"{kind} action failed for good: {row.last_error or 'no error recorded'}"
    waiting = f"{kind} action queued"
    if row.attempts:
        waiting += f" (attempt {row.attempts} failed: {row.last_error or 'unknown'})"
    return waiting


# -- ledger and events --------------------------------------------------------------------


def webhook_events(session: Session, behavior: str = "", limit: int = 50) -> list[Any]:
    query = select(WebhookEvent, BehaviorRow.name).join(
        BehaviorRow, col(BehaviorRow.id) == col(WebhookEvent.behavior_id), isouter=True
    )
    if behavior:
        query = query.where(col(BehaviorRow.name) == behavior)
    return list(session.exec(query.order_by(col(WebhookEvent.id).desc()).limit(limit)).all())


# -- a run --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunPage:
    """One run as ``GET /api/runs/{id}`` gives it (``run``), plus, for a roundtable, its rounds
    as a grid (one column per panel model, one row per round) with each model's deference, and
    for a broad canvas its answers as rows and the failures counted by reason."""

    run: dict[str, Any]
    summary: dict[str, Any]
    panel: list[str]  # a roundtable's panel models, in slot order
    rounds: list[tuple[int, list[dict[str, Any] | None]]]  # (round, the call of each panel model)
    synthesis_call: dict[str, Any] | None
    deference: dict[str, dict[str, Any]]  # panel model → {changed, shift}
    canvas: list[dict[str, Any]]  # a canvas's calls, by slot

    @property
    def kind(self) -> str:
        return str(self.run.get("kind") or "single")


def run_page(session: Session, run_id: str) -> RunPage:
    """Raises ``NotFoundError`` when there is no such run."""
    run = run_json(session, run_id)
    summary = run.get("summary") or {}
    calls: list[dict[str, Any]] = run["calls"]
    panel: list[str] = []
    rounds: list[tuple[int, list[dict[str, Any] | None]]] = []
    synthesis_call = None
    canvas: list[dict[str, Any]] = []
    if run.get("kind") == "roundtable":
        for call in sorted(calls, key=lambda c: (c["round"], c["slot"])):
            if call["role"] != "synthesis" and call["model"] not in panel:
                panel.append(call["model"])
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for call in calls:
            if call["role"] == "synthesis":
                synthesis_call = call
            else:
                by_round.setdefault(call["round"], {})[call["model"]] = call
        rounds = [(r, [by_round[r].get(model) for model in panel]) for r in sorted(by_round)]
    else:
        canvas = sorted(calls, key=lambda c: (c["round"], c["slot"]))
    deference = {
        str(m.get("model")): m for m in summary.get("deference") or [] if isinstance(m, dict)
    }
    return RunPage(run, summary, panel, rounds, synthesis_call, deference, canvas)
