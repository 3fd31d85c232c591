"""OTLP/HTTP response bodies: success (with ``partialSuccess`` when spans were rejected) and the
``google.rpc.Status`` error body, each in the request's encoding."""

from __future__ import annotations

from typing import Final

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)


def encode_success(rejected: int = 0, message: str = "", *, protobuf: bool) -> bytes:
    """The 200 body: an ``ExportTraceServiceResponse``, with ``partialSuccess`` only when needed.

    The spec wants ``partial_success`` unset on full success, and set with ``rejected_spans`` (and
    a human-readable message) when some spans were rejected or a warning is conveyed.
    """
    partial = rejected > 0 or bool(message)
    if protobuf:
        response = ExportTraceServiceResponse()
        if partial:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
            )
        return response.SerializeToString()  # type: ignore[no-any-return]  # generated class
    if not partial:
        return b"{}"
    # proto3 JSON mapping: int64 is a decimal string (parsers accept strings and numbers).
    body: dict[str, str] = {}
    if rejected:
        body["rejectedSpans"] = str(rejected)
    if message:
        body["errorMessage"] = message
    return orjson.dumps({"partialSuccess": body})


# google.rpc.Code values for the HTTP statuses ingestion answers with (the OTLP spec says
# ``Status.code`` is informational only).
_RPC_CODES: Final = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    413: 3,  # INVALID_ARGUMENT: the request itself is too large, retrying will not help
    415: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    500: 13,  # INTERNAL
    503: 14,  # UNAVAILABLE
}


def encode_status_error(message: str, *, protobuf: bool, http_status: int = 400) -> bytes:
    """The 4xx/5xx body the spec requires: a ``google.rpc.Status`` with ``code`` and ``message``.

    Hand-encoded (``opentelemetry-proto`` does not ship ``google.rpc``): field 1 ``code`` as a
    varint, field 2 ``message`` as UTF-8. ``http_status`` picks the matching ``google.rpc.Code``.
    """
    code = _RPC_CODES.get(http_status, 2)  # 2 = UNKNOWN
    if not protobuf:
        return orjson.dumps({"code": code, "message": message})
    text = message.encode("utf-8")
    out = bytearray()
    if code:
        out += b"\x08" + _varint(code)
    if text:
        out += b"\x12" + _varint(len(text)) + text
    return bytes(out)


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        byte = number & 0x7F
        number >>= 7
        if number:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
