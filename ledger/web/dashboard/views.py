"""What the dashboard's pages show, read from the database in a few set-based queries: the tier
board's cards, a behavior's page, the approvals queue and the ledger log. Read-only; the
caller owns the session."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from ledger.db.models import (
    Approval,
    BehaviorRow,
    GateResultRow,
    IngestedSpan,
    LedgerEntry,
    OutboxRow,
    Run,
    WebhookEvent,
)
from ledger.errors import NotFoundError
from ledger.gates import Tier
from ledger.outbox.enqueue import ACTION_KINDS
from ledger.policy import PolicyWindow
from ledger.runs import approval_requests, gate_reason
from ledger.status import collect_status
from ledger.transitions import PolicyContext, thresholds_for

TIER_CHANGE_KINDS = ("promoted", "demoted", "registered", "restored")
DEMOTION_LOOKBACK = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Progress:
    """Toward the next tier: ``done`` of ``needed`` ``what`` (e.g. 7 of 10 clean runs)."""

    next_tier: str
    done: int
    needed: int
    what: str

    @property
    def text(self) -> str:
        return f"{min(self.done, self.needed)} of {self.needed} {self.what}"


@dataclass(frozen=True, slots=True)
class Card:
    name: str
    tier: str
    description: str
    last_run_status: str | None
    last_run_at: datetime | None
    failures: int
    spend_usd: float
    budget_usd: float | None
    progress: Progress | None
    badges: tuple[str, ...]
    pending_approvals: int
    demoted_reason: str | None = None  # the reason of a demotion in the last 24 h

    @property
    def search_text(self) -> str:
        return " ".join((self.name, self.description, *self.badges)).lower()


@dataclass(frozen=True, slots=True)
class Column:
    tier: Tier
    cards: list[Card]

    @property
    def count(self) -> int:
        return len(self.cards)


@dataclass(frozen=True, slots=True)
class Board:
    columns: list[Column]
    demotions: list[LedgerEntry]
    total: int
    shown: int
    query: str
    pending_approvals: int
    stamp: str = ""
    invalid_files: list[tuple[str, str]] = field(default_factory=list)


def progress_of(row: BehaviorRow, ctx: PolicyContext) -> Progress | None:
    """The counted part of the next promotion's requirements (the policy says the rest)."""
    tier = Tier(row.tier)
    if tier is Tier.C or row.max_tier <= row.tier:
        return None
    thresholds = thresholds_for(row, ctx)
    try:
        window = PolicyWindow.from_json(row.policy_window or {})
    except ValueError:
        return None
    if tier is Tier.A:
        return Progress("B", window.clean_runs, thresholds.promote_b_min_clean_runs, "clean runs")
    return Progress("C", window.approved, thresholds.promote_c_min_approved, "approved runs")


def board(session: Session, now: datetime, ctx: PolicyContext, query: str = "") -> Board:
    report = collect_status(session, now)
    rows = {
        r.name: r
        for r in session.exec(select(BehaviorRow).where(col(BehaviorRow.retired).is_(False))).all()
    }
    demotions = list(
        session.exec(
            select(LedgerEntry)
            .where(
                col(LedgerEntry.kind) == "demoted",
                col(LedgerEntry.created_at) >= now - DEMOTION_LOOKBACK,
            )
            .order_by(col(LedgerEntry.id).desc())
            .limit(50)
        ).all()
    )
    demoted: dict[str, str] = {}
    for entry in demotions:
        demoted.setdefault(entry.behavior_name or "", entry.reason)
    needle = query.strip().lower()
    columns = {tier: Column(tier, []) for tier in Tier}
    total = 0
    for status in report.behaviors:
        row = rows.get(status.name)
        if row is None:
            continue  # retired
        total += 1
        badges = [f for f in status.flags if f != "retired"]
        if status.key_problem:
            badges.append("missing key")
        card = Card(
            name=status.name,
            tier=status.tier.value,
            description=str((row.definition or {}).get("description") or ""),
            last_run_status=status.last_run_status,
            last_run_at=status.last_run_at,
            failures=status.recent_failures,
            spend_usd=status.spend_usd,
            budget_usd=status.budget_usd,
            progress=progress_of(row, ctx),
            badges=tuple(badges),
            pending_approvals=status.pending_approvals,
            demoted_reason=demoted.get(status.name),
        )
        if needle and needle not in card.search_text:
            continue
        columns[status.tier].cards.append(card)
    shown = sum(c.count for c in columns.values())
    return Board(
        columns=list(columns.values()),
        demotions=demotions,
        total=total,
        shown=shown,
        query=query,
        pending_approvals=report.pending_approvals,
        invalid_files=[(p.path, p.problems) for p in report.file_problems],
    )


# -- the behavior page --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunLine:
    id: str
    status: str
    tier: str
    trigger: str
    claimed_at: datetime
    cost_usd: float | None
    duration_seconds: float | None
    model: str | None
    disposition: str | None
    error: str | None
    gates: list[tuple[str, str, bool, str]]  # gate, outcome, attributable, reason


