"""The JSON API for the outbox and alert silences: ``/api/outbox`` (list, retry, discard) and
``/api/silences`` (list, start, end). Reads need a viewer, actions an operator; the token's
name is recorded as the actor."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import AliasChoices, BaseModel, Field

from ledger.daemon import build_policy_context
from ledger.errors import LedgerError
from ledger.outbox.manage import (
    discard,
    list_outbox,
    list_silences,
    parse_duration,
    retry,
    silence,
    unsilence,
)
from ledger.transitions import muted_summary
from ledger.web.auth import OperatorDep, ViewerDep

router = APIRouter(prefix="/api", tags=["alerts"])

RowId = Annotated[int, Path(ge=1, le=2**62)]


def _state(request: Request) -> Any:
    return request.app.state.ledger


def _now(request: Request) -> datetime:
    now: datetime = _state(request).clock.now()
    return now


def _wake(request: Request) -> None:
    services = getattr(_state(request), "services", None)
    if services is not None:
        services.dispatcher.wake()


@router.get("/outbox")
def get_outbox(
    request: Request,
    _op: ViewerDep,
    status: Annotated[
        str | None, Query(pattern="^(pending|in_flight|delivered|dead|discarded)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Outbox rows, newest first (``status`` filters): kind, behavior, a summary, attempts,
    the next attempt and the last error. Payloads are not shown."""
    with _state(request).db.transaction() as session:
        return {"rows": [r.as_json() for r in list_outbox(session, status=status, limit=limit)]}


@router.post("/outbox/{row_id}/retry")
def retry_outbox(request: Request, row_id: RowId, op: OperatorDep) -> dict[str, str]:
    """Queue a dead (or discarded) row again, due now; a ledger entry records who."""
    with _state(request).db.transaction() as session:
        message = retry(session, row_id, actor=op.name, now=_now(request))
    _wake(request)
    return {"message": message}


class DiscardBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why it must not be sent.")


@router.post("/outbox/{row_id}/discard")
def discard_outbox(
    request: Request, row_id: RowId, body: DiscardBody, op: OperatorDep
) -> dict[str, str]:
    """Give up on a dead or pending row: kept as ``discarded`` with who and why, never sent."""
    with _state(request).db.transaction() as session:
        return {
            "message": discard(
                session, row_id, actor=op.name, reason=body.reason, now=_now(request)
            )
        }


@router.get("/silences")
def get_silences(
    request: Request,
    _op: ViewerDep,
    ended: Annotated[bool, Query(description="Include ended silences.")] = False,
) -> dict[str, Any]:
    """Silences not ended yet (``ended=true``: every one), with what each has muted."""
    now = _now(request)
    with _state(request).db.transaction() as session:
        views = list_silences(session, include_ended=ended)
    return {"silences": [v.as_json(now) for v in views]}


class SilenceBody(BaseModel):
    behavior: str | None = Field(
        default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="One behavior, or"
    )
    all: bool = Field(default=False, description="every behavior.")
    duration: str = Field(
        validation_alias=AliasChoices("for", "duration"),
        min_length=2,
        max_length=20,
        description="How long (``for`` or ``duration``): 2h, 30m, 1h30m, 1d.",
    )
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/silences", status_code=201)
def create_silence(request: Request, body: SilenceBody, op: OperatorDep) -> dict[str, Any]:
    """Mute a behavior's alerts (or every behavior's) for a while: gates, tiers and the ledger
    carry on; the silence is a ledger entry, and so is its end with a summary."""
    if (body.behavior is None) == (not body.all):
        raise LedgerError('name one behavior ("behavior": NAME) or set "all": true, not both')
    now = _now(request)
    with _state(request).db.transaction() as session:
        view = silence(
            session,
            behavior=body.behavior,
            duration=parse_duration(body.duration),
            reason=body.reason,
            actor=op.name,
            now=now,
        )
    return {"silence": view.as_json(now)}


@router.post("/silences/{silence_id}/end")
def end_silence(request: Request, silence_id: RowId, op: OperatorDep) -> dict[str, Any]:
    """End a silence now; what it muted is summarised (ledger entry, and an alert if any)."""
    now = _now(request)
    ctx = build_policy_context(_state(request).settings)
    with _state(request).db.transaction() as session:
        view = unsilence(session, silence_id, actor=op.name, now=now, ctx=ctx)
    _wake(request)
    return {
        "silence": view.as_json(now),
        "message": f"silence {view.id} ended; muted while it lasted: {muted_summary(view.muted)}",
    }
