"""The route table: models, key inspection, credits, generations, the key management API
and the ``/_sim/*`` control endpoints; ``create_app`` puts them together."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.sim.openrouter.chat import chat_completions
from ledger.sim.openrouter.config import JSON, LIMIT_RESETS, Fault, SimConfig, SimConfigError
from ledger.sim.openrouter.state import KeyState, SimState
from ledger.sim.openrouter.wire import (
    ApiError,
    JSONResponse,
    bearer,
    inference_key,
    json_body,
    recorded,
    require_management,
    sim_state,
)


async def list_models(request: Request) -> Response:
    """``GET /api/v1/models``: every model the presets and ``models`` name, with per-token
    prices as decimal strings (as OpenRouter lists them), context length and supported
    parameters (``reasoning`` for reasoning models); no key needed."""
    state = sim_state(request)
    data = [
        {
            "id": model,
            "canonical_slug": model,
            "name": model,
            "context_length": info.context_length,
            "architecture": {
                "modality": "text->text",
                "input_modalities": ["text"],
                "output_modalities": ["text"],
            },
            "pricing": {
                "prompt": _decimal(info.input_price),
                "completion": _decimal(info.output_price),
                "request": "0",
                "image": "0",
                "internal_reasoning": _decimal(info.output_price) if info.reasoning else "0",
            },
            "top_provider": {
                "context_length": info.context_length,
                "max_completion_tokens": None,
                "is_moderated": False,
            },
            "supported_parameters": [
                "max_tokens",
                "temperature",
                "response_format",
                *(["reasoning", "include_reasoning"] if info.reasoning else []),
            ],
        }
        for model, info in sorted(state.models.items())
    ]
    return JSONResponse({"data": data})


def _decimal(value: float) -> str:
    return f"{value:.12f}".rstrip("0").rstrip(".") or "0"


async def current_key(request: Request) -> Response:
    state = sim_state(request)
    now = state.config.clock()
    token = bearer(request)
    if state.config.management_key is not None and token == state.config.management_key:
        data: JSON = {
            "label": f"{token[:11]}...{token[-3:]}",
            "limit": None,
            "limit_remaining": None,
        }
        data |= {"usage": 0.0, "is_management_key": True, "is_provisioning_key": True}
        return JSONResponse({"data": data | {"is_free_tier": False}})
    key = inference_key(request)
    request.scope["sim.key_name"] = key.name
    data = {"label": key.label, **key.usage_view(now)}
    data |= {
        "is_free_tier": key.balance == 0,
        "is_management_key": False,
        "is_provisioning_key": False,
        "creator_user_id": "user_sim000000000000000000000",
        "rate_limit": {
            "requests": -1,
            "interval": "10s",
            "note": "This field is deprecated and safe to ignore.",
        },
    }
    return JSONResponse({"data": data})


async def credits(request: Request) -> Response:
    """The key's own credit balance (a simulator simplification of the account balance)."""
    key = inference_key(request)
    request.scope["sim.key_name"] = key.name
    total = 1_000_000.0 if key.balance is None else key.balance
    return JSONResponse({"data": {"total_credits": total, "total_usage": key.usage_since(None)}})


async def generation(request: Request) -> Response:
    inference_key(request)
    found = sim_state(request).generations.get(request.query_params.get("id", ""))
    if found is None:
        raise ApiError(404, "Generation not found")
    return JSONResponse({"data": found})


def _limit_fields(body: JSON, key: KeyState | None) -> JSON:
    updates: JSON = {}
    if "limit" in body:
        limit = body["limit"]
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0
        ):
            raise ApiError(400, "limit must be a non-negative number or null")
        updates["limit"] = None if limit is None else float(limit)
    if "limit_reset" in body:
        if body["limit_reset"] not in (None, *LIMIT_RESETS):
            raise ApiError(400, "limit_reset must be daily, weekly, monthly or null")
        updates["limit_reset"] = body["limit_reset"]
    if "include_byok_in_limit" in body:
        updates["include_byok_in_limit"] = bool(body["include_byok_in_limit"])
    if "expires_at" in body:
        updates["expires_at"] = body["expires_at"]
    if "disabled" in body:
        if key is None:
            raise ApiError(400, "disabled can only be set on an existing key")
        updates["disabled"] = bool(body["disabled"])
    if "name" in body:
        if not isinstance(body["name"], str) or not body["name"].strip():
            raise ApiError(400, "name must be a non-empty string")
        updates["name"] = body["name"]
    return updates


async def list_keys(request: Request) -> Response:
    require_management(request)
    state = sim_state(request)
    now = state.config.clock()
    offset = int(request.query_params.get("offset", "0") or 0)
    include_disabled = request.query_params.get("include_disabled", "false").lower() == "true"
    views = [
        k.management_view(now) for k in state.keys.values() if include_disabled or not k.disabled
    ]
    return JSONResponse({"data": views[offset : offset + 100]})


