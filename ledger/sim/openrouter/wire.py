"""OpenRouter's error shape and the request plumbing every route shares: JSON bodies, bearer
keys, and the recorder behind ``GET /_sim/calls``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ledger.sim.hosting import JSONResponse as JSONResponse  # routes and chat answer with it
from ledger.sim.hosting import json_object
from ledger.sim.openrouter.config import JSON
from ledger.sim.openrouter.state import KeyState, SimState


@dataclass(slots=True)
class ApiError(Exception):
    status: int
    message: str
    metadata: JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error_type: str | None = None

    def body(self) -> JSON:
        error: JSON = {"code": self.status, "message": self.message}
        if self.metadata is not None:
            error["metadata"] = self.metadata
        return {"error": error}


def sim_state(request: Request) -> SimState:
    state: SimState = request.app.state.sim
    return state


async def json_body(request: Request) -> JSON:
    return await json_object(
        request,
        not_json=lambda reason: ApiError(400, f"Invalid JSON body: {reason}"),
        not_object=ApiError(400, "The request body must be a JSON object"),
    )


def bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "No auth credentials found")
    return token.strip()


def inference_key(request: Request) -> KeyState:
    state = sim_state(request)
    token = bearer(request)
    key = state.keys.get(token)
    if key is None:
        raise ApiError(401, "User not found.")
    if key.disabled:
        raise ApiError(401, "API key is disabled")
    return key


def require_management(request: Request) -> None:
    state = sim_state(request)
    token = bearer(request)
    if state.config.management_key is None or token != state.config.management_key:
        raise ApiError(401, "Only management keys can manage API keys")


Handler = Callable[[Request], Awaitable[Response]]


def recorded(handler: Handler) -> Handler:
    """Record every request (headers, body, status) for ``GET /_sim/calls``; render
    ``ApiError`` in OpenRouter's error shape."""

    async def wrapped(request: Request) -> Response:
        state = sim_state(request)
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        entry: JSON = {
            "at": state.config.clock().isoformat(),
            "method": request.method,
            "path": request.url.path,
            "query": str(request.url.query),
            "headers": dict(request.headers),
            "body": body,
        }
        state.calls.append(entry)
        try:
            response = await handler(request)
        except ApiError as err:
            response = JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        entry["status"] = response.status_code
        entry["key_name"] = request.scope.get("sim.key_name")
        entry["generation_id"] = request.scope.get("sim.generation_id")
        return response

    return wrapped
