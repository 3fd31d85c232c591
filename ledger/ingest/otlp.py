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
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgspec
import orjson
from google.protobuf.message import DecodeError
from msgspec import UNSET, UnsetType
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ledger.errors import IngestError

__all__ = [
    "CONNECTION_TEST_SPAN_NAME",
    "AcceptedSpans",
    "AttrValue",
    "Attributes",
    "Limits",
    "RawRequest",
    "SpanEvent",
    "SpanRecord",
    "decode_for_storage",
    "decode_request",
    "encode_status_error",
    "encode_success",
    "is_connection_test",
    "span_from_raw",
    "spans_from_stored_request",
    "wants_protobuf",
]

# An attribute value, flattened from OTLP ``AnyValue``: an empty AnyValue is None, ``bytesValue``
# is bytes, ``arrayValue`` a list, ``kvlistValue`` a dict.
AttrValue: TypeAlias = (
    "str | bool | int | float | bytes | list[AttrValue] | dict[str, AttrValue] | None"
)
Attributes: TypeAlias = dict[str, AttrValue]

CONNECTION_TEST_SPAN_NAME: Final = "openrouter-connection-test"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_STATUS_NAMES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one request. Counts beyond them answer 413; nesting beyond ``max_depth`` 400."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_inflated_bytes: int = 16 * 1024 * 1024
    max_spans: int = 10_000
    max_attributes: int = 512  # per span, per event and per resource
    max_events: int = 1_024  # per span
    max_depth: int = 8  # AnyValue nesting; a plain attribute value is depth 1


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span, flattened. Ids are lowercase hex; times are unix nanoseconds.

    ``status_code`` is OTLP's 0 unset / 1 ok / 2 error. ``resource_attributes`` is shared by every
    span of the same ``resourceSpans`` entry: treat the dicts as read-only.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_unix_nano: int
    end_unix_nano: int
    status_code: int
    status_message: str
    attributes: Attributes
    resource_attributes: Attributes
    events: tuple[SpanEvent, ...]
    scope_name: str = ""


class AcceptedSpans(list[SpanRecord]):
    """The spans of a request the walker accepted, in request order, and why others were
    rejected: a span whose own content is invalid (an id, a time, a status, an attribute) is
    left out and named in ``rejections``; the request is answered with ``partialSuccess``.
    A request whose every span is invalid is refused whole (400), as is one whose structure is.
    """

    __slots__ = ("rejections",)

    def __init__(self) -> None:
        super().__init__()
        self.rejections: list[str] = []

    def rejection_message(self, shown: int = 3) -> str:
        """The ``partialSuccess.errorMessage``: how many were rejected and the first reasons."""
        count = len(self.rejections)
        more = f"; and {count - shown} more" if count > shown else ""
        return f"{count} span(s) rejected: " + "; ".join(self.rejections[:shown]) + more