@dataclass(frozen=True, slots=True)
class BehaviorPage:
    row: BehaviorRow
    card: Card | None
    timeline: list[LedgerEntry]
    runs: list[RunLine]
    spend_points: list[tuple[datetime, float]]  # (day, cumulative-free daily spend)
    definition_yaml: str
    pending_proposal: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _yaml(definition: dict[str, Any]) -> str:
    import io

    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(definition, out)
    return out.getvalue()


def behavior_page(
    session: Session, name: str, now: datetime, ctx: PolicyContext, runs_limit: int = 50
) -> BehaviorPage:
    row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
    if row is None:
        raise NotFoundError(f"behavior {name!r} is not registered")
    behavior_id = row.id or 0
    timeline = list(
        session.exec(
            select(LedgerEntry)
            .where(
                col(LedgerEntry.behavior_id) == behavior_id,
                col(LedgerEntry.kind).in_(
                    (*TIER_CHANGE_KINDS, "paused", "resumed", "pinned", "unpinned")
                ),
            )
            .order_by(col(LedgerEntry.id).desc())
            .limit(100)
        ).all()
    )
    runs = session.exec(
        select(Run)
        .where(col(Run.behavior_id) == behavior_id)
        .order_by(col(Run.claimed_at).desc())
        .limit(runs_limit)
    ).all()
    gates: dict[str, list[tuple[str, str, bool, str]]] = {}
    if runs:
        for r in session.exec(
            select(GateResultRow)
            .where(col(GateResultRow.run_id).in_([run.id for run in runs]))
            .order_by(col(GateResultRow.id))
        ).all():
            gates.setdefault(r.run_id or "", []).append(
                (r.gate, r.outcome, r.attributable, gate_reason(r.outcome, r.evidence))
            )
    lines = [
        RunLine(
            id=run.id,
            status=run.status,
            tier=run.tier,
            trigger=run.trigger,
            claimed_at=run.claimed_at,
            cost_usd=run.cost_usd,
            duration_seconds=(
                (run.finished_at - run.started_at).total_seconds()
                if run.finished_at and run.started_at
                else None
            ),
            model=run.model,
            disposition=run.disposition,
            error=run.error,
            gates=gates.get(run.id, []),
        )
        for run in runs
    ]
    since = (now - timedelta(days=30)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = func.date(col(Run.claimed_at))
    spend_rows = session.execute(
        select(day, func.coalesce(func.sum(Run.cost_usd), 0.0))
        .where(col(Run.behavior_id) == behavior_id, col(Run.claimed_at) >= since)
        .group_by(day)
        .order_by(day)
    ).all()
    points = [(_as_day(d), float(usd)) for d, usd in spend_rows]
    board_card = next(
        (c for col_ in board_for(session, now, ctx, row).columns for c in col_.cards), None
    )
    return BehaviorPage(
        row=row,
        card=board_card,
        timeline=timeline,
        runs=lines,
        spend_points=points,
        definition_yaml=_yaml(row.definition or {}),
    )


def board_for(session: Session, now: datetime, ctx: PolicyContext, row: BehaviorRow) -> Board:
    """The board narrowed to one behavior (its card as the tier board shows it)."""
    full = board(session, now, ctx)
    return dataclasses.replace(
        full,
        columns=[Column(c.tier, [x for x in c.cards if x.name == row.name]) for c in full.columns],
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


@dataclass(frozen=True, slots=True)
class LogFilter:
    behavior: str = ""
    kind: str = ""
    before_id: int | None = None
    limit: int = 100


def ledger_log(session: Session, f: LogFilter) -> list[LedgerEntry]:
    query = select(LedgerEntry)
    if f.behavior:
        query = query.where(col(LedgerEntry.behavior_name) == f.behavior)
    if f.kind:
        query = query.where(col(LedgerEntry.kind) == f.kind)
    if f.before_id is not None:
        query = query.where(col(LedgerEntry.id) < f.before_id)
    return list(session.exec(query.order_by(col(LedgerEntry.id).desc()).limit(f.limit)).all())


def ledger_kinds(session: Session) -> list[str]:
    return sorted(session.exec(select(LedgerEntry.kind).distinct()).all())


def webhook_events(session: Session, behavior: str = "", limit: int = 50) -> list[Any]:
    query = select(WebhookEvent, BehaviorRow.name).join(
        BehaviorRow, col(BehaviorRow.id) == col(WebhookEvent.behavior_id), isouter=True
    )
    if behavior:
        query = query.where(col(BehaviorRow.name) == behavior)
    return list(session.exec(query.order_by(col(WebhookEvent.id).desc()).limit(limit)).all())


def unattributed_spans(session: Session, limit: int = 50) -> list[IngestedSpan]:
    return list(
        session.exec(
            select(IngestedSpan)
            .where(
                col(IngestedSpan.behavior_id).is_(None),
                or_(
                    col(IngestedSpan.attribution) == "unattributed",
                    col(IngestedSpan.attribution).is_(None),
                ),
            )
            .order_by(col(IngestedSpan.id).desc())
            .limit(limit)
        ).all()
    )
