"""The read model's JSON routes under ``/api``: the tier board, a behavior's runs, promotion
proposals (list, accept, decline) and unattributed broadcast deliveries. Each answers a typed
model of ``ledger.board``; pages carry an opaque ``next_cursor``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field

from ledger.board import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_ROW_ID,
    Board,
    ProposalView,
    RunPage,
    SpanPage,
    board,
    list_proposals,
    runs,
    unattributed_spans,
)
from ledger.daemon import build_policy_context
from ledger.gates import Tier
from ledger.proposals import accept_proposal, decline_proposal_by_id
from ledger.web.auth import OperatorDep, ViewerDep

router = APIRouter(prefix="/api", tags=["api"])

BehaviorName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The next_cursor of the previous page.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
StatusFilter = Literal[
    "active", "paused", "pinned", "disabled", "retired", "invalid_file", "missing_key"
]
ProposalId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
# Free text and names in queries: no control characters (PostgreSQL refuses NUL in text).
SearchText = Annotated[
    str | None,
    Query(
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="Part of a behavior's name or description, in any case.",
    ),
]
WORD = r"^[a-z0-9_-]+$"  # behavior names, gates, kinds, statuses


@dataclass(frozen=True, slots=True)
class BehaviorFilter:
    """The query parameters ``/api/behaviors`` and ``/api/board`` share: which behaviors
    (``tier``, ``status``, ``text``) and from which page on (``cursor``)."""

    tier: Tier | None
    status: StatusFilter | None
    text: str | None
    cursor: str | None


def behavior_filter(
    tier: Tier | None = None,
    status: StatusFilter | None = None,
    text: SearchText = None,
    cursor: Cursor = None,
) -> BehaviorFilter:
    return BehaviorFilter(tier=tier, status=status, text=text, cursor=cursor)


BehaviorFilterDep = Annotated[BehaviorFilter, Depends(behavior_filter)]


def word(max_length: int) -> Any:
    """A query parameter that is a name: lowercase letters, digits, ``-`` and ``_``."""
    return Query(max_length=max_length, pattern=WORD)


def _state(request: Request) -> Any:
    return request.app.state.ledger


def _now(request: Request) -> datetime:
    now: datetime = _state(request).clock.now()
    return now


@router.get("/board", response_model=Board)
def get_board(
    request: Request,
    _op: ViewerDep,
    where: BehaviorFilterDep,
    limit: Limit = DEFAULT_LIMIT,
) -> Response:
    """The tier board: a page of behavior cards (sorted by name; retired ones only under
    ``status=retired``) with last run, failures in the policy's window, spend against budget
    and structured promotion progress; the count per tier under the same filters; and the
    demotions of the last 24 hours."""
    ctx = build_policy_context(_state(request).settings)
    with _state(request).db.transaction() as session:
        page = board(
            session,
            now=_now(request),
            tier=where.tier,
            status=where.status,
            text=where.text,
            cursor=where.cursor,
            limit=limit,
            ctx=ctx,
        )
    return _json(page)


def _json(model: BaseModel) -> Response:
    """``model`` as JSON, without FastAPI validating it once more against the route's
    ``response_model`` (it is an instance of it: the model only documents the answer)."""
    return Response(model.model_dump_json(), media_type="application/json")


@router.get("/behaviors/{name}/runs", response_model=RunPage)
def list_runs(
    request: Request,
    name: BehaviorName,
    _op: ViewerDep,
    status: Annotated[str | None, word(16)] = None,
    gate: Annotated[str | None, word(32)] = None,
    outcome: Literal["pass", "warn", "fail"] | None = None,
    since: AwareDatetime | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response:
    """A behavior's runs, newest first, each with its gate results and their reasons.
    ``gate`` (and ``outcome``) keep runs with such a gate result; ``since`` runs claimed at or
    after an ISO 8601 time with its offset."""
    with _state(request).db.transaction() as session:
        page = runs(
            session,
            name,
            status=status,
            gate=gate,
            outcome=outcome,
            since=since,
            cursor=cursor,
            limit=limit,
        )
    return _json(page)


class ProposalList(BaseModel):
    proposals: list[ProposalView]


@router.get("/proposals", response_model=ProposalList)
def get_proposals(
    request: Request,
    _op: ViewerDep,
    status: Literal["pending", "accepted", "declined", "withdrawn"] = "pending",
    behavior: Annotated[str | None, word(63)] = None,
) -> ProposalList:
    """Promotion proposals of ``promotion: confirm`` behaviors (pending by default), newest
    first."""
    with _state(request).db.transaction() as session:
        return ProposalList(
            proposals=list_proposals(session, status=status, behavior=behavior),
        )


class ReasonBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why (recorded).")


class Message(BaseModel):
    message: str


@router.post("/proposals/{proposal_id}/accept", response_model=Message)
def accept(request: Request, proposal_id: ProposalId, body: ReasonBody, op: OperatorDep) -> Message:
    """Accept a pending proposal: the behavior is promoted to the proposed tier, recorded with
    the caller as the actor. 409 when it was decided already or the behavior moved since."""
    ctx = build_policy_context(_state(request).settings)
    with _state(request).db.transaction() as session:
        return Message(
            message=accept_proposal(
                session,
                proposal_id,
                reason=body.reason,
                actor=op.name,
                now=_now(request),
                ctx=ctx,
            )
        )


@router.post("/proposals/{proposal_id}/decline", response_model=Message)
def decline(
    request: Request, proposal_id: ProposalId, body: ReasonBody, op: OperatorDep
) -> Message:
    """Decline a pending proposal: the behavior stays and must earn a fresh one."""
    with _state(request).db.transaction() as session:
        return Message(
            message=decline_proposal_by_id(
                session, proposal_id, reason=body.reason, actor=op.name, now=_now(request)
            )
        )


@router.get("/broadcast/unattributed", response_model=SpanPage)
def get_unattributed(
    request: Request,
    _op: ViewerDep,
    attribution: Literal["unattributed", "no_generation", "invalid", "error"] | None = None,
    since: AwareDatetime | None = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Response:
    """Broadcast deliveries (spans) no behavior claimed, newest first: what ``ledger status``
    counts as unattributed, with the attributes they came with (masked as stored)."""
    with _state(request).db.transaction() as session:
        page = unattributed_spans(
            session, attribution=attribution, since=since, cursor=cursor, limit=limit
        )
    return _json(page)
