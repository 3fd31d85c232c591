"""One run as operators read it (``GET /api/runs/{id}``, ``ledger show``, ``ledger run``) and
the approval requests waiting for them (``GET /api/approvals``, ``ledger approvals``). Read-only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from ledger.db.models import Approval, BehaviorRow, GateResultRow, IngestedSpan, Run, RunCall
from ledger.errors import NotFoundError
from ledger.gates import Tier
from ledger.spend import cost_disagreement


def gate_reason(outcome: str, evidence: dict[str, Any] | None) -> str:
    """Why a gate result came out as it did, in one sentence from its evidence: the
    classifier's explanation (with the provider's own message), an output check's or the
    sensitive-info detector's reason, or what passed."""
    evidence = evidence or {}
    detail, reason, message = (evidence.get(k) for k in ("detail", "reason", "message"))
    text = None
    if isinstance(detail, str) and detail:
        text = detail
    elif isinstance(reason, str) and " " in reason:  # a sentence, not a classifier's code
        text = reason
    if text is not None:
        if isinstance(message, str) and message and message not in text:
            text += f": {message}"
        count = evidence.get("error_count")
        if isinstance(count, int) and count > 1:
            text += f" (+{count - 1} more)"
        return text
    if outcome == "pass":
        checks = evidence.get("checks")
        if isinstance(checks, list):
            return "passed: " + ", ".join(map(str, checks)) if checks else "no checks configured"
        if evidence.get("count") == 0:
            return "nothing sensitive found"
        return "passed"
    if isinstance(reason, str) and reason:
        return reason
    return "no reason recorded"


def run_calls(session: Session, run_id: str) -> list[dict[str, Any]]:
    """The per-call records of a multi-model run (a roundtable's rounds, a canvas's slots), by
    round then slot: model asked and model that answered, status, classification of a
    failure, latency, cost, tokens and the output masked as stored. Empty for a single call."""
    rows = session.exec(
        select(RunCall)
        .where(col(RunCall.run_id) == run_id)
        .order_by(col(RunCall.round), col(RunCall.slot))
    ).all()
    return [
        {
            "round": r.round,
            "slot": r.slot,
            "role": r.role,
            "model": r.model_asked,
            "model_answered": r.model_answered,
            "status": r.status,
            "reason": r.reason,
            "gate": r.gate,
            "error": r.error,
            "timeout_seconds": r.timeout_seconds,
            "latency_seconds": r.latency_seconds,
            "cost_usd": r.cost_usd,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "generation_id": r.generation_id,
            "output": r.output,
            "output_sha256": r.output_sha256,
            "attempts": r.attempts,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
        }
        for r in rows
    ]


