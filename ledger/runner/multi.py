"""Multi-model runs: the roundtable (a three-round panel decision) and the broad canvas (one
question to many models), each call recorded the moment it returns.

Every call of a run is a ``run_call`` row, written before anything is asked (``pending``):
a slot is reserved against the behavior's budget and marked ``calling`` in one transaction,
and its answer or classified failure is recorded (cost settled, output masked) in another,
as soon as it returns. A run interrupted mid-way is adopted again after its lease expired
(``adopt_expired_runs``): the calls that were in flight give their reservation back and are
asked again; the calls already answered or failed are kept and never asked again.

Every call uses the behavior's own key and carries the same ``trace`` (behavior, run id,
tier, kind, round, slot, model), so the broadcast attributes each call to the run. The run
itself ends like any other (``finish_run``): its output is the synthesis (roundtable) or the
collected answers (canvas), judged, then disposed of by tier — except that a roundtable whose
synthesis is not confident (``low``, or unreadable) is never acted on autonomously: at
C · autonomous it becomes an approval request, recorded as a downgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from jsonschema import Draft202012Validator
from pydantic import SecretStr
from sqlalchemy import select as sa_select
from sqlalchemy import text, update
from sqlmodel import Session, col, select

from ledger.behaviors.schema import Behavior, Canvas, vendor_of
from ledger.clock import Clock, json_time
from ledger.db.models import LIVE_RUN, BehaviorRow, ModelHealth, Run, RunCall
from ledger.db.session import Database
from ledger.errors import ConflictError, NotFoundError, SecretError
from ledger.gates import ATTRIBUTABLE, Gate, GateResult, Outcome, Tier
from ledger.outbox.enqueue import enqueue_mirror, mirror_row_key
from ledger.runner.catalog import CatalogError, ModelCatalog, ModelMeta, fetch_models
from ledger.runner.openrouter import SESSION_ID_MAX, ChatResult, OpenRouterCallError
from ledger.runner.run import (
    DEFAULT_CALL_ESTIMATE_USD,
    CallOutcome,
    RunPlan,
    render_prompt,
)
from ledger.secrets import resolve
from ledger.sensitive import mask_sensitive
from ledger.spend import reserve, settle
from ledger.transitions import lock_behavior

__all__ = [
    "SYNTHESIS_SCHEMA",
    "CallRecord",
    "MultiModelRunner",
    "adopt_expired_runs",
    "canvas_timeout",
    "deference",
    "load_calls",
    "reenable",
    "reenable_model",
    "resume_plan",
    "skip_list",
    "skipped_models",
]

log = structlog.get_logger("ledger.runner")

PERSISTENT_REASONS: Final = frozenset({"unknown_model", "forbidden"})
# Failures that concern the behavior's key, not one model: the rest of the run is not asked.
KEY_GATES: Final = frozenset({Gate.SPEND_CAP, Gate.AUTH_ERROR})
CONFIDENCES: Final = ("high", "medium", "low")
SYNTHESIS_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "consensus": {"type": "array", "items": {"type": "string"}},
        "disagreements": {"type": "array", "items": {"type": "string"}},
        "confidence": {"type": "string", "enum": list(CONFIDENCES)},
        "next_steps": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["consensus", "disagreements", "confidence", "next_steps"],
}
_SYNTHESIS_VALIDATOR = Draft202012Validator(SYNTHESIS_SCHEMA)
_MULTI_AGENT = re.compile(r"deep-research|agent", re.IGNORECASE)
_RECOMMENDATION = re.compile(r"^\W*recommendation\W*:?\s*(.+)$", re.IGNORECASE | re.MULTILINE)


# -- reading what was recorded ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One recorded call as readers see it (``run_calls``)."""

    round: int
    slot: int
    role: str
    model_asked: str
    model_answered: str | None
    status: str
    reason: str | None
    gate: str | None
    error: str | None
    timeout_seconds: float | None
    latency_seconds: float | None
    cost_usd: float | None
    reserved_usd: float
    prompt_tokens: int | None
    completion_tokens: int | None
    generation_id: str | None
    output: str | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def key(self) -> tuple[int, int]:
        return (self.round, self.slot)

    def as_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "slot": self.slot,
            "role": self.role,
            "model": self.model_asked,
            "model_answered": self.model_answered,
            "status": self.status,
            "reason": self.reason,
            "gate": self.gate,
            "error": self.error,
            "timeout_seconds": self.timeout_seconds,
            "latency_seconds": self.latency_seconds,
            "cost_usd": self.cost_usd,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "generation_id": self.generation_id,
            "output": self.output,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def load_calls(session: Session, run_id: str) -> list[CallRecord]:
    """The recorded calls of a run, by round then slot (empty for a single-call run), as the
    runner reads them back (``ledger.runs.run_calls`` is the readers' JSON view). The outputs
    are masked as stored."""
    rows = session.exec(
        select(RunCall)
        .where(col(RunCall.run_id) == run_id)
        .order_by(col(RunCall.round), col(RunCall.slot))
    ).all()
    return [_record(r) for r in rows]


