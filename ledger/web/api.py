"""The JSON API under ``/api``: behaviors, explanations, operator actions and the ledger."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from ledger.board import (
    BehaviorDetail,
    EntryView,
    behavior_detail,
    behavior_filters,
    decode_cursor,
    encode_cursor,
    ledger_entries,
    tier_counts,
)
from ledger.clock import json_time
from ledger.daemon import build_policy_context
from ledger.db.models import (
    BehaviorRow,
    BudgetWindow,
    IngestedSpan,
)
from ledger.errors import NotFoundError
from ledger.explain import explain
from ledger.gates import Tier
from ledger.notion.health import mirror_status
from ledger.runner.run import approve, check_manual_run, reject
from ledger.runs import approval_requests, run_json
from ledger.spend import DEFAULT_RESET, window_start
from ledger.status import behavior_json, collect_status, ingest_json, status_document
from ledger.transitions import PolicyContext, decline_proposal, operator_action
from ledger.web.auth import OperatorDep, ViewerDep
from ledger.web.read_routes import (
    WORD,
    BehaviorFilterDep,
    BehaviorName,
    Cursor,
    word,
)
from ledger.web.status_models import BehaviorList, NotionStatus, StatusDocument

router = APIRouter(prefix="/api", tags=["api"])


def _state(request: Request) -> Any:
    return request.app.state.ledger


def _ctx(request: Request) -> PolicyContext:
    return build_policy_context(_state(request).settings)


def _now(request: Request) -> datetime:
    now: datetime = _state(request).clock.now()
    return now


def _tier(tier: str) -> dict[str, str]:
    return Tier(tier).as_json()


@router.get("/status", response_model=StatusDocument)
def get_status(request: Request, _op: ViewerDep) -> Response:
    """What ``ledger status`` prints, as ``ledger status --json`` prints it: every behavior
    with its state and problems, pending approvals, the outbox, broadcast ingestion, invalid
    files, table sizes and the last prune."""
    with _state(request).db.transaction() as session:
        document = status_document(
            session, _now(request), _state(request).settings.retention_interval_seconds
        )
    # Sent as built (already JSON-ready): validating 10,000 behaviors again would cost more
    # than collecting them.
    return Response(orjson.dumps(document), media_type="application/json")


@router.get("/notion", response_model=NotionStatus)
def get_notion(request: Request, _op: ViewerDep) -> Response:
    """The Notion mirror: ``state`` (``off``, ``not_set_up``, ``ok``, ``behind``, ``failing``)
    and a one-line ``advice`` (what to run or fix), then what ``ledger notion status --json``
    prints: the databases, the Notion work queued (and since when), dead letters (the newest
    ten, with Notion's message), the last full sync and the last approvals poll."""
    state = _state(request)
    with state.db.transaction() as session:
        report = mirror_status(session, state.settings, _now(request))
    return Response(orjson.dumps(report.as_json()), media_type="application/json")


@router.get("/behaviors", response_model=BehaviorList)
def list_behaviors(
    request: Request,
    _op: ViewerDep,
    query: BehaviorFilterDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Registered behaviors (retired ones too, unless a ``status`` says otherwise), by name,
    a page at a time (``next_cursor``), with tier, state, runs and spend; the count per tier
    under the same filters; invalid files and broadcast ingestion."""
    where = behavior_filters(status=query.status, text=query.text, hide_retired=False)
    after = decode_cursor(query.cursor, (str,), "behaviors")[0] if query.cursor else None
    with _state(request).db.transaction() as session:
        counts = tier_counts(session, where)
        report = collect_status(
            session,
            _now(request),
            where=[*where, *behavior_filters(tier=query.tier, hide_retired=False)],
            after=after,
            limit=limit + 1,
        )
    page = report.behaviors[:limit]
    more = len(report.behaviors) > limit
    document = {
        "behaviors": [behavior_json(b) for b in page],
        "next_cursor": encode_cursor(page[-1].name) if more else None,
        "counts": [{"tier": c.tier, "tier_label": c.tier_label, "count": c.count} for c in counts],
        "invalid_files": [{"path": p.path, "problems": p.problems} for p in report.file_problems],
        "ingest": ingest_json(report.ingest),
    }
    return Response(orjson.dumps(document), media_type="application/json")


def _behavior(session: Session, name: str) -> BehaviorRow:
    row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
    if row is None:
        raise NotFoundError(f"behavior {name!r} is not registered")
    return row


class LastRunRef(BaseModel):
    id: str | None
    at: datetime | None
    status: str | None


class BroadcastTotals(BaseModel):
    generations: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


class CurrentSpend(BaseModel):
    usd: float
    reserved_usd: float
    window_start: datetime
    budget_usd: float | None
    reset: str
    broadcast: BroadcastTotals


class Delivery(BaseModel):
    trace_id: str
    span_id: str
    name: str
    received_at: datetime
    run_id: str | None
    attribution: str | None
    cost_usd: float | None
    prompt_tokens: int | None
    completion_tokens: int | None


class BehaviorResponse(BehaviorDetail):
    """A behavior's page (``BehaviorDetail``: card with structured progress, definition, runs,
    tier history, spend per window, progress in words) and its summary fields."""

    name: str
    tier: str
    tier_label: str
    tier_meaning: str
    max_tier: str
    paused: bool
    pinned: bool
    retired: bool
    enabled: bool
    description: str
    problem: str | None
    key_name: str | None
    key_name_source: Literal["file", "learned"] | None
    last_run: LastRunRef
    spend: CurrentSpend
    last_deliveries: list[Delivery]


@router.get("/behaviors/{name}", response_model=BehaviorResponse)
def get_behavior(
    request: Request,
    name: BehaviorName,
    _op: ViewerDep,
    runs_cursor: Cursor = None,
    runs_limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> Response:
    """One behavior: tier, spend in the current budget window (unrounded), last deliveries;
    its card with structured promotion progress, runs (a page: ``runs_cursor``) with gate
    results, tier history with reasons and actors, spend per window, progress in words."""
    now = _now(request)
    ctx = _ctx(request)
    with _state(request).db.transaction() as session:
        row = _behavior(session, name)
        detail = behavior_detail(
            session, name, now=now, runs_cursor=runs_cursor, runs_limit=runs_limit, ctx=ctx
        )
        definition = row.definition or {}
        budget = definition.get("budget") or None
        # Spend is counted with or without a budget: in the budget's window, else the
        # calendar month (UTC); ``budget_usd`` is None when the behavior has no budget.
        start = window_start(budget["reset"] if budget else None, now)
        window = session.get(BudgetWindow, (row.id, start))
        spend: dict[str, Any] = {
            "usd": window.spent_usd if window else 0.0,
            "reserved_usd": window.reserved_usd if window else 0.0,
            "window_start": start,
            "budget_usd": budget["usd"] if budget else None,
            "reset": budget["reset"] if budget else DEFAULT_RESET,
            "broadcast": _broadcast_since(session, row.id or 0, start),
        }
        deliveries = session.exec(
            select(IngestedSpan)
            .where(col(IngestedSpan.behavior_id) == row.id)
            .order_by(col(IngestedSpan.received_at).desc())
            .limit(10)
        ).all()
        answer = BehaviorResponse.model_validate(
            {
                **dict(detail),
                "name": row.name,
                **_tier(row.tier),
                "max_tier": row.max_tier,
                "paused": row.paused,
                "pinned": row.pinned,
                "retired": row.retired,
                "enabled": row.enabled,
                "description": definition.get("description", ""),
                "definition_hash": row.definition_hash,
                "problem": row.problem,
                # The name broadcast attributes the behavior's key by: its file's, else learned.
                "key_name": definition.get("key_name") or row.learned_key_name,
                "key_name_source": (
                    "file"
                    if definition.get("key_name")
                    else ("learned" if row.learned_key_name else None)
                ),
                "last_run": {
                    "id": row.last_run_id,
                    "at": row.last_run_at,
                    "status": row.last_run_status,
                },
                "spend": spend,
                "last_deliveries": [
                    {
                        "trace_id": d.trace_id,
                        "span_id": d.span_id,
                        "name": d.name,
                        "received_at": d.received_at,
                        "run_id": d.run_id,
                        "attribution": d.attribution,
                        "cost_usd": d.cost_usd,
                        "prompt_tokens": d.prompt_tokens,
                        "completion_tokens": d.completion_tokens,
                    }
                    for d in deliveries
                ],
            }
        )
    return Response(answer.model_dump_json(), media_type="application/json")


def _broadcast_since(session: Session, behavior_id: int, start: datetime) -> dict[str, Any]:
    """What broadcast reported for the behavior since ``start``: generations, their cost (as
    reported, before reconciling with the runner's figures) and tokens."""
    generations, cost, prompt, completion = session.execute(
        select(
            func.count(col(IngestedSpan.cost_usd)),
            func.coalesce(func.sum(IngestedSpan.cost_usd), 0.0),
            func.coalesce(func.sum(IngestedSpan.prompt_tokens), 0),
            func.coalesce(func.sum(IngestedSpan.completion_tokens), 0),
        ).where(
            col(IngestedSpan.behavior_id) == behavior_id,
            col(IngestedSpan.received_at) >= start,
        )
    ).one()
    return {
        "generations": int(generations),
        "cost_usd": float(cost),
        "prompt_tokens": int(prompt),
        "completion_tokens": int(completion),
    }


@router.get("/behaviors/{name}/explain")
def explain_behavior(request: Request, name: BehaviorName, _op: ViewerDep) -> dict[str, Any]:
    """Why the behavior is at its tier (the chain of decisions) and what it needs next."""
    with _state(request).db.transaction() as session:
        return explain(session, name, _now(request), _ctx(request)).as_json()


class DeclineBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/behaviors/{name}/decline")
def decline(
    request: Request, name: BehaviorName, body: DeclineBody, op: OperatorDep
) -> dict[str, str]:
    """Decline a pending promotion proposal."""
    with _state(request).db.transaction() as session:
        return {
            "message": decline_proposal(
                session, name, reason=body.reason, actor=op.name, now=_now(request)
            )
        }


MANUAL_RUN_WAIT_SECONDS = 10.0


@router.post(
    "/behaviors/{name}/run",
    responses={
        202: {"description": "Still running: poll the run at ``poll`` (GET /api/runs/{id})."},
        409: {"description": "Not started: paused, retired, or its key is not in the daemon."},
    },
)
async def run_behavior(
    request: Request,
    name: BehaviorName,
    _op: OperatorDep,
    wait: Annotated[
        float, Query(ge=0, le=60, description="Seconds to wait for the outcome.")
    ] = MANUAL_RUN_WAIT_SECONDS,
) -> JSONResponse:
    """Run a behavior now, once, in the daemon (its environment holds the keys), after
    reconciling the behaviors folder. Answers 200 with the finished run when it finishes
    within ``wait`` seconds, else 202 with its id and where to poll. Nothing is run or
    recorded when the behavior is paused, retired or disabled, or its key cannot be resolved
    in the daemon's environment (409)."""
    state = _state(request)
    await state.reconcile_now()
    runner = state.services.runner

    def check(row: BehaviorRow) -> None:
        check_manual_run(
            row,
            here="in the daemon's environment",
            instead="Set it where `ledger serve` runs and restart the daemon (until then it is "
            "not scheduled).",
        )

    run_id = await asyncio.to_thread(runner.claim_manual, name, check)
    if run_id is None:
        raise NotFoundError(f"behavior {name!r} is not registered")
    task = runner.start_claimed(run_id)
    await asyncio.wait({task}, timeout=wait)
    poll = f"/api/runs/{run_id}"
    if not task.done():
        return JSONResponse(
            {"run_id": run_id, "status": "running", "poll": poll, "run": None},
            status_code=202,
            headers={"Location": poll},
        )

    def finished() -> dict[str, Any]:
        with state.db.transaction() as session:
            return run_json(session, run_id)

    run = await asyncio.to_thread(finished)
    return JSONResponse(
        jsonable_encoder(
            {"run_id": run_id, "status": run["status"], "poll": poll, "run": run},
            custom_encoder={datetime: json_time},  # as the typed answers write times
        )
    )


class ActionBody(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why (recorded).")
    to: Tier | None = Field(default=None, description="promote/demote: target tier.")


Verb = Literal["promote", "demote", "pin", "unpin", "pause", "resume"]


@router.post("/behaviors/{name}/{verb}")
def act(
    request: Request, name: BehaviorName, verb: Verb, body: ActionBody, op: OperatorDep
) -> dict[str, Any]:
    """An operator action; the API token's name is recorded as the actor."""
    with _state(request).db.transaction() as session:
        message = operator_action(
            session,
            name,
            verb,
            reason=body.reason,
            actor=op.name,
            now=_now(request),
            ctx=_ctx(request),
            to=body.to,
        )
        row = _behavior(session, name)
        return {
            "message": message,
            "name": name,
            **_tier(row.tier),
            "paused": row.paused,
            "pinned": row.pinned,
        }


class EntryList(BaseModel):
    entries: list[EntryView]
    next_after_id: int = Field(
        description="Oldest-first paging: the id to pass as after_id for the next page."
    )
    next_cursor: str | None = Field(
        description="The id to pass on (after_id, or before_id when paging newest first); "
        "None on the last page."
    )


EntryId = Annotated[int, Query(ge=0, le=2**63 - 1)]


@router.get("/ledger", response_model=EntryList)
def get_ledger_entries(
    request: Request,
    _op: ViewerDep,
    behavior: Annotated[str | None, word(63)] = None,
    kind: Annotated[
        list[Annotated[str, Field(max_length=32, pattern=WORD)]] | None, Query(max_length=20)
    ] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    after_id: EntryId = 0,
    before_id: EntryId | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EntryList:
    """Ledger entries with their hashes: oldest first after ``after_id``, or newest first
    before ``before_id``; filtered by behavior, ``kind`` (repeatable) and time (``since``
    inclusive, ``until`` exclusive, ISO 8601 with an offset)."""
    with _state(request).db.transaction() as session:
        page = ledger_entries(
            session,
            behavior=behavior,
            kinds=kind or (),
            since=since,
            until=until,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        )
    last = page.entries[-1].id if page.entries and before_id is None else after_id
    return EntryList(entries=page.entries, next_after_id=last, next_cursor=page.next_cursor)


@router.get("/runs/{run_id}")
def get_run(
    request: Request, run_id: Annotated[str, Path(max_length=40)], _op: ViewerDep
) -> dict[str, Any]:
    """One run: its slot, tier, preset, model, cost, output, disposition and gate results."""
    with _state(request).db.transaction() as session:
        return run_json(session, run_id)


@router.get("/approvals")
def list_approvals(
    request: Request,
    _op: ViewerDep,
    status: Annotated[
        str, Query(pattern="^(pending|approved|rejected|expired|withdrawn)$")
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Approval requests (pending by default), oldest first, with the run's output (masked as
    stored), the payload to review and its hash."""
    with _state(request).db.transaction() as session:
        return {"approvals": approval_requests(session, status, limit)}


class ApproveBody(BaseModel):
    reason: str = Field(default="approved", min_length=1, max_length=2000)
    payload_sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="The hash of the payload you reviewed; a different payload is never run.",
    )


@router.post("/approvals/{run_id}/approve")
def approve_run(
    request: Request,
    run_id: Annotated[str, Path(max_length=40)],
    body: ApproveBody,
    op: OperatorDep,
) -> dict[str, str]:
    """Approve a tier-B run: its action runs exactly once."""
    with _state(request).db.transaction() as session:
        return {
            "message": approve(
                session,
                run_id,
                actor=op.name,
                now=_now(request),
                ctx=_ctx(request),
                payload_sha256=body.payload_sha256,
                reason=body.reason,
            )
        }


@router.post("/approvals/{run_id}/reject")
def reject_run(
    request: Request,
    run_id: Annotated[str, Path(max_length=40)],
    body: DeclineBody,
    op: OperatorDep,
) -> dict[str, str]:
    """Reject a tier-B run: its action never runs; it counts as a human_rejected warn."""
    with _state(request).db.transaction() as session:
        return {
            "message": reject(
                session,
                run_id,
                actor=op.name,
                reason=body.reason,
                now=_now(request),
                ctx=_ctx(request),
            )
        }
