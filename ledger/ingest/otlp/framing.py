"""OTLP/HTTP request framing: Content-Type, Content-Encoding and size limits, then the decoder
the body's encoding calls for (the JSON fast path first, for the receiver)."""

from __future__ import annotations

import zlib

from ledger.errors import IngestError
from ledger.ingest.otlp.json_fast import fast_json
from ledger.ingest.otlp.json_walk import decode_json
from ledger.ingest.otlp.model import Limits, RawRequest, SpanRecord, walk
from ledger.ingest.otlp.protobuf import decode_protobuf


def decode_request(
    body: bytes, content_type: str | None, content_encoding: str | None, limits: Limits
) -> list[SpanRecord]:
    """Decode an OTLP/HTTP ``ExportTraceServiceRequest`` body into spans, in request order.

    Raises ``IngestError`` (400 / 413 / 415, see the module docstring). An empty request decodes to
    an empty list, which the spec says to answer with success.
    """
    protobuf, payload = _unframe(body, content_type, content_encoding, limits)
    return walk(decode_protobuf if protobuf else decode_json, payload, limits)


def decode_for_storage(
    body: bytes, content_type: str | None, content_encoding: str | None, limits: Limits
) -> list[SpanRecord] | RawRequest:
    """``decode_request`` for the receiver: the same validation and errors, but a common JSON
    request comes back as a ``RawRequest``, to be stored as it came, without being walked in
    Python."""
    protobuf, payload = _unframe(body, content_type, content_encoding, limits)
    if not protobuf:
        fast = fast_json(payload, limits)
        if fast is not None:
            return fast
    return walk(decode_protobuf if protobuf else decode_json, payload, limits)


def _unframe(
    body: bytes, content_type: str | None, content_encoding: str | None, limits: Limits
) -> tuple[bool, bytes]:
    protobuf = _is_protobuf(content_type)
    gzipped = _is_gzip(content_encoding)
    if len(body) > limits.max_body_bytes:
        raise IngestError(
            f"request body is {len(body)} bytes; the limit is {limits.max_body_bytes}",
            status_code=413,
        )
    return protobuf, _inflate(body, limits.max_inflated_bytes) if gzipped else body


def wants_protobuf(content_type: str | None) -> bool:
    """Whether responses to a request with this Content-Type are protobuf (else JSON).

    For the route: the spec wants the response in the request's encoding; an unsupported type
    gets a JSON error body.
    """
    try:
        return _is_protobuf(content_type)
    except IngestError:
        return False


def _is_protobuf(content_type: str | None) -> bool:
    if not content_type:
        raise IngestError(
            "missing Content-Type; send application/json or application/x-protobuf",
            status_code=415,
        )
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media in ("application/x-protobuf", "application/protobuf"):
        return True
    if media == "application/json":
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8",
                "utf8",
            ):
                raise IngestError(
                    f"unsupported JSON charset {value.strip()!r}; send UTF-8", status_code=415
                )
        return False
    raise IngestError(
        f"unsupported Content-Type {media!r}; send application/json or application/x-protobuf",
        status_code=415,
    )


def _is_gzip(content_encoding: str | None) -> bool:
    if not content_encoding:
        return False
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return False
    if codings in (["gzip"], ["x-gzip"]):
        return True
    raise IngestError(
        f"unsupported Content-Encoding {content_encoding!r}; send gzip or identity",
        status_code=415,
    )


def _inflate(body: bytes, limit: int) -> bytes:
    """Gunzip ``body`` (all members), stopping as soon as the output would exceed ``limit``."""
    out = bytearray()
    data = body
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            while True:
                chunk = inflater.decompress(data, limit - len(out) + 1)
                out += chunk
                if len(out) > limit:
                    raise IngestError(
                        f"gzip body inflates to more than {limit} bytes", status_code=413
                    )
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
                if not chunk and not data:
                    raise IngestError("gzip body is truncated", status_code=400)
        except zlib.error as exc:
            raise IngestError(f"gzip body is corrupt: {exc}", status_code=400) from None
        data = inflater.unused_data
        if not data:
            return bytes(out)
