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
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlmodel import Session, col, select

from ledger.db.models import Approval, BehaviorRow, GateResultRow, PromotionProposal
from ledger.errors import ConflictError, LedgerError, NotFoundError
from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.journal import append_entry
from ledger.outbox.enqueue import enqueue_alert, enqueue_mirror, mirror_row_key
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

POLICY_ACTOR = "policy"
DEFAULT_ALERT_EVENTS = ("demotion", "pause", "auth_error")


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What applying a decision needs beyond the behavior: global threshold overrides
    (ledger.toml ``[policy]``) and whether the Notion mirror is configured."""

    global_overrides: Mapping[str, Any] = field(default_factory=dict)
    mirror: bool = False
    alert_channels: tuple[str, ...] = ()


def thresholds_for(row: BehaviorRow, ctx: PolicyContext) -> Thresholds:
    own = (row.definition or {}).get("policy") or {}
    overrides = {**ctx.global_overrides, **{k: v for k, v in own.items() if v is not None}}
    return DEFAULT_THRESHOLDS.with_overrides(overrides)


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
    rows = [
        GateResultRow(
            behavior_id=row.id or 0,
            run_id=run_id if run_id is not None else result.run_id,
            gate=str(result.gate),
            outcome=str(result.outcome),
            attributable=result.attributable,
            source=source,
            evidence=dict(result.evidence),
            created_at=now,
        )
        for result in results
    ]
    session.add_all(rows)
    session.flush()
    return [
        replace(result, result_id=db_row.id, run_id=db_row.run_id, observed_at=now)
        for db_row, result in zip(rows, results, strict=True)
    ]


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
) -> Applied:
    """Fold ``obs`` into the (locked) behavior's window, decide, and apply the decision.
    Expects ``row`` to come from ``lock_behavior`` in the same open transaction."""
    thresholds = thresholds_for(row, ctx)
    window = observe(window_of(row), obs, thresholds)
    decision = decide(state_of(row), window, now, thresholds)
    window = after_decision(window, decision, now)
    row.policy_window = window.to_json()
    entries = _apply_decision(session, row, decision, now=now, ctx=ctx, actor=POLICY_ACTOR)
    row.updated_at = now
    session.add(row)
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
        row.tier = decision.to.value
        kind = "promoted" if decision.kind == "promote" else "demoted"
        entry = append_entry(
            session,
            kind=kind,
            actor=actor,
            reason=decision.reason,
            now=now,
            behavior_id=row.id,
            behavior_name=row.name,
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
        if not takes_approvals(row):
            withdraw_approvals(
                session, row, actor=actor, why=f"{row.name} was {decision.reason}", now=now
            )
    if decision.pause and not row.paused:
        row.paused = True
        entry = append_entry(
            session,
            kind="paused",
            actor=actor,
            reason=decision.reason,
            now=now,
            behavior_id=row.id,
            behavior_name=row.name,
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
            entry = append_entry(
                session,
                kind="promotion_proposed",
                actor=actor,
                reason=decision.reason,
                now=now,
                behavior_id=row.id,
                behavior_name=row.name,
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


def alert_channels_for(row: BehaviorRow, ctx: PolicyContext) -> list[str]:
    """The channel names an alert about ``row`` goes to: the behavior file's own channels if it
    names any, else every globally configured channel, else the log."""
    own = ((row.definition or {}).get("alerts") or {}).get("channels") or []
    if own:
        return [behavior_channel_name(row.name, i) for i in range(len(own))]
    return list(ctx.alert_channels) or ["log"]


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
    """Outbox rows for what must follow this change: an alert when the behavior's file asks
    for this event (demotions, pauses and auth errors by default), and row-shaped mirror work
    for the behavior's Notion row when Notion is on."""
    alerts = (row.definition or {}).get("alerts") or {}
    wanted = alerts.get("on") or list(DEFAULT_ALERT_EVENTS)
    alert = {
        "event": event,
        "behavior": row.name,
        "tier": row.tier,
        "reason": reason,
        "at": now.isoformat(),
        **extra,
    }
    if event in wanted or event == "promotion_proposed":
        enqueue_alert(
            session, alert, channels=alert_channels_for(row, ctx), now=now, behavior_id=row.id
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
    notify(session, row, event, reason, now, ctx, {"entry_id": entry_id, **extra})


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
    entry = append_entry(
        session,
        kind=kind,
        actor=actor,
        reason=reason,
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
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
        append_entry(
            session,
            kind="approvals_withdrawn",
            actor=actor,
            reason=f"{len(run_ids)} pending approval request(s) withdrawn, their actions will "
            f"not run: {why}",
            now=now,
            behavior_id=row.id,
            behavior_name=row.name,
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
    append_entry(
        session,
        kind="proposal_declined",
        actor=actor,
        reason=f"promotion to {Tier(declined[0].to_tier).label} declined by {actor}: {reason}; "
        "the promotion window restarts",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
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
    append_entry(
        session,
        kind="paused",
        actor=RUNNER_ACTOR,
        reason=f"paused: OpenRouter refused the behavior's key ({error}); "
        "fix the key and `ledger resume`",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
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
    append_entry(
        session,
        kind="approved",
        actor=actor,
        reason=reason,
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
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
    append_entry(
        session,
        kind="rejected",
        actor=actor,
        reason=reason,
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
        data={"run_id": run_id},
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
    append_entry(
        session,
        kind="approval_expired",
        actor=RUNNER_ACTOR,
        reason=f"approval request for run {run_id} expired unanswered "
        "(neutral: it neither helps nor hurts the behavior)",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
        data={"run_id": run_id},
    )
    apply_observation(session, row, Observation.approval(now, run_id, "expired"), now=now, ctx=ctx)


# -- registry events ---------------------------------------------------------------------------

REGISTRY_ACTOR = "registry"


def record_registered(session: Session, row: BehaviorRow, *, path: Path, now: datetime) -> None:
    """A new file registered ``row`` (added and flushed by the caller) at its start tier."""
    tier = Tier(row.tier)
    append_entry(
        session,
        kind="registered",
        actor=REGISTRY_ACTOR,
        reason=f"registered from {path.name} at {tier.label}",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
        data={"definition_hash": row.definition_hash, "tier": tier.value, "path": str(path)},
    )


def restore_behavior(session: Session, row: BehaviorRow, *, path: Path, now: datetime) -> None:
    """A retired behavior's file is back: restored at its old tier."""
    row.retired = False
    row.retired_at = None
    append_entry(
        session,
        kind="restored",
        actor=REGISTRY_ACTOR,
        reason=f"{path.name} is back: restored at its old tier {Tier(row.tier).label}",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
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
    but the promotion window restarts — a new definition must earn its record again."""
    old_preset = (row.definition or {}).get("preset")
    append_entry(
        session,
        kind="definition_changed",
        actor=REGISTRY_ACTOR,
        reason=(
            f"{path.name} was edited"
            + (f" (preset {old_preset} → {new_preset})" if old_preset != new_preset else "")
            + f"; tier {Tier(row.tier).label} kept, the promotion window restarts"
        ),
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
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


def cap_at_max_tier(
    session: Session, row: BehaviorRow, max_tier: Tier, *, path: Path, now: datetime
) -> None:
    """The file lowered ``max_tier`` below the behavior's tier: it moves down to the cap."""
    old = Tier(row.tier)
    row.tier = max_tier.value
    append_entry(
        session,
        kind="demoted",
        actor=REGISTRY_ACTOR,
        reason=f"max_tier lowered to {max_tier.label} in {path.name}: moved from "
        f"{old.label} to {max_tier.label}",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
        data={"from": old.value, "to": max_tier.value, "cause": "max_tier"},
    )


def retire_behavior(session: Session, row: BehaviorRow, *, now: datetime) -> None:
    """The behavior's file was removed: retired at its tier, history kept."""
    row.retired = True
    row.retired_at = now
    row.updated_at = now
    session.add(row)
    append_entry(
        session,
        kind="retired",
        actor=REGISTRY_ACTOR,
        reason=f"{Path(row.source_path).name} was removed: retired at {Tier(row.tier).label}, "
        "history kept",
        now=now,
        behavior_id=row.id,
        behavior_name=row.name,
        data={"path": row.source_path, "tier": row.tier},
    )
