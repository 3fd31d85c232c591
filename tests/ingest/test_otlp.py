"""OTLP/HTTP decoding: the real broadcast fixture, both encodings, gzip, limits and bad input."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as SpanStatus
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from ledger.errors import IngestError
from ledger.ingest.otlp import (
    AcceptedSpans,
    Limits,
    RawRequest,
    SpanRecord,
    charges_of,
    decode_for_storage,
    decode_request,
    encode_status_error,
    encode_success,
    is_connection_test,
    spans_from_stored_request,
    wants_protobuf,
)
from ledger.ingest.writer import delivery_text, span_from_data

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
LIMITS = Limits()
TRACE_ID = "9b1de41a703bf6c7f0831bba77573c3e"
SPAN_ID = "9b1de41a703bf6c7"
VALID = {"traceId": TRACE_ID, "spanId": SPAN_ID}
FOURTH_SPAN_BAD = [VALID, VALID, VALID, {"traceId": "x", "spanId": SPAN_ID}]


def _fixture_path() -> Path:
    """The broadcast capture: in the repository once copied there, else the shared fixtures."""
    repo = Path(__file__).resolve().parents[2]
    for candidate in (
        repo / "fixtures" / "openrouter" / "broadcast-success.json",
        repo / "tests" / "fixtures" / "openrouter" / "broadcast-success.json",
        Path("/work/shared/fixtures/openrouter/broadcast-success.json"),
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("fixtures/openrouter/broadcast-success.json")


BROADCAST = _fixture_path().read_bytes()


def decode(body: bytes, content_type: str = JSON, encoding: str | None = None) -> list[SpanRecord]:
    return decode_request(body, content_type, encoding, LIMITS)


def refused(body: bytes, content_type: str = JSON, encoding: str | None = None, **limits: int):
    with pytest.raises(IngestError) as info:
        decode_request(body, content_type, encoding, Limits(**limits))
    return info.value


def one_span_json(**span_fields: Any) -> bytes:
    span = {"traceId": TRACE_ID, "spanId": SPAN_ID, "name": "s", **span_fields}
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


def attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


# --------------------------------------------------------------------------- the real fixture


def test_broadcast_fixture_decodes_root_and_children_with_typed_attributes() -> None:
    spans = decode(BROADCAST)

    assert [s.name for s in spans] == [
        "LLM Generation",
        "provider attempt 1: Amazon Bedrock",
        "generation",
    ]
    root = spans[0]
    assert root.trace_id == TRACE_ID
    assert root.span_id == SPAN_ID
    assert root.parent_span_id is None
    assert root.kind == 3
    assert root.status_code == 1
    assert root.start_unix_nano == 1790606294318000000
    assert root.end_unix_nano == 1790606298041000000
    assert root.scope_name == "openrouter"
    assert root.attributes["gen_ai.usage.input_tokens"] == 2489
    assert root.attributes["gen_ai.usage.total_cost"] == pytest.approx(0.005334)
    assert root.attributes["trace.metadata.openrouter.api_key_name"] == "ledger/seo-audit-weekly"
    assert root.attributes["user.id"] == "seo-audit-weekly"
    assert root.resource_attributes["openrouter.trace.id"] == (
        "gen-1790606294-sdYHTGXUVyDKWCLqX5Op"
    )
    assert all(child.parent_span_id == SPAN_ID for child in spans[1:])
    assert not is_connection_test(spans)


def test_charset_parameter_and_gzip_are_accepted() -> None:
    plain = decode(BROADCAST)
    assert decode(gzip.compress(BROADCAST), "application/json; charset=utf-8", "gzip") == plain
    assert decode(BROADCAST, 'Application/JSON;charset="UTF-8"', "identity") == plain


def test_concatenated_gzip_members_decode_as_one_body() -> None:
    half = len(BROADCAST) // 2
    body = gzip.compress(BROADCAST[:half]) + gzip.compress(BROADCAST[half:])
    assert decode(body, encoding="gzip") == decode(BROADCAST)


# --------------------------------------------------------------------------- JSON value mapping


def test_int_value_is_accepted_as_number_and_as_string() -> None:
    body = one_span_json(
        attributes=[
            attr("as_number", {"intValue": 42}),
            attr("as_string", {"intValue": "-9223372036854775808"}),
            attr("as_integral_float", {"intValue": 7.0}),
        ],
        startTimeUnixNano=1790606294318000000,
        endTimeUnixNano="1790606298041000000",
    )
    (span,) = decode(body)
    assert span.attributes == {
        "as_number": 42,
        "as_string": -(2**63),
        "as_integral_float": 7,
    }
    assert span.start_unix_nano == 1790606294318000000
    assert span.end_unix_nano == 1790606298041000000


def test_every_any_value_kind_flattens() -> None:
    body = one_span_json(
        attributes=[
            attr("s", {"stringValue": "x"}),
            attr("b", {"boolValue": False}),
            attr("d", {"doubleValue": 1.5}),
            attr("d_int", {"doubleValue": 2}),
            attr("inf", {"doubleValue": "Infinity"}),
            attr("bytes", {"bytesValue": base64.b64encode(b"\x00\xff").decode()}),
            attr("arr", {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "a"}]}}),
            attr("kv", {"kvlistValue": {"values": [attr("k", {"boolValue": True})]}}),
            attr("empty", {}),
            {"key": "missing_value"},
        ],
    )
    (span,) = decode(body)
    assert span.attributes == {
        "s": "x",
        "b": False,
        "d": 1.5,
        "d_int": 2.0,
        "inf": float("inf"),
        "bytes": b"\x00\xff",
        "arr": [1, "a"],
        "kv": {"k": True},
        "empty": None,
        "missing_value": None,
    }


def test_uppercase_hex_ids_are_normalised_and_base64_ids_are_tolerated() -> None:
    b64_span = base64.b64encode(bytes.fromhex(SPAN_ID)).decode()
    body = one_span_json(traceId=TRACE_ID.upper(), parentSpanId=b64_span)
    (span,) = decode(body)
    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == SPAN_ID


def test_unknown_fields_are_ignored_and_empty_request_is_empty() -> None:
    assert decode(b"{}") == []
    assert decode(b'{"resourceSpans": null, "somethingNew": 1}') == []
    (span,) = decode(one_span_json(futureField={"a": 1}, droppedAttributesCount=3))
    assert span.name == "s"


def test_error_status_and_exception_event_are_kept() -> None:
    body = one_span_json(
        status={"code": 2, "message": "Key limit exceeded (monthly limit)."},
        events=[
            {
                "name": "exception",
                "timeUnixNano": "1790606294318000001",
                "attributes": [attr("exception.type", {"stringValue": "ForbiddenError"})],
            }
        ],
    )
    (span,) = decode(body)
    assert span.status_code == 2
    assert span.status_message == "Key limit exceeded (monthly limit)."
    assert span.events[0].name == "exception"
    assert span.events[0].time_unix_nano == 1790606294318000001
    assert span.events[0].attributes == {"exception.type": "ForbiddenError"}


# --------------------------------------------------------------------------- protobuf


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def test_protobuf_from_message_classes_decodes_like_json() -> None:
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[_kv("list", AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=3)])))]
        )
    )
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(
                    attributes=[_kv("openrouter.trace.id", AnyValue(string_value="gen-1"))]
                ),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="openrouter"),
                        spans=[
                            Span(
                                trace_id=bytes.fromhex(TRACE_ID),
                                span_id=bytes.fromhex(SPAN_ID),
                                name="LLM Generation",
                                kind=Span.SPAN_KIND_CLIENT,
                                start_time_unix_nano=1,
                                end_time_unix_nano=2,
                                status=SpanStatus(code=SpanStatus.STATUS_CODE_ERROR, message="no"),
                                attributes=[
                                    _kv("gen_ai.usage.input_tokens", AnyValue(int_value=2489)),
                                    _kv("cost", AnyValue(double_value=0.5)),
                                    _kv("ok", AnyValue(bool_value=True)),
                                    _kv("raw", AnyValue(bytes_value=b"\x01")),
                                    _kv("nested", nested),
                                    _kv("unset", AnyValue()),
                                ],
                                events=[Span.Event(name="exception", time_unix_nano=5)],
                            )
                        ],
                    )
                ],
            )
        ]
    )
    (span,) = decode(request.SerializeToString(), PROTOBUF)
    assert span.trace_id == TRACE_ID
    assert span.span_id == SPAN_ID
    assert span.parent_span_id is None
    assert span.kind == 3
    assert (span.status_code, span.status_message) == (2, "no")
    assert span.attributes == {
        "gen_ai.usage.input_tokens": 2489,
        "cost": 0.5,
        "ok": True,
        "raw": b"\x01",
        "nested": {"list": [3]},
        "unset": None,
    }
    assert span.resource_attributes == {"openrouter.trace.id": "gen-1"}
    assert span.events[0].name == "exception"
    assert span.scope_name == "openrouter"


def _sdk_spans() -> list[Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=SdkResource.create({"service.name": "agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test-genai")
    with tracer.start_as_current_span("invoke_agent") as parent:
        parent.set_attribute("session.id", "run-42")
        with tracer.start_as_current_span("chat anthropic/claude-haiku-4.5") as span:
            span.set_attribute("gen_ai.request.model", "anthropic/claude-haiku-4.5")
            span.set_attribute("gen_ai.usage.input_tokens", 2489)
            span.set_attribute("gen_ai.usage.output_tokens", 569)
            span.set_attribute("gen_ai.usage.total_cost", 0.005334)
            span.set_attribute("gen_ai.response.finish_reasons", ["stop"])
            span.record_exception(RuntimeError("provider overloaded"))
            span.set_status(StatusCode.ERROR, "provider overloaded")
    provider.shutdown()
    return list(exporter.get_finished_spans())


def test_protobuf_from_the_real_sdk_encoder_round_trips_gen_ai_attributes() -> None:
    sdk_spans = _sdk_spans()
    body = encode_spans(sdk_spans).SerializeToString()

    spans = decode(body, PROTOBUF)

    by_name = {s.name: s for s in spans}
    chat = by_name["chat anthropic/claude-haiku-4.5"]
    parent = by_name["invoke_agent"]
    assert chat.parent_span_id == parent.span_id
    assert chat.trace_id == f"{sdk_spans[0].context.trace_id:032x}"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 2489
    assert chat.attributes["gen_ai.usage.total_cost"] == pytest.approx(0.005334)
    assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert chat.status_code == 2
    assert chat.status_message == "provider overloaded"
    (event,) = chat.events
    assert event.attributes["exception.type"] == "RuntimeError"
    assert chat.resource_attributes["service.name"] == "agent"
    assert chat.scope_name == "test-genai"


def test_protobuf_gzip_is_accepted() -> None:
    body = encode_spans(_sdk_spans()).SerializeToString()
    assert decode(gzip.compress(body), PROTOBUF, "gzip") == decode(body, PROTOBUF)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        (None, None),
        ("text/plain", None),
        ("application/grpc", None),
        ("application/json; charset=latin-1", None),
        (JSON, "br"),
        (JSON, "deflate"),
        (JSON, "gzip, br"),
    ],
)
def test_unsupported_content_type_or_encoding_is_415(
    content_type: str | None, encoding: str | None
) -> None:
    with pytest.raises(IngestError) as info:
        decode_request(b"{}", content_type, encoding, LIMITS)
    assert info.value.status_code == 415


def test_body_over_the_limit_is_413_before_parsing() -> None:
    err = refused(b"{" * 2048, max_body_bytes=1024)
    assert err.status_code == 413
    assert "1024" in str(err)


def _gzip_of_zeros(mib: int) -> bytes:
    """A valid gzip of ``mib`` MiB of zeros, built without ever holding them.

    After a full flush, deflate encodes every identical 1 MiB chunk to the same bytes, so one
    compressed chunk is repeated; ``\\x03\\x00`` is an empty final block, then CRC-32 and size.
    """
    chunk = bytes(1 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)
    return header + block * mib + b"\x03\x00" + trailer


def test_gzip_of_zeros_helper_builds_a_valid_gzip() -> None:
    assert gzip.decompress(_gzip_of_zeros(3)) == bytes(3 << 20)


def test_gzip_bomb_of_one_gib_is_refused_with_413_quickly() -> None:
    bomb = _gzip_of_zeros(1024)
    assert len(bomb) < LIMITS.max_body_bytes  # it passes the body limit: only inflation stops it

    started = time.perf_counter()
    err = refused(bomb, JSON, "gzip")
    elapsed = time.perf_counter() - started

    assert err.status_code == 413
    assert "inflates to more than" in str(err)
    assert elapsed < 2.0


def test_truncated_or_corrupt_gzip_is_400() -> None:
    whole = gzip.compress(BROADCAST)
    assert refused(whole[: len(whole) // 2], encoding="gzip").status_code == 400
    assert refused(b"not gzip at all", encoding="gzip").status_code == 400


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"resourceSpans": {}}', "resourceSpans: not an array"),
        (b'{"resourceSpans": [1]}', "resourceSpans[0]: not an object"),
        (
            orjson.dumps(
                {
                    "resourceSpans": [
                        {"scopeSpans": [{}, {"spans": [{"traceId": "x"}, {"traceId": "y"}]}]}
                    ]
                }
            ),
            # every span invalid: refused whole, naming the first
            "resourceSpans[0].scopeSpans[1].spans[0].traceId: not a 32-char hex string",
        ),
        (
            b'{"resourceSpans": [{"resource": {"attributes": [{"key": 1}]}}]}',
            "resourceSpans[0].resource.attributes[0].key: missing or not a string",
        ),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"scope": {"name": 5}}]}]}',
            "resourceSpans[0].scopeSpans[0].scope.name: not a string",
        ),
    ],
)
def test_malformed_json_is_400_naming_the_place(body: bytes, location: str) -> None:
    err = refused(body)
    assert err.status_code == 400
    assert location in str(err)


def test_bad_span_fields_name_span_and_field() -> None:
    def where(**fields: Any) -> str:
        err = refused(one_span_json(**fields))
        assert err.status_code == 400
        return str(err)

    prefix = "resourceSpans[0].scopeSpans[0].spans[0]"
    assert where(spanId="abc") == f"{prefix}.spanId: not a 16-char hex string"
    assert where(startTimeUnixNano="-1").startswith(f"{prefix}.startTimeUnixNano:")
    assert where(status={"code": 7}).startswith(f"{prefix}.status.code:")
    assert where(kind="SPAN_KIND_CLIENT").startswith(f"{prefix}.kind:")
    assert where(attributes=[attr("n", {"intValue": "12abc"})]).startswith(
        f"{prefix}.attributes[0].value.intValue: not a 64-bit integer"
    )
    assert where(attributes=[attr("n", {"intValue": str(2**63)})]).startswith(
        f"{prefix}.attributes[0].value.intValue:"
    )
    assert where(attributes=[attr("b", {"boolValue": "true"})]).startswith(
        f"{prefix}.attributes[0].value.boolValue:"
    )
    assert where(
        attributes=[
            attr("a", {"arrayValue": {"values": [{"stringValue": "ok"}, {"doubleValue": []}]}})
        ]
    ).startswith(f"{prefix}.attributes[0].value.arrayValue.values[1].doubleValue:")
    assert where(
        events=[{"name": "e", "attributes": [attr("x", {"bytesValue": "%%%"})]}]
    ).startswith(f"{prefix}.events[0].attributes[0].value.bytesValue:")


def _nested_json(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(depth - 1):
        value = {"arrayValue": {"values": [value]}}
    return value


def test_any_value_nesting_beyond_max_depth_is_400() -> None:
    (span,) = decode(one_span_json(attributes=[attr("deep", _nested_json(8))]))
    assert span.attributes["deep"] == [[[[[[["leaf"]]]]]]]

    err = refused(one_span_json(attributes=[attr("deep", _nested_json(9))]))
    assert err.status_code == 400
    assert "nested deeper than 8 levels" in str(err)


def test_protobuf_nesting_beyond_max_depth_is_400() -> None:
    value = AnyValue(string_value="leaf")
    for _ in range(8):
        value = AnyValue(array_value=ArrayValue(values=[value]))
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            Span(
                                trace_id=bytes(16),
                                span_id=bytes(8),
                                attributes=[_kv("deep", value)],
                            )
                        ]
                    )
                ]
            )
        ]
    )
    err = refused(request.SerializeToString(), PROTOBUF)
    assert err.status_code == 400
    assert str(err).startswith("resourceSpans[0].scopeSpans[0].spans[0].attributes[0].value")


def test_too_many_spans_or_attributes_is_413() -> None:
    spans = [{"traceId": TRACE_ID, "spanId": SPAN_ID} for _ in range(3)]
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    assert refused(body, max_spans=2).status_code == 413
    assert len(decode_request(body, JSON, None, Limits(max_spans=3))) == 3

    many = one_span_json(attributes=[attr(f"k{i}", {"intValue": i}) for i in range(3)])
    err = refused(many, max_attributes=2)
    assert err.status_code == 413
    assert "spans[0].attributes" in str(err)


def test_protobuf_span_count_and_id_sizes_are_checked() -> None:
    spans = [Span(trace_id=bytes(16), span_id=bytes(8)) for _ in range(3)]
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    assert refused(request.SerializeToString(), PROTOBUF, max_spans=2).status_code == 413

    short = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                scope_spans=[ScopeSpans(spans=[Span(trace_id=b"\x01", span_id=bytes(8))])]
            )
        ]
    )
    err = refused(short.SerializeToString(), PROTOBUF)
    assert str(err) == "resourceSpans[0].scopeSpans[0].spans[0].traceId: not 16 bytes"


def test_malformed_protobuf_is_400() -> None:
    err = refused(b"\x0a\xff\xff", PROTOBUF)
    assert err.status_code == 400
    assert "malformed protobuf" in str(err)


# --------------------------------------------------------------------------- fuzz

_CONTENT_TYPES = st.sampled_from([JSON, PROTOBUF, "text/plain", None])
_ENCODINGS = st.sampled_from([None, "gzip", "identity", "br"])


@settings(derandomize=True, max_examples=400, deadline=None)
@given(body=st.binary(max_size=512), content_type=_CONTENT_TYPES, encoding=_ENCODINGS)
def test_random_bytes_raise_only_ingest_error(
    body: bytes, content_type: str | None, encoding: str | None
) -> None:
    try:
        spans = decode_request(body, content_type, encoding, Limits(max_depth=4))
    except IngestError as err:
        assert err.status_code in (400, 413, 415)
    else:
        assert all(isinstance(s, SpanRecord) for s in spans)


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from([TRACE_ID, SPAN_ID, "NaN", "Infinity", "12", "AAAAAAAAAAA="])
)
_keys = st.sampled_from(
    [
        "resourceSpans", "scopeSpans", "spans", "resource", "scope", "attributes", "key",
        "value", "traceId", "spanId", "parentSpanId", "name", "status", "code", "message",
        "events", "stringValue", "intValue", "doubleValue", "boolValue", "arrayValue",
        "kvlistValue", "bytesValue", "values", "startTimeUnixNano", "kind", "timeUnixNano",
    ]
)  # fmt: skip
_json_values = st.recursive(
    _json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=6),
    max_leaves=40,
)


def _mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Well-typed values about nine times in ten, anything JSON otherwise."""
    return st.integers(0, 9).flatmap(lambda roll: _json_values if roll == 0 else valid)


