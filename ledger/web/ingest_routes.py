"""HTTP ingestion: ``POST /v1/traces`` (OpenRouter broadcast, OTLP/HTTP) and
``POST /webhooks/{source}`` (signed event webhooks).

The traces route is the hot path, answered by ``LedgerApp`` before FastAPI's middleware,
routing and dependency injection: it checks the token from headers alone, reads the body under a
size cap, decodes it with ``otlp.decode_for_storage`` (a common JSON delivery is validated by
msgspec and stored as it came) and waits for the group-commit ``SpanWriter`` to commit before it
answers.
Its error bodies are OTLP ``Status`` messages (JSON or protobuf, like the request); the webhook
route answers with the API's error shape. No input produces a 500.

Broadcast authentication: ``LEDGER_BROADCAST_TOKENS`` lists the accepted secrets (several at once
while rotating); ``broadcast_header`` is ``authorization`` (``Authorization: Bearer <token>``) or
the name of a header that carries the token as is. With no token configured every delivery is
refused with 401 (and a warning in the log): the receiver never accepts unauthenticated data.
The check itself (``ledger.ingest.receiver.BroadcastAuth``) and the span writer are built by
the daemon (``ledger.daemon.open_ingest``) and reach the routes as ``app.state.ingest``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ledger.errors import IngestError
from ledger.ingest.otlp import (
    AcceptedSpans,
    decode_for_storage,
    encode_status_error,
    encode_success,
    is_connection_test,
    wants_protobuf,
)
from ledger.ingest.receiver import Ingest
from ledger.ingest.writer import record_webhook_event
from ledger.metrics import count_broadcast_delivery
from ledger.signatures import Scheme, verify_webhook
from ledger.web.errors import error_body

__all__ = [
    "TRACES_PATHS",
    "LedgerApp",
    "event_name",
    "install_ingest_routes",
]

log = structlog.get_logger("ledger.ingest")

# The OpenTelemetry Collector destination appends /v1/traces to whatever URL was pasted, so an
# operator who pasted the full URL produces the doubled form, and one who pasted the host with a
# trailing slash the "//" form; a trailing slash is accepted too.
TRACES_PATHS: Final = frozenset(
    path + slash
    for path in ("/v1/traces", "/v1/traces/v1/traces", "//v1/traces", "/v1/traces//v1/traces")
    for slash in ("", "/")
)

_JSON_B: Final = b"application/json"
_PROTOBUF_B: Final = b"application/x-protobuf"
_OFFLOAD_DECODE_BYTES: Final = 256 * 1024  # decode bigger bodies off the event loop


def _ingest(request: Request) -> Ingest:
    ingest: Ingest = request.app.state.ingest
    return ingest


def _check_declared_length(declared: str | bytes | None, limit: int) -> None:
    """413 before reading anything when Content-Length already says the body is too large."""
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise IngestError("Content-Length is not a number", status_code=400) from None
    if size > limit:
        raise IngestError(f"request body is {size} bytes; the limit is {limit}", status_code=413)


# --------------------------------------------------------------------------- POST /v1/traces


def _retry_after_value(seconds: float) -> bytes:
    return str(max(1, round(seconds))).encode("ascii")


def _otlp_error(
    message: str, status: int, protobuf: bool, retry_after: float | None = None
) -> _Reply:
    headers: list[tuple[bytes, bytes]] = []
    if retry_after is not None:
        headers.append((b"retry-after", _retry_after_value(retry_after)))
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="ledger"'))
    body = encode_status_error(message, protobuf=protobuf, http_status=status)
    return _Reply(status, body, protobuf, headers)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    protobuf: bool
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def send(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", _PROTOBUF_B if self.protobuf else _JSON_B),
                    (b"content-length", str(len(self.body)).encode("ascii")),
                    *self.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.body})


_SUCCESS: Final = {
    False: _Reply(200, encode_success(protobuf=False), False),
    True: _Reply(200, encode_success(protobuf=True), True),
}


async def _read_asgi_body(receive: Receive, declared: str | bytes | None, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it is known to exceed ``limit`` bytes."""
    _check_declared_length(declared, limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise IngestError("the client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        if chunk:
            received += len(chunk)
            if received > limit:
                raise IngestError(
                    f"request body is more than {limit} bytes; the limit is {limit}",
                    status_code=413,
                )
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _traces(ingest: Ingest, scope: Scope, receive: Receive) -> _Reply:
    """OTLP/HTTP ``ExportTraceServiceRequest`` → stored spans; 200 only after the commit."""
    content_type = content_encoding = content_length = token_header = None
    test_connection = False
    wanted = ingest.auth.header_bytes
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length":
            content_length = value
        elif name == b"content-encoding":
            content_encoding = value.decode("latin-1")
        elif name == wanted:
            token_header = value.decode("utf-8", "surrogateescape")
        elif name == b"x-test-connection":
            test_connection = value.strip().lower() == b"true"
    protobuf = wants_protobuf(content_type)
    if scope["method"] != "POST":
        reply = _otlp_error("use POST for OTLP/HTTP traces", 405, protobuf)
        reply.headers.append((b"allow", b"POST"))
        return reply
    refused = ingest.auth.check(token_header)
    if refused is not None:
        return _otlp_error(refused, 401, protobuf)
    try:
        body = await _read_asgi_body(receive, content_length, ingest.limits.max_body_bytes)
        if test_connection:
            return _SUCCESS[protobuf]
        try:
            if len(body) > _OFFLOAD_DECODE_BYTES:
                spans = await run_in_threadpool(
                    decode_for_storage, body, content_type, content_encoding, ingest.limits
                )
            else:
                spans = decode_for_storage(body, content_type, content_encoding, ingest.limits)
        except IngestError:
            raise
        except Exception as exc:  # a decoder bug must not become a 500 (or a retry storm)
            log.error("OTLP decode crashed", error=type(exc).__name__, exc_info=exc)
            raise IngestError(f"the payload could not be decoded ({type(exc).__name__})") from exc
        if is_connection_test(spans):
            return _SUCCESS[protobuf]
        await ingest.writer.write(spans, ingest.clock.now())
    except IngestError as exc:
        return _otlp_error(str(exc), exc.status_code, protobuf, exc.retry_after)
    if isinstance(spans, AcceptedSpans) and spans.rejections:
        # The valid spans are stored; the spec's partial success names what was left out.
        message = spans.rejection_message()
        log.warning("broadcast spans rejected", rejected=len(spans.rejections), detail=message)
        body = encode_success(len(spans.rejections), message, protobuf=protobuf)
        return _Reply(200, body, protobuf)
    return _SUCCESS[protobuf]


class LedgerApp(FastAPI):
    """FastAPI with ``/v1/traces`` (both URL forms) answered at the front door.

    The hot path skips the whole middleware stack, routing, request objects and dependency
    injection; every other request goes through FastAPI as usual. Ingestion's state is
    ``app.state.ingest`` (set by the lifespan).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in TRACES_PATHS:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        ingest: Ingest | None = getattr(self.state, "ingest", None)
        if ingest is None:
            reply = _otlp_error(
                "the daemon is starting; retry", 503, _protobuf_requested(scope), retry_after=1.0
            )
        else:
            try:
                reply = await _traces(ingest, scope, receive)
            except Exception as exc:  # never a 500: the sender retries a 503
                log.error("OTLP receiver failed", error=type(exc).__name__, exc_info=exc)
                reply = _otlp_error(
                    f"internal error ({type(exc).__name__}); retry",
                    503,
                    _protobuf_requested(scope),
                    retry_after=5.0,
                )
        count_broadcast_delivery(reply.status)
        await reply.send(send)


def _protobuf_requested(scope: Scope) -> bool:
    """Whether the request is protobuf, so its error is too (the spec: the request's encoding)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return wants_protobuf(value.decode("latin-1"))
    return False


# --------------------------------------------------------------------------- POST /webhooks/…

_WEBHOOK_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    413: "too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def _webhook_error(message: str, status: int, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return JSONResponse(
        error_body(_WEBHOOK_CODES.get(status, "bad_request"), message),
        status_code=status,
        headers=headers,
    )


def _payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The event's JSON. A body that is not JSON is 400, or 415 when its Content-Type says it
    is something else (a JSON body under another type, as ``curl -d`` sends it, is accepted)."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        media = (content_type or "").split(";")[0].strip().lower()
        if media and media != "application/json" and not media.endswith("+json"):
            raise IngestError(
                f"Content-Type {media} is not supported: send the event as application/json "
                "(for GitHub, set the webhook's content type to application/json)",
                status_code=415,
            ) from None
        raise IngestError(f"the body is not valid JSON: {exc}") from None
    return value if isinstance(value, dict) else {"value": value}


def event_name(scheme: Scheme, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str:
    """The event's name: GitHub ``X-GitHub-Event`` (``.action`` appended when the payload has
    one), Stripe's ``type``, generic ``X-Ledger-Event`` or the payload's ``event``; else
    ``unknown``."""
    if scheme is Scheme.GITHUB:
        name = headers.get("x-github-event") or "unknown"
        action = payload.get("action")
        return f"{name}.{action}" if isinstance(action, str) and action else name
    if scheme is Scheme.STRIPE:
        kind = payload.get("type")
        return kind if isinstance(kind, str) and kind else "unknown"
    named = headers.get("x-ledger-event") or payload.get("event")
    return named if isinstance(named, str) and named else "unknown"


def _replay_key(scheme: Scheme, verified_key: str, payload: Mapping[str, Any]) -> str:
    # Stripe signs each retry afresh (new timestamp); its event id is the stable identity.
    event_id = payload.get("id")
    if scheme is Scheme.STRIPE and isinstance(event_id, str) and event_id:
        return f"event:{event_id}"
    return verified_key


router = APIRouter(tags=["ingest"])


@router.post(
    "/webhooks/{source}",
    summary="Receive a signed webhook event",
    responses={
        200: {"description": "Recorded, or a replay of an event already recorded."},
        400: {"description": "Malformed signature header or body."},
        401: {"description": "Missing, wrong or expired signature."},
        404: {"description": "No webhook source of that name is configured."},
        413: {"description": "Body larger than the ingest limit."},
        415: {"description": "A body that is not JSON, sent as another content type."},
        503: {"description": "The database is unavailable; retry."},
    },
)
async def receive_webhook(source: str, request: Request) -> Response:
    """Verify the source's signature and record the event; 2xx only after the commit."""
    ingest = _ingest(request)
    config = ingest.sources.get(source)
    if config is None:
        return _webhook_error(f"no webhook source named {source!r} is configured", 404)
    try:
        body = await _read_asgi_body(
            request.receive, request.headers.get("content-length"), ingest.limits.max_body_bytes
        )
        now = ingest.clock.now()
        verified = verify_webhook(
            config.scheme, source, request.headers, body, config.secrets, now=now.timestamp()
        )
        payload = _payload(body, request.headers.get("content-type"))
        event = event_name(config.scheme, request.headers, payload)
        replay_key = _replay_key(config.scheme, verified.replay_key, payload)
        try:
            recorded = await asyncio.to_thread(
                record_webhook_event,
                ingest.db.engine,
                source=source,
                event=event,
                replay_key=replay_key,
                payload=payload,
                received_at=now,
                behavior=config.behavior,
            )
        except Exception as exc:
            log.warning("webhook event not stored", source=source, error=type(exc).__name__)
            raise IngestError(
                f"the database is unavailable ({type(exc).__name__}); retry",
                status_code=503,
                retry_after=5.0,
            ) from exc
    except IngestError as exc:
        if exc.status_code == 401:
            log.info("webhook refused", source=source, reason=str(exc))
        return _webhook_error(str(exc), exc.status_code, exc.retry_after)
    if recorded:
        log.info("webhook event recorded", source=source, webhook_event=event)
    return JSONResponse({"status": "recorded" if recorded else "duplicate", "event": event})


def install_ingest_routes(app: FastAPI) -> None:
    """Mount ``POST /webhooks/{source}`` on ``app`` (``POST /v1/traces`` is ``LedgerApp``'s)."""
    app.include_router(router)