class _Bad(Exception):
    """Internal: a refusal whose location is assembled on the way up (free when nothing fails)."""

    def __init__(self, message: str, *where: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.where = list(where)
        self.status_code = status_code

    def at(self, *where: str) -> _Bad:
        self.where[:0] = where
        return self

    def text(self) -> str:
        place = ".".join(self.where)
        return f"{place}: {self.message}" if place else self.message

    def to_ingest_error(self) -> IngestError:
        return IngestError(self.text(), status_code=self.status_code)


# --------------------------------------------------------------------------- request framing


def decode_request(
    body: bytes, content_type: str | None, content_encoding: str | None, limits: Limits
) -> list[SpanRecord]:
    """Decode an OTLP/HTTP ``ExportTraceServiceRequest`` body into spans, in request order.

    Raises ``IngestError`` (400 / 413 / 415, see the module docstring). An empty request decodes to
    an empty list, which the spec says to answer with success.
    """
    protobuf, payload = _unframe(body, content_type, content_encoding, limits)
    return _walk(payload, protobuf, limits)


def decode_for_storage(
    body: bytes, content_type: str | None, content_encoding: str | None, limits: Limits
) -> list[SpanRecord] | RawRequest:
    """``decode_request`` for the receiver: the same validation and errors, but a common JSON
    request comes back as a ``RawRequest``, to be stored as it came, without being walked in
    Python."""
    protobuf, payload = _unframe(body, content_type, content_encoding, limits)
    if not protobuf:
        fast = _fast_json(payload, limits)
        if fast is not None:
            return fast
    return _walk(payload, protobuf, limits)


def _walk(payload: bytes, protobuf: bool, limits: Limits) -> AcceptedSpans:
    try:
        records = _decode_protobuf(payload, limits) if protobuf else _decode_json(payload, limits)
    except _Bad as bad:
        raise bad.to_ingest_error() from None
    if records.rejections and not records:
        raise IngestError(records.rejections[0], status_code=400)
    return records


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


# --------------------------------------------------------------------------- JSON


def _decode_json(payload: bytes, limits: Limits) -> AcceptedSpans:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _Bad(f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise _Bad("an ExportTraceServiceRequest must be a JSON object")
    records = AcceptedSpans()
    for i, rs in enumerate(_list(doc, "resourceSpans")):
        try:
            _json_resource_spans(rs, records, limits, f"resourceSpans[{i}]")
        except _Bad as bad:
            raise bad.at(f"resourceSpans[{i}]") from None
    return records


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _Bad("not an array", key)
    return value


def _obj(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _Bad("not an object")
    return value


def _json_resource_spans(rs: Any, records: AcceptedSpans, limits: Limits, place: str) -> None:
    rs = _obj(rs)
    resource = rs.get("resource")
    resource_attrs: Attributes = {}
    if resource is not None:
        try:
            resource_attrs = _json_attributes(_obj(resource), limits)
        except _Bad as bad:
            raise bad.at("resource") from None
    for j, ss in enumerate(_list(rs, "scopeSpans")):
        try:
            ss = _obj(ss)
            scope = ss.get("scope")
            scope_name = ""
            if scope is not None:
                try:
                    scope_name = _str(_obj(scope).get("name"), "name")
                except _Bad as bad:
                    raise bad.at("scope") from None
            for k, span in enumerate(_list(ss, "spans")):
                if len(records) + len(records.rejections) >= limits.max_spans:
                    raise _Bad(
                        f"more than {limits.max_spans} spans in one request", status_code=413
                    )
                try:
                    records.append(_json_span(span, resource_attrs, scope_name, limits))
                except _Bad as bad:
                    if bad.status_code != 400:  # a limit: the request is refused whole
                        raise bad.at(f"spans[{k}]") from None
                    records.rejections.append(
                        bad.at(place, f"scopeSpans[{j}]", f"spans[{k}]").text()
                    )
        except _Bad as bad:
            raise bad.at(f"scopeSpans[{j}]") from None


def _json_span(
    span: Any, resource_attrs: Attributes, scope_name: str, limits: Limits
) -> SpanRecord:
    span = _obj(span)
    get = span.get
    parent = get("parentSpanId")
    status = get("status")
    status_code, status_message = 0, ""
    if status is not None:
        try:
            status = _obj(status)
            status_code = _status_code(status.get("code"))
            status_message = _str(status.get("message"), "message")
        except _Bad as bad:
            raise bad.at("status") from None
    events: list[SpanEvent] = []
    raw_events = _list(span, "events")
    if len(raw_events) > limits.max_events:
        raise _Bad(f"more than {limits.max_events} events", "events", status_code=413)
    for e, event in enumerate(raw_events):
        try:
            event = _obj(event)
            events.append(
                SpanEvent(
                    name=_str(event.get("name"), "name"),
                    time_unix_nano=_uint64(event.get("timeUnixNano"), "timeUnixNano"),
                    attributes=_json_attributes(event, limits),
                )
            )
        except _Bad as bad:
            raise bad.at(f"events[{e}]") from None
    return SpanRecord(
        trace_id=_json_id(get("traceId"), 16, "traceId"),
        span_id=_json_id(get("spanId"), 8, "spanId"),
        parent_span_id=_json_id(parent, 8, "parentSpanId") if parent else None,
        name=_str(get("name"), "name"),
        kind=_int_field(get("kind"), "kind"),
        start_unix_nano=_uint64(get("startTimeUnixNano"), "startTimeUnixNano"),
        end_unix_nano=_uint64(get("endTimeUnixNano"), "endTimeUnixNano"),
        status_code=status_code,
        status_message=status_message,
        attributes=_json_attributes(span, limits),
        resource_attributes=resource_attrs,
        events=tuple(events),
        scope_name=scope_name,
    )


def _json_id(value: Any, size: int, field: str) -> str:
    """A hex id of ``size`` bytes → lowercase hex. Base64 ids (wrong, but seen) are converted."""
    if value is None:
        raise _Bad("missing", field)
    if type(value) is str:
        if len(value) == 2 * size and _HEX_DIGITS.issuperset(value):
            return value.lower()
        raw = _b64(value)
        if raw is not None and len(raw) == size:
            return raw.hex()
    raise _Bad(f"not a {2 * size}-char hex string", field)


def _b64(value: str) -> bytes | None:
    text = value.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _str(value: Any, *where: str) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        raise _Bad("not a string", *where)
    return value


def _status_code(value: Any) -> int:
    if type(value) is str and value in _STATUS_NAMES:
        return _STATUS_NAMES[value]
    code = _int_field(value, "code")
    if code not in (0, 1, 2):
        raise _Bad("not a status code (0 unset, 1 ok, 2 error)", "code")
    return code


def _int_field(value: Any, field: str) -> int:
    if value is None:
        return 0
    if type(value) is not int:
        raise _Bad("not an integer", field)
    return value


def _as_int(value: Any, low: int, high: int) -> int | None:
    """A JSON 64-bit integer (number or decimal string) within [low, high], else None."""
    kind = type(value)
    if kind is int:
        number = value
    elif kind is str:
        try:
            number = int(value, 10)
        except ValueError:
            return None
    elif kind is float and value.is_integer():
        number = int(value)
    else:
        return None
    return number if low <= number <= high else None


def _uint64(value: Any, field: str) -> int:
    if value is None:
        return 0
    number = _as_int(value, 0, _UINT64_MAX)
    if number is None:
        raise _Bad("not an unsigned 64-bit integer (number or decimal string)", field)
    return number


def _json_attributes(holder: dict[str, Any], limits: Limits) -> Attributes:
    items = _list(holder, "attributes")
    if len(items) > limits.max_attributes:
        raise _Bad(
            f"{len(items)} attributes; the limit is {limits.max_attributes}",
            "attributes",
            status_code=413,
        )
    out: Attributes = {}
    for a, kv in enumerate(items):
        try:
            key, value = _json_key_value(kv, 1, limits.max_depth)
        except _Bad as bad:
            raise bad.at(f"attributes[{a}]") from None
        out[key] = value
    return out


def _json_key_value(kv: Any, depth: int, max_depth: int) -> tuple[str, AttrValue]:
    if type(kv) is not dict:
        raise _Bad("not an object")
    key = kv.get("key")
    if type(key) is not str:
        raise _Bad("missing or not a string", "key")
    value = kv.get("value")
    if value is None:
        return key, None
    try:
        return key, _json_any_value(value, depth, max_depth)
    except _Bad as bad:
        raise bad.at("value") from None


def _json_any_value(value: Any, depth: int, max_depth: int) -> AttrValue:
    if type(value) is not dict:
        raise _Bad("not an AnyValue object")
    if depth > max_depth:
        raise _Bad(f"AnyValue nested deeper than {max_depth} levels")
    if "stringValue" in value:
        return _str(value["stringValue"], "stringValue")
    if "intValue" in value:
        number = _as_int(value["intValue"], _INT64_MIN, _INT64_MAX)
        if number is None:
            raise _Bad("not a 64-bit integer (number or decimal string)", "intValue")
        return number
    if "doubleValue" in value:
        return _double(value["doubleValue"])
    if "boolValue" in value:
        flag = value["boolValue"]
        if type(flag) is not bool:
            raise _Bad("not a boolean", "boolValue")
        return flag
    if "arrayValue" in value:
        try:
            holder = value["arrayValue"]
            values = [] if holder is None else _list(_obj(holder), "values")
            result: list[AttrValue] = []
            for v, item in enumerate(values):
                try:
                    result.append(_json_any_value(item, depth + 1, max_depth))
                except _Bad as bad:
                    raise bad.at(f"values[{v}]") from None
            return result
        except _Bad as bad:
            raise bad.at("arrayValue") from None
    if "kvlistValue" in value:
        try:
            holder = value["kvlistValue"]
            pairs = [] if holder is None else _list(_obj(holder), "values")
            mapping: dict[str, AttrValue] = {}
            for p, kv in enumerate(pairs):
                try:
                    key, item = _json_key_value(kv, depth + 1, max_depth)
                except _Bad as bad:
                    raise bad.at(f"values[{p}]") from None
                mapping[key] = item
            return mapping
        except _Bad as bad:
            raise bad.at("kvlistValue") from None
    if "bytesValue" in value:
        raw = value["bytesValue"]
        decoded = _b64(raw) if type(raw) is str else None
        if decoded is None:
            raise _Bad("not a base64 string", "bytesValue")
        return decoded
    return None  # an empty AnyValue (or only unknown keys): no value


def _double(value: Any) -> float:
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]  # narrowed by the exact type check above
    if kind is int:
        return float(value)
    if kind is str:
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if not math.isnan(number) or value == "NaN":
                return number
    raise _Bad("not a number (or NaN, Infinity, -Infinity)", "doubleValue")


# --------------------------------------------------------------------------- JSON, fast path
#
# The common delivery (every id hex, every attribute a plain value) is validated by msgspec into
# the typed structs below — C speed, no per-key Python — and stored as it came: a ``RawRequest``
# is the request's own JSON text, which the processor later turns into ``SpanRecord``s with the
# walker above (``spans_from_stored_request``). Whatever the fast path is not sure of (a type
# mismatch, a base64 id, a nested or exotic value, any limit) goes through the walker instead,
# which either accepts it or raises the located error: the walker stays the one definition of
# what is valid. (Spans stored by earlier versions as ``{"otlp": <span>, "resource": …,
# "scope": …}`` are read by ``span_from_raw``.)


class _KeyValue(msgspec.Struct, omit_defaults=True):
    key: str
    value: _AnyValue | None = None


class _ArrayValue(msgspec.Struct, omit_defaults=True):
    values: list[_AnyValue] = []


class _KvList(msgspec.Struct, omit_defaults=True):
    values: list[_KeyValue] = []


class _AnyValue(msgspec.Struct):
    # UNSET, not None: a key present with null is the walker's case (it reads presence).
    stringValue: str | UnsetType = UNSET
    intValue: int | str | UnsetType = UNSET
    doubleValue: float | str | UnsetType = UNSET
    boolValue: bool | UnsetType = UNSET
    arrayValue: _ArrayValue | UnsetType = UNSET
    kvlistValue: _KvList | UnsetType = UNSET
    bytesValue: str | UnsetType = UNSET


class _Status(msgspec.Struct, omit_defaults=True):
    code: int | str = 0
    message: str = ""


class _Event(msgspec.Struct, omit_defaults=True):
    name: str = ""
    timeUnixNano: int | str = 0
    attributes: list[_KeyValue] = []


class _Span(msgspec.Struct, omit_defaults=True):
    traceId: str
    spanId: str
    parentSpanId: str = ""
    name: str = ""
    kind: int = 0
    startTimeUnixNano: int | str = 0
    endTimeUnixNano: int | str = 0
    attributes: list[_KeyValue] = []
    events: list[_Event] = []
    status: _Status | None = None


class _Scope(msgspec.Struct):
    name: str = ""


class _ScopeSpans(msgspec.Struct):
    scope: _Scope | None = None
    spans: list[_Span] = []


class _Resource(msgspec.Struct):
    attributes: list[_KeyValue] = []


class _ResourceSpans(msgspec.Struct):
    resource: _Resource | None = None
    scopeSpans: list[_ScopeSpans] = []


class _Request(msgspec.Struct):
    resourceSpans: list[_ResourceSpans] = []


_REQUEST_DECODER: Final = msgspec.json.Decoder(_Request)
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD]")  # one pass; ``in`` twice costs 4x


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A JSON request the fast path accepted whole, to be stored as it came: ``text`` is the
    (inflated) request body, ``names`` its spans' names in order (one per span)."""

    text: str
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


# Stored spans were checked against the receiver's limits already; reading them back must not
# refuse what was accepted, whatever the limits are now.
_STORED_LIMITS: Final = Limits(
    max_spans=2**31, max_attributes=2**31, max_events=2**31, max_depth=2**31
)


def spans_from_stored_request(text: str) -> list[SpanRecord]:
    """The spans of a request stored as it came (``RawRequest.text``), by the walker."""
    return _walk(text.encode(), False, _STORED_LIMITS)


def span_from_raw(trace_id: str, span_id: str, data: dict[str, Any]) -> SpanRecord:
    """The ``SpanRecord`` of a span an earlier version stored as it came (``data`` parsed:
    ``{"otlp": <span JSON>, "resource": <attributes>, "scope": <name>}``)."""
    limits = _STORED_LIMITS
    resource = _json_attributes({"attributes": data.get("resource")}, limits)
    record = _json_span(data["otlp"], resource, data.get("scope") or "", limits)
    if record.trace_id == trace_id and record.span_id == span_id:
        return record
    return dataclasses.replace(record, trace_id=trace_id, span_id=span_id)


def _fast_json(payload: bytes, limits: Limits) -> RawRequest | None:
    """A common-case JSON request, validated, or None when the walker must decide."""
    if limits.max_depth < 1 or _SURROGATE_ESCAPE.search(payload) is not None:
        return None  # a \\uD8xx escape may be a lone surrogate, which the walker refuses
    try:
        text = payload.decode()  # msgspec does not check the UTF-8 of the unknown keys it skips
        request = _REQUEST_DECODER.decode(payload)
    except Exception:  # any refusal (syntax, types, encoding): the walker words the error
        return None
    names: list[str] = []
    hexdigits = _HEX_DIGITS
    for rs in request.resourceSpans:
        if rs.resource is not None and not _plain_attributes(rs.resource.attributes, limits):
            return None
        for ss in rs.scopeSpans:
            for span in ss.spans:
                trace_id, span_id, parent = span.traceId, span.spanId, span.parentSpanId
                if (
                    len(names) >= limits.max_spans
                    or len(trace_id) != 32
                    or len(span_id) != 16
                    or not hexdigits.issuperset(trace_id)
                    or not hexdigits.issuperset(span_id)
                    or (parent and (len(parent) != 16 or not hexdigits.issuperset(parent)))
                    or not _INT64_MIN <= span.kind <= _UINT64_MAX  # the walker reads it by orjson
                    or not _fast_uint64(span.startTimeUnixNano)
                    or not _fast_uint64(span.endTimeUnixNano)
                    or not _plain_attributes(span.attributes, limits)
                    or len(span.events) > limits.max_events
                ):
                    return None
                status = span.status
                if status is not None and not (
                    status.code in (0, 1, 2) or status.code in _STATUS_NAMES
                ):
                    return None
                for event in span.events:
                    if not _fast_uint64(event.timeUnixNano) or not _plain_attributes(
                        event.attributes, limits
                    ):
                        return None
                names.append(span.name)
    return RawRequest(text, names)


def _fast_uint64(value: int | str) -> bool:
    if type(value) is int:
        return 0 <= value <= _UINT64_MAX
    return _as_int(value, 0, _UINT64_MAX) is not None


def _plain_attributes(items: list[_KeyValue], limits: Limits) -> bool:
    if len(items) > limits.max_attributes:
        return False
    for kv in items:
        value = kv.value
        if value is not None and value.stringValue is UNSET and not _plain_value(value):
            return False
    return True


def _plain_value(value: _AnyValue) -> bool:
    """A non-string AnyValue the walker accepts as is: a number in range, a boolean, or none."""
    if value.intValue is not UNSET:
        return _as_int(value.intValue, _INT64_MIN, _INT64_MAX) is not None
    if value.doubleValue is not UNSET:
        return type(value.doubleValue) is float
    return value.arrayValue is UNSET and value.kvlistValue is UNSET and value.bytesValue is UNSET


# --------------------------------------------------------------------------- protobuf


def _decode_protobuf(payload: bytes, limits: Limits) -> AcceptedSpans:
    try:
        request = ExportTraceServiceRequest.FromString(payload)
    except DecodeError as exc:
        raise _Bad(f"malformed protobuf: {exc}") from None
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if total > limits.max_spans:
        raise _Bad(
            f"{total} spans in one request; the limit is {limits.max_spans}", status_code=413
        )
    records = AcceptedSpans()
    for i, rs in enumerate(request.resource_spans):
        try:
            resource_attrs = _pb_attributes(rs.resource.attributes, limits, "resource")
            for j, ss in enumerate(rs.scope_spans):
                scope_name = ss.scope.name
                for k, span in enumerate(ss.spans):
                    try:
                        records.append(_pb_span(span, resource_attrs, scope_name, limits))
                    except _Bad as bad:
                        where = (f"scopeSpans[{j}]", f"spans[{k}]")
                        if bad.status_code != 400:  # a limit: the request is refused whole
                            raise bad.at(*where) from None
                        records.rejections.append(bad.at(f"resourceSpans[{i}]", *where).text())
        except _Bad as bad:
            raise bad.at(f"resourceSpans[{i}]") from None
    return records


def _pb_id(raw: bytes, size: int, field: str) -> str:
    if len(raw) != size:
        raise _Bad(f"not {size} bytes", field)
    return raw.hex()


def _pb_span(span: Any, resource_attrs: Attributes, scope_name: str, limits: Limits) -> SpanRecord:
    if len(span.events) > limits.max_events:
        raise _Bad(f"more than {limits.max_events} events", "events", status_code=413)
    status_code = span.status.code
    if status_code not in (0, 1, 2):
        raise _Bad("not a status code (0 unset, 1 ok, 2 error)", "status", "code")
    events = []
    for e, event in enumerate(span.events):
        events.append(
            SpanEvent(
                name=event.name,
                time_unix_nano=event.time_unix_nano,
                attributes=_pb_attributes(event.attributes, limits, f"events[{e}]"),
            )
        )
    parent = span.parent_span_id
    return SpanRecord(
        trace_id=_pb_id(span.trace_id, 16, "traceId"),
        span_id=_pb_id(span.span_id, 8, "spanId"),
        parent_span_id=_pb_id(parent, 8, "parentSpanId") if parent else None,
        name=span.name,
        kind=span.kind,
        start_unix_nano=span.start_time_unix_nano,
        end_unix_nano=span.end_time_unix_nano,
        status_code=status_code,
        status_message=span.status.message,
        attributes=_pb_attributes(span.attributes, limits, ""),
        resource_attributes=resource_attrs,
        events=tuple(events),
        scope_name=scope_name,
    )


def _pb_attributes(items: Sequence[Any], limits: Limits, where: str) -> Attributes:
    prefix = (where,) if where else ()
    if len(items) > limits.max_attributes:
        raise _Bad(
            f"{len(items)} attributes; the limit is {limits.max_attributes}",
            *prefix,
            "attributes",
            status_code=413,
        )
    out: Attributes = {}
    for a, kv in enumerate(items):
        try:
            out[kv.key] = _pb_any_value(kv.value, 1, limits.max_depth)
        except _Bad as bad:
            raise bad.at(*prefix, f"attributes[{a}]", "value") from None
    return out


def _pb_any_value(value: Any, depth: int, max_depth: int) -> AttrValue:
    if depth > max_depth:
        raise _Bad(f"AnyValue nested deeper than {max_depth} levels")
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value  # type: ignore[no-any-return]  # generated message field
    if which == "int_value":
        return value.int_value  # type: ignore[no-any-return]
    if which == "double_value":
        return value.double_value  # type: ignore[no-any-return]
    if which == "bool_value":
        return value.bool_value  # type: ignore[no-any-return]
    if which == "array_value":
        result: list[AttrValue] = []
        for v, item in enumerate(value.array_value.values):
            try:
                result.append(_pb_any_value(item, depth + 1, max_depth))
            except _Bad as bad:
                raise bad.at("arrayValue", f"values[{v}]") from None
        return result
    if which == "kvlist_value":
        mapping: dict[str, AttrValue] = {}
        for p, kv in enumerate(value.kvlist_value.values):
            try:
                mapping[kv.key] = _pb_any_value(kv.value, depth + 1, max_depth)
            except _Bad as bad:
                raise bad.at("kvlistValue", f"values[{p}]", "value") from None
        return mapping
    if which == "bytes_value":
        return bytes(value.bytes_value)
    return None


# --------------------------------------------------------------------------- responses


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


def is_connection_test(spans: Sequence[SpanRecord] | RawRequest) -> bool:
    """Whether a delivery is OpenRouter's "Test Connection": no spans, or one test span."""
    if isinstance(spans, RawRequest):
        return not spans.names or spans.names == [CONNECTION_TEST_SPAN_NAME]
    return not spans or (len(spans) == 1 and spans[0].name == CONNECTION_TEST_SPAN_NAME)
