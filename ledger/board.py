"""The read model behind the tier board, a behavior's page and the JSON API's lists: set-based
queries (one per kind of fact for a whole page, never one per behavior), keyset pagination with
opaque cursors, and typed results (frozen pydantic models) that the API returns as they are and
the dashboard's templates read by attribute. Read-only: runs inside the caller's transaction.

Promotion progress comes from the policy itself (``policy.promotion_progress`` and
``policy.progress``), with the behavior's thresholds as ``transitions.thresholds_for`` builds
them, so the board never disagrees with ``ledger explain``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, and_, exists, func, literal, or_, tuple_
from sqlmodel import Session, col, select

from ledger.db.models import (
    Approval,
    BehaviorRow,
    BudgetWindow,
    GateResultRow,
    IngestedSpan,
    LedgerEntry,
    PromotionProposal,
    Run,
    UTCDateTime,
)
from ledger.errors import InvalidRequestError, NotFoundError
from ledger.explain import explain
from ledger.gates import TIER_MEANING, Tier
from ledger.policy import PromotionProgress, promotion_progress
from ledger.runs import gate_reason
from ledger.spend import DEFAULT_RESET, window_start
from ledger.transitions import PolicyContext, state_of, thresholds_for, window_of

__all__ = [
    "BEHAVIOR_STATUSES",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_ROW_ID",
    "BehaviorDetail",
    "Board",
    "Card",
    "Demotion",
    "EntryPage",
    "EntryView",
    "Flags",
    "Progress",
    "ProposalView",
    "RunPage",
    "RunView",
    "SpanPage",
    "SpanView",
    "Spend",
    "SpendWindow",
    "TierCount",
    "behavior_detail",
    "behavior_filters",
    "board",
    "decode_cursor",
    "encode_cursor",
    "ledger_entries",
    "list_proposals",
    "runs",
    "tier_counts",
    "unattributed_spans",
]

# The largest id a row can have on both databases (PostgreSQL's INTEGER): larger ids in a
# request match nothing, and are never sent to the database (which would refuse them).
MAX_ROW_ID: Final = 2**31 - 1
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
FAILURE_LOOKBACK: Final = timedelta(hours=24)
DEMOTION_LOOKBACK: Final = timedelta(hours=24)
MAX_DEMOTIONS: Final = 50
SPEND_WINDOWS: Final = 12

BehaviorStatus = Literal[
    "active", "paused", "pinned", "disabled", "retired", "invalid_file", "missing_key"
]
BEHAVIOR_STATUSES: Final[tuple[str, ...]] = (
    "active",
    "paused",
    "pinned",
    "disabled",
    "retired",
    "invalid_file",
    "missing_key",
)
TierLetter = Literal["A", "B", "C"]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


# --------------------------------------------------------------------------------------------
# Cursors: opaque to clients, a JSON list of the last row's sort key inside


def encode_cursor(*key: str | int) -> str:
    """An opaque cursor for a page that ends at the row with sort key ``key``."""
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str, shape: Sequence[type], what: str) -> list[Any]:
    """The sort key inside ``cursor``, checked against ``shape`` (str/int per position).
    Raises ``InvalidRequestError`` for anything this API did not give out for ``what``."""
    bad = InvalidRequestError(
        f"cursor {cursor[:40]!r} is not a {what} cursor: pass the next_cursor of a previous page"
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not isinstance(key, list) or len(key) != len(shape):
        raise bad
    for value, kind in zip(key, shape, strict=True):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise bad
        if isinstance(value, int) and not 0 <= value <= MAX_ROW_ID:
            raise bad
    return key


def _cursor_time(value: str, what: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"cursor is not a {what} cursor") from None
    if at.tzinfo is None:
        raise InvalidRequestError(f"cursor is not a {what} cursor")
    return at.astimezone(UTC)


# --------------------------------------------------------------------------------------------
# The views


class Flags(_View):
    paused: bool
    pinned: bool
    retired: bool
    disabled: bool
    invalid_file: bool
    missing_key: bool


class LastRun(_View):
    id: str | None
    at: datetime | None
    status: str | None


class Failures(_View):
    """Failures the policy counts: runs with an attributable warn / fail among the last
    ``window_runs`` judged runs (the warn window; ``warn_limit`` warned runs demote), and
    attributable non-pass gate results in the last 24 hours."""

    warned_runs: int
    failed_runs: int
    window_runs: int
    warn_window_runs: int
    warn_limit: int
    last_24h: int


class Spend(_View):
    """Spend in the current window: the budget's (``reset``), else the calendar month."""

    usd: float
    reserved_usd: float
    budget_usd: float | None
    reset: str
    window_start: datetime
    fraction: float | None  # usd / budget_usd, None without a budget


