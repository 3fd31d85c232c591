"""The API's one error shape: ``{"error": {"code", "message", "details"}}``.

``details`` is a list of ``{"field", "message"}``; FastAPI's 422 validation list maps into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger.errors import (
    BehaviorFileError,
    ConfigError,
    ConflictError,
    IngestError,
    InvalidRequestError,
    LedgerError,
    NotFoundError,
)


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


_STATUS: list[tuple[type[LedgerError], int, str]] = [
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (InvalidRequestError, 422, "invalid_request"),
    (BehaviorFileError, 422, "invalid_behavior"),
    (ConfigError, 503, "configuration"),
]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LedgerError)
    async def _ledger_error(_request: Request, exc: LedgerError) -> JSONResponse:
        if isinstance(exc, IngestError):
            return JSONResponse(error_body("bad_request", str(exc)), status_code=exc.status_code)
        for cls, status, code in _STATUS:
            if isinstance(exc, cls):
                return JSONResponse(error_body(code, str(exc)), status_code=status)
        return JSONResponse(error_body("error", str(exc)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [_detail(request, err) for err in exc.errors()]
        body_level = [d for d in details if d["field"] == "body"]
        message = body_level[0]["message"] if body_level else "the request is not valid"
        return JSONResponse(error_body("invalid_request", message, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A value the database cannot hold (a number beyond 64 bits, a string too long) that a
        # route did not bound: the request's fault, not the daemon's. Each route bounds its
        # parameters; this is the net, logged so the missing bound gets fixed.
        import structlog

        structlog.get_logger("ledger.web").warning(
            "a request value the database cannot hold reached it; bound it in the route",
            path=request.url.path,
            error=type(exc).__name__,
        )
        return JSONResponse(
            error_body("invalid_request", "a value in the request is out of range"),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        import structlog

        structlog.get_logger("ledger.web").error("unhandled error", exc_info=exc)
        return JSONResponse(
            error_body("internal", "internal error; the daemon's log has the details"),
            status_code=500,
        )


_SEND_JSON = "send it with Content-Type: application/json"


def _detail(request: Request, err: Mapping[str, Any]) -> dict[str, str]:
    """One validation error as ``{"field", "message"}``; a problem with the body as a whole
    (none sent, not JSON, not an object) says so and shows the body the route expects."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    if loc[:1] == ("body",) and (len(loc) == 1 or kind == "json_invalid"):
        example = _body_example(request)
        if kind == "missing":
            message = f"this request needs a JSON body, e.g. {example}: {_SEND_JSON}"
        elif kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "JSON decode error")
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            message = f"the body is not valid JSON ({reason}{where}); expected e.g. {example}"
        elif isinstance(err.get("input"), bytes | str):
            message = f"the body is not JSON: {_SEND_JSON}, e.g. {example}"
        else:
            message = f"the body must be a JSON object, e.g. {example}"
        return {"field": "body", "message": message}
    return {
        "field": ".".join(str(p) for p in loc if p != "body"),
        "message": err.get("msg", "invalid"),
    }


def _body_example(request: Request) -> str:
    """The route's JSON body with its required fields, e.g. ``{"reason": "..."}``."""
    route = request.scope.get("route")
    field = getattr(route, "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "{}"
    required = [name for name, info in model.model_fields.items() if info.is_required()]
    if not required:
        return "{} (every field is optional)"
    return "{" + ", ".join(f'"{name}": "..."' for name in required) + "}"