B64_TRACE_ID = base64.b64encode(bytes.fromhex(TRACE_ID)).decode()
B64_SPAN_ID = base64.b64encode(bytes.fromhex(SPAN_ID)).decode()
_uint64 = st.integers(0, 2**64 - 1)
_int64 = st.integers(-(2**63), 2**63 - 1)
_scalar_any_value = st.one_of(
    st.builds(lambda v: {"stringValue": v}, _mostly(st.text(max_size=20))),
    st.builds(lambda v: {"intValue": v}, _mostly(_int64 | _int64.map(str))),
    st.builds(lambda v: {"doubleValue": v}, _mostly(st.floats() | st.just("NaN"))),
    st.builds(lambda v: {"boolValue": v}, _mostly(st.booleans())),
    st.builds(
        lambda v: {"bytesValue": v},
        _mostly(st.binary(max_size=8).map(lambda b: base64.b64encode(b).decode())),
    ),
    st.just({}),
)
_any_value = st.recursive(
    _scalar_any_value,
    lambda inner: st.one_of(
        st.builds(lambda vs: {"arrayValue": {"values": vs}}, st.lists(inner, max_size=3)),
        st.builds(
            lambda vs: {"kvlistValue": {"values": [{"key": "k", "value": v} for v in vs]}},
            st.lists(inner, max_size=3),
        ),
    ),
    max_leaves=12,
)
_attributes = st.lists(
    st.fixed_dictionaries({"key": _mostly(st.text(max_size=8)), "value": _any_value}),
    max_size=4,
)
_otlp_span = st.fixed_dictionaries(
    {
        "traceId": _mostly(
            st.sampled_from([TRACE_ID, TRACE_ID.upper(), "m7Ht5Fo3x9eR2Kq1Zw8Y0A=="])
        ),
        "spanId": _mostly(st.sampled_from([SPAN_ID, "m7Ht5Fo3x9c="])),
    },
    optional={
        "parentSpanId": _mostly(st.sampled_from([SPAN_ID, ""])),
        "name": _mostly(st.text(max_size=20)),
        "kind": _mostly(st.integers(0, 5)),
        "startTimeUnixNano": _mostly(_uint64 | _uint64.map(str)),
        "status": st.fixed_dictionaries(
            {}, optional={"code": _mostly(st.integers(0, 2)), "message": _mostly(st.text())}
        ),
        "attributes": _attributes,
        "events": st.lists(
            st.fixed_dictionaries(
                {"name": _mostly(st.text(max_size=8))},
                optional={"timeUnixNano": _mostly(_uint64), "attributes": _attributes},
            ),
            max_size=2,
        ),
    },
)
_otlp_request = st.builds(
    lambda spans, extra: {"resourceSpans": [{"scopeSpans": [{"spans": spans}], **extra}]},
    st.lists(_otlp_span, max_size=3),
    st.dictionaries(_keys, _json_values, max_size=2),
)