def _record(r: RunCall) -> CallRecord:
    return CallRecord(
        round=r.round,
        slot=r.slot,
        role=r.role,
        model_asked=r.model_asked,
        model_answered=r.model_answered,
        status=r.status,
        reason=r.reason,
        gate=r.gate,
        error=r.error,
        timeout_seconds=r.timeout_seconds,
        latency_seconds=r.latency_seconds,
        cost_usd=r.cost_usd,
        reserved_usd=r.reserved_usd,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        generation_id=r.generation_id,
        output=r.output,
        attempts=r.attempts,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


# -- the database steps (each inside the caller's transaction) ---------------------------------


@dataclass(frozen=True, slots=True)
class SlotSpec:
    """A call to make: where it sits in the run, which model, how long it may take."""

    round: int
    slot: int
    role: str
    model: str
    timeout: float
    status: str = "pending"
    reason: str | None = None


def plan_calls(
    session: Session, plan: RunPlan, specs: Sequence[SlotSpec], now: datetime
) -> list[CallRecord]:
    """Write the calls of ``specs`` that are not recorded yet (a resumed run keeps its own),
    then return every call of the run."""
    existing = {
        (r, s)
        for r, s in session.execute(
            sa_select(RunCall.round, RunCall.slot).where(col(RunCall.run_id) == plan.run_id)  # type: ignore[call-overload]
        )
    }
    for spec in specs:
        if (spec.round, spec.slot) in existing:
            continue
        session.add(
            RunCall(
                run_id=plan.run_id,
                behavior_id=plan.behavior_id,
                round=spec.round,
                slot=spec.slot,
                role=spec.role,
                model_asked=spec.model,
                status=spec.status,
                reason=spec.reason,
                timeout_seconds=spec.timeout,
                finished_at=now if spec.status != "pending" else None,
            )
        )
    session.flush()
    return load_calls(session, plan.run_id)


def reserve_calls(
    session: Session,
    plan: RunPlan,
    estimates: Mapping[tuple[int, int], float],
    now: datetime,
) -> bool:
    """Reserve the worst case of these pending calls together and mark them ``calling`` (one
    more attempt each). False, with nothing changed, when the behavior's budget cannot take
    them all: the calls must not be made (``spend_cap``)."""
    budget = plan.behavior.budget
    total = sum(estimates.values()) if budget is not None else 0.0
    # Locks are taken in the order every writer takes them — behavior, run, its calls, the
    # budget window — so reservations and records of concurrent calls never deadlock.
    lock_behavior(session, id=plan.behavior_id)
    if budget is not None and plan.budget_window is not None:
        ok = reserve(
            session,
            behavior_id=plan.behavior_id,
            window_start=plan.budget_window,
            amount=total,
            budget=budget.usd,
            now=now,
        )
        if not ok:
            return False
    table = RunCall.__table__  # type: ignore[attr-defined]
    for (round_, slot), estimate in estimates.items():
        session.execute(
            update(table)
            .where(
                table.c.run_id == plan.run_id,
                table.c.round == round_,
                table.c.slot == slot,
                table.c.status == "pending",
            )
            .values(
                status="calling",
                reserved_usd=estimate if budget is not None else 0.0,
                attempts=table.c.attempts + 1,
                started_at=now,
            )
        )
    return True


def release_calls(session: Session, plan: RunPlan, now: datetime, why: str) -> None:
    """Give back the reservations of a run's calls in flight and mark them failed (the run
    stops without them: a crash of the runner itself)."""
    held = session.exec(
        select(RunCall).where(col(RunCall.run_id) == plan.run_id, col(RunCall.status) == "calling")
    ).all()
    released = sum(c.reserved_usd for c in held)
    if released and plan.budget_window is not None:
        settle(
            session,
            behavior_id=plan.behavior_id,
            window_start=plan.budget_window,
            reserved=released,
            spent=0.0,
            now=now,
        )
    for call in held:
        call.status = "failed"
        call.reason = "internal_error"
        call.error = why[:2000]
        call.reserved_usd = 0.0
        call.finished_at = now
        session.add(call)


def close_calls(
    session: Session,
    run_id: str,
    keys: Sequence[tuple[int, int]],
    *,
    status: str,
    reason: str,
    error: str,
    now: datetime,
) -> None:
    """Mark pending calls that will not be made (``refused`` by the budget, ``skipped``)."""
    table = RunCall.__table__  # type: ignore[attr-defined]
    for round_, slot in keys:
        session.execute(
            update(table)
            .where(
                table.c.run_id == run_id,
                table.c.round == round_,
                table.c.slot == slot,
                table.c.status == "pending",
            )
            .values(status=status, reason=reason, error=error[:2000], finished_at=now)
        )


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one call produced: an answer, or a classified failure."""

    answer: ChatResult | None = None
    reason: str | None = None
    gate: Gate | None = None
    error: str | None = None
    latency: float = 0.0
    cost_usd: float = 0.0


def record_call(
    session: Session,
    plan: RunPlan,
    key: tuple[int, int],
    result: CallResult,
    now: datetime,
    *,
    track_health: bool = False,
    skip_after: int = 0,
    mirror: bool = False,
) -> None:
    """Record one call the moment it returned: its answer (masked) or its failure, its cost
    added to the run's and settled against its reservation, as ``finish_run`` settles a
    single call (the larger of the runner's and the broadcast's figures counts, once). With
    ``mirror`` (Notion is on), the behavior's Notion row is queued for an update in the same
    transaction (row-shaped work: the mirror renders the row when it delivers)."""
    lock_behavior(session, id=plan.behavior_id)
    run = session.get(Run, plan.run_id, populate_existing=True)
    if run is None:
        raise NotFoundError(f"run {plan.run_id} does not exist")
    call = session.exec(
        select(RunCall)
        .where(
            col(RunCall.run_id) == plan.run_id,
            col(RunCall.round) == key[0],
            col(RunCall.slot) == key[1],
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if call.status != "calling":  # adopted and asked again elsewhere: the newer call counts
        return
    previous = max(run.cost_usd or 0.0, run.broadcast_cost_usd or 0.0)
    run.cost_usd = (run.cost_usd or 0.0) + result.cost_usd
    delta = max(run.cost_usd, run.broadcast_cost_usd or 0.0) - previous
    if plan.budget_window is not None:
        settle(
            session,
            behavior_id=plan.behavior_id,
            window_start=plan.budget_window,
            reserved=call.reserved_usd,
            spent=delta,
            now=now,
        )
    session.add(run)
    call.reserved_usd = 0.0
    call.latency_seconds = round(result.latency, 3)
    call.finished_at = now
    call.cost_usd = result.cost_usd
    answer = result.answer
    if answer is not None:
        call.status = "answered"
        call.model_answered = answer.model
        call.generation_id = answer.generation_id
        call.prompt_tokens = answer.usage.prompt_tokens
        call.completion_tokens = answer.usage.completion_tokens
        masked, _findings = mask_sensitive(answer.output)
        call.output = masked
        call.output_sha256 = hashlib.sha256(answer.output.encode("utf-8")).hexdigest()
    else:
        call.status = "failed"
        call.reason = result.reason
        call.gate = result.gate.value if result.gate is not None else None
        call.error = (result.error or "")[:2000]
    session.add(call)
    if track_health:
        _track_health(session, plan, call, result, now, skip_after)
    if mirror:
        enqueue_mirror(
            session,
            key=mirror_row_key("behavior", plan.behavior.name),
            now=now,
            behavior_id=plan.behavior_id,
            dedup_key=f"mirror:run_call:{plan.run_id}:{call.round}:{call.slot}",
        )


def _track_health(
    session: Session,
    plan: RunPlan,
    call: RunCall,
    result: CallResult,
    now: datetime,
    skip_after: int,
) -> None:
    health = session.get(ModelHealth, (plan.behavior_id, call.model_asked))
    persistent = result.answer is None and result.reason in PERSISTENT_REASONS
    if health is None:
        if not persistent:
            return
        health = ModelHealth(behavior_id=plan.behavior_id, model=call.model_asked, updated_at=now)
    if persistent:
        health.consecutive_failures += 1
        health.reason = (result.error or result.reason or "")[:500]
        if skip_after and health.consecutive_failures >= skip_after:
            health.skipped = True
    elif result.answer is not None:
        health.consecutive_failures = 0
    health.last_run_id = plan.run_id
    health.updated_at = now
    session.add(health)


def skipped_models(session: Session, behavior_id: int) -> dict[str, str]:
    """The models a behavior's canvas skips (persistent failures), with why."""
    rows = session.exec(
        select(ModelHealth).where(
            col(ModelHealth.behavior_id) == behavior_id, col(ModelHealth.skipped).is_(True)
        )
    ).all()
    return {r.model: r.reason or "persistent failure" for r in rows}


def reenable_model(session: Session, behavior_id: int, model: str, now: datetime) -> bool:
    """Take ``model`` off a behavior's skip list (its failure count restarts). False when it
    was not skipped."""
    health = session.get(ModelHealth, (behavior_id, model))
    if health is None or not health.skipped:
        return False
    health.skipped = False
    health.consecutive_failures = 0
    health.updated_at = now
    session.add(health)
    return True


def _canvas_id(session: Session, name: str) -> int:
    """The id of broad canvas ``name``. Raises NotFoundError when no behavior has that name,
    ConflictError when it is another kind (only a broad canvas keeps a skip list)."""
    row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
    if row is None or row.id is None:
        raise NotFoundError(f"no behavior named {name} (see `ledger status`)")
    kind = (row.definition or {}).get("kind", "single")
    if kind != "broad_canvas":
        raise ConflictError(
            f"{name} is not a broad_canvas behavior (kind {kind}): only a broad canvas skips "
            "models after persistent failures"
        )
    return row.id


def skip_list(session: Session, name: str) -> dict[str, str]:
    """The models broad canvas ``name`` skips, with why. Raises NotFoundError, or
    ConflictError for a behavior of another kind."""
    return skipped_models(session, _canvas_id(session, name))


def reenable(session: Session, name: str, model: str, now: datetime) -> str:
    """Put ``model`` back on broad canvas ``name``; says what happened. Raises NotFoundError,
    or ConflictError for a behavior of another kind."""
    if reenable_model(session, _canvas_id(session, name), model, now):
        return f"{model} is asked again by {name} from its next run on"
    return f"{model} was not skipped by {name}; nothing to do"


# -- resuming runs left behind ------------------------------------------------------------------


def adopt_expired_runs(
    session: Session, now: datetime, lease: timedelta, limit: int = 100
) -> list[str]:
    """Take over the live multi-model runs whose lease expired (their process crashed or was
    killed): each is leased to the caller by a compare-and-set on its status and lease; the
    calls it had in flight give their reservation back and become ``pending`` again (their
    answers never arrived). Returns the ids of the runs adopted; resume each with
    ``resume_plan``. Single-call runs are left to ``interrupt_expired_runs``."""
    table = Run.__table__  # type: ignore[attr-defined]
    due = session.execute(
        sa_select(table.c.id, table.c.behavior_id, table.c.reserved_window)
        .where(text(LIVE_RUN), table.c.lease_until < now, table.c.kind != "single")
        .order_by(table.c.lease_until)
        .limit(limit)
    ).all()
    adopted: list[str] = []
    calls = RunCall.__table__  # type: ignore[attr-defined]
    for run_id, behavior_id, window in due:
        won = session.execute(
            update(table)
            .where(
                table.c.id == run_id,
                table.c.status.in_(("claimed", "running")),
                table.c.lease_until < now,
            )
            .values(lease_until=now + lease)
        )
        if not won.rowcount:  # type: ignore[attr-defined]  # renewed, or adopted elsewhere
            continue
        held = session.execute(
            sa_select(calls.c.id, calls.c.reserved_usd).where(
                calls.c.run_id == run_id, calls.c.status == "calling"
            )
        ).all()
        released = sum(r for _id, r in held)
        if released and window is not None:
            settle(
                session,
                behavior_id=behavior_id,
                window_start=window if window.tzinfo else window.replace(tzinfo=now.tzinfo),
                reserved=released,
                spent=0.0,
                now=now,
            )
        if held:
            session.execute(
                update(calls)
                .where(calls.c.id.in_([i for i, _r in held]))
                .values(status="pending", reserved_usd=0.0, started_at=None)
            )
        adopted.append(run_id)
    return adopted


def resume_plan(session: Session, run_id: str, now: datetime) -> RunPlan | None:
    """The plan of an adopted run, rebuilt from its behavior's definition at the run's own tier
    and start time; None (and the run closed as interrupted) when its behavior is paused,
    retired or disabled meanwhile, or its definition cannot be read."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist")
    row = session.get(BehaviorRow, run.behavior_id)
    behavior: Behavior | None = None
    if row is not None and not (row.paused or row.retired or not row.enabled):
        try:
            behavior = Behavior.model_validate(row.definition)
        except ValueError:
            behavior = None
    if row is None or behavior is None or behavior.kind == "single":
        run.status = "interrupted"
        run.finished_at = now
        run.disposition = "none"
        run.lease_until = None
        run.error = (
            "interrupted: its process stopped and its behavior no longer runs it (paused, "
            "retired, disabled or changed); not held against the behavior"
        )
        session.add(run)
        return None
    tier = Tier(run.tier)
    at = run.started_at or run.scheduled_for
    prompt = render_prompt(
        row.prompt_text,
        behavior.inputs,
        {
            "now": at.isoformat(timespec="seconds"),
            "date": at.date().isoformat(),
            "run_id": run.id,
            "behavior": behavior.name,
            "tier": tier.value,
        },
    )
    return RunPlan(
        run_id=run.id,
        behavior_id=run.behavior_id,
        behavior=behavior,
        tier=tier,
        preset=behavior.preset_for(tier),
        prompt=prompt,
        reserved_usd=0.0,
        budget_window=run.reserved_window,
        deadline_seconds=behavior.timeout_seconds,
    )


# -- pure helpers -------------------------------------------------------------------------------


def _conduct_results(failed: Sequence[CallRecord]) -> list[GateResult]:
    """One result per attributable gate a call failed on for the behavior's own request (a
    guardrail or injection block of its prompt): the behavior's conduct, as for one call.
    Key failures (``spend_cap``, ``auth_error``) are reported once by the run itself."""
    out: list[GateResult] = []
    by_gate: dict[str, list[CallRecord]] = {}
    for c in failed:
        if c.gate not in (None, Gate.PROVIDER_ERROR.value) and Gate(c.gate) not in KEY_GATES:
            by_gate.setdefault(c.gate, []).append(c)
    for gate, calls in by_gate.items():
        out.append(
            GateResult(
                Gate(gate),
                Outcome.FAIL,
                ATTRIBUTABLE[Gate(gate)],
                {
                    "reason": f"{len(calls)} call(s) refused: {calls[0].error or gate}"[:500],
                    "models": [c.model_asked for c in calls],
                },
            )
        )
    return out


def canvas_timeout(canvas: Canvas, model: str, meta: ModelMeta | None) -> float:
    """Seconds a canvas waits for ``model``: its override (a class or seconds), else its class
    from the catalog — multi_agent for deep-research / agent models, reasoning for models that
    support reasoning, fast otherwise."""
    override = canvas.timeout_overrides.get(model)
    if isinstance(override, int | float):
        return float(override)
    if isinstance(override, str):
        return canvas.timeouts[override]
    if _MULTI_AGENT.search(model):
        return canvas.timeouts["multi_agent"]
    if meta is not None and meta.reasoning:
        return canvas.timeouts["reasoning"]
    return canvas.timeouts["fast"]


def select_catalog_models(canvas: Canvas, models: Sequence[ModelMeta]) -> list[str]:
    """The catalog's models a canvas filter keeps, in catalog order, at most ``limit``."""
    spec = canvas.catalog
    if spec is None:
        return []
    pattern = re.compile(spec.match) if spec.match else None
    out: list[str] = []
    for meta in models:
        if spec.vendors and meta.vendor not in spec.vendors:
            continue
        if pattern is not None and not pattern.search(meta.id):
            continue
        if meta.id in spec.exclude:
            continue
        if spec.reasoning is not None and meta.reasoning != spec.reasoning:
            continue
        if spec.min_context_length and (meta.context_length or 0) < spec.min_context_length:
            continue
        if spec.max_prompt_price_per_mtok is not None and (
            meta.price is None or meta.price.prompt * 1_000_000 > spec.max_prompt_price_per_mtok
        ):
            continue
        out.append(meta.id)
        if len(out) >= spec.limit:
            break
    return out