class ProposalView(_View):
    id: int
    behavior: str
    from_tier: TierLetter
    to_tier: TierLetter
    to_tier_label: str
    reason: str
    status: str
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: str | None = None


class Progress(_View):
    """Progress toward the next promotion, from the policy's own rules.

    Toward B: ``clean_runs`` of ``needed`` over ``days`` of ``days_needed``. Toward C:
    ``approved_runs`` of ``needed`` at ``approval_rate`` (``approval_rate_needed``), and
    ``days`` since the last attributable fail (``days_needed`` without one). ``summary`` is
    the short form a card shows ("7 of 10 clean runs")."""

    next_tier: TierLetter | None
    next_tier_label: str | None
    eligible: bool
    clean_runs: int | None
    approved_runs: int | None
    needed: int | None
    days: float | None
    days_needed: int | None
    approval_rate: float | None
    approval_rate_needed: float | None
    eligible_from: datetime | None
    blocked_by: list[str]
    mode: Literal["auto", "confirm"]
    summary: str
    pending_proposal: ProposalView | None = None


class Card(_View):
    name: str
    description: str
    tier: TierLetter
    tier_label: str
    tier_meaning: str
    max_tier: TierLetter
    status: BehaviorStatus
    flags: Flags
    problem: str | None
    key_problem: str | None
    last_run: LastRun
    failures: Failures
    spend: Spend
    progress: Progress
    pending_approvals: int


class TierCount(_View):
    tier: TierLetter
    tier_label: str
    tier_meaning: str
    count: int


class Demotion(_View):
    entry_id: int
    at: datetime
    behavior: str | None
    from_tier: TierLetter | None
    to_tier: TierLetter | None
    actor: str
    reason: str


class Board(_View):
    """One page of cards (sorted by name), the count of behaviors per tier under the same
    filters (tier aside), and the demotions of the last 24 hours (newest first)."""

    generated_at: datetime
    cards: list[Card]
    next_cursor: str | None
    counts: list[TierCount]
    total: int
    demotions_24h: list[Demotion]


class GateView(_View):
    id: int
    gate: str
    outcome: str
    attributable: bool
    reason: str
    source: str
    at: datetime


class RunView(_View):
    id: str
    behavior: str
    scheduled_for: datetime
    claimed_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None
    trigger: str
    status: str
    tier: TierLetter
    preset: str | None
    model: str | None
    cost_usd: float | None
    broadcast_cost_usd: float | None
    disposition: str | None
    error: str | None
    gate_results: list[GateView]


class RunPage(_View):
    runs: list[RunView]
    next_cursor: str | None


class HistoryStep(_View):
    entry_id: int
    at: datetime
    kind: str
    actor: str
    reason: str
    evidence_runs: list[str]


class SpendWindow(_View):
    window_start: datetime
    spent_usd: float
    reserved_usd: float


class BehaviorDetail(_View):
    """A behavior's page: its card, definition (secrets are references, never values), a page
    of runs with gate results, tier history with reasons and actors (oldest first, the last
    50), spend per window (newest first) and progress in words beside the card's data."""

    card: Card
    definition: dict[str, Any]
    source_path: str
    definition_hash: str
    runs: RunPage
    history: list[HistoryStep]
    spend_windows: list[SpendWindow]
    progress_text: list[str]
    pending_proposal_text: str | None