@settings(
    derandomize=True, max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(doc=_json_values | _otlp_request, gzipped=st.booleans())
def test_random_json_raises_only_ingest_error(doc: Any, gzipped: bool) -> None:
    body = json.dumps(doc).encode()  # stdlib: it writes integers beyond 64 bits, orjson does not
    if gzipped:
        body = gzip.compress(body)
    try:
        spans = decode_request(body, JSON, "gzip" if gzipped else None, Limits(max_depth=4))
    except IngestError as err:
        assert err.status_code in (400, 413)
        assert str(err)
    else:
        assert all(len(s.trace_id) == 32 and len(s.span_id) == 16 for s in spans)


_plain_any_value = st.one_of(
    st.builds(lambda v: {"stringValue": v}, st.text(max_size=20)),
    st.builds(lambda v: {"intValue": v}, _int64 | _int64.map(str)),
    st.builds(lambda v: {"doubleValue": v}, st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(lambda v: {"boolValue": v}, st.booleans()),
    st.just({}),
)
_plain_attributes = st.lists(
    st.fixed_dictionaries({"key": st.text(max_size=8)}, optional={"value": _plain_any_value}),
    max_size=5,
)
_plain_span = st.fixed_dictionaries(
    {
        "traceId": st.sampled_from([TRACE_ID, TRACE_ID.upper()]),
        "spanId": st.sampled_from([SPAN_ID, SPAN_ID.upper()]),
    },
    optional={
        "parentSpanId": st.sampled_from([SPAN_ID, ""]),
        "name": st.text(max_size=20),
        "kind": st.integers(0, 5),
        "startTimeUnixNano": _uint64 | _uint64.map(str),
        "endTimeUnixNano": _uint64 | _uint64.map(str),
        "status": st.fixed_dictionaries(
            {},
            optional={
                "code": st.sampled_from([0, 1, 2, "STATUS_CODE_ERROR"]),
                "message": st.text(max_size=10),
            },
        ),
        "attributes": _plain_attributes,
        "events": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=8)},
                optional={"timeUnixNano": _uint64, "attributes": _plain_attributes},
            ),
            max_size=2,
        ),
    },
)
_plain_request = st.builds(
    lambda spans, resource, scope: {
        "resourceSpans": [
            {
                "resource": {"attributes": resource},
                "scopeSpans": [{"scope": {"name": scope}, "spans": spans}],
            }
        ]
    },
    st.lists(_plain_span, max_size=3),
    _plain_attributes,
    st.text(max_size=8),
)