def _recommendation(answer: str) -> str:
    found = _RECOMMENDATION.findall(answer)
    return found[-1].strip() if found else answer.strip()


def deference(round1: str, round2: str) -> dict[str, Any]:
    """How far a panel model moved between its own round-1 answer and its round-2 update: the
    ``shift`` (0: same recommendation, 1: nothing in common) of their recommendation lines
    (``RECOMMENDATION: …``; the whole answers when there is none), and ``changed`` when it
    moved by more than a rewording (shift > 0.2)."""
    a, b = _recommendation(round1), _recommendation(round2)
    shift = round(1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 3)
    return {"shift": shift, "changed": shift > 0.2}


def read_synthesis(output: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the synthesis, None) when ``output`` is JSON valid against ``SYNTHESIS_SCHEMA``, else
    (None, why not)."""
    try:
        document = json.loads(output)
    except ValueError as exc:
        return None, f"the synthesis is not JSON ({exc})"
    errors = sorted(_SYNTHESIS_VALIDATOR.iter_errors(document), key=lambda e: list(e.path))
    if errors:
        return None, f"the synthesis does not match its schema: {errors[0].message}"
    assert isinstance(document, dict)  # noqa: S101 — the schema says object
    return document, None


def round1_prompt(question: str, role: str | None) -> str:
    stance = f"You argue as: {role}.\n\n" if role else ""
    return (
        f"{stance}{question}\n\n"
        "Answer on your own. Give: the key factors; the risks and how to mitigate them; what "
        "you might be missing; and end with one line `RECOMMENDATION: <your recommendation "
        "and its reasoning in one sentence>`."
    )


def round2_prompt(question: str, role: str | None, own: str, others: Mapping[str, str]) -> str:
    shared = "\n\n".join(f"--- {model} ---\n{answer}" for model, answer in others.items())
    stance = f"You argue as: {role}.\n\n" if role else ""
    return (
        f"{stance}The question was:\n{question}\n\nYour first answer:\n{own}\n\n"
        f"The other panel members answered:\n{shared}\n\n"
        "Give the points where you agree, your challenges to their answers, and end with one "
        "line `RECOMMENDATION: <your updated recommendation>` (unchanged if they did not "
        "convince you)."
    )


def synthesis_prompt(question: str, rounds: Mapping[int, Mapping[str, str]]) -> str:
    parts = [f"The question was:\n{question}"]
    for number, answers in sorted(rounds.items()):
        title = "First answers" if number == 1 else "Answers after reading the others"
        shared = "\n\n".join(f"--- {model} ---\n{answer}" for model, answer in answers.items())
        parts.append(f"{title}:\n{shared}")
    parts.append(
        "Synthesize the panel as JSON with: consensus (points all agree on), disagreements "
        "(what remains disputed), confidence (high, medium or low: how safely the consensus "
        "can be acted on without a human) and next_steps."
    )
    return "\n\n".join(parts)


def build_slot_request(
    plan: RunPlan,
    model: str,
    prompt: str,
    *,
    round_: int,
    slot: int,
    json_schema: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The chat body of one call of a multi-model run: the model (or preset), the behavior's
    output cap, and the attribution every call of the run shares (``user``, ``session_id``
    and a ``trace`` naming the round, slot and model)."""
    if len(plan.run_id) > SESSION_ID_MAX:
        raise ValueError(f"run id is longer than {SESSION_ID_MAX} characters")
    behavior = plan.behavior
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": behavior.max_output_tokens,
        "user": behavior.name,
        "session_id": plan.run_id,
        "trace": {
            "behavior": behavior.name,
            "run_id": plan.run_id,
            "tier": plan.tier.value,
            "kind": behavior.kind,
            "round": round_,
            "slot": slot,
            "model": model,
        },
    }
    if json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": f"{behavior.name}-synthesis", "schema": dict(json_schema)},
        }
    return body


