"""Apply what happened to a behavior: one transaction = gate results + ledger entries + tier
change + outbox rows.

Every function here expects the caller's open transaction (``with db.transaction() as s:``)
and only adds and flushes. The behavior's row is locked first (``SELECT … FOR UPDATE`` on
PostgreSQL; SQLite has one writer at a time), so concurrent results for one behavior — a run
and a broadcast event at the same moment, two replicas — are applied one after the other, each
against the window the previous one left.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from sqlalchemy import insert
from sqlmodel import Session, col, select

from ledger.clock import json_time, json_times
from ledger.db.models import (
    Approval,
    BehaviorRow,
    GateResultRow,
    LedgerEntry,
    OutboxRow,
    PromotionProposal,
    Run,
    Silence,
)
from ledger.errors import ConflictError, LedgerError, NotFoundError
from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.journal import append_entry
from ledger.outbox.enqueue import (
    DEAD,
    DEFAULT_DEDUP_WINDOW,
    DISCARDED,
    KIND_ALERT,
    KIND_DEMOTION_ALERT,
    PENDING,
    alerted_channels,
    enqueue_alert,
    enqueue_mirror,
    mirror_row_key,
)
from ledger.policy import (
    DEFAULT_THRESHOLDS,
    BehaviorState,
    Decision,
    Observation,
    PolicyWindow,
    Thresholds,
    after_decision,
    decide,
    observe,
)
from ledger.spend import format_usd

log = structlog.get_logger("ledger.transitions")

POLICY_ACTOR = "policy"
DEFAULT_ALERT_EVENTS = ("demotion", "pause", "auth_error")
DEFAULT_PROVIDER_ERROR_RUNS = 3
SPEND_ALERT_FRACTION = 0.8


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What applying a decision needs beyond the behavior: global threshold overrides
    (ledger.toml ``[policy]``) and whether the Notion mirror is configured."""

    global_overrides: Mapping[str, Any] = field(default_factory=dict)
    mirror: bool = False
    alert_channels: tuple[str, ...] = ()
    # The events each global channel asked for (``events = [...]``); absent: the behavior's.
    channel_events: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Repeats of a behavior's event within this window fold into one alert with a count.
    alert_window: timedelta = DEFAULT_DEDUP_WINDOW
    # This many runs in a row failing with provider_error is "persistent" (an alert).
    provider_error_runs: int = DEFAULT_PROVIDER_ERROR_RUNS


def thresholds_for(row: BehaviorRow, ctx: PolicyContext) -> Thresholds:
    """The behavior's thresholds: the defaults, ledger.toml's ``[policy]``, then its file's
    ``policy:``. Never raises: a stored combination that is not valid (a registered behavior
    whose file was valid with the ``[policy]`` of its day) keeps each override that is valid
    on its own, in that order, and logs once what it left out."""
    own = (row.definition or {}).get("policy") or {}
    if not isinstance(own, Mapping):
        own = {}
    overrides = {**ctx.global_overrides, **{k: v for k, v in own.items() if v is not None}}
    try:
        return DEFAULT_THRESHOLDS.with_overrides(overrides)
    except (ValueError, TypeError) as exc:
        thresholds = DEFAULT_THRESHOLDS
        skipped: list[str] = []
        for name, value in overrides.items():
            try:
                thresholds = thresholds.with_overrides({name: value})
            except (ValueError, TypeError):
                skipped.append(f"{name} = {value!r}")
        warning = (row.name, str(exc))
        if warning not in _THRESHOLD_WARNINGS:
            _THRESHOLD_WARNINGS.add(warning)
            log.warning(
                "behavior policy not valid with the configured [policy]; left out what does "
                "not fit",
                behavior=row.name,
                problem=str(exc),
                left_out=", ".join(skipped),
            )
        return thresholds


# (behavior, problem) pairs already logged by ``thresholds_for``: once each per process.
_THRESHOLD_WARNINGS: set[tuple[str, str]] = set()


def state_of(row: BehaviorRow) -> BehaviorState:
    return BehaviorState(
        name=row.name,
        tier=Tier(row.tier),
        max_tier=Tier(row.max_tier),
        pinned=row.pinned,
        paused=row.paused,
        promotion_mode=(row.definition or {}).get("promotion", "auto"),
    )


def window_of(row: BehaviorRow) -> PolicyWindow:
    return PolicyWindow.from_json(row.policy_window or {})


