"""OTLP/HTTP trace decoding: request bytes → flat ``SpanRecord``s, plus the spec's response bodies.

Pure and hot: it runs for every broadcast delivery, so it walks orjson dicts and upb messages
directly (no pydantic, no ``json_format``) and builds error locations only when it raises.

Follows the OTLP/HTTP specification (opentelemetry-proto ``docs/specification.md``):
binary protobuf (``application/x-protobuf``) and JSON (``application/json``) bodies, optionally
``Content-Encoding: gzip``; in JSON, ``traceId``/``spanId`` are hex (base64 ids, which some
exporters send by mistake, are tolerated), 64-bit integers are strings or numbers, enums are
integers, keys are lowerCamelCase and unknown keys are ignored. Every refusal is an
``IngestError`` whose ``status_code`` is the HTTP status to answer with: 400 bad data (the message
names the place, e.g. ``resourceSpans[0].scopeSpans[1].spans[3].traceId``), 413 too large, 415
unsupported content type or encoding. The response body for an error is ``encode_status_error``.

The rooms: ``model`` (the records, limits and the located refusal), ``framing`` (content type,
encoding, size; picks the decoder), ``json_fast`` (msgspec, the common JSON delivery kept as
text), ``json_walk`` (the JSON walker, the one definition of what is valid), ``protobuf`` and
``responses``. Import the public names from here.
"""

from ledger.ingest.otlp.framing import decode_for_storage, decode_request, wants_protobuf
from ledger.ingest.otlp.json_fast import spans_from_stored_request
from ledger.ingest.otlp.json_walk import span_from_raw
from ledger.ingest.otlp.model import (
    CONNECTION_TEST_SPAN_NAME,
    AcceptedSpans,
    Attributes,
    AttrValue,
    Charge,
    Limits,
    RawRequest,
    SpanEvent,
    SpanRecord,
    charges_of,
    is_connection_test,
)
from ledger.ingest.otlp.responses import encode_status_error, encode_success

__all__ = [
    "CONNECTION_TEST_SPAN_NAME",
    "AcceptedSpans",
    "AttrValue",
    "Attributes",
    "Charge",
    "Limits",
    "RawRequest",
    "SpanEvent",
    "SpanRecord",
    "charges_of",
    "decode_for_storage",
    "decode_request",
    "encode_status_error",
    "encode_success",
    "is_connection_test",
    "span_from_raw",
    "spans_from_stored_request",
    "wants_protobuf",
]