class EntryView(_View):
    id: int
    at: datetime
    behavior: str | None
    kind: str
    actor: str
    reason: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


class EntryPage(_View):
    entries: list[EntryView]
    next_cursor: str | None


class SpanView(_View):
    id: int
    trace_id: str
    span_id: str
    name: str
    received_at: datetime
    attribution: str | None
    cost_usd: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    data: dict[str, Any]


class SpanPage(_View):
    spans: list[SpanView]
    next_cursor: str | None


# --------------------------------------------------------------------------------------------
# The board


def _status_condition(status: str) -> ColumnElement[bool]:
    b = BehaviorRow
    live = col(b.retired).is_(False)
    conditions: dict[str, ColumnElement[bool]] = {
        "active": and_(live, col(b.paused).is_(False), col(b.enabled).is_(True)),
        "paused": and_(live, col(b.paused).is_(True)),
        "pinned": and_(live, col(b.pinned).is_(True)),
        "disabled": and_(live, col(b.enabled).is_(False)),
        "retired": col(b.retired).is_(True),
        "invalid_file": and_(live, col(b.problem).is_not(None)),
        "missing_key": and_(live, col(b.key_problem).is_not(None)),
    }
    if status not in conditions:
        raise InvalidRequestError(
            f"unknown status {status!r}; one of: {', '.join(BEHAVIOR_STATUSES)}"
        )
    return conditions[status]


def behavior_filters(
    *,
    tier: Tier | str | None = None,
    status: str | None = None,
    text: str | None = None,
    hide_retired: bool = True,
) -> list[ColumnElement[bool]]:
    """SQL conditions on ``behavior`` for the board's and the API's filters: ``status`` one of
    ``BEHAVIOR_STATUSES`` (without one, retired behaviors are left out if ``hide_retired``),
    ``text`` in the name or description (case-insensitive). Raises ``InvalidRequestError``."""
    where: list[ColumnElement[bool]] = []
    if status:
        where.append(_status_condition(status))
    elif hide_retired:
        where.append(col(BehaviorRow.retired).is_(False))
    if tier is not None:
        where.append(col(BehaviorRow.tier) == _tier(tier).value)
    if text:
        needle = text.lower()
        description = col(BehaviorRow.definition)["description"].as_string()
        where.append(
            or_(
                func.lower(col(BehaviorRow.name)).contains(needle, autoescape=True),
                func.lower(description).contains(needle, autoescape=True),
            )
        )
    return where


def _tier(tier: Tier | str) -> Tier:
    try:
        return Tier(tier)
    except ValueError:
        raise InvalidRequestError(f"unknown tier {tier!r}; one of: A, B, C") from None


def tier_counts(session: Session, where: Sequence[ColumnElement[bool]]) -> list[TierCount]:
    """Behaviors per tier matching ``where`` (every tier listed, zeros included)."""
    counts = dict(
        session.execute(
            select(col(BehaviorRow.tier), func.count())
            .where(*where)
            .group_by(col(BehaviorRow.tier))
        ).all()
    )
    return _counts(counts)


def _counts(counts: dict[str, int]) -> list[TierCount]:
    return [
        TierCount(
            tier=t.value,
            tier_label=t.label,
            tier_meaning=TIER_MEANING[t],
            count=int(counts.get(t.value, 0)),
        )
        for t in Tier
    ]


