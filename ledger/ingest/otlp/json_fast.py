"""OTLP/JSON decoding, the fast path: the common delivery validated by msgspec at C speed and
kept as its own text (a ``RawRequest``); anything unusual is left to the walker."""

from __future__ import annotations

import re
from typing import Final

import msgspec
from msgspec import UNSET, UnsetType

from ledger.ingest.otlp.json_walk import (
    HEX_DIGITS,
    INT64_MAX,
    INT64_MIN,
    STATUS_NAMES,
    UINT64_MAX,
    as_int,
    walk_stored_request,
)
from ledger.ingest.otlp.model import (
    CHARGE_KEYS,
    Attributes,
    AttrValue,
    Charge,
    Limits,
    RawRequest,
    SpanEvent,
    SpanRecord,
    charge_of,
)

# The common delivery (every id hex, every attribute a plain value) is validated by msgspec into
# the typed structs below — C speed, no per-key Python — and stored as it came: a ``RawRequest``
# is the request's own JSON text, which the processor later turns into ``SpanRecord``s by the
# same structs (``spans_from_stored_request``; the walker when they cannot read it). Whatever
# the fast path is not sure of (a type mismatch, a base64 id, a nested or exotic value, any
# limit) goes through the walker instead, which either accepts it or raises the located error:
# the walker stays the one definition of what is valid.


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


def fast_json(payload: bytes, limits: Limits) -> RawRequest | None:
    """A common-case JSON request, validated, or None when the walker must decide."""
    if limits.max_depth < 1 or _SURROGATE_ESCAPE.search(payload) is not None:
        return None  # a \\uD8xx escape may be a lone surrogate, which the walker refuses
    try:
        text = payload.decode()  # msgspec does not check the UTF-8 of the unknown keys it skips
        request = _REQUEST_DECODER.decode(payload)
    except Exception:  # any refusal (syntax, types, encoding): the walker words the error
        return None
    names: list[str] = []
    charges: list[Charge] = []
    hexdigits = HEX_DIGITS
    for rs in request.resourceSpans:
        if rs.resource is not None and not _plain_attributes(rs.resource.attributes, limits):
            return None
        resource = _charge_attributes(rs.resource.attributes) if rs.resource else {}
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
                    or not INT64_MIN <= span.kind <= UINT64_MAX  # the walker reads it by orjson
                    or not _fast_uint64(span.startTimeUnixNano)
                    or not _fast_uint64(span.endTimeUnixNano)
                    or not _plain_attributes(span.attributes, limits)
                    or len(span.events) > limits.max_events
                ):
                    return None
                status = span.status
                if status is not None and not (
                    status.code in (0, 1, 2) or status.code in STATUS_NAMES
                ):
                    return None
                for event in span.events:
                    if not _fast_uint64(event.timeUnixNano) or not _plain_attributes(
                        event.attributes, limits
                    ):
                        return None
                names.append(span.name)
                found = _charge_attributes(span.attributes)
                if found:
                    charge = charge_of(found, resource)
                    if charge is not None:
                        charges.append(charge)
    return RawRequest(text, names, charges)


def _charge_attributes(items: list[_KeyValue]) -> Attributes:
    """The attributes among ``items`` a charge is read from (plain values: checked before)."""
    found: Attributes = {}
    for kv in items:
        if kv.key in CHARGE_KEYS and kv.value is not None:
            found[kv.key] = _plain(kv.value)
    return found


def _plain(value: _AnyValue) -> AttrValue:
    if value.stringValue is not UNSET:
        return value.stringValue
    if value.doubleValue is not UNSET:
        return value.doubleValue
    if value.intValue is not UNSET:
        return value.intValue
    return None


def _fast_uint64(value: int | str) -> bool:
    if type(value) is int:
        return 0 <= value <= UINT64_MAX
    return as_int(value, 0, UINT64_MAX) is not None


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
        return as_int(value.intValue, INT64_MIN, INT64_MAX) is not None
    if value.doubleValue is not UNSET:
        return type(value.doubleValue) is float
    return value.arrayValue is UNSET and value.kvlistValue is UNSET and value.bytesValue is UNSET


# --------------------------------------------------------------------------- reading back


def spans_from_stored_request(text: str) -> list[SpanRecord]:
    """The spans of a request stored as it came (``RawRequest.text``): read by the fast path's
    structs (the receiver validated it with them), else by the walker — the same records either
    way (``test_receiver_fast_path_agrees_with_the_walker``)."""
    try:
        request = _REQUEST_DECODER.decode(text)
        return _records(request)
    except Exception:  # not what the fast path stores: the walker reads it, or says why not
        return walk_stored_request(text)


def _records(request: _Request) -> list[SpanRecord]:
    records: list[SpanRecord] = []
    for rs in request.resourceSpans:
        resource = _attributes(rs.resource.attributes) if rs.resource is not None else {}
        for ss in rs.scopeSpans:
            scope_name = ss.scope.name if ss.scope is not None else ""
            for span in ss.spans:
                status = span.status
                code = 0 if status is None else status.code
                records.append(
                    SpanRecord(
                        trace_id=span.traceId.lower(),
                        span_id=span.spanId.lower(),
                        parent_span_id=span.parentSpanId.lower() or None,
                        name=span.name,
                        kind=span.kind,
                        start_unix_nano=_uint64(span.startTimeUnixNano),
                        end_unix_nano=_uint64(span.endTimeUnixNano),
                        status_code=STATUS_NAMES[code] if isinstance(code, str) else code,
                        status_message="" if status is None else status.message,
                        attributes=_attributes(span.attributes),
                        resource_attributes=resource,
                        events=tuple(
                            SpanEvent(
                                name=event.name,
                                time_unix_nano=_uint64(event.timeUnixNano),
                                attributes=_attributes(event.attributes),
                            )
                            for event in span.events
                        ),
                        scope_name=scope_name,
                    )
                )
    return records


def _uint64(value: int | str) -> int:
    if type(value) is int:
        return value
    number = as_int(value, 0, UINT64_MAX)
    if number is None:
        raise ValueError("not an unsigned 64-bit integer")
    return number


def _attributes(items: list[_KeyValue]) -> Attributes:
    out: Attributes = {}
    for kv in items:
        value = kv.value
        out[kv.key] = None if value is None else _any_value(value)
    return out


def _any_value(value: _AnyValue) -> AttrValue:
    """A plain AnyValue as the walker reads it (the fast path stores no other kind)."""
    if value.stringValue is not UNSET:
        return value.stringValue
    if value.intValue is not UNSET:
        number = as_int(value.intValue, INT64_MIN, INT64_MAX)
        if number is None:
            raise ValueError("not a 64-bit integer")
        return number
    if value.doubleValue is not UNSET:
        if type(value.doubleValue) is not float:
            raise ValueError("not a plain double")  # the walker's case
        return value.doubleValue
    if value.boolValue is not UNSET:
        return value.boolValue
    if (
        value.arrayValue is not UNSET
        or value.kvlistValue is not UNSET
        or value.bytesValue is not UNSET
    ):
        raise ValueError("not a plain value")  # the walker's case
    return None