# -- the runner ---------------------------------------------------------------------------------


BATCH_MAX: Final = 100  # database steps per batched transaction


class _Batches:
    """Database steps submitted close together (a canvas's reservations and records) run in
    one transaction, each in a savepoint of its own: a wide canvas does not queue hundreds of
    transactions in front of its slowest model. A step that fails fails alone."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: asyncio.Queue[tuple[Callable[..., Any], tuple[Any, ...], Any]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(session, *args)`` in the next batch; its result (or its exception)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((fn, args, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="run-call-batches")
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < BATCH_MAX:
                batch.append(self._queue.get_nowait())
            try:
                results = await asyncio.to_thread(self._apply, batch)
            except Exception as exc:  # the database is down: every step of the batch fails
                results = [exc] * len(batch)
            for (_fn, _args, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _apply(self, batch: list[tuple[Callable[..., Any], tuple[Any, ...], Any]]) -> list[Any]:
        out: list[Any] = []
        with self.db.transaction() as session:
            for fn, args, _future in batch:
                try:
                    with session.begin_nested():
                        out.append(fn(session, *args))
                except Exception as exc:
                    log.exception("a multi-model run's database step failed")
                    out.append(exc)
        return out


@dataclass(slots=True)
class _RunState:
    """What one multi-model run learned while it went (in memory, for its outcome)."""

    originals: dict[tuple[int, int], str] = field(default_factory=dict)
    key_failure: GateResult | None = None
    refused: GateResult | None = None
    pause: bool = False
    peak: int = 0
    in_flight: int = 0
    batches: _Batches | None = None  # the records of a canvas's calls
    reservations: _Batches | None = None  # its reservations (never queued behind records)


def _run_failures(
    failed: Sequence[CallRecord],
    state: _RunState,
    provider_evidence: Callable[[list[CallRecord]], dict[str, Any]],
) -> list[GateResult]:
    """The gate results that close a multi-model run, in order: the behavior's conduct
    (``_conduct_results``), one non-attributable ``provider_error`` for the calls the provider
    failed (its evidence from ``provider_evidence``, as each kind words it), then the key
    failure and the budget refusal the run met."""
    failures = _conduct_results(failed)
    provider_failed = [c for c in failed if c.gate == Gate.PROVIDER_ERROR.value]
    if provider_failed:
        failures.append(
            GateResult(Gate.PROVIDER_ERROR, Outcome.FAIL, False, provider_evidence(provider_failed))
        )
    if state.key_failure is not None:
        failures.append(state.key_failure)
    if state.refused is not None:
        failures.append(state.refused)
    return failures


class MultiModelRunner:
    """Runs roundtable and broad-canvas plans: ``await runner.run(plan)`` → ``CallOutcome``
    for ``finish_run``. Database steps run in worker threads, one short transaction each."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        client: Any,
        catalog: ModelCatalog | None = None,
        *,
        base_url: str | None = None,
        default_estimate_usd: float = DEFAULT_CALL_ESTIMATE_USD,
        monotonic: Callable[[], float] = time.monotonic,
        mirror: bool = False,
    ) -> None:
        self.mirror = mirror  # queue each recorded call for the Notion mirror
        self.db = db
        self.clock = clock
        self.client = client
        self.catalog = catalog
        self.base_url = base_url or (catalog.base_url if catalog is not None else None)
        self.default_estimate_usd = default_estimate_usd
        self.monotonic = monotonic
        self.peak_concurrency = 0  # the most calls one run had in flight (benchmarks read it)

    async def run(self, plan: RunPlan) -> CallOutcome:
        try:
            key = resolve(plan.behavior.api_key)
        except SecretError as exc:
            result = GateResult(Gate.AUTH_ERROR, Outcome.FAIL, False, {"reason": str(exc)})
            return CallOutcome(failures=(result,), pause=True, error=str(exc), settled=True)
        try:
            if plan.behavior.kind == "roundtable":
                return await self._roundtable(plan, key)
            return await self._canvas(plan, key)
        except Exception as exc:  # a bug must not leave reservations held by this run
            log.exception(
                "multi-model run crashed", behavior=plan.behavior.name, run_id=plan.run_id
            )
            await self._db(release_calls, plan, self.clock.now(), f"internal error: {exc!r}")
            return CallOutcome(
                error=f"internal error: {type(exc).__name__}", settled=True, summary=None
            )

    # -- shared steps -----------------------------------------------------------------------

    def _in_tx(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        with self.db.transaction() as session:
            return fn(session, *args, **kwargs)

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(session, *args, **kwargs)`` in a transaction of its own, in a worker thread."""
        return await asyncio.to_thread(self._in_tx, fn, args, kwargs)

    def _estimate(self, plan: RunPlan, model: str, prompt: str) -> float:
        budget = plan.behavior.budget
        if budget is not None and budget.per_call_estimate_usd:
            return budget.per_call_estimate_usd
        if self.catalog is not None and not model.startswith("@preset/"):
            worst = self.catalog.worst_case_usd(model, prompt, plan.behavior.max_output_tokens)
            if worst:
                return worst
        return self.default_estimate_usd

    async def _ask(
        self,
        plan: RunPlan,
        key: SecretStr,
        record: CallRecord,
        prompt: str,
        state: _RunState,
        *,
        json_schema: Mapping[str, Any] | None = None,
        track_health: bool = False,
        skip_after: int = 0,
    ) -> CallResult:
        """One reserved call: ask, classify, record the moment it returns."""
        model = record.model_asked
        body = build_slot_request(
            plan, model, prompt, round_=record.round, slot=record.slot, json_schema=json_schema
        )
        timeout = record.timeout_seconds or plan.deadline_seconds
        state.in_flight += 1
        state.peak = max(state.peak, state.in_flight)
        self.peak_concurrency = max(self.peak_concurrency, state.in_flight)
        started = self.monotonic()
        try:
            answer = await self.client.chat(
                key=key,
                body=body,
                deadline=started + timeout,
                run_id=plan.run_id,
                expected_model=None if model.startswith("@preset/") else model,
            )
        except OpenRouterCallError as err:
            c = err.classification
            gate = c.gate
            if gate is Gate.TIMEOUT:  # one slow model is the provider's, not the behavior's
                gate = Gate.PROVIDER_ERROR
            result = CallResult(
                reason=c.reason,
                gate=gate,
                error=str(err),
                latency=self.monotonic() - started,
            )
            if c.gate in KEY_GATES and state.key_failure is None:
                state.key_failure = c.to_gate_result(run_id=plan.run_id)
                state.pause = state.pause or c.pause_behavior
        else:
            state.originals[record.key] = answer.output
            result = CallResult(
                answer=answer,
                latency=self.monotonic() - started,
                cost_usd=float(answer.usage.cost or 0.0),
            )
        finally:
            state.in_flight -= 1
        now = self.clock.now()
        if state.batches is not None:
            step = functools.partial(
                record_call, track_health=track_health, skip_after=skip_after, mirror=self.mirror
            )
            await state.batches.run(step, plan, record.key, result, now)
        else:
            await self._db(
                record_call,
                plan,
                record.key,
                result,
                now,
                track_health=track_health,
                skip_after=skip_after,
                mirror=self.mirror,
            )
        return result

    def _refusal(self, plan: RunPlan, amount: float, what: str) -> GateResult:
        budget = plan.behavior.budget
        assert budget is not None  # noqa: S101 — only a budget refuses
        return GateResult(
            Gate.SPEND_CAP,
            Outcome.FAIL,
            True,
            {
                "source": "budget_reservation",
                "reason": f"{what} was not started: its worst case (${amount:.4f}) does not "
                f"fit the {budget.reset} budget of ${budget.usd}",
                "budget_usd": budget.usd,
                "reset": budget.reset,
                "window_start": json_time(plan.budget_window) if plan.budget_window else None,
                "estimate_usd": amount,
            },
        )

    # -- broad canvas -------------------------------------------------------------------------

    async def _canvas_models(self, plan: RunPlan) -> tuple[list[str], dict[str, ModelMeta]]:
        canvas = plan.behavior.canvas
        assert canvas is not None  # noqa: S101 — validated with kind broad_canvas
        listing: list[ModelMeta] = []
        if canvas.catalog is not None:
            if self.base_url is None:
                raise CatalogError("no OpenRouter base URL to fetch the model catalog from")
            listing = await fetch_models(self.base_url)
            if self.catalog is not None:
                self.catalog.remember(listing)
        metas = {m.id: m for m in listing}
        if self.catalog is not None:
            for model in canvas.models:
                meta = self.catalog.meta(model)
                if meta is not None:
                    metas.setdefault(model, meta)
        models = list(canvas.models)
        models += [m for m in select_catalog_models(canvas, listing) if m not in models]
        return models, metas

    async def _canvas(self, plan: RunPlan, key: SecretStr) -> CallOutcome:
        canvas = plan.behavior.canvas
        assert canvas is not None  # noqa: S101 — validated with kind broad_canvas
        calls = await self._db(load_calls, plan.run_id)
        if not calls:  # a fresh run: decide its slots once, record them before asking
            try:
                models, metas = await self._canvas_models(plan)
            except CatalogError as exc:
                failure = GateResult(Gate.PROVIDER_ERROR, Outcome.FAIL, False, {"reason": str(exc)})
                return CallOutcome(failures=(failure,), error=str(exc), settled=True)
            skipped = await self._db(skipped_models, plan.behavior_id)
            specs = [
                SlotSpec(
                    0,
                    i,
                    "canvas",
                    model,
                    canvas_timeout(canvas, model, metas.get(model)),
                    status="skipped" if model in skipped else "pending",
                    reason="persistent_failure" if model in skipped else None,
                )
                for i, model in enumerate(models)
            ]
            now = self.clock.now()
            calls = await self._db(plan_calls, plan, specs, now)
        state = _RunState()
        pending = [c for c in calls if c.status == "pending"]
        limit = asyncio.Semaphore(canvas.max_concurrency)

        async def one(record: CallRecord) -> None:
            async with limit:
                if state.key_failure is not None or state.refused is not None:
                    return
                estimate = self._estimate(plan, record.model_asked, plan.prompt)
                now = self.clock.now()
                assert state.reservations is not None  # noqa: S101 — set for the canvas below
                ok = await state.reservations.run(reserve_calls, plan, {record.key: estimate}, now)
                if not ok:
                    state.refused = self._refusal(
                        plan, estimate, f"the call to {record.model_asked}"
                    )
                    return
                await self._ask(
                    plan,
                    key,
                    record,
                    plan.prompt,
                    state,
                    track_health=True,
                    skip_after=canvas.skip_after_failures,
                )

        state.batches, state.reservations = _Batches(self.db), _Batches(self.db)
        try:
            await asyncio.gather(*(one(r) for r in pending))
        finally:
            await state.batches.close()
            await state.reservations.close()
        if state.key_failure is not None or state.refused is not None:
            why = "budget" if state.refused is not None else "key"
            now = self.clock.now()
            left = [c.key for c in pending]
            await self._db(
                close_calls,
                plan.run_id,
                left,
                status="refused" if why == "budget" else "skipped",
                reason="spend_cap" if why == "budget" else "key_failure",
                error="not asked: the behavior's budget cannot take it"
                if why == "budget"
                else "not asked: the behavior's key failed",
                now=now,
            )
        final = await self._db(load_calls, plan.run_id)
        return self._canvas_outcome(plan, final, state)

    def _canvas_outcome(
        self, plan: RunPlan, calls: list[CallRecord], state: _RunState
    ) -> CallOutcome:
        answered = [c for c in calls if c.status == "answered"]
        failed = [c for c in calls if c.status == "failed"]
        skipped = [c for c in calls if c.status in ("skipped", "refused")]
        cost_by_model = {c.model_asked: round(c.cost_usd or 0.0, 8) for c in calls if c.cost_usd}
        total = sum(c.cost_usd or 0.0 for c in calls)
        heavy = sorted(cost_by_model.items(), key=lambda kv: kv[1], reverse=True)[:5]
        summary: dict[str, Any] = {
            "kind": "broad_canvas",
            "models": len(calls),
            "answered": len(answered),
            "failed": len(failed),
            "failed_by_reason": dict(Counter(c.reason or "unknown" for c in failed)),
            "skipped": [
                {"model": c.model_asked, "status": c.status, "reason": c.reason} for c in skipped
            ],
            "cost_by_model": cost_by_model,
            "total_cost_usd": round(total, 8),
            "most_expensive": [
                {
                    "model": m,
                    "cost_usd": cost,
                    "share": round(cost / total, 3) if total else 0.0,
                }
                for m, cost in heavy
            ],
            "peak_concurrency": state.peak,
        }
        failures = _run_failures(
            failed,
            state,
            lambda provider_failed: {
                "reason": f"{len(provider_failed)} of {len(calls)} canvas models failed "
                "(per-model provider errors, not the behavior's): "
                + ", ".join(
                    f"{r} x{n}"
                    for r, n in Counter(
                        c.reason or "unknown" for c in provider_failed
                    ).most_common()
                ),
                "failed_by_reason": summary["failed_by_reason"],
                "models": {c.model_asked: c.reason for c in provider_failed},
            },
        )
        output = None
        if answered:
            output = json.dumps(
                {
                    "kind": "broad_canvas",
                    "answers": [
                        {
                            "model": c.model_asked,
                            "answered_by": c.model_answered,
                            "output": state.originals.get(c.key, c.output or ""),
                        }
                        for c in answered
                    ],
                    "failed": [{"model": c.model_asked, "reason": c.reason} for c in failed],
                },
                ensure_ascii=False,
            )
        return CallOutcome(
            output=output,
            model=f"{len(answered)} of {len(calls)} models",
            cost_usd=total,
            prompt_tokens=sum(c.prompt_tokens or 0 for c in answered) or None,
            completion_tokens=sum(c.completion_tokens or 0 for c in answered) or None,
            failures=tuple(failures),
            pause=state.pause,
            error=None if answered else "no canvas model answered",
            summary=summary,
            settled=True,
        )

    # -- roundtable ---------------------------------------------------------------------------

    async def _roundtable(self, plan: RunPlan, key: SecretStr) -> CallOutcome:
        table = plan.behavior.roundtable
        assert table is not None  # noqa: S101 — validated with kind roundtable
        timeout = plan.deadline_seconds
        panel = table.panel
        roles: list[str | None] = [*table.roles] if table.roles else [None] * len(panel)
        specs = [SlotSpec(r, i, "panel", m, timeout) for r in (1, 2) for i, m in enumerate(panel)]
        specs.append(SlotSpec(3, 0, "synthesis", table.synthesis_model, timeout))
        now = self.clock.now()
        calls: list[CallRecord] = await self._db(plan_calls, plan, specs, now)
        state = _RunState()
        question = plan.prompt
        by_key = {c.key: c for c in calls}

        def text_of(c: CallRecord) -> str:
            return state.originals.get(c.key, c.output or "")

        for round_ in (1, 2, 3):
            calls = await self._db(load_calls, plan.run_id)
            by_key = {c.key: c for c in calls}
            this_round = [c for c in calls if c.round == round_]
            answered_1 = {
                c.model_asked: text_of(c) for c in calls if c.round == 1 and c.status == "answered"
            }
            if round_ >= 2 and len(answered_1) < 2:
                break  # fewer than two views: nothing to cross-pollinate or synthesize
            prompts: dict[tuple[int, int], str] = {}
            for c in this_round:
                role = roles[c.slot] if c.role == "panel" else None
                if round_ == 1:
                    prompts[c.key] = round1_prompt(question, role)
                elif round_ == 2:
                    own = answered_1.get(c.model_asked)
                    if own is None:
                        continue  # it gave no first answer: it sits round 2 out
                    others = {m: a for m, a in answered_1.items() if m != c.model_asked}
                    prompts[c.key] = round2_prompt(question, role, own, others)
                else:
                    rounds = {
                        r: {
                            x.model_asked: text_of(x)
                            for x in calls
                            if x.round == r and x.status == "answered"
                        }
                        for r in (1, 2)
                    }
                    prompts[c.key] = synthesis_prompt(question, rounds)
            todo = [c for c in this_round if c.status == "pending" and c.key in prompts]
            sitting_out = [
                c.key for c in this_round if c.status == "pending" and c.key not in prompts
            ]
            if sitting_out:
                now = self.clock.now()
                await self._db(
                    close_calls,
                    plan.run_id,
                    sitting_out,
                    status="skipped",
                    reason="no_first_answer",
                    error="not asked: this model gave no round-1 answer",
                    now=now,
                )
            if not todo:
                continue
            estimates = {c.key: self._estimate(plan, c.model_asked, prompts[c.key]) for c in todo}
            now = self.clock.now()
            ok = await self._db(reserve_calls, plan, estimates, now)
            if not ok:
                total = sum(estimates.values())
                state.refused = self._refusal(plan, total, f"round {round_}")
                left = [c.key for c in calls if c.status == "pending" and c.round >= round_]
                await self._db(
                    close_calls,
                    plan.run_id,
                    left,
                    status="refused",
                    reason="spend_cap",
                    error=f"not asked: round {round_} could break the budget",
                    now=now,
                )
                break
            await asyncio.gather(
                *(
                    self._ask(
                        plan,
                        key,
                        c,
                        prompts[c.key],
                        state,
                        json_schema=SYNTHESIS_SCHEMA if round_ == 3 else None,
                    )
                    for c in todo
                )
            )
            if state.key_failure is not None:
                now = self.clock.now()
                left = [
                    (r, s_) for (r, s_), c in by_key.items() if r > round_ and c.status == "pending"
                ]
                await self._db(
                    close_calls,
                    plan.run_id,
                    left,
                    status="skipped",
                    reason="key_failure",
                    error="not asked: the behavior's key failed",
                    now=now,
                )
                break
        left = [c.key for c in await self._db(load_calls, plan.run_id) if c.status == "pending"]
        if left:  # the rounds it never reached
            now = self.clock.now()
            await self._db(
                close_calls,
                plan.run_id,
                left,
                status="skipped",
                reason="not_reached",
                error="not asked: the roundtable stopped before this round",
                now=now,
            )
        final = await self._db(load_calls, plan.run_id)
        return self._roundtable_outcome(plan, final, state)

    def _roundtable_outcome(
        self, plan: RunPlan, calls: list[CallRecord], state: _RunState
    ) -> CallOutcome:
        def text_of(c: CallRecord) -> str:
            return state.originals.get(c.key, c.output or "")

        first = {c.model_asked: c for c in calls if c.round == 1 and c.status == "answered"}
        second = {c.model_asked: c for c in calls if c.round == 2 and c.status == "answered"}
        moves = []
        for model, c1 in first.items():
            c2 = second.get(model)
            entry: dict[str, Any] = {"model": model, "vendor": vendor_of(model)}
            if c2 is None:
                entry |= {"changed": None, "shift": None}
            else:
                entry |= deference(text_of(c1), text_of(c2))
            moves.append(entry)
        synthesis_call = next((c for c in calls if c.round == 3), None)
        total = sum(c.cost_usd or 0.0 for c in calls)
        failed = [c for c in calls if c.status == "failed"]
        summary: dict[str, Any] = {
            "kind": "roundtable",
            "rounds": {
                str(r): {
                    "answered": sum(1 for c in calls if c.round == r and c.status == "answered"),
                    "failed": sum(1 for c in calls if c.round == r and c.status == "failed"),
                }
                for r in (1, 2, 3)
            },
            "deference": moves,
            "total_cost_usd": round(total, 8),
            "confidence": None,
            "synthesis": None,
        }
        failures = _run_failures(
            failed,
            state,
            lambda provider_failed: {
                "reason": f"{len(provider_failed)} roundtable call(s) failed (provider "
                "errors, not the behavior's)",
                "calls": [
                    {"round": c.round, "model": c.model_asked, "reason": c.reason}
                    for c in provider_failed
                ],
            },
        )
        output = None
        downgrade = None
        error = None
        if synthesis_call is not None and synthesis_call.status == "answered":
            output = text_of(synthesis_call)
            document, problem = read_synthesis(output)
            if document is None:
                summary["synthesis_problem"] = problem
                downgrade = f"{problem}; an unreadable synthesis is never acted on autonomously"
                failures.append(
                    GateResult(
                        Gate.OUTPUT_CHECK,
                        Outcome.WARN,
                        True,
                        {"check": "synthesis_schema", "reason": problem},
                    )
                )
            else:
                summary["synthesis"] = document
                summary["confidence"] = document["confidence"]
                if document["confidence"] == "low":
                    downgrade = "the roundtable's confidence is low: never acted on autonomously"
        elif state.refused is None and state.key_failure is None:
            error = (
                "the roundtable did not reach a synthesis: fewer than two panel models "
                "answered, or the synthesis call failed"
            )
        elif state.refused is not None:
            error = str(state.refused.evidence.get("reason"))
        return CallOutcome(
            output=output,
            model=synthesis_call.model_answered if synthesis_call else None,
            cost_usd=total,
            prompt_tokens=sum(c.prompt_tokens or 0 for c in calls) or None,
            completion_tokens=sum(c.completion_tokens or 0 for c in calls) or None,
            failures=tuple(failures),
            pause=state.pause,
            error=error,
            summary=summary,
            settled=True,
            downgrade=downgrade,
        )