def run_json(session: Session, run_id: str) -> dict[str, Any]:
    """One run: its slot, tier, preset, model, cost, output (masked as stored), disposition,
    each gate result with its reason, and its approval request. Raises NotFoundError."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist (see `ledger status`)")
    results = session.exec(
        select(GateResultRow)
        .where(col(GateResultRow.run_id) == run_id)
        .order_by(col(GateResultRow.id))
    ).all()
    approval = session.exec(select(Approval).where(col(Approval.run_id) == run_id)).first()
    behavior = session.get(BehaviorRow, run.behavior_id)
    broadcast_prompt, broadcast_completion = session.execute(
        select(
            func.sum(IngestedSpan.prompt_tokens), func.sum(IngestedSpan.completion_tokens)
        ).where(col(IngestedSpan.run_id) == run_id)
    ).one()
    return {
        "id": run.id,
        "behavior": behavior.name if behavior else None,
        "scheduled_for": run.scheduled_for,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_seconds": (
            (run.finished_at - run.started_at).total_seconds()
            if run.finished_at and run.started_at
            else None
        ),
        "trigger": run.trigger,
        "kind": run.kind,
        "status": run.status,
        **Tier(run.tier).as_json(),
        "preset": run.preset,
        "model": run.model,
        "generation_id": run.generation_id,
        "via_fallback": run.via_fallback,
        "cost_usd": run.cost_usd,
        "broadcast_cost_usd": run.broadcast_cost_usd,
        # The budget counts the larger figure; a disagreement is broadcast minus runner.
        "counted_cost_usd": max(run.cost_usd or 0.0, run.broadcast_cost_usd or 0.0),
        "cost_disagreement_usd": cost_disagreement(run.cost_usd, run.broadcast_cost_usd),
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "broadcast_prompt_tokens": broadcast_prompt,
        "broadcast_completion_tokens": broadcast_completion,
        # Stored masked: each finding of the sensitive-info detector is replaced by
        # ``<kind: preview>``; ``output_findings`` gives kinds and positions in the
        # original, ``output_sha256`` the original's digest.
        "output": run.output,
        "output_sha256": run.output_sha256,
        "output_findings": run.output_findings or [],
        "disposition": run.disposition,
        "error": run.error,
        # Multi-model runs: the synthesis and confidence or the canvas summary, and each call.
        "summary": run.summary,
        "calls": run_calls(session, run_id),
        "gate_results": [
            {
                "id": r.id,
                "gate": r.gate,
                "outcome": r.outcome,
                "attributable": r.attributable,
                "reason": gate_reason(r.outcome, r.evidence),
                "source": r.source,
                "evidence": r.evidence,
                "at": r.created_at,
            }
            for r in results
        ],
        "approval": None
        if approval is None
        else {
            "status": approval.status,
            "payload": approval.payload,
            "payload_sha256": approval.payload_sha256,
            "requested_at": approval.requested_at,
            "expires_at": approval.expires_at,
            "decided_by": approval.decided_by,
            "reason": approval.reason,
        },
    }


def approval_requests(
    session: Session, status: str = "pending", limit: int = 100
) -> list[dict[str, Any]]:
    """Approval requests with ``status``, oldest first, each with the payload to review, its
    hash and the run's output (masked as stored)."""
    rows = session.exec(
        select(Approval, BehaviorRow.name, Run.output)
        .join(BehaviorRow, col(BehaviorRow.id) == col(Approval.behavior_id))
        .join(Run, col(Run.id) == col(Approval.run_id))
        .where(col(Approval.status) == status)
        .order_by(col(Approval.requested_at))
        .limit(limit)
    ).all()
    return [
        {
            "run_id": a.run_id,
            "behavior": name,
            "status": a.status,
            "requested_at": a.requested_at,
            "expires_at": a.expires_at,
            "output": output,
            "payload": a.payload,
            "payload_sha256": a.payload_sha256,
        }
        for a, name, output in rows
    ]


def run_request(session: Session, run_id: str) -> dict[str, Any] | None:
    """The chat request ``run_id`` sent, rebuilt from its behavior's current definition at the
    run's tier and slot (the key is a header, never part of it); None when the behavior's
    stored definition cannot be read. Requests are not stored: a definition changed since the
    run rebuilds the new one."""
    from pydantic import ValidationError

    from ledger.behaviors.schema import Behavior
    from ledger.runner.openrouter import build_chat_request
    from ledger.runner.run import render_prompt

    run = session.get(Run, run_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist (see `ledger status`)")
    row = session.get(BehaviorRow, run.behavior_id)
    if row is None:
        return None
    try:
        behavior = Behavior.model_validate(row.definition)
    except ValidationError:
        return None
    at = run.started_at or run.scheduled_for
    tier = Tier(run.tier)
    builtins = {
        "now": at.isoformat(timespec="seconds"),
        "date": at.date().isoformat(),
        "run_id": run.id,
        "behavior": behavior.name,
        "tier": tier.value,
    }
    prompt = render_prompt(row.prompt_text, behavior.inputs, builtins)
    request: dict[str, Any] = build_chat_request(behavior, tier, prompt, run.id)
    return request
