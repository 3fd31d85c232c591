"""OTLP/JSON decoding, the walker: an orjson document → ``SpanRecord``s, checking every field
the way the proto3 JSON mapping allows, and naming the place of whatever it refuses. It is the
one definition of what a valid JSON request is; the fast path defers to it when unsure."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from typing import Any, Final

import orjson

from ledger.ingest.otlp.model import (
    AcceptedSpans,
    Attributes,
    AttrValue,
    Bad,
    Limits,
    SpanEvent,
    SpanRecord,
    check_counts,
    walk,
)

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1
STATUS_NAMES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def decode_json(payload: bytes, limits: Limits) -> AcceptedSpans:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise Bad(f"malformed JSON: {exc}") from None
    if type(doc) is not dict:
        raise Bad("an ExportTraceServiceRequest must be a JSON object")
    records = AcceptedSpans()
    for i, rs in enumerate(_list(doc, "resourceSpans")):
        try:
            _json_resource_spans(rs, records, limits, f"resourceSpans[{i}]")
        except Bad as bad:
            raise bad.at(f"resourceSpans[{i}]") from None
    return records


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise Bad("not an array", key)
    return value


def _obj(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise Bad("not an object")
    return value


def _json_resource_spans(rs: Any, records: AcceptedSpans, limits: Limits, place: str) -> None:
    rs = _obj(rs)
    resource = rs.get("resource")
    resource_attrs: Attributes = {}
    if resource is not None:
        try:
            resource_attrs = _json_attributes(_obj(resource), limits)
        except Bad as bad:
            raise bad.at("resource") from None
    for j, ss in enumerate(_list(rs, "scopeSpans")):
        try:
            ss = _obj(ss)
            scope = ss.get("scope")
            scope_name = ""
            if scope is not None:
                try:
                    scope_name = _str(_obj(scope).get("name"), "name")
                except Bad as bad:
                    raise bad.at("scope") from None
            for k, span in enumerate(_list(ss, "spans")):
                if len(records) + len(records.rejections) >= limits.max_spans:
                    raise Bad(f"more than {limits.max_spans} spans in one request", status_code=413)
                try:
                    records.append(_json_span(span, resource_attrs, scope_name, limits))
                except Bad as bad:
                    if bad.status_code != 400:  # a limit: the request is refused whole
                        raise bad.at(f"spans[{k}]") from None
                    records.rejections.append(
                        bad.at(place, f"scopeSpans[{j}]", f"spans[{k}]").text()
                    )
        except Bad as bad:
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
        except Bad as bad:
            raise bad.at("status") from None
    events: list[SpanEvent] = []
    raw_events = _list(span, "events")
    check_counts(limits, events=len(raw_events))
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
        except Bad as bad:
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
        raise Bad("missing", field)
    if type(value) is str:
        if len(value) == 2 * size and HEX_DIGITS.issuperset(value):
            return value.lower()
        raw = _b64(value)
        if raw is not None and len(raw) == size:
            return raw.hex()
    raise Bad(f"not a {2 * size}-char hex string", field)


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
        raise Bad("not a string", *where)
    return value


def _status_code(value: Any) -> int:
    if type(value) is str and value in STATUS_NAMES:
        return STATUS_NAMES[value]
    code = _int_field(value, "code")
    if code not in (0, 1, 2):
        raise Bad("not a status code (0 unset, 1 ok, 2 error)", "code")
    return code


def _int_field(value: Any, field: str) -> int:
    if value is None:
        return 0
    if type(value) is not int:
        raise Bad("not an integer", field)
    return value


def as_int(value: Any, low: int, high: int) -> int | None:
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
    number = as_int(value, 0, UINT64_MAX)
    if number is None:
        raise Bad("not an unsigned 64-bit integer (number or decimal string)", field)
    return number


def _json_attributes(holder: dict[str, Any], limits: Limits) -> Attributes:
    items = _list(holder, "attributes")
    check_counts(limits, attributes=len(items))
    out: Attributes = {}
    for a, kv in enumerate(items):
        try:
            key, value = _json_key_value(kv, 1, limits.max_depth)
        except Bad as bad:
            raise bad.at(f"attributes[{a}]") from None
        out[key] = value
    return out


def _json_key_value(kv: Any, depth: int, max_depth: int) -> tuple[str, AttrValue]:
    if type(kv) is not dict:
        raise Bad("not an object")
    key = kv.get("key")
    if type(key) is not str:
        raise Bad("missing or not a string", "key")
    value = kv.get("value")
    if value is None:
        return key, None
    try:
        return key, _json_any_value(value, depth, max_depth)
    except Bad as bad:
        raise bad.at("value") from None


def _json_any_value(value: Any, depth: int, max_depth: int) -> AttrValue:
    if type(value) is not dict:
        raise Bad("not an AnyValue object")
    if depth > max_depth:
        raise Bad(f"AnyValue nested deeper than {max_depth} levels")
    if "stringValue" in value:
        return _str(value["stringValue"], "stringValue")
    if "intValue" in value:
        number = as_int(value["intValue"], INT64_MIN, INT64_MAX)
        if number is None:
            raise Bad("not a 64-bit integer (number or decimal string)", "intValue")
        return number
    if "doubleValue" in value:
        return _double(value["doubleValue"])
    if "boolValue" in value:
        flag = value["boolValue"]
        if type(flag) is not bool:
            raise Bad("not a boolean", "boolValue")
        return flag
    if "arrayValue" in value:
        try:
            holder = value["arrayValue"]
            values = [] if holder is None else _list(_obj(holder), "values")
            result: list[AttrValue] = []
            for v, item in enumerate(values):
                try:
                    result.append(_json_any_value(item, depth + 1, max_depth))
                except Bad as bad:
                    raise bad.at(f"values[{v}]") from None
            return result
        except Bad as bad:
            raise bad.at("arrayValue") from None
    if "kvlistValue" in value:
        try:
            holder = value["kvlistValue"]
            pairs = [] if holder is None else _list(_obj(holder), "values")
            mapping: dict[str, AttrValue] = {}
            for p, kv in enumerate(pairs):
                try:
                    key, item = _json_key_value(kv, depth + 1, max_depth)
                except Bad as bad:
                    raise bad.at(f"values[{p}]") from None
                mapping[key] = item
            return mapping
        except Bad as bad:
            raise bad.at("kvlistValue") from None
    if "bytesValue" in value:
        raw = value["bytesValue"]
        decoded = _b64(raw) if type(raw) is str else None
        if decoded is None:
            raise Bad("not a base64 string", "bytesValue")
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
    raise Bad("not a number (or NaN, Infinity, -Infinity)", "doubleValue")


# Stored spans were checked against the receiver's limits already; reading them back must not
# refuse what was accepted, whatever the limits are now.
_STORED_LIMITS: Final = Limits(
    max_spans=2**31, max_attributes=2**31, max_events=2**31, max_depth=2**31
)


def walk_stored_request(text: str) -> list[SpanRecord]:
    """The spans of a request stored as it came (``RawRequest.text``), by the walker."""
    return walk(decode_json, text.encode(), _STORED_LIMITS)


def span_from_raw(trace_id: str, span_id: str, data: dict[str, Any]) -> SpanRecord:
    """The ``SpanRecord`` of a span an earlier version stored as it came (``data`` parsed:
    ``{"otlp": <span JSON>, "resource": <attributes>, "scope": <name>}``)."""
    limits = _STORED_LIMITS
    resource = _json_attributes({"attributes": data.get("resource")}, limits)
    record = _json_span(data["otlp"], resource, data.get("scope") or "", limits)
    if record.trace_id == trace_id and record.span_id == span_id:
        return record
    return dataclasses.replace(record, trace_id=trace_id, span_id=span_id)