@settings(
    derandomize=True, max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(doc=_json_values | _otlp_request | _plain_request, gzipped=st.booleans())
def test_receiver_fast_path_agrees_with_the_walker(doc: Any, gzipped: bool) -> None:
    """``decode_for_storage`` (msgspec, spans stored as they came) refuses exactly what
    ``decode_request`` refuses, with the same status and message, and what it stores reads back
    as the very spans the walker decodes."""
    body = json.dumps(doc).encode()
    encoding = "gzip" if gzipped else None
    if gzipped:
        body = gzip.compress(body)

    def outcome(decoder: Any) -> Any:
        try:
            return decoder(body, JSON, encoding, Limits(max_depth=4))
        except IngestError as err:
            return (err.status_code, str(err))

    walked, stored = outcome(decode_request), outcome(decode_for_storage)
    if isinstance(walked, tuple):
        assert stored == walked
        return
    restored = (
        spans_from_stored_request(delivery_text(stored))
        if isinstance(stored, RawRequest)
        else stored
    )
    assert repr(restored) == repr(walked)  # repr: NaN attributes compare equal
    if isinstance(stored, RawRequest):  # the costs the budget check counts while it waits
        assert stored.charges == charges_of(walked)


def test_spans_an_earlier_version_stored_as_they_came_still_read_back() -> None:
    """Before deliveries were stored whole, each span was stored as ``{"otlp": <span JSON>,
    "resource": <resource attributes>, "scope": <scope name>}``; such rows still read back."""
    doc = json.loads(BROADCAST)
    old = [
        (
            span,
            {"otlp": span, "resource": rs["resource"]["attributes"], "scope": ss["scope"]["name"]},
        )
        for rs in doc["resourceSpans"]
        for ss in rs["scopeSpans"]
        for scope in [ss["scope"]]
        for span in ss["spans"]
    ]
    restored = [span_from_data(s["traceId"], s["spanId"], data) for s, data in old]
    assert restored == decode(BROADCAST)


def test_common_json_delivery_takes_the_fast_path_and_odd_ones_the_walker() -> None:
    fast = decode_for_storage(BROADCAST, JSON, None, LIMITS)
    assert isinstance(fast, RawRequest) and len(fast) == len(decode(BROADCAST))
    assert delivery_text(fast) == BROADCAST.decode()  # stored as it came
    assert spans_from_stored_request(delivery_text(fast)) == decode(BROADCAST)
    assert fast.charges and fast.charges == charges_of(decode(BROADCAST))  # its reported cost
    # What the walker refuses, the receiver refuses with the same words: a kind beyond 64 bits
    # (msgspec reads any integer; orjson, and so the walker, does not) and bad UTF-8 in a key
    # no decoder looks at.
    huge_kind = one_span_json(kind=1).replace(b'"kind":1', b'"kind":18446744073709551616')
    bad_utf8 = one_span_json(extra="Z").replace(b"Z", b"\xff")
    for body in (huge_kind, bad_utf8):
        with pytest.raises(IngestError) as walked:
            decode(body)
        with pytest.raises(IngestError) as stored:
            decode_for_storage(body, JSON, None, LIMITS)
        assert (stored.value.status_code, str(stored.value)) == (400, str(walked.value))
    nested = one_span_json(attributes=[attr("a", {"arrayValue": {"values": [{"intValue": 1}]}})])
    b64_id = one_span_json(traceId=base64.b64encode(bytes.fromhex(TRACE_ID)).decode())
    for body in (nested, b64_id):
        walked = decode_for_storage(body, JSON, None, LIMITS)
        assert all(isinstance(s, SpanRecord) for s in walked)
        assert walked == decode(body)


# --------------------------------------------------------------------------- responses


def test_success_response_leaves_partial_success_unset() -> None:
    assert encode_success(protobuf=False) == b"{}"
    assert ExportTraceServiceResponse.FromString(encode_success(protobuf=True)) == (
        ExportTraceServiceResponse()
    )
    assert not ExportTraceServiceResponse.FromString(encode_success(protobuf=True)).HasField(
        "partial_success"
    )


def test_partial_success_response_in_both_encodings() -> None:
    as_json = orjson.loads(encode_success(3, "3 spans had no trace id", protobuf=False))
    assert as_json == {
        "partialSuccess": {"rejectedSpans": "3", "errorMessage": "3 spans had no trace id"}
    }
    as_pb = ExportTraceServiceResponse.FromString(encode_success(3, "why", protobuf=True))
    assert as_pb.partial_success.rejected_spans == 3
    assert as_pb.partial_success.error_message == "why"


def test_error_body_is_a_google_rpc_status_in_the_request_encoding() -> None:
    message = "resourceSpans[0].scopeSpans[0].spans[0].traceId: not a 32-char hex string — é"
    status = status_pb2.Status.FromString(encode_status_error(message, protobuf=True))
    assert (status.code, status.message) == (3, message)
    assert orjson.loads(encode_status_error(message, protobuf=False)) == {
        "code": 3,
        "message": message,
    }
    long = "x" * 300  # a multi-byte length varint
    assert (
        status_pb2.Status.FromString(
            encode_status_error(long, protobuf=True, http_status=503)
        ).message
        == long
    )
    assert (
        status_pb2.Status.FromString(encode_status_error("", protobuf=True, http_status=503)).code
        == 14
    )


def test_response_encoding_follows_the_request_content_type() -> None:
    assert wants_protobuf("application/x-protobuf")
    assert not wants_protobuf("application/json; charset=utf-8")
    assert not wants_protobuf("text/html")  # unsupported: answer the 415 in JSON
    assert not wants_protobuf(None)


# --------------------------------------------------------------------------- connection test


def test_connection_test_is_empty_or_one_named_span() -> None:
    assert is_connection_test([])
    (span,) = decode(one_span_json(name="openrouter-connection-test"))
    assert is_connection_test([span])
    assert not is_connection_test(decode(BROADCAST))
    assert not is_connection_test([span, span])


@pytest.mark.parametrize("protobuf", [False, True])
def test_invalid_spans_are_left_out_and_named_the_valid_ones_accepted(protobuf: bool) -> None:
    """The spec's partial success: spans whose own content is invalid are rejected, the rest
    of the request is accepted; the rejections say where and why."""
    if protobuf:
        request = ExportTraceServiceRequest()
        scope = request.resource_spans.add().scope_spans.add()
        for trace_id in (bytes.fromhex(TRACE_ID), b"short", bytes.fromhex(TRACE_ID)):
            span = scope.spans.add()
            span.trace_id, span.span_id, span.name = trace_id, bytes.fromhex(SPAN_ID), "s"
        spans = decode_request(request.SerializeToString(), PROTOBUF, None, Limits())
    else:
        body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": FOURTH_SPAN_BAD}]}]})
        spans = decode_request(body, JSON, None, Limits())
    assert isinstance(spans, AcceptedSpans)
    assert len(spans) == (2 if protobuf else 3)
    bad = "spans[1].traceId: not 16 bytes" if protobuf else "spans[3].traceId: not a 32-char hex"
    (rejection,) = spans.rejections
    assert rejection.startswith(f"resourceSpans[0].scopeSpans[0].{bad}")
    assert spans.rejection_message() == f"1 span(s) rejected: {rejection}"


def test_a_limit_still_refuses_the_whole_request() -> None:
    events = [{"name": "e", "timeUnixNano": "1"}] * 3
    body = orjson.dumps(
        {"resourceSpans": [{"scopeSpans": [{"spans": [VALID, {**VALID, "events": events}]}]}]}
    )
    err = refused(body, max_events=2)
    assert err.status_code == 413
    assert "resourceSpans[0].scopeSpans[0].spans[1].events: more than 2 events" in str(err)