def board(
    session: Session,
    *,
    now: datetime,
    tier: Tier | str | None = None,
    status: str | None = None,
    text: str | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
    ctx: PolicyContext | None = None,
) -> Board:
    """A page of the tier board. ``tier`` keeps one column; ``status`` one of
    ``BEHAVIOR_STATUSES`` (retired behaviors only show under ``retired``); ``text`` matches
    name or description, case-insensitively; ``cursor`` is a previous page's ``next_cursor``.
    Raises ``InvalidRequestError`` for a bad filter or cursor."""
    ctx = ctx or PolicyContext()
    limit = max(1, min(limit, MAX_LIMIT))
    where = behavior_filters(status=status, text=text)
    after = decode_cursor(cursor, (str,), "board")[0] if cursor is not None else None
    query = select(BehaviorRow)
    if text:
        # Matching text reads every definition: once, for the counts and the page together.
        found = session.execute(select(col(BehaviorRow.name), col(BehaviorRow.tier)).where(*where))
        matches = sorted(found.all())
        counts = _counts({t: sum(1 for _, m in matches if m == t) for t in "ABC"})
        wanted = _tier(tier).value if tier is not None else None
        names = [
            n
            for n, t in matches
            if (wanted is None or t == wanted) and (after is None or n > after)
        ]
        query = query.where(col(BehaviorRow.name).in_(names[: limit + 1]))
    else:
        counts = tier_counts(session, where)
        query = query.where(*where, *behavior_filters(tier=tier, hide_retired=False))
        if after is not None:
            query = query.where(col(BehaviorRow.name) > after)
    rows = list(session.execute(query.order_by(col(BehaviorRow.name)).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    cards = _cards(session, rows, now, ctx)
    return Board(
        generated_at=now,
        cards=cards,
        next_cursor=encode_cursor(rows[-1].name) if more else None,
        counts=counts,
        total=sum(c.count for c in counts),
        demotions_24h=recent_demotions(session, now=now),
    )


def recent_demotions(session: Session, *, now: datetime) -> list[Demotion]:
    """Demotions (by the policy or an operator) in the last 24 hours, newest first."""
    entries = session.execute(
        select(LedgerEntry)
        .where(
            col(LedgerEntry.kind) == "demoted",
            col(LedgerEntry.created_at) >= now - DEMOTION_LOOKBACK,
        )
        .order_by(col(LedgerEntry.created_at).desc(), col(LedgerEntry.id).desc())
        .limit(MAX_DEMOTIONS)
    ).scalars()
    return [
        Demotion(
            entry_id=e.id or 0,
            at=e.created_at,
            behavior=e.behavior_name,
            from_tier=_letter((e.data or {}).get("from")),
            to_tier=_letter((e.data or {}).get("to")),
            actor=e.actor,
            reason=e.reason,
        )
        for e in entries
    ]


def _letter(value: object) -> TierLetter | None:
    return value if value in ("A", "B", "C") else None


def _cards(
    session: Session, rows: Sequence[BehaviorRow], now: datetime, ctx: PolicyContext
) -> list[Card]:
    """Cards for ``rows``: one query per fact for the whole page."""
    if not rows:
        return []
    ids = [row.id or 0 for row in rows]
    since = now - FAILURE_LOOKBACK
    failures = dict(
        session.execute(
            select(GateResultRow.behavior_id, func.count())
            .where(
                col(GateResultRow.behavior_id).in_(ids),
                col(GateResultRow.created_at) >= since,
                col(GateResultRow.attributable).is_(True),
                col(GateResultRow.outcome) != "pass",
            )
            .group_by(col(GateResultRow.behavior_id))
        ).all()
    )
    pending = dict(
        session.execute(
            select(Approval.behavior_id, func.count())
            .where(col(Approval.behavior_id).in_(ids), col(Approval.status) == "pending")
            .group_by(col(Approval.behavior_id))
        ).all()
    )
    names = {row.id: row.name for row in rows}
    proposals = {
        p.behavior_id: _proposal_view(p, names.get(p.behavior_id, ""))
        for p in session.execute(
            select(PromotionProposal).where(
                col(PromotionProposal.behavior_id).in_(ids),
                col(PromotionProposal.status) == "pending",
            )
        ).scalars()
    }
    starts = {row.id: window_start(_budget(row)[1], now) for row in rows}
    windows = {
        (w.behavior_id, w.window_start): w
        for w in session.execute(
            select(BudgetWindow).where(
                col(BudgetWindow.behavior_id).in_(ids),
                col(BudgetWindow.window_start).in_(sorted(set(starts.values()))),
            )
        ).scalars()
    }
    return [
        _card(
            row,
            now,
            ctx,
            failures_24h=int(failures.get(row.id, 0)),
            pending_approvals=int(pending.get(row.id, 0)),
            proposal=proposals.get(row.id or 0),
            window=windows.get((row.id or 0, starts[row.id])),
            start=starts[row.id],
        )
        for row in rows
    ]


def _budget(row: BehaviorRow) -> tuple[float | None, str | None]:
    budget = (row.definition or {}).get("budget") or None
    if not isinstance(budget, dict):
        return None, None
    usd = budget.get("usd")
    reset = budget.get("reset")
    return (
        float(usd) if isinstance(usd, int | float) else None,
        reset if reset in ("day", "week", "month", "never") else None,
    )


def _status(row: BehaviorRow) -> BehaviorStatus:
    if row.retired:
        return "retired"
    if not row.enabled:
        return "disabled"
    if row.paused:
        return "paused"
    return "active"


def _card(
    row: BehaviorRow,
    now: datetime,
    ctx: PolicyContext,
    *,
    failures_24h: int,
    pending_approvals: int,
    proposal: ProposalView | None,
    window: BudgetWindow | None,
    start: datetime,
) -> Card:
    tier = Tier(row.tier)
    try:
        thresholds = thresholds_for(row, ctx)
        policy_window = window_of(row)
        state = state_of(row)
    except ValueError:  # a stored window or threshold the policy cannot read
        thresholds, policy_window, state = None, None, None
    usd, reset = _budget(row)
    spent = window.spent_usd if window else 0.0
    if thresholds is not None and policy_window is not None and state is not None:
        recent = policy_window.recent_runs[-thresholds.warn_window_runs :]
        failures = Failures(
            warned_runs=sum(1 for v in recent if v.verdict == "warn"),
            failed_runs=sum(1 for v in recent if v.verdict == "fail"),
            window_runs=len(recent),
            warn_window_runs=thresholds.warn_window_runs,
            warn_limit=thresholds.warn_limit,
            last_24h=failures_24h,
        )
        progress = _progress(promotion_progress(state, policy_window, now, thresholds), proposal)
    else:
        failures = Failures(
            warned_runs=0,
            failed_runs=0,
            window_runs=0,
            warn_window_runs=0,
            warn_limit=0,
            last_24h=failures_24h,
        )
        progress = _unknown_progress(proposal)
    return Card(
        name=row.name,
        description=str((row.definition or {}).get("description") or ""),
        tier=tier.value,
        tier_label=tier.label,
        tier_meaning=tier.meaning,
        max_tier=Tier(row.max_tier).value,
        status=_status(row),
        flags=Flags(
            paused=row.paused,
            pinned=row.pinned,
            retired=row.retired,
            disabled=not row.enabled,
            invalid_file=row.problem is not None,
            missing_key=row.key_problem is not None and not row.retired,
        ),
        problem=row.problem,
        key_problem=None if row.retired else row.key_problem,
        last_run=LastRun(id=row.last_run_id, at=row.last_run_at, status=row.last_run_status),
        failures=failures,
        spend=Spend(
            usd=spent,
            reserved_usd=window.reserved_usd if window else 0.0,
            budget_usd=usd,
            reset=reset or DEFAULT_RESET,
            window_start=start,
            fraction=(spent / usd) if usd else None,
        ),
        progress=progress,
        pending_approvals=pending_approvals,
    )


def _progress(p: PromotionProgress, proposal: ProposalView | None) -> Progress:
    toward_b = p.next_tier is Tier.B
    toward_c = p.next_tier is Tier.C
    if p.next_tier is None:
        summary = "at the highest tier" if "highest_tier" in p.blocked_by else "at its max_tier"
    elif toward_b:
        summary = f"{p.count} of {p.needed} clean runs"
    else:
        summary = f"{p.count} of {p.needed} approved runs"
    if p.eligible:
        summary += " · eligible now"
    elif "cooldown" in p.blocked_by and p.eligible_from is not None:
        summary += f" · cooldown until {p.eligible_from:%Y-%m-%d %H:%M} UTC"
    return Progress(
        next_tier=p.next_tier.value if p.next_tier else None,
        next_tier_label=p.next_tier.label if p.next_tier else None,
        eligible=p.eligible,
        clean_runs=p.count if toward_b else None,
        approved_runs=p.count if toward_c else None,
        needed=p.needed if p.next_tier else None,
        days=p.days if p.next_tier else None,
        days_needed=p.days_needed if p.next_tier else None,
        approval_rate=p.approval_rate if toward_c else None,
        approval_rate_needed=p.approval_rate_needed if toward_c else None,
        eligible_from=p.eligible_from,
        blocked_by=list(p.blocked_by),
        mode=p.mode,
        summary=summary,
        pending_proposal=proposal,
    )


def _unknown_progress(proposal: ProposalView | None) -> Progress:
    return Progress(
        next_tier=None,
        next_tier_label=None,
        eligible=False,
        clean_runs=None,
        approved_runs=None,
        needed=None,
        days=None,
        days_needed=None,
        approval_rate=None,
        approval_rate_needed=None,
        eligible_from=None,
        blocked_by=["unreadable_policy_window"],
        mode="auto",
        summary="progress unknown: its stored policy window cannot be read",
        pending_proposal=proposal,
    )


def _proposal_view(p: PromotionProposal, behavior: str) -> ProposalView:
    to = Tier(p.to_tier)
    return ProposalView(
        id=p.id or 0,
        behavior=behavior,
        from_tier=Tier(p.from_tier).value,
        to_tier=to.value,
        to_tier_label=to.label,
        reason=p.reason,
        status=p.status,
        created_at=p.created_at,
        decided_at=p.decided_at,
        decided_by=p.decided_by,
        decision_reason=p.decision_reason,
    )


# --------------------------------------------------------------------------------------------
# A behavior's page


def _row(session: Session, name: str) -> BehaviorRow:
    row: BehaviorRow | None = session.execute(
        select(BehaviorRow).where(col(BehaviorRow.name) == name)
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"behavior {name!r} is not registered (see `ledger status`)")
    return row


def behavior_detail(
    session: Session,
    name: str,
    *,
    now: datetime,
    runs_cursor: str | None = None,
    runs_limit: int = 20,
    ctx: PolicyContext | None = None,
) -> BehaviorDetail:
    """Everything a behavior's page shows. Raises ``NotFoundError``, ``InvalidRequestError``."""
    ctx = ctx or PolicyContext()
    row = _row(session, name)
    (card,) = _cards(session, [row], now, ctx)
    page = _runs_page(session, row, cursor=runs_cursor, limit=runs_limit)
    explanation = explain(session, name, now, ctx)
    windows = session.execute(
        select(BudgetWindow)
        .where(col(BudgetWindow.behavior_id) == row.id)
        .order_by(col(BudgetWindow.window_start).desc())
        .limit(SPEND_WINDOWS)
    ).scalars()
    return BehaviorDetail(
        card=card,
        definition=row.definition or {},
        source_path=row.source_path,
        definition_hash=row.definition_hash,
        runs=page,
        history=[
            HistoryStep(
                entry_id=s.entry_id,
                at=s.at,
                kind=s.kind,
                actor=s.actor,
                reason=s.reason,
                evidence_runs=list(dict.fromkeys(c.run_id for c in s.evidence if c.run_id)),
            )
            for s in explanation.story
        ],
        spend_windows=[
            SpendWindow(
                window_start=w.window_start, spent_usd=w.spent_usd, reserved_usd=w.reserved_usd
            )
            for w in windows
        ],
        progress_text=explanation.next_steps.splitlines(),
        pending_proposal_text=explanation.pending_proposal,
    )


def runs(
    session: Session,
    name: str,
    *,
    status: str | None = None,
    gate: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> RunPage:
    """A behavior's runs, newest claimed first, each with its gate results. ``gate`` keeps
    runs with a result of that gate (``outcome`` narrows it to that outcome); ``since`` runs
    claimed at or after it. Raises ``NotFoundError``, ``InvalidRequestError``."""
    row = _row(session, name)
    return _runs_page(
        session,
        row,
        status=status,
        gate=gate,
        outcome=outcome,
        since=since,
        cursor=cursor,
        limit=limit,
    )


def _runs_page(
    session: Session,
    row: BehaviorRow,
    *,
    status: str | None = None,
    gate: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> RunPage:
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(Run).where(col(Run.behavior_id) == row.id)
    if status is not None:
        query = query.where(col(Run.status) == status)
    if since is not None:
        query = query.where(col(Run.claimed_at) >= since)
    if gate is not None or outcome is not None:
        has = [col(GateResultRow.run_id) == col(Run.id)]
        if gate is not None:
            has.append(col(GateResultRow.gate) == gate)
        if outcome is not None:
            has.append(col(GateResultRow.outcome) == outcome)
        query = query.where(exists().where(*has))
    if cursor is not None:
        at_text, run_id = decode_cursor(cursor, (str, str), "runs")
        at = _cursor_time(at_text, "runs")
        query = query.where(
            tuple_(col(Run.claimed_at), col(Run.id))
            < tuple_(literal(at, UTCDateTime()), literal(run_id))
        )
    found = list(
        session.execute(
            query.order_by(col(Run.claimed_at).desc(), col(Run.id).desc()).limit(limit + 1)
        ).scalars()
    )
    more = len(found) > limit
    found = found[:limit]
    results: dict[str, list[GateView]] = {}
    if found:
        for r in session.execute(
            select(GateResultRow)
            .where(col(GateResultRow.run_id).in_([run.id for run in found]))
            .order_by(col(GateResultRow.id))
        ).scalars():
            results.setdefault(r.run_id or "", []).append(
                GateView(
                    id=r.id or 0,
                    gate=r.gate,
                    outcome=r.outcome,
                    attributable=r.attributable,
                    reason=gate_reason(r.outcome, r.evidence),
                    source=r.source,
                    at=r.created_at,
                )
            )
    last = found[-1] if found else None
    return RunPage(
        runs=[_run_view(run, row.name, results.get(run.id, [])) for run in found],
        next_cursor=encode_cursor(last.claimed_at.isoformat(), last.id) if more and last else None,
    )


def _run_view(run: Run, behavior: str, gates: list[GateView]) -> RunView:
    return RunView(
        id=run.id,
        behavior=behavior,
        scheduled_for=run.scheduled_for,
        claimed_at=run.claimed_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_seconds=(
            (run.finished_at - run.started_at).total_seconds()
            if run.finished_at and run.started_at
            else None
        ),
        trigger=run.trigger,
        status=run.status,
        tier=Tier(run.tier).value,
        preset=run.preset,
        model=run.model,
        cost_usd=run.cost_usd,
        broadcast_cost_usd=run.broadcast_cost_usd,
        disposition=run.disposition,
        error=run.error,
        gate_results=gates,
    )


# --------------------------------------------------------------------------------------------
# The ledger, proposals, unattributed broadcast


def ledger_entries(
    session: Session,
    *,
    behavior: str | None = None,
    kinds: Iterable[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    after_id: int = 0,
    before_id: int | None = None,
    limit: int = 100,
) -> EntryPage:
    """Ledger entries oldest first after ``after_id``, or newest first before ``before_id``
    when it is given; ``next_cursor`` is the id to pass on (as ``after_id`` / ``before_id``)."""
    limit = max(1, min(limit, 1000))
    query = select(LedgerEntry)
    if behavior is not None:
        query = query.where(col(LedgerEntry.behavior_name) == behavior)
    wanted = sorted(set(kinds))
    if wanted:
        query = query.where(col(LedgerEntry.kind).in_(wanted))
    if since is not None:
        query = query.where(col(LedgerEntry.created_at) >= since)
    if until is not None:
        query = query.where(col(LedgerEntry.created_at) < until)
    if before_id is not None:
        if before_id <= MAX_ROW_ID:  # every id is below a larger one
            query = query.where(col(LedgerEntry.id) < before_id)
        query = query.order_by(col(LedgerEntry.id).desc())
    elif after_id >= MAX_ROW_ID:
        return EntryPage(entries=[], next_cursor=None)  # no id is larger
    else:
        query = query.where(col(LedgerEntry.id) > after_id).order_by(col(LedgerEntry.id))
    found = list(session.execute(query.limit(limit + 1)).scalars())
    more = len(found) > limit
    found = found[:limit]
    return EntryPage(
        entries=[
            EntryView(
                id=e.id or 0,
                at=e.created_at,
                behavior=e.behavior_name,
                kind=e.kind,
                actor=e.actor,
                reason=e.reason,
                data=e.data or {},
                prev_hash=e.prev_hash,
                hash=e.hash,
            )
            for e in found
        ],
        next_cursor=str(found[-1].id) if more and found else None,
    )


def list_proposals(
    session: Session, *, status: str | None = "pending", behavior: str | None = None
) -> list[ProposalView]:
    """Promotion proposals (pending by default), newest first."""
    query = select(PromotionProposal, BehaviorRow.name).join(
        BehaviorRow, col(BehaviorRow.id) == col(PromotionProposal.behavior_id)
    )
    if status is not None:
        query = query.where(col(PromotionProposal.status) == status)
    if behavior is not None:
        query = query.where(col(BehaviorRow.name) == behavior)
    rows = session.execute(query.order_by(col(PromotionProposal.id).desc()).limit(MAX_LIMIT))
    return [_proposal_view(p, name) for p, name in rows.all()]


def unattributed_spans(
    session: Session,
    *,
    attribution: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> SpanPage:
    """Broadcast spans no behavior claimed (``attribution``: ``unattributed``,
    ``no_generation``, ``invalid``, ``error``; all of them by default), newest first."""
    limit = max(1, min(limit, MAX_LIMIT))
    query = select(IngestedSpan).where(col(IngestedSpan.behavior_id).is_(None))
    if attribution is not None:
        query = query.where(col(IngestedSpan.attribution) == attribution)
    if since is not None:
        query = query.where(col(IngestedSpan.received_at) >= since)
    if cursor is not None:
        at_text, span_id = decode_cursor(cursor, (str, int), "unattributed deliveries")
        at = _cursor_time(at_text, "unattributed deliveries")
        query = query.where(
            tuple_(col(IngestedSpan.received_at), col(IngestedSpan.id))
            < tuple_(literal(at, UTCDateTime()), literal(span_id))
        )
    found = list(
        session.execute(
            query.order_by(col(IngestedSpan.received_at).desc(), col(IngestedSpan.id).desc()).limit(
                limit + 1
            )
        ).scalars()
    )
    more = len(found) > limit
    found = found[:limit]
    last = found[-1] if found else None
    return SpanPage(
        spans=[
            SpanView(
                id=s.id or 0,
                trace_id=s.trace_id,
                span_id=s.span_id,
                name=s.name,
                received_at=s.received_at,
                attribution=s.attribution,
                cost_usd=s.cost_usd,
                prompt_tokens=s.prompt_tokens,
                completion_tokens=s.completion_tokens,
                data=s.data or {},
            )
            for s in found
        ],
        next_cursor=(
            encode_cursor(last.received_at.isoformat(), last.id or 0) if more and last else None
        ),
    )