def behavior_entry(
    session: Session,
    row: BehaviorRow,
    *,
    kind: str,
    actor: str,
    reason: str,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> LedgerEntry:
    """The ledger entry about ``row`` (its id and name), appended to the chain in the caller's
    transaction: every entry about one behavior has this shape."""
    return append_entry(
        session,
        kind=kind,
        actor=actor,
        reason=reason,
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
        data=data,
    )


def lock_behavior(
    session: Session, *, name: str | None = None, id: int | None = None
) -> BehaviorRow:
    """The behavior's row, locked for the rest of the transaction. Raises NotFoundError."""
    query = select(BehaviorRow).with_for_update()
    query = (
        query.where(col(BehaviorRow.name) == name)
        if name is not None
        else query.where(col(BehaviorRow.id) == id)
    )
    row = session.exec(query).first()
    if row is None:
        raise NotFoundError(f"behavior {name or id!r} is not registered (see `ledger status`)")
    return row


def lock_behaviors(session: Session, ids: Sequence[int]) -> dict[int, BehaviorRow]:
    """Many behaviors' rows, locked in id order (the order claims and finishes take them, so
    two batches never deadlock), fresh from the database. Raises NotFoundError for an id that
    is not registered."""
    wanted = sorted(set(ids))
    rows = {
        row.id or 0: row
        for row in session.exec(
            select(BehaviorRow)
            .where(col(BehaviorRow.id).in_(wanted))
            .order_by(col(BehaviorRow.id))
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    for behavior_id in wanted:
        if behavior_id not in rows:
            raise NotFoundError(f"behavior {behavior_id!r} is not registered (see `ledger status`)")
    return rows


def record_results(
    session: Session,
    row: BehaviorRow,
    results: Sequence[GateResult],
    *,
    now: datetime,
    source: str,
    run_id: str | None = None,
) -> list[GateResult]:
    """Store gate results; return them carrying their database ids (the policy cites them)."""
    return record_result_sets(session, [(row.id or 0, run_id, results)], now=now, source=source)[0]


def record_result_sets(
    session: Session,
    sets: Sequence[tuple[int, str | None, Sequence[GateResult]]],
    *,
    now: datetime,
    source: str,
) -> list[list[GateResult]]:
    """Store the gate results of many ``(behavior id, run id, results)`` sets in one
    multi-row INSERT (a ``None`` run id keeps each result's own); return each set's results
    carrying their database ids, in order. Pending ORM changes are flushed first."""
    session.flush()
    params: list[dict[str, Any]] = [
        {
            "behavior_id": behavior_id,
            "run_id": run_id if run_id is not None else result.run_id,
            "gate": str(result.gate),
            "outcome": str(result.outcome),
            "attributable": result.attributable,
            "source": source,
            "evidence": json_times(dict(result.evidence)),  # times as the API writes them
            "created_at": now,
        }
        for behavior_id, run_id, results in sets
        for result in results
    ]
    ids: list[int] = []
    if params:
        table = GateResultRow.__table__  # type: ignore[attr-defined]  # SQLModel sets it
        stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        ids = list(session.execute(stmt, params).scalars())
    out: list[list[GateResult]] = []
    at = 0
    for _behavior_id, _run_id, results in sets:
        stored = []
        for result in results:
            rid = params[at]["run_id"]
            stored.append(replace(result, result_id=ids[at], run_id=rid, observed_at=now))
            at += 1
        out.append(stored)
    return out


@dataclass(frozen=True, slots=True)
class Applied:
    """What one observation did: the decision and the ledger entry ids it wrote."""

    decision: Decision
    entry_ids: tuple[int, ...] = ()


def apply_observation(
    session: Session,
    row: BehaviorRow,
    obs: Observation,
    *,
    now: datetime,
    ctx: PolicyContext,
    flush: bool = True,
) -> Applied:
    """Fold ``obs`` into the (locked) behavior's window, decide, and apply the decision.
    Expects ``row`` to come from ``lock_behavior`` in the same open transaction. With
    ``flush`` False the row's change waits for the caller's next flush (a batch flushes once)."""
    thresholds = thresholds_for(row, ctx)
    window = observe(window_of(row), obs, thresholds)
    decision = decide(state_of(row), window, now, thresholds)
    window = after_decision(window, decision, now)
    row.policy_window = window.to_json()
    entries = _apply_decision(session, row, decision, now=now, ctx=ctx, actor=POLICY_ACTOR)
    row.updated_at = now
    session.add(row)
    if flush:
        session.flush()
    return Applied(decision, entries)


def _apply_decision(
    session: Session,
    row: BehaviorRow,
    decision: Decision,
    *,
    now: datetime,
    ctx: PolicyContext,
    actor: str,
) -> tuple[int, ...]:
    entries: list[int] = []
    old = Tier(row.tier)
    # An alert's headline states the change ("demoted from B to A", "by cli:ann"); its reason
    # is what caused it, so the change is not said twice.
    cause = decision.cause or decision.reason
    by = {"operator": actor} if actor != POLICY_ACTOR else {}
    if decision.kind in ("promote", "demote") and decision.to != old:
        if decision.kind == "demote":
            _resolve_proposals(session, row, "withdrawn", actor, decision.reason[:200], now)
        recovered = _recovers(session, row, decision.to) if decision.kind == "promote" else None
        row.tier = decision.to.value
        kind = "promoted" if decision.kind == "promote" else "demoted"
        entry = behavior_entry(
            session,
            row,
            kind=kind,
            actor=actor,
            reason=decision.reason,
            now=now,
            data={
                "from": old.value,
                "to": decision.to.value,
                "evidence": list(decision.evidence),
                "override": decision.override,
            },
        )
        entries.append(entry.id or 0)
        event = "promotion" if decision.kind == "promote" else "demotion"
        _notify(
            session,
            row,
            event,
            cause,
            now,
            ctx,
            entry.id or 0,
            {
                "from": old.value,
                "to": decision.to.value,
                "evidence": list(decision.evidence),
                **by,
                **({"paused": True} if decision.pause and not row.paused else {}),
            },
        )
        if recovered is not None:
            _notify(
                session,
                row,
                "recovery",
                f"back at {decision.to.label} after its demotion from {recovered.label} ({cause})",
                now,
                ctx,
                entry.id or 0,
                {"from": old.value, "to": decision.to.value, **by},
            )
        if not takes_approvals(row):
            withdraw_approvals(
                session, row, actor=actor, why=f"{row.name} was {decision.reason}", now=now
            )
    if decision.pause and not row.paused:
        row.paused = True
        entry = behavior_entry(
            session,
            row,
            kind="paused",
            actor=actor,
            reason=decision.reason,
            now=now,
            data={"evidence": list(decision.evidence)},
        )
        entries.append(entry.id or 0)
        _notify(
            session,
            row,
            "pause",
            cause,
            now,
            ctx,
            entry.id or 0,
            {"evidence": list(decision.evidence), **by},
        )
        why = f"{row.name} was paused: {cause}"
        withdraw_approvals(session, row, actor=actor, why=why, now=now)
    if decision.kind == "propose":
        pending = session.exec(
            select(PromotionProposal).where(
                col(PromotionProposal.behavior_id) == row.id,
                col(PromotionProposal.status) == "pending",
            )
        ).first()
        if pending is None:
            proposal = PromotionProposal(
                behavior_id=row.id or 0,
                from_tier=old.value,
                to_tier=decision.to.value,
                reason=decision.reason,
                evidence={"ids": list(decision.evidence)},
                created_at=now,
            )
            session.add(proposal)
            session.flush()
            entry = behavior_entry(
                session,
                row,
                kind="promotion_proposed",
                actor=actor,
                reason=decision.reason,
                now=now,
                data={
                    "proposal_id": proposal.id,
                    "from": old.value,
                    "to": decision.to.value,
                    "evidence": list(decision.evidence),
                },
            )
            entries.append(entry.id or 0)
            _notify(
                session,
                row,
                "promotion_proposed",
                cause,
                now,
                ctx,
                entry.id or 0,
                {"proposal_id": proposal.id, "from": old.value, "to": decision.to.value},
            )
    return tuple(entries)


def alert_channels_for(row: BehaviorRow, ctx: PolicyContext, event: str | None = None) -> list[str]:
    """The channel names an alert about ``row`` goes to: the behavior file's own channels if it
    names any, else every globally configured channel — each only if it takes ``event`` (its
    own ``events``, else the behavior's ``alerts.on``, else demotion, pause and auth_error) —
    and the log, which hears every event some channel or the behavior asks for."""
    alerts = (row.definition or {}).get("alerts") or {}
    wanted = tuple(alerts.get("on") or DEFAULT_ALERT_EVENTS)
    own = alerts.get("channels") or []
    if own:
        routes = [
            (behavior_channel_name(row.name, i), tuple((c or {}).get("events") or wanted))
            for i, c in enumerate(own)
        ]
    else:
        routes = [(n, tuple(ctx.channel_events.get(n) or wanted)) for n in ctx.alert_channels]
    if event is None:
        return [n for n, _ in routes] or ["log"]
    names = [n for n, events in routes if event in events]
    if "log" not in names and (names or event in wanted):
        names.append("log")
    return names


def behavior_channel_name(behavior: str, index: int) -> str:
    return f"{behavior}#{index}"


def notify(
    session: Session,
    row: BehaviorRow,
    event: str,
    reason: str,
    now: datetime,
    ctx: PolicyContext,
    extra: Mapping[str, Any],
) -> None:
    """Outbox rows for what must follow this change: an alert to the channels that take this
    event (demotions, pauses and auth errors by default; see ``alert_channels_for``), and
    row-shaped mirror work for the behavior's Notion row when Notion is on."""
    alert = {
        "event": event,
        "behavior": row.name,
        "tier": row.tier,
        "reason": reason,
        "at": json_time(now),
        **extra,
    }
    channels = alert_channels_for(row, ctx, event)
    if event == "recovery":  # only the channels that heard the demotion hear the recovery
        heard = set(alerted_channels(session, row.name, "demotion"))
        channels = [c for c in channels if c in heard]
    if channels:
        enqueue_alert(
            session, alert, channels=channels, now=now, behavior_id=row.id, window=ctx.alert_window
        )
    if ctx.mirror:  # the behavior's Notion row (the mirror's feeder adds the ledger rows)
        enqueue_mirror(
            session,
            key=mirror_row_key("behavior", row.name),
            now=now,
            behavior_id=row.id,
            dedup_key=f"mirror:{row.name}:{event}:{alert.get('entry_id', now.isoformat())}",
        )


def _notify(
    session: Session,
    row: BehaviorRow,
    event: str,
    reason: str,
    now: datetime,
    ctx: PolicyContext,
    entry_id: int,
    extra: Mapping[str, Any],
) -> None:
    cited = cite_evidence(session, extra.get("evidence"))
    notify(session, row, event, reason, now, ctx, {"entry_id": entry_id, **extra, **cited})


def cite_evidence(session: Session, evidence: Any) -> dict[str, Any]:
    """A decision's evidence (the ids of the gate results it rests on) as an alert's reader
    finds it: ``{"cited": [{"gate", "outcome", "run"}, …]}`` in the ids' order, an id no
    longer stored left as it is; ``{}`` when there is no id to cite. The alert keeps the ids
    under ``evidence``."""
    ids = [i for i in evidence or () if isinstance(i, int) and not isinstance(i, bool)]
    if not ids:
        return {}
    found = {
        r.id: {"gate": r.gate, "outcome": r.outcome, **({"run": r.run_id} if r.run_id else {})}
        for r in session.exec(select(GateResultRow).where(col(GateResultRow.id).in_(ids)))
    }
    return {"cited": [found.get(i, i) for i in evidence]}


# -- operator actions ------------------------------------------------------------------------

OperatorVerb = Literal["promote", "demote", "pin", "unpin", "pause", "resume"]


def operator_action(
    session: Session,
    name: str,
    verb: OperatorVerb,
    *,
    reason: str,
    actor: str,
    now: datetime,
    ctx: PolicyContext,
    to: Tier | None = None,
) -> str:
    """An operator's action on a behavior, as a ledger entry with its reason and who did it.
    Returns a one-line description. Raises NotFoundError, ConflictError or LedgerError."""
    if not reason.strip():
        raise LedgerError("a reason is required for every operator action (--reason TEXT)")
    row = lock_behavior(session, name=name)
    if row.retired:
        raise ConflictError(f"behavior {name!r} is retired (its file was removed)")
    old = Tier(row.tier)
    if verb in ("promote", "demote"):
        return _operator_move(
            session, row, verb, reason=reason, actor=actor, now=now, ctx=ctx, to=to
        )
    flag, value = {
        "pin": ("pinned", True),
        "unpin": ("pinned", False),
        "pause": ("paused", True),
        "resume": ("paused", False),
    }[verb]
    kind = {"pin": "pinned", "unpin": "unpinned", "pause": "paused", "resume": "resumed"}[verb]
    if getattr(row, flag) == value:
        state = {
            "pin": "is already pinned",
            "unpin": "is not pinned",
            "pause": "is already paused",
            "resume": "is not paused",
        }[verb]
        raise ConflictError(f"behavior {name!r} {state}; nothing to do")
    setattr(row, flag, value)
    entry = behavior_entry(
        session,
        row,
        kind=kind,
        actor=actor,
        reason=reason,
        now=now,
        data={"tier": old.value, "operator": True},
    )
    if verb == "pause":
        _notify(
            session,
            row,
            "pause",
            reason,
            now,
            ctx,
            entry.id or 0,
            {"operator": actor},
        )
        why = f"{row.name} was paused by {actor}: {reason}"
        withdraw_approvals(session, row, actor=actor, why=why, now=now)
    row.updated_at = now
    session.add(row)
    session.flush()
    return f"{row.name} {kind} at {old.label} by {actor}: {reason}"


def _operator_move(
    session: Session,
    row: BehaviorRow,
    verb: Literal["promote", "demote"],
    *,
    reason: str,
    actor: str,
    now: datetime,
    ctx: PolicyContext,
    to: Tier | None,
) -> str:
    old = Tier(row.tier)
    if verb == "promote":
        target = to or (Tier.B if old is Tier.A else Tier.C)
        if target.rank <= old.rank:
            raise ConflictError(f"{row.name} is at {old.label}; cannot promote to {target.label}")
        if target.rank > Tier(row.max_tier).rank:
            raise ConflictError(
                f"{row.name} has max_tier {Tier(row.max_tier).label}; raise max_tier in its "
                "file first"
            )
        thresholds = thresholds_for(row, ctx)
        policy_says = decide(state_of(row), window_of(row), now, thresholds)
        proposed = session.exec(
            select(PromotionProposal).where(
                col(PromotionProposal.behavior_id) == row.id,
                col(PromotionProposal.status) == "pending",
                col(PromotionProposal.to_tier) == target.value,
            )
        ).first()
        earned = proposed is not None or (
            policy_says.kind in ("promote", "propose") and policy_says.to == target
        )
        override = not earned
        cause = reason
        if override:
            cause += " (override: the policy had not earned this promotion)"
        why = f"promoted from {old.label} to {target.label} by {actor}: {cause}"
        decision = Decision(
            "promote", target, False, why, policy_says.evidence, override, cause=cause
        )
        _resolve_proposals(session, row, "accepted", actor, reason, now)
    else:
        target = to or (Tier.B if old is Tier.C else Tier.A)
        if target.rank >= old.rank:
            raise ConflictError(f"{row.name} is at {old.label}; cannot demote to {target.label}")
        decision = Decision(
            "demote",
            target,
            False,
            f"demoted from {old.label} to {target.label} by {actor}: {reason}",
            (),
            True,
            cause=reason,
        )
    row.policy_window = after_decision(window_of(row), decision, now).to_json()
    _apply_decision(session, row, decision, now=now, ctx=ctx, actor=actor)
    row.updated_at = now
    session.add(row)
    session.flush()
    return decision.reason


def takes_approvals(row: BehaviorRow) -> bool:
    """Whether a tier-B approval request of ``row`` may still be decided: the behavior is at
    B · human-in-the-loop or above, and not paused."""
    return Tier(row.tier).rank >= Tier.B.rank and not row.paused


def withdraw_approvals(
    session: Session, row: BehaviorRow, *, actor: str, why: str, now: datetime
) -> list[str]:
    """Withdraw the (locked) behavior's pending approval requests, as a demotion below
    B · human-in-the-loop or a pause does: their actions never run, and approving one later
    is refused with ``why``. One ledger entry lists them. Returns their run ids."""
    pending = list(
        session.exec(
            select(Approval)
            .where(col(Approval.behavior_id) == row.id, col(Approval.status) == "pending")
            .order_by(col(Approval.id))
            .with_for_update()
        )
    )
    for approval in pending:
        approval.status = "withdrawn"
        approval.decided_at = now
        approval.decided_by = actor
        approval.reason = why[:4000]
        session.add(approval)
    if pending:
        run_ids = [a.run_id for a in pending]
        behavior_entry(
            session,
            row,
            kind="approvals_withdrawn",
            actor=actor,
            reason=f"{len(run_ids)} pending approval request(s) withdrawn, their actions will "
            f"not run: {why}",
            now=now,
            data={"run_ids": run_ids},
        )
    return [a.run_id for a in pending]


def _resolve_proposals(
    session: Session, row: BehaviorRow, status: str, actor: str, reason: str, now: datetime
) -> list[PromotionProposal]:
    pending = list(
        session.exec(
            select(PromotionProposal).where(
                col(PromotionProposal.behavior_id) == row.id,
                col(PromotionProposal.status) == "pending",
            )
        )
    )
    for proposal in pending:
        proposal.status = status
        proposal.decided_at = now
        proposal.decided_by = actor
        proposal.decision_reason = reason
        session.add(proposal)
    return pending


def decline_proposal(session: Session, name: str, *, reason: str, actor: str, now: datetime) -> str:
    """Decline a behavior's pending promotion proposal: it stays, and its clean window restarts
    (it must earn a fresh proposal)."""
    if not reason.strip():
        raise LedgerError("a reason is required to decline a proposal (--reason TEXT)")
    row = lock_behavior(session, name=name)
    declined = _resolve_proposals(session, row, "declined", actor, reason, now)
    if not declined:
        raise ConflictError(f"{name!r} has no pending promotion proposal")
    window = observe(window_of(row), Observation.definition_changed(now, "proposal declined"))
    row.policy_window = window.to_json()
    behavior_entry(
        session,
        row,
        kind="proposal_declined",
        actor=actor,
        reason=f"promotion to {Tier(declined[0].to_tier).label} declined by {actor}: {reason}; "
        "the promotion window restarts",
        now=now,
        data={"proposal_id": declined[0].id},
    )
    session.add(row)
    session.flush()
    return f"declined the promotion of {name} to {Tier(declined[0].to_tier).label}"


# -- runner events -----------------------------------------------------------------------------

RUNNER_ACTOR = "runner"


def pause_after_auth_error(
    session: Session,
    row: BehaviorRow,
    *,
    run_id: str,
    error: str,
    now: datetime,
    ctx: PolicyContext,
) -> None:
    """Pause the (locked) behavior because OpenRouter refused its key: configuration, not
    conduct, so no tier changes; a ledger entry and an ``auth_error`` alert say what to do."""
    row.paused = True
    behavior_entry(
        session,
        row,
        kind="paused",
        actor=RUNNER_ACTOR,
        reason=f"paused: OpenRouter refused the behavior's key ({error}); "
        "fix the key and `ledger resume`",
        now=now,
        data={"run_id": run_id},
    )
    notify(
        session,
        row,
        "auth_error",
        f"OpenRouter refused its key ({error}); fix the key and `ledger resume` it",
        now,
        ctx,
        {"run_id": run_id},
    )
    session.add(row)


def record_approved(
    session: Session,
    row: BehaviorRow,
    run_id: str,
    *,
    actor: str,
    reason: str,
    payload_sha256: str,
    now: datetime,
    ctx: PolicyContext,
) -> None:
    """An operator approved run ``run_id``'s request (the caller updated the request and
    queued its action): the ledger entry, and the approval folded into the policy window."""
    behavior_entry(
        session,
        row,
        kind="approved",
        actor=actor,
        reason=reason,
        now=now,
        data={"run_id": run_id, "payload_sha256": payload_sha256},
    )
    apply_observation(session, row, Observation.approval(now, run_id, "approved"), now=now, ctx=ctx)


def record_rejected(
    session: Session,
    row: BehaviorRow,
    run_id: str,
    *,
    actor: str,
    reason: str,
    now: datetime,
    ctx: PolicyContext,
) -> None:
    """An operator rejected run ``run_id``'s request: a ``human_rejected`` warn, the ledger
    entry, and the rejection folded into the policy window."""
    stored = record_results(
        session,
        row,
        [GateResult(Gate.HUMAN_REJECTED, Outcome.WARN, True, {"actor": actor, "reason": reason})],
        now=now,
        source="operator",
        run_id=run_id,
    )
    behavior_entry(
        session, row, kind="rejected", actor=actor, reason=reason, now=now, data={"run_id": run_id}
    )
    apply_observation(
        session,
        row,
        Observation.approval(
            now, run_id, "rejected", tuple(r.result_id for r in stored if r.result_id)
        ),
        now=now,
        ctx=ctx,
    )


def record_expired(
    session: Session, row: BehaviorRow, run_id: str, *, now: datetime, ctx: PolicyContext
) -> None:
    """Run ``run_id``'s request expired unanswered: neutral for the policy, but recorded."""
    behavior_entry(
        session,
        row,
        kind="approval_expired",
        actor=RUNNER_ACTOR,
        reason=f"approval request for run {run_id} expired unanswered "
        "(neutral: it neither helps nor hurts the behavior)",
        now=now,
        data={"run_id": run_id},
    )
    apply_observation(session, row, Observation.approval(now, run_id, "expired"), now=now, ctx=ctx)


# -- registry events ---------------------------------------------------------------------------

REGISTRY_ACTOR = "registry"


def record_registered(session: Session, row: BehaviorRow, *, path: Path, now: datetime) -> None:
    """A new file registered ``row`` (added and flushed by the caller) at its start tier."""
    tier = Tier(row.tier)
    behavior_entry(
        session,
        row,
        kind="registered",
        actor=REGISTRY_ACTOR,
        reason=f"registered from {path.name} at {tier.label}",
        now=now,
        data={"definition_hash": row.definition_hash, "tier": tier.value, "path": str(path)},
    )


def restore_behavior(session: Session, row: BehaviorRow, *, path: Path, now: datetime) -> None:
    """A retired behavior's file is back: restored at its old tier."""
    row.retired = False
    row.retired_at = None
    behavior_entry(
        session,
        row,
        kind="restored",
        actor=REGISTRY_ACTOR,
        reason=f"{path.name} is back: restored at its old tier {Tier(row.tier).label}",
        now=now,
        data={"path": str(path), "tier": row.tier},
    )


def record_definition_change(
    session: Session,
    row: BehaviorRow,
    *,
    path: Path,
    new_hash: str,
    new_preset: Any,
    now: datetime,
) -> None:
    """The behavior's file was edited (``row`` still holds the old definition): same tier,
    but the promotion window restarts — a new definition must earn its record again — and so
    do the recent costs the ``cost_anomaly`` gate judges against."""
    old_preset = (row.definition or {}).get("preset")
    behavior_entry(
        session,
        row,
        kind="definition_changed",
        actor=REGISTRY_ACTOR,
        reason=f"{path.name} was edited"
        + (f" (preset {old_preset} → {new_preset})" if old_preset != new_preset else "")
        + f"; tier {Tier(row.tier).label} kept, the promotion window and the cost_anomaly "
        "median restart",
        now=now,
        data={
            "old_hash": row.definition_hash,
            "new_hash": new_hash,
            "preset_changed": old_preset != new_preset,
        },
    )
    window = PolicyWindow.from_json(row.policy_window or {})
    row.policy_window = observe(
        window, Observation.definition_changed(now, "definition changed")
    ).to_json()
    # A new model or prompt may cost differently by design: the cost_anomaly median restarts.
    row.recent_costs = []


def cap_at_max_tier(
    session: Session, row: BehaviorRow, max_tier: Tier, *, path: Path, now: datetime
) -> None:
    """The file lowered ``max_tier`` below the behavior's tier: it moves down to the cap."""
    old = Tier(row.tier)
    row.tier = max_tier.value
    behavior_entry(
        session,
        row,
        kind="demoted",
        actor=REGISTRY_ACTOR,
        reason=f"max_tier lowered to {max_tier.label} in {path.name}: moved from "
        f"{old.label} to {max_tier.label}",
        now=now,
        data={"from": old.value, "to": max_tier.value, "cause": "max_tier"},
    )


def retire_behavior(session: Session, row: BehaviorRow, *, now: datetime) -> None:
    """The behavior's file was removed: retired at its tier, history kept."""
    row.retired = True
    row.retired_at = now
    row.updated_at = now
    session.add(row)
    behavior_entry(
        session,
        row,
        kind="retired",
        actor=REGISTRY_ACTOR,
        reason=f"{Path(row.source_path).name} was removed: retired at {Tier(row.tier).label}, "
        "history kept",
        now=now,
        data={"path": row.source_path, "tier": row.tier},
    )


# -- alerts: recovery, persistent provider errors, spend, dead letters ---------------------------


def _recovers(session: Session, row: BehaviorRow, to: Tier) -> Tier | None:
    """The tier ``row`` was last demoted from, if promoting it to ``to`` earns that tier back
    for the first time since (a recovery); else None."""
    last_demotion = session.exec(
        select(LedgerEntry)
        .where(col(LedgerEntry.behavior_id) == row.id, col(LedgerEntry.kind) == "demoted")
        .order_by(col(LedgerEntry.id).desc())
        .limit(1)
    ).first()
    if last_demotion is None:
        return None
    try:
        was = Tier(str((last_demotion.data or {}).get("from")))
    except ValueError:
        return None
    if to.rank < was.rank:
        return None
    since = session.exec(
        select(LedgerEntry.data).where(
            col(LedgerEntry.behavior_id) == row.id,
            col(LedgerEntry.kind) == "promoted",
            col(LedgerEntry.id) > (last_demotion.id or 0),
        )
    ).all()
    for data in since:
        if Tier(str((data or {}).get("to", "A"))).rank >= was.rank:
            return None  # it recovered already
    return was


def note_provider_errors(
    session: Session,
    row: BehaviorRow,
    *,
    run_id: str,
    results: Sequence[GateResult],
    now: datetime,
    ctx: PolicyContext,
) -> bool:
    """After run ``run_id`` of the (locked) behavior finished: when it is the
    ``ctx.provider_error_runs``-th run in a row that failed with ``provider_error``, a
    ``provider_error`` alert (persistent: not the behavior's fault, no tier change, but someone
    should look). One alert per streak. Returns whether it alerted."""
    if not any(r.gate is Gate.PROVIDER_ERROR for r in results):
        return False
    needed = max(1, ctx.provider_error_runs)
    recent = list(
        session.exec(
            select(Run.id)
            .where(col(Run.behavior_id) == row.id, col(Run.finished_at).is_not(None))
            .order_by(col(Run.finished_at).desc(), col(Run.id).desc())
            .limit(needed + 1)
        ).all()
    )
    if run_id not in recent:
        recent = [run_id, *recent][: needed + 1]
    failing = set(
        session.exec(
            select(GateResultRow.run_id).where(
                col(GateResultRow.behavior_id) == row.id,
                col(GateResultRow.gate) == str(Gate.PROVIDER_ERROR),
                col(GateResultRow.run_id).in_(recent),
            )
        ).all()
    )
    streak = 0
    for rid in recent:
        if rid not in failing:
            break
        streak += 1
    if streak != needed:
        return False
    errors = [r for r in results if r.gate is Gate.PROVIDER_ERROR]
    detail = str((errors[0].evidence or {}).get("reason") or errors[0].evidence or "")[:300]
    notify(
        session,
        row,
        "provider_error",
        f"{needed} runs in a row failed with provider errors (not its fault: no tier change)"
        + (f"; latest: {detail}" if detail else ""),
        now,
        ctx,
        {"run_id": run_id, "runs": recent[:needed]},
    )
    return True


def note_spend(
    session: Session,
    row: BehaviorRow,
    *,
    before: float,
    after: float,
    now: datetime,
    ctx: PolicyContext,
) -> bool:
    """The (locked) behavior's spend in its budget window went from ``before`` to ``after``
    dollars: a ``spend`` alert when that crossed 80 % of its budget (once per window: spend
    only grows inside one). Returns whether it alerted."""
    budget = (row.definition or {}).get("budget") or {}
    usd = budget.get("usd")
    if not usd:
        return False
    line = SPEND_ALERT_FRACTION * float(usd)
    if not before < line <= after:
        return False
    reset = budget.get("reset") or "month"
    notify(
        session,
        row,
        "spend",
        f"spent {format_usd(after)} of its {format_usd(float(usd))} {reset} budget "
        f"({after / float(usd):.0%}); runs are refused once it is used up",
        now,
        ctx,
        {"spent_usd": round(after, 6), "budget_usd": float(usd), "reset": reset},
    )
    return True


def note_dead_letter(
    session: Session,
    *,
    outbox_id: int,
    kind: str,
    behavior_id: int | None,
    payload: Mapping[str, Any],
    error: str,
    now: datetime,
    ctx: PolicyContext,
) -> bool:
    """Outbox row ``outbox_id`` went dead: a ``dead_letter`` alert to the channels that take it
    — never for an alert that is itself about a dead letter (no loops). Returns whether it
    alerted."""
    if kind in (KIND_ALERT, KIND_DEMOTION_ALERT):
        inner = payload.get("alert")
        if isinstance(inner, Mapping) and inner.get("event") == "dead_letter":
            return False
    reason = (
        f"outbox row {outbox_id} ({kind}) will not be retried: {error[:500]}; "
        f"`ledger outbox retry {outbox_id}` once the cause is fixed, or "
        f"`ledger outbox discard {outbox_id} --reason TEXT`"
    )
    row = session.get(BehaviorRow, behavior_id) if behavior_id is not None else None
    if row is not None:
        channels = alert_channels_for(row, ctx, "dead_letter")
    else:
        names = [n for n in ctx.alert_channels if "dead_letter" in ctx.channel_events.get(n, ())]
        channels = [*names, "log"] if names else []
    alert = {
        "event": "dead_letter",
        "behavior": row.name if row is not None else str(payload.get("behavior") or "outbox")[:63],
        "reason": reason,
        "at": json_time(now),
        "outbox_id": outbox_id,
        "kind": kind,
    }
    # Straight to the alert channels, never through ``notify``: a mirror row about a dead
    # mirror row could die in turn, and so on.
    if channels:
        enqueue_alert(
            session,
            alert,
            channels=channels,
            now=now,
            behavior_id=behavior_id if row is not None else None,
            window=ctx.alert_window,
        )
    return bool(channels)


# -- the outbox, by an operator ---------------------------------------------------------------


def _outbox_row(session: Session, row_id: int) -> OutboxRow:
    row = session.exec(
        select(OutboxRow).where(col(OutboxRow.id) == row_id).with_for_update()
    ).first()
    if row is None:
        raise NotFoundError(f"outbox row {row_id} does not exist (see `ledger outbox list`)")
    return row


def retry_outbox_row(session: Session, row_id: int, *, actor: str, now: datetime) -> OutboxRow:
    """Give a dead (or discarded) outbox row a fresh start: attempts reset, due now; a ledger
    entry records who. Raises NotFoundError, or ConflictError if the row is not dead."""
    row = _outbox_row(session, row_id)
    if row.status not in (DEAD, DISCARDED):
        raise ConflictError(
            f"outbox row {row_id} is {row.status}, not dead: nothing to retry"
            + (" (it is already waiting for delivery)" if row.status == PENDING else "")
        )
    was = row.status
    row.status, row.attempts, row.next_attempt_at = PENDING, 0, now
    row.discarded_at = None
    why = f"outbox row {row_id} ({row.kind}) queued again after being {was}"
    return _record_outbox_change(session, row, "outbox_retried", actor, why, was, now)


def discard_outbox_row(
    session: Session, row_id: int, *, actor: str, reason: str, now: datetime
) -> OutboxRow:
    """Give up on a dead or pending outbox row: it is kept as ``discarded`` with who and why,
    never delivered; a ledger entry records it. Raises NotFoundError, or ConflictError for a
    row delivered, in flight or already discarded."""
    if not reason.strip():
        raise LedgerError("a reason is required to discard an outbox row (--reason TEXT)")
    row = _outbox_row(session, row_id)
    if row.status not in (DEAD, PENDING):
        raise ConflictError(
            f"outbox row {row_id} is {row.status}: only dead or pending rows can be discarded"
        )
    was = row.status
    row.status = DISCARDED
    row.discarded_at = now  # retention counts a discarded row's age from here
    row.last_error = f"discarded by {actor}: {reason}"[:4000]
    why = f"outbox row {row_id} ({row.kind}, {was}) discarded: {reason}"
    return _record_outbox_change(session, row, "outbox_discarded", actor, why, was, now)


def _record_outbox_change(
    session: Session,
    row: OutboxRow,
    kind: str,
    actor: str,
    reason: str,
    was: str,
    now: datetime,
) -> OutboxRow:
    """Store an operator's change to an outbox row and its ledger entry."""
    session.add(row)
    behavior = session.get(BehaviorRow, row.behavior_id) if row.behavior_id is not None else None
    append_entry(
        session,
        kind=kind,
        actor=actor,
        reason=reason,
        now=now,
        behavior_id=row.behavior_id,
        behavior_name=behavior.name if behavior is not None else None,
        data={"outbox_id": row.id, "kind": row.kind, "was": was},
    )
    session.flush()
    return row


# -- silences ---------------------------------------------------------------------------------

SILENCE_ACTOR = "silence"
MAX_SILENCE = timedelta(days=90)
ALL_BEHAVIORS = "all behaviors"


def start_silence(
    session: Session,
    *,
    behavior: str | None,
    duration: timedelta,
    reason: str,
    actor: str,
    now: datetime,
) -> Silence:
    """Mute ``behavior``'s alerts (every behavior's when None) for ``duration``: gates, tiers
    and the ledger carry on; the alerts are counted, not sent. A ledger entry records it."""
    if not reason.strip():
        raise LedgerError("a reason is required for a silence (--reason TEXT)")
    if duration <= timedelta(0) or duration > MAX_SILENCE:
        raise LedgerError(
            f"a silence lasts more than 0 and at most {MAX_SILENCE.days} days (--for 2h)"
        )
    row = lock_behavior(session, name=behavior) if behavior is not None else None
    silence = Silence(
        behavior_id=row.id if row else None,
        behavior_name=row.name if row else None,
        reason=reason[:4000],
        created_by=actor[:200],
        starts_at=now,
        ends_at=now + duration,
        muted={},
    )
    session.add(silence)
    session.flush()
    append_entry(
        session,
        kind="silenced",
        actor=actor,
        reason=f"alerts of {row.name if row else ALL_BEHAVIORS} silenced until "
        f"{json_time(silence.ends_at)}: {reason}",
        now=now,
        behavior_id=silence.behavior_id,
        behavior_name=silence.behavior_name,
        data={"silence_id": silence.id, "ends_at": json_time(silence.ends_at)},
    )
    return silence


def muted_summary(muted: Mapping[str, Any]) -> str:
    """``3 demotion alerts, 1 pause alert`` (or ``nothing``)."""
    parts = [
        f"{n} {event.replace('_', ' ')} alert{'s' if int(n) != 1 else ''}"
        for event, n in sorted(muted.items())
        if int(n) > 0
    ]
    return ", ".join(parts) or "nothing"


def end_silence(
    session: Session,
    silence_id: int,
    *,
    actor: str,
    now: datetime,
    ctx: PolicyContext,
) -> Silence:
    """End a silence now (an operator) or at its end time (``actor`` ``silence``): a ledger
    entry summarises what it muted, and when it muted anything the channels that would have
    heard it get that summary. Raises NotFoundError, or ConflictError if it already ended."""
    silence = session.exec(
        select(Silence).where(col(Silence.id) == silence_id).with_for_update()
    ).first()
    if silence is None:
        raise NotFoundError(f"silence {silence_id} does not exist (see `ledger silence list`)")
    if silence.ended_at is not None:
        raise ConflictError(f"silence {silence_id} already ended at {silence.ended_at}")
    silence.ended_at = min(now, silence.ends_at)
    silence.ended_by = actor[:200]
    session.add(silence)
    summary = muted_summary(silence.muted or {})
    who = silence.behavior_name or ALL_BEHAVIORS
    how = "ended by " + actor if actor != SILENCE_ACTOR else "expired"
    append_entry(
        session,
        kind="silence_ended",
        actor=actor,
        reason=f"silence {silence_id} of {who} {how}; muted while it lasted: {summary}",
        now=now,
        behavior_id=silence.behavior_id,
        behavior_name=silence.behavior_name,
        data={"silence_id": silence_id, "muted": dict(silence.muted or {})},
    )
    muted_events = [e for e, n in (silence.muted or {}).items() if int(n) > 0]
    if muted_events:
        row = session.get(BehaviorRow, silence.behavior_id) if silence.behavior_id else None
        if row is not None:
            channels = list(
                dict.fromkeys(c for e in muted_events for c in alert_channels_for(row, ctx, e))
            )
        else:
            channels = [*ctx.alert_channels, "log"]
        alert = {
            "event": "silence_ended",
            "behavior": who,
            "reason": f"muted while it lasted ({silence.reason}): {summary}",
            "at": json_time(now),
            "silence_id": silence_id,
            "muted": dict(silence.muted or {}),
        }
        enqueue_alert(
            session,
            alert,
            channels=channels,
            now=now,
            behavior_id=silence.behavior_id,
            window=ctx.alert_window,
        )
    session.flush()
    return silence


def end_expired_silences(
    session: Session, now: datetime, ctx: PolicyContext, limit: int = 100
) -> list[int]:
    """End the silences whose time is up (with their summaries). Returns their ids."""
    due = session.exec(
        select(Silence.id)
        .where(col(Silence.ended_at).is_(None), col(Silence.ends_at) <= now)
        .order_by(col(Silence.ends_at))
        .limit(limit)
    ).all()
    ended = []
    for silence_id in due:
        if silence_id is not None:
            end_silence(session, silence_id, actor=SILENCE_ACTOR, now=now, ctx=ctx)
            ended.append(silence_id)
    return ended
