"""The model call of a run: OpenRouter first, the behavior's fallback endpoint only after a
failure that is not the behavior's fault. Turns whatever happened into a ``CallOutcome``."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from ledger.errors import SecretError
from ledger.gates import Gate, GateResult, Outcome
from ledger.runner.openrouter import (
    ChatResult,
    OpenRouterCallError,
    OpenRouterClient,
    build_chat_request,
    build_fallback_request,
    should_fall_back,
)
from ledger.runner.run import CallOutcome, RunPlan
from ledger.secrets import resolve

log = structlog.get_logger("ledger.runner")


def _outcome(
    result: ChatResult,
    primary: str | None,
    *,
    via_fallback: bool = False,
    failures: tuple[GateResult, ...] = (),
) -> CallOutcome:
    return CallOutcome(
        output=result.output,
        model=result.model,
        generation_id=result.generation_id,
        cost_usd=float(result.usage.cost or 0.0),
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        primary_model=primary,
        via_fallback=via_fallback,
        failures=failures,
    )


async def call_model(
    client: OpenRouterClient,
    plan: RunPlan,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> CallOutcome:
    """Call the behavior's preset with its own key; fall back when OpenRouter itself failed.

    A run prepared before its slot (``plan.send_at``) is sent at the slot's instant; its
    deadline counts from then."""
    behavior = plan.behavior
    try:
        key = resolve(behavior.api_key)
    except SecretError as exc:
        result = GateResult(Gate.AUTH_ERROR, Outcome.FAIL, False, {"reason": str(exc)})
        return CallOutcome(failures=(result,), pause=True, error=str(exc))
    send_at = plan.send_at.timestamp() if plan.send_at is not None else None
    wait = max(0.0, send_at - wall()) if send_at is not None else 0.0
    deadline = monotonic() + wait + plan.deadline_seconds
    body = build_chat_request(behavior, plan.tier, plan.prompt, plan.run_id)
    try:
        answer = await client.chat(
            key=key,
            body=body,
            deadline=deadline,
            run_id=plan.run_id,
            expected_model=behavior.primary_model,
            send_at=send_at,
        )
        return _outcome(answer, behavior.primary_model)
    except OpenRouterCallError as err:
        failure = err.classification.to_gate_result(run_id=plan.run_id)
        first = CallOutcome(
            failures=(failure,), pause=err.classification.pause_behavior, error=str(err)
        )
        if behavior.fallback is None or not should_fall_back(err.classification):
            return first
    fallback = behavior.fallback
    try:
        fallback_key = resolve(fallback.api_key)
    except SecretError as exc:
        log.warning(
            "fallback key unavailable", behavior=behavior.name, run_id=plan.run_id, error=str(exc)
        )
        return first
    try:
        answer = await client.fallback_chat(
            base_url=fallback.base_url,
            key=fallback_key,
            body=build_fallback_request(behavior, plan.prompt),
            deadline=deadline,
            run_id=plan.run_id,
            expected_model=behavior.primary_model,
        )
    except OpenRouterCallError as err2:
        second = err2.classification.to_gate_result(run_id=plan.run_id)
        return CallOutcome(failures=(failure, second), error=f"{first.error}; fallback: {err2}")
    log.info("answered by the fallback endpoint", behavior=behavior.name, run_id=plan.run_id)
    return _outcome(answer, behavior.primary_model, via_fallback=True, failures=(failure,))
