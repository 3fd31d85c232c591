"""``POST /api/v1/chat/completions``: resolve the preset or model, apply the programmed
faults, answer (or refuse) in OpenRouter's shape, charge the key and broadcast afterwards."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import datetime

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from ledger.sim.openrouter.answers import (
    count_prompt_tokens,
    estimate_tokens,
    generate_answer,
    json_answer,
    read_response_format,
)
from ledger.sim.openrouter.broadcast import GenerationRecord, build_broadcast, vendor
from ledger.sim.openrouter.config import FAULT_KINDS, JSON, Fault
from ledger.sim.openrouter.state import ActiveFault, KeyState, SimState, limit_exceeded_message
from ledger.sim.openrouter.wire import ApiError, JSONResponse, inference_key, json_body, sim_state

# Faults that replace the answer with an error response; the first one that applies wins.
_REFUSALS = frozenset(FAULT_KINDS - {"delay", "sensitive_output", "error_in_200", "wrong_model"})

CREDITS_MESSAGE = "Insufficient credits. Add more using https://openrouter.ai/credits"
DEFAULT_SENSITIVE_TEXT = (
    "Audit finished. Send questions to jane.doe@example.com; debug token "
    "sk-or-v1-" + "d3adb33f" * 8 + "."
)
DEFAULT_FALLBACK_MODEL = "openai/gpt-4o-mini"
SESSION_ID_MAX = 256


@dataclass(frozen=True, slots=True)
class _Target:
    preset_slug: str | None
    model: str
    fallbacks: tuple[str, ...]
    input_price: float
    output_price: float
    provider: str
    max_completion_tokens: int | None
    system_prompt: str | None
    output: str | None


def _resolve_target(body: JSON, state: SimState) -> _Target:
    raw_model = body.get("model")
    preset_slug = body.get("preset")
    model: str | None = None
    if isinstance(raw_model, str) and "@preset/" in raw_model:
        model_part, _, preset_slug = raw_model.partition("@preset/")
        model = model_part or None
    elif isinstance(raw_model, str) and raw_model:
        model = raw_model
    elif isinstance(body.get("models"), list) and body["models"]:
        model = str(body["models"][0])
    preset = None
    if preset_slug is not None:
        preset = state.config.presets.get(str(preset_slug))
        if preset is None:
            raise ApiError(404, f"Preset not found: {preset_slug}")
    if model is None and preset is None:
        raise ApiError(400, "No model specified: send 'model' or a preset")
    chosen = model or (preset.model if preset else "")
    if chosen not in state.models:
        raise ApiError(404, f"No endpoints found for {chosen}.")
    info = state.models[chosen]
    use_preset_price = preset is not None and chosen == preset.model
    extra_models = tuple(str(m) for m in body.get("models") or () if str(m) != chosen)
    fallbacks = (preset.fallback_models if preset else ()) + extra_models
    return _Target(
        preset_slug=None if preset_slug is None else str(preset_slug),
        model=chosen,
        fallbacks=fallbacks,
        input_price=preset.input_price if preset and use_preset_price else info.input_price,
        output_price=preset.output_price if preset and use_preset_price else info.output_price,
        provider=(preset.provider if preset else None) or info.provider or _provider_for(chosen),
        max_completion_tokens=preset.max_completion_tokens if preset else None,
        system_prompt=preset.system_prompt if preset else None,
        output=preset.output if preset else None,
    )


def _provider_for(model: str) -> str:
    return vendor(model).replace("-", " ").title()


def _refusal(fault: Fault, key: KeyState, target: _Target, cap: int) -> ApiError:
    kind = fault.kind
    if kind == "rate_limit":
        retry_after = fault.retry_after if fault.retry_after is not None else 1
        return ApiError(
            429,
            f"{target.model} is temporarily rate-limited upstream. Please retry shortly.",
            {
                "error_type": fault.error_type or "rate_limit_exceeded",
                "provider_name": target.provider,
            },
            {"Retry-After": str(retry_after)},
            "rate_limit_exceeded",
        )
    if kind == "model_not_found":
        return ApiError(
            404,
            f"No endpoints found for {target.model}. The model may be deprecated.",
            {"error_type": fault.error_type or "not_found"},
            error_type="not_found",
        )
    if kind == "model_forbidden":
        return ApiError(
            403,
            f"{target.model} is not available for this account or region",
            {"error_type": fault.error_type or "permission_denied"},
            error_type="permission_denied",
        )
    if kind == "payment_required":
        return ApiError(
            402,
            "This request requires more credits, or fewer max_tokens. You requested up to "
            f"{cap} tokens, but can only afford {max(1, cap // 4)}. To increase, visit "
            "https://openrouter.ai/settings/credits and add more credits",
            {"error_type": fault.error_type} if fault.error_type else None,
            error_type="payment_required",
        )
    if kind == "key_limit":
        reset = fault.limit_reset or key.limit_reset
        return ApiError(403, limit_exceeded_message(reset), error_type="key_limit_exceeded")
    if kind == "workspace_budget":
        message = f"Workspace monthly budget of {fault.budget} exceeded. Contact your org admin."
        return ApiError(403, message, error_type="workspace_budget_exceeded")
    if kind == "prompt_injection":
        return ApiError(
            403,
            "Request blocked: prompt injection patterns detected",
            {"patterns": list(fault.patterns)},
            error_type="guardrail_blocked",
        )
    if kind == "content_filter":
        return ApiError(
            403,
            f"Request blocked by content filter: [{fault.label}]",
            {"reasons": [fault.label], "flagged_input": f"[{fault.label}]"},
            error_type="guardrail_blocked",
        )
    status = fault.status or 502
    default_type = {
        500: "internal_error",
        502: "provider_unavailable",
        503: "provider_overloaded",
        524: "timeout",
        529: "provider_overloaded",
    }[status]
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    error_type = fault.error_type or default_type
    return ApiError(
        status,
        f"Provider returned error ({target.provider})",
        {"error_type": error_type, "provider_name": target.provider},
        headers,
        error_type,
    )


def _read_cap(body: JSON, target: _Target) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ApiError(400, f"{name} must be a positive integer")
        return value
    return target.max_completion_tokens


def _read_attribution(request: Request, body: JSON) -> tuple[str | None, str | None, JSON]:
    user = body.get("user")
    session_id = body.get("session_id") or request.headers.get("x-session-id")
    trace = body.get("trace") or {}
    if user is not None and not isinstance(user, str):
        raise ApiError(400, "user must be a string")
    if session_id is not None and (
        not isinstance(session_id, str) or len(session_id) > SESSION_ID_MAX
    ):
        raise ApiError(400, f"session_id must be a string of at most {SESSION_ID_MAX} characters")
    if not isinstance(trace, dict):
        raise ApiError(400, "trace must be an object")
    return user, session_id, trace


def _compose(text_words: list[str] | str, cap: int | None) -> tuple[str, int, str]:
    """(content, completion tokens, finish reason) for an answer capped at ``cap`` tokens."""
    if isinstance(text_words, str):
        tokens = estimate_tokens(text_words)
        if cap is not None and tokens > cap:
            return text_words[: cap * 4], cap, "length"
        return text_words, tokens, "stop"
    if cap is not None and len(text_words) > cap:
        return " ".join(text_words[:cap]), cap, "length"
    return " ".join(text_words), len(text_words), "stop"


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    target: _Target
    messages: list[JSON]
    cap: int | None
    user: str | None
    session_id: str | None
    trace: JSON
    response_format: JSON | None  # set when the request asked for JSON


@dataclass(frozen=True, slots=True)
class _Answer:
    model: str
    content: str
    completion_tokens: int
    finish_reason: str
    error: JSON | None  # the error object of a choice that failed inside a 200
    broadcast: bool


def _parse_chat(request: Request, body: JSON, state: SimState) -> _ChatRequest:
    target = _resolve_target(body, state)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, 'Input required: specify "prompt" or "messages"')
    if not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "Each message must be an object")
    if body.get("stream"):
        raise ApiError(400, "The simulator does not stream: send stream=false")
    if target.system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": target.system_prompt}, *messages]
    user, session_id, trace = _read_attribution(request, body)
    try:
        response_format = read_response_format(body.get("response_format"))
    except ValueError as exc:
        raise ApiError(400, str(exc)) from exc
    cap = _read_cap(body, target)
    return _ChatRequest(target, messages, cap, user, session_id, trace, response_format)


def _pick_refusal(
    key: KeyState, faults: list[ActiveFault], chat: _ChatRequest, now: datetime
) -> tuple[ApiError | None, bool]:
    """(the error that refuses this call or None, whether to broadcast it). The key's own
    limit and balance come first; then the first refusal fault, which counts a hit."""
    remaining = key.limit_remaining(now)
    balance = key.balance_remaining()
    if remaining is not None and remaining <= 0:
        message = limit_exceeded_message(key.limit_reset)
        return ApiError(403, message, error_type="key_limit_exceeded"), True
    if balance is not None and balance <= 0:
        return ApiError(402, CREDITS_MESSAGE, error_type="payment_required"), True
    for active in faults:
        if active.fault.kind in _REFUSALS:
            active.hits += 1
            refusal = _refusal(active.fault, key, chat.target, chat.cap or 16384)
            return refusal, active.fault.broadcast
    return None, True


def _answer(
    state: SimState, key: KeyState, chat: _ChatRequest, faults: list[ActiveFault]
) -> _Answer:
    """The answer to a call that was not refused, with the success-shaped faults applied."""
    target = chat.target
    modifiers = {a.fault.kind: a for a in faults if a.fault.kind not in _REFUSALS | {"delay"}}
    for active in modifiers.values():
        active.hits += 1
    broadcast = all(a.fault.broadcast for a in modifiers.values())
    model = target.model
    if wrong := modifiers.get("wrong_model"):
        fallback = target.fallbacks[0] if target.fallbacks else DEFAULT_FALLBACK_MODEL
        model = wrong.fault.model or fallback
    if errored := modifiers.get("error_in_200"):
        error = {
            "code": errored.fault.status or 502,
            "message": f"Upstream error from {target.provider}: the stream was interrupted",
            "metadata": {
                "error_type": errored.fault.error_type or "provider_error",
                "provider_name": target.provider,
            },
        }
        return _Answer(model, "", 0, "error", error, broadcast)
    answer: list[str] | str
    if sensitive := modifiers.get("sensitive_output"):
        answer = sensitive.fault.text or DEFAULT_SENSITIVE_TEXT
    elif key.output is not None:
        answer = key.output
    elif target.output is not None:
        answer = target.output
    else:
        answer = generate_answer(state.config.seed, model, chat.messages)
        if chat.response_format is not None:
            answer = json_answer(chat.response_format, answer)
    content, completion_tokens, finish_reason = _compose(answer, chat.cap)
    return _Answer(model, content, completion_tokens, finish_reason, None, broadcast)


def _completion_payload(record: GenerationRecord, answer: _Answer) -> JSON:
    choice: JSON = {"index": 0, "logprobs": None}
    if answer.error is not None:
        choice["error"] = answer.error
    choice |= {
        "finish_reason": answer.finish_reason,
        "native_finish_reason": answer.finish_reason,
        "message": {
            "role": "assistant",
            "content": answer.content,
            "refusal": None,
            "reasoning": None,
        },
    }
    prompt, completion = record.prompt_tokens, record.completion_tokens
    return {
        "id": record.generation_id,
        "provider": record.provider_name,
        "model": answer.model,
        "object": "chat.completion",
        "created": int(record.started_at.timestamp()),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": record.total_cost,
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "cost_details": {
                "upstream_inference_cost": None,
                "upstream_inference_prompt_cost": record.input_cost,
                "upstream_inference_completions_cost": record.output_cost,
            },
            "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
        },
    }


async def chat_completions(request: Request) -> Response:
    """Authenticate → resolve preset/model → validate → delay faults → refuse (limits,
    balance, refusal faults) or answer (success faults) → charge the key → broadcast after
    the response."""
    state = sim_state(request)
    body = await json_body(request)
    key = inference_key(request)
    request.scope["sim.key_name"] = key.name
    chat = _parse_chat(request, body, state)
    target = chat.target

    faults = state.matching_faults(key.name, target.preset_slug, target.model)
    delays = [a for a in faults if a.fault.kind == "delay"]
    for active in delays:
        active.hits += 1
    wait = sum(a.fault.seconds for a in delays) + state.latency(target.model)
    if wait:
        await asyncio.sleep(wait)

    started = state.config.clock()
    generation_id = state.new_id(started)
    request.scope["sim.generation_id"] = generation_id
    record = GenerationRecord(
        generation_id=generation_id,
        started_at=started,
        ended_at=started,
        key_name=key.name,
        request_model=target.model,
        response_model=target.model,
        provider_name=target.provider,
        user=chat.user,
        session_id=chat.session_id,
        trace=chat.trace,
        messages=chat.messages,
        prompt_tokens=count_prompt_tokens(chat.messages),
        input_unit_price=target.input_price,
        output_unit_price=target.output_price,
    )

    refusal, broadcast = _pick_refusal(key, faults, chat, started)
    if refusal is not None:
        record = replace(
            record,
            ended_at=state.config.clock(),
            prompt_tokens=0,
            finish_reason=None,
            error_status=refusal.status,
            error_message=refusal.message,
            error_type=refusal.error_type,
        )
        state.generations[generation_id] = _generation_view(record, target.preset_slug)
        task = _broadcast_task(state, record) if broadcast else None
        return JSONResponse(refusal.body(), refusal.status, refusal.headers, background=task)

    answer = _answer(state, key, chat, faults)
    if answer.model != target.model and (routed := state.models.get(answer.model)) is not None:
        # A fallback answered: OpenRouter bills (and names the provider of) the model that did.
        record = replace(
            record,
            input_unit_price=routed.input_price,
            output_unit_price=routed.output_price,
            provider_name=routed.provider or _provider_for(answer.model),
        )
    record = replace(
        record,
        ended_at=state.config.clock(),
        response_model=answer.model,
        completion=answer.content,
        completion_tokens=answer.completion_tokens,
        finish_reason=answer.finish_reason,
    )
    if answer.error is not None:
        record = replace(
            record,
            error_status=int(answer.error["code"]),
            error_message=str(answer.error["message"]),
            error_type=str(answer.error["metadata"]["error_type"]),
        )
    key.spent.append((record.ended_at, record.total_cost))
    state.generations[generation_id] = _generation_view(record, target.preset_slug)
    task = _broadcast_task(state, record) if answer.broadcast else None
    return JSONResponse(_completion_payload(record, answer), background=task)


def _generation_view(record: GenerationRecord, preset_slug: str | None) -> JSON:
    cost = 0.0 if record.finish_reason is None else record.total_cost
    return {
        "id": record.generation_id,
        "model": record.response_model,
        "created_at": record.started_at.isoformat(),
        "total_cost": cost,
        "usage": cost,
        "is_byok": False,
        "provider_name": record.provider_name,
        "tokens_prompt": record.prompt_tokens,
        "tokens_completion": record.completion_tokens,
        "native_tokens_prompt": record.prompt_tokens,
        "native_tokens_completion": record.completion_tokens,
        "native_tokens_reasoning": record.reasoning_tokens,
        "finish_reason": record.finish_reason,
        "native_finish_reason": record.finish_reason,
        "generation_time": int((record.ended_at - record.started_at).total_seconds() * 1000),
        "session_id": record.session_id,
        "user": record.user,
        "preset_id": preset_slug,
        "api_key_name": record.key_name,
        "status": record.error_status or 200,
    }


def _broadcast_task(state: SimState, record: GenerationRecord) -> BackgroundTask | None:
    if state.broadcast_url is None:
        return None
    return BackgroundTask(
        _deliver, state, state.broadcast_url, dict(state.broadcast_headers), record
    )


async def _deliver(
    state: SimState, url: str, headers: dict[str, str], record: GenerationRecord
) -> None:
    """POST one broadcast delivery; any failure is recorded, never raised."""
    entry: JSON = {"generation_id": record.generation_id, "url": url}
    state.deliveries.append(entry)
    client = state.http
    if client is None:
        entry["error"] = "simulator is not running (no HTTP client)"
        return
    try:
        response = await client.post(
            url,
            content=orjson.dumps(build_broadcast(record)),
            headers={"content-type": "application/json", **headers},
            timeout=state.config.broadcast_timeout,
        )
    except Exception as exc:  # a broadcast failure must never reach the chat caller
        entry["error"] = f"{type(exc).__name__}: {exc}"
    else:
        entry["status"] = response.status_code
