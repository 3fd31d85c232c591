"""OTLP/protobuf decoding: an ``ExportTraceServiceRequest`` (upb) → ``SpanRecord``s, read field
by field (no ``json_format``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ledger.ingest.otlp.model import (
    AcceptedSpans,
    Attributes,
    AttrValue,
    Bad,
    Limits,
    SpanEvent,
    SpanRecord,
    check_counts,
)


def decode_protobuf(payload: bytes, limits: Limits) -> AcceptedSpans:
    try:
        request = ExportTraceServiceRequest.FromString(payload)
    except DecodeError as exc:
        raise Bad(f"malformed protobuf: {exc}") from None
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if total > limits.max_spans:
        raise Bad(f"{total} spans in one request; the limit is {limits.max_spans}", status_code=413)
    records = AcceptedSpans()
    for i, rs in enumerate(request.resource_spans):
        try:
            resource_attrs = _pb_attributes(rs.resource.attributes, limits, "resource")
            for j, ss in enumerate(rs.scope_spans):
                scope_name = ss.scope.name
                for k, span in enumerate(ss.spans):
                    try:
                        records.append(_pb_span(span, resource_attrs, scope_name, limits))
                    except Bad as bad:
                        where = (f"scopeSpans[{j}]", f"spans[{k}]")
                        if bad.status_code != 400:  # a limit: the request is refused whole
                            raise bad.at(*where) from None
                        records.rejections.append(bad.at(f"resourceSpans[{i}]", *where).text())
        except Bad as bad:
            raise bad.at(f"resourceSpans[{i}]") from None
    return records


def _pb_id(raw: bytes, size: int, field: str) -> str:
    if len(raw) != size:
        raise Bad(f"not {size} bytes", field)
    return raw.hex()


def _pb_span(span: Any, resource_attrs: Attributes, scope_name: str, limits: Limits) -> SpanRecord:
    check_counts(limits, events=len(span.events))
    status_code = span.status.code
    if status_code not in (0, 1, 2):
        raise Bad("not a status code (0 unset, 1 ok, 2 error)", "status", "code")
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
    check_counts(limits, *prefix, attributes=len(items))
    out: Attributes = {}
    for a, kv in enumerate(items):
        try:
            out[kv.key] = _pb_any_value(kv.value, 1, limits.max_depth)
        except Bad as bad:
            raise bad.at(*prefix, f"attributes[{a}]", "value") from None
    return out


def _pb_any_value(value: Any, depth: int, max_depth: int) -> AttrValue:
    if depth > max_depth:
        raise Bad(f"AnyValue nested deeper than {max_depth} levels")
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
            except Bad as bad:
                raise bad.at("arrayValue", f"values[{v}]") from None
        return result
    if which == "kvlist_value":
        mapping: dict[str, AttrValue] = {}
        for p, kv in enumerate(value.kvlist_value.values):
            try:
                mapping[kv.key] = _pb_any_value(kv.value, depth + 1, max_depth)
            except Bad as bad:
                raise bad.at("kvlistValue", f"values[{p}]", "value") from None
        return mapping
    if which == "bytes_value":
        return bytes(value.bytes_value)
    return None