async def create_key(request: Request) -> Response:
    require_management(request)
    state = sim_state(request)
    body = await json_body(request)
    if "name" not in body:
        raise ApiError(400, "name is required")
    updates = _limit_fields(body, None)
    now = state.config.clock()
    key = state.add_key(state.new_key(), updates.pop("name"), None, None, now)
    for name, value in updates.items():
        setattr(key, name, value)
    return JSONResponse({"data": key.management_view(now), "key": key.key}, status_code=201)


async def one_key(request: Request) -> Response:
    require_management(request)
    state = sim_state(request)
    key = state.by_hash(request.path_params["hash"])
    if key is None:
        raise ApiError(404, "Not Found")
    now = state.config.clock()
    if request.method == "DELETE":
        del state.keys[key.key]
        return JSONResponse({"deleted": True})
    if request.method == "PATCH":
        for name, value in _limit_fields(await json_body(request), key).items():
            setattr(key, name, value)
        key.updated_at = now
    return JSONResponse({"data": key.management_view(now)})


# --------------------------------------------------------------------------------------------
# Control endpoints (/_sim/*)
# --------------------------------------------------------------------------------------------


def _fault_list(body: Any) -> list[JSON]:
    if isinstance(body, dict) and isinstance(body.get("faults"), list):
        return list(body["faults"])
    if isinstance(body, dict):
        return [body]
    raise ApiError(400, 'send a fault object or {"faults": [...]}')


async def sim_faults(request: Request) -> Response:
    state = sim_state(request)
    if request.method == "GET":
        return JSONResponse({"faults": [f.view() for f in state.faults]})
    if request.method == "DELETE":
        cleared = len(state.faults)
        state.faults.clear()
        return JSONResponse({"cleared": cleared})
    try:
        faults = [
            Fault.from_mapping(raw, f"faults[{i}]")
            for i, raw in enumerate(_fault_list(await json_body(request)))
        ]
    except (SimConfigError, TypeError) as exc:
        raise ApiError(400, str(exc)) from exc
    added = [state.add_fault(f).view() for f in faults]
    return JSONResponse({"faults": added}, status_code=201)


async def sim_calls(request: Request) -> Response:
    return JSONResponse({"calls": sim_state(request).calls})


async def sim_deliveries(request: Request) -> Response:
    return JSONResponse({"deliveries": sim_state(request).deliveries})


async def sim_reset(request: Request) -> Response:
    sim_state(request).reset()
    return JSONResponse({"reset": True})


async def sim_broadcast(request: Request) -> Response:
    """Point the broadcast at a destination at runtime: ``{"url": ..., "headers": {...}}``."""
    state = sim_state(request)
    body = await json_body(request)
    url = body.get("url")
    headers = body.get("headers") or {}
    if (url is not None and not isinstance(url, str)) or not isinstance(headers, dict):
        raise ApiError(400, 'send {"url": string|null, "headers": {name: value}}')
    state.broadcast_url = url
    state.broadcast_headers = {str(k): str(v) for k, v in headers.items()}
    return JSONResponse({"url": url, "headers": sorted(state.broadcast_headers)})


async def _render_error(request: Request, exc: Exception) -> Response:
    """Render routing errors (404/405) and control-endpoint errors in OpenRouter's shape."""
    if isinstance(exc, ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
    return JSONResponse({"error": {"code": status, "message": detail}}, status_code=status)


def create_app(config: SimConfig) -> Starlette:
    """The simulator as an ASGI app. Its lifespan owns the HTTP client used for broadcast."""
    state = SimState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=config.broadcast_timeout) as client:
            state.http = client
            try:
                yield
            finally:
                state.http = None

    routes = [
        Route("/api/v1/chat/completions", recorded(chat_completions), methods=["POST"]),
        Route("/api/v1/key", recorded(current_key), methods=["GET"]),
        Route("/api/v1/models", recorded(list_models), methods=["GET"]),
        Route("/api/v1/credits", recorded(credits), methods=["GET"]),
        Route("/api/v1/generation", recorded(generation), methods=["GET"]),
        Route("/api/v1/keys", recorded(list_keys), methods=["GET"]),
        Route("/api/v1/keys", recorded(create_key), methods=["POST"]),
        Route("/api/v1/keys/{hash}", recorded(one_key), methods=["GET", "PATCH", "DELETE"]),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/calls", sim_calls, methods=["GET"]),
        Route("/_sim/deliveries", sim_deliveries, methods=["GET"]),
        Route("/_sim/reset", sim_reset, methods=["POST"]),
        Route("/_sim/broadcast", sim_broadcast, methods=["PUT"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _render_error, ApiError: _render_error},
    )
    app.state.sim = state
    return app
