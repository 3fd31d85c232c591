"""Promotion proposals answered by id (the API's ``/api/proposals/{id}/accept|decline``): the
proposal is looked up, checked to be pending, and handed to ``transitions`` as an operator's
promotion to the proposed tier or a decline. Runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from ledger.db.models import BehaviorRow, PromotionProposal
from ledger.errors import ConflictError, NotFoundError
from ledger.gates import Tier
from ledger.transitions import PolicyContext, decline_proposal, operator_action


def _pending(session: Session, proposal_id: int) -> tuple[PromotionProposal, BehaviorRow]:
    proposal = session.get(PromotionProposal, proposal_id)
    behavior = session.get(BehaviorRow, proposal.behavior_id) if proposal else None
    if proposal is None or behavior is None:
        raise NotFoundError(f"promotion proposal {proposal_id} does not exist")
    if proposal.status != "pending":
        raise ConflictError(
            f"promotion proposal {proposal_id} ({behavior.name} to "
            f"{Tier(proposal.to_tier).label}) is already {proposal.status}"
        )
    return proposal, behavior


def accept_proposal(
    session: Session,
    proposal_id: int,
    *,
    reason: str,
    actor: str,
    now: datetime,
    ctx: PolicyContext,
) -> str:
    """Promote the behavior to the proposed tier (a ledger entry with ``actor`` and
    ``reason``). Raises NotFoundError, ConflictError (decided already, or the behavior moved
    since: its tier is no longer the proposal's ``from`` tier)."""
    proposal, behavior = _pending(session, proposal_id)
    if behavior.tier != proposal.from_tier:
        raise ConflictError(
            f"{behavior.name} is at {Tier(behavior.tier).label} now, not "
            f"{Tier(proposal.from_tier).label} as when promotion {proposal_id} was proposed"
        )
    return operator_action(
        session,
        behavior.name,
        "promote",
        reason=reason,
        actor=actor,
        now=now,
        ctx=ctx,
        to=Tier(proposal.to_tier),
    )


def decline_proposal_by_id(
    session: Session, proposal_id: int, *, reason: str, actor: str, now: datetime
) -> str:
    """Decline the proposal: the behavior stays and must earn a fresh one. Raises
    NotFoundError, ConflictError."""
    _proposal, behavior = _pending(session, proposal_id)
    return decline_proposal(session, behavior.name, reason=reason, actor=actor, now=now)
