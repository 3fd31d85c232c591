"""The OTLP/HTTP receiver (``POST /v1/traces``) over real HTTP, and its group-commit writer.

HTTP tests run ``create_app`` under uvicorn on a loopback port (in a thread, so the synchronous
OpenTelemetry exporter and hypothesis can call it) against both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import sqlite3
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.daemon import open_ingest
from ledger.db.engine import make_engine
from ledger.db.session import Database
from ledger.errors import IngestError
from ledger.ingest.otlp import (
    CONNECTION_TEST_SPAN_NAME,
    Limits,
    SpanEvent,
    SpanRecord,
    decode_request,
    spans_from_stored_request,
)
from ledger.ingest.process import DbLookup, process_pending, waiting_spans
from ledger.ingest.writer import Backlog, SpanWriter, span_data, span_from_data
from ledger.sim.openrouter import GenerationRecord, build_broadcast
from ledger.transitions import PolicyContext
from ledger.web.app import create_app
from tests.factories import T0
from tests.servers import serve_app, wait_until

TOKEN = "broadcast-token-one"
JSON_HEADERS = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}


# --------------------------------------------------------------------------- helpers


Start = Callable[..., str]


@pytest.fixture
def receiver(database_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start the daemon's app with ``Settings`` overrides; yields a starter returning its URL."""
    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> str:
            values: dict[str, Any] = {
                "database_url": database_url,
                "behaviors_dir": tmp_path / "behaviors",
                "broadcast_tokens": TOKEN,
                "watch": False,
                **overrides,
            }
            app = create_app(Settings(**values), clock=FakeClock(T0))
            return stack.enter_context(serve_app(app))

        yield start


def stored(database_url: str, *, processed: bool = False) -> list[dict[str, Any]]:
    """Every span durably stored: processed (``ingested_span``) or still waiting in its
    delivery (``ingest_delivery``), read in one snapshot. With ``processed``, first wait until
    the daemon's processor has taken every delivery, then only ``ingested_span``."""
    engine = make_engine(database_url)
    try:
        if processed:
            wait_until(lambda: _waiting(engine) == 0, timeout=15, what="the processor")
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                rows = [
                    {**row, "data": _json(row["data"])}
                    for row in conn.execute(
                        sa.text(
                            "SELECT trace_id, span_id, name, source, data, received_at, "
                            "processed_at FROM ingested_span ORDER BY id"
                        )
                    ).mappings()
                ]
                waiting = conn.execute(
                    sa.text("SELECT received_at, spans FROM ingest_delivery ORDER BY id")
                ).all()
        seen = {(r["trace_id"], r["span_id"]) for r in rows}
        for received_at, spans in waiting:
            for trace_id, span_id, name, data in _entries(spans):
                if (trace_id, span_id) not in seen:
                    seen.add((trace_id, span_id))
                    rows.append(
                        {
                            "trace_id": trace_id,
                            "span_id": span_id,
                            "name": name,
                            "source": "broadcast",
                            "data": data,
                            "received_at": received_at,
                            "processed_at": None,
                        }
                    )
        return rows
    finally:
        engine.dispose()


def _entries(text: str) -> list[list[Any]]:
    """A stored delivery's spans: a request stored as it came, or a list of span entries."""
    if text.startswith("{"):
        return [
            [r.trace_id, r.span_id, r.name, span_data(r)] for r in spans_from_stored_request(text)
        ]
    return list(orjson.loads(text))


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) else value


def _waiting(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM ingest_delivery WHERE set_aside IS NULL")
            ).scalar_one()
        )


def delivery(generation_id: str = "gen-1700000000-abc", **changes: Any) -> bytes:
    record = GenerationRecord(
        generation_id=generation_id,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=2),
        key_name="ledger/seo-audit",
        request_model="anthropic/claude-haiku-4.5",
        response_model="anthropic/claude-haiku-4.5",
        user="seo-audit",
        session_id="run-1",
        trace={"behavior": "seo-audit", "run_id": "run-1"},
        messages=[{"role": "user", "content": "Audit the site."}],
        completion="All good.",
        prompt_tokens=100,
        completion_tokens=10,
        input_unit_price=0.000001,
        output_unit_price=0.000005,
        **changes,
    )
    return orjson.dumps(build_broadcast(record, int_as_string=True))


# --------------------------------------------------------------------------- deliveries


def test_openrouter_json_delivery_is_stored_span_by_span_and_answered_with_empty_success(
    receiver: Start, database_url: str
) -> None:
    base = receiver()
    body = delivery()
    response = httpx.post(base + "/v1/traces", content=body, headers=JSON_HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}

    rows = stored(database_url)
    expected = decode_request(body, "application/json", None, Limits())
    assert [(r["trace_id"], r["span_id"], r["name"]) for r in rows] == [
        (s.trace_id, s.span_id, s.name) for s in expected
    ]
    assert {r["source"] for r in rows} == {"broadcast"}
    assert all(r["received_at"] is not None for r in rows)
    # The stored data gives the processor back exactly the decoded spans.
    restored = [span_from_data(r["trace_id"], r["span_id"], r["data"]) for r in rows]
    assert restored == expected
    root = restored[0].attributes
    assert root["gen_ai.usage.total_cost"] == pytest.approx(0.00015)
    assert root["trace.metadata.openrouter.api_key_name"] == "ledger/seo-audit"


def test_full_collector_url_pasted_as_destination_also_works(
    receiver: Start, database_url: str
) -> None:
    base = receiver()
    response = httpx.post(base + "/v1/traces/v1/traces", content=delivery(), headers=JSON_HEADERS)
    assert response.status_code == 200
    assert len(stored(database_url)) == 3
    # the host pasted with a trailing slash (OpenRouter appends /v1/traces), or a trailing slash
    forms = ["//v1/traces", "/v1/traces/", "/v1/traces/v1/traces/"]
    for n, path in enumerate(forms):
        sent = httpx.post(base + path, content=delivery(f"gen-{n}"), headers=JSON_HEADERS)
        assert sent.status_code == 200, (path, sent.text)
    assert len(stored(database_url)) == 3 * (1 + len(forms))
    assert (
        httpx.post(base + "/v1/trace", content=delivery(), headers=JSON_HEADERS).status_code == 404
    )


def test_redelivered_spans_are_stored_once(receiver: Start, database_url: str) -> None:
    base = receiver()
    body = delivery()
    for _ in range(3):
        assert (
            httpx.post(base + "/v1/traces", content=body, headers=JSON_HEADERS).status_code == 200
        )
    other = delivery("gen-1700000001-def")
    assert httpx.post(base + "/v1/traces", content=other, headers=JSON_HEADERS).status_code == 200
    rows = stored(database_url, processed=True)
    assert len(rows) == 6
    assert len({(r["trace_id"], r["span_id"]) for r in rows}) == 6


def test_real_opentelemetry_exporter_protobuf_gzip_spans_are_stored(
    receiver: Start, database_url: str
) -> None:
    base = receiver()
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "my-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("gen_ai.test")
    with tracer.start_as_current_span("chat anthropic/claude-haiku-4.5") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", "anthropic/claude-haiku-4.5")
        span.set_attribute("gen_ai.usage.input_tokens", 120)
        span.set_attribute("gen_ai.usage.output_tokens", 30)
        span.set_attribute("gen_ai.usage.total_cost", 0.00027)
        span.set_attribute("user.id", "seo-audit")
        span.add_event("gen_ai.choice", {"finish_reason": "stop"})
        with tracer.start_as_current_span("tool call"):
            pass
    provider.shutdown()
    exporter = OTLPSpanExporter(
        endpoint=base + "/v1/traces",
        headers={"Authorization": f"Bearer {TOKEN}"},
        compression=Compression.Gzip,
        timeout=10,
    )
    assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    exporter.shutdown()

    rows = {r["name"]: r for r in stored(database_url)}
    assert set(rows) == {"chat anthropic/claude-haiku-4.5", "tool call"}
    chat = rows["chat anthropic/claude-haiku-4.5"]["data"]
    assert chat["attributes"]["gen_ai.usage.input_tokens"] == 120
    assert chat["attributes"]["gen_ai.usage.total_cost"] == pytest.approx(0.00027)
    assert chat["resource_attributes"]["service.name"] == "my-agent"
    assert chat["scope_name"] == "gen_ai.test"
    assert chat["events"][0]["name"] == "gen_ai.choice"
    assert (
        rows["tool call"]["data"]["parent_span_id"]
        == rows["chat anthropic/claude-haiku-4.5"]["span_id"]
    )


def test_protobuf_request_gets_protobuf_success_body(receiver: Start, database_url: str) -> None:
    base = receiver()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span("one"):
        pass
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    body = encode_spans(memory.get_finished_spans()).SerializeToString()
    response = httpx.post(
        base + "/v1/traces",
        content=gzip.compress(body),
        headers={
            "content-type": "application/x-protobuf",
            "content-encoding": "gzip",
            "authorization": f"Bearer {TOKEN}",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert not ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    assert [r["name"] for r in stored(database_url)] == ["one"]


# --------------------------------------------------------------------------- authentication


def test_missing_or_wrong_token_is_401_and_nothing_is_stored(
    receiver: Start, database_url: str
) -> None:
    base = receiver()
    body = delivery()
    missing = httpx.post(
        base + "/v1/traces", content=body, headers={"content-type": "application/json"}
    )
    wrong = httpx.post(
        base + "/v1/traces",
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer not-the-token"},
    )
    not_bearer = httpx.post(
        base + "/v1/traces",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Basic {TOKEN}"},
    )
    for response in (missing, wrong, not_bearer):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert TOKEN not in response.text
    assert "Authorization: Bearer" in missing.json()["message"]
    assert wrong.json() == {"code": 16, "message": "the broadcast token is not valid"}
    assert stored(database_url) == []


def test_several_tokens_are_valid_at_once_while_rotating(
    receiver: Start, database_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "new-token"
    secret_file.write_text("the-new-token\n")
    base = receiver(broadcast_tokens=f"{TOKEN}, file:{secret_file}")
    for token, generation in ((TOKEN, "gen-old"), ("the-new-token", "gen-new")):
        response = httpx.post(
            base + "/v1/traces",
            content=delivery(generation),
            headers={"content-type": "application/json", "authorization": f"bearer {token}"},
        )
        assert response.status_code == 200
    assert len(stored(database_url)) == 6


def test_named_header_carries_the_token_as_is(receiver: Start, database_url: str) -> None:
    base = receiver(broadcast_header="X-Ledger-Token")
    body = delivery()
    as_bearer = httpx.post(base + "/v1/traces", content=body, headers=JSON_HEADERS)
    assert as_bearer.status_code == 401
    assert "X-Ledger-Token".lower() in as_bearer.json()["message"]
    named = httpx.post(
        base + "/v1/traces",
        content=body,
        headers={"content-type": "application/json", "x-ledger-token": TOKEN},
    )
    assert named.status_code == 200
    assert len(stored(database_url)) == 3


def test_without_configured_tokens_every_delivery_is_refused(
    receiver: Start, database_url: str
) -> None:
    base = receiver(broadcast_tokens=None)
    response = httpx.post(base + "/v1/traces", content=delivery(), headers=JSON_HEADERS)
    assert response.status_code == 401
    assert "not configured" in response.json()["message"]
    assert stored(database_url) == []


# --------------------------------------------------------------------------- connection tests


def test_connection_tests_answer_200_and_record_nothing(receiver: Start, database_url: str) -> None:
    base = receiver()
    header_test = httpx.post(
        base + "/v1/traces",
        content=delivery(),
        headers={**JSON_HEADERS, "x-test-connection": "true"},
    )
    span = {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "name": CONNECTION_TEST_SPAN_NAME,
    }
    span_test = httpx.post(
        base + "/v1/traces",
        content=orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}),
        headers=JSON_HEADERS,
    )
    empty = httpx.post(base + "/v1/traces", content=b"{}", headers=JSON_HEADERS)
    for response in (header_test, span_test, empty):
        assert response.status_code == 200
        assert response.json() == {}
    assert stored(database_url) == []


def test_connection_test_still_needs_the_token(receiver: Start) -> None:
    base = receiver()
    response = httpx.post(
        base + "/v1/traces",
        content=b"{}",
        headers={"content-type": "application/json", "x-test-connection": "true"},
    )
    assert response.status_code == 401


# --------------------------------------------------------------------------- hostile input


def test_declared_body_over_the_limit_is_413_before_it_is_read(
    receiver: Start, database_url: str
) -> None:
    base = receiver(ingest_max_body_bytes=2048)
    response = httpx.post(base + "/v1/traces", content=delivery(), headers=JSON_HEADERS)
    assert response.status_code == 413
    assert "limit is 2048" in response.json()["message"]
    assert stored(database_url) == []


def test_streamed_body_over_the_limit_is_413(receiver: Start) -> None:
    base = receiver(ingest_max_body_bytes=2048)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    response = httpx.post(base + "/v1/traces", content=chunks(), headers=JSON_HEADERS)
    assert response.status_code == 413
    assert "more than 2048 bytes" in response.json()["message"]


def test_gzip_bomb_is_413(receiver: Start) -> None:
    base = receiver(ingest_max_inflated_bytes=100_000)
    bomb = gzip.compress(b"{" + b" " * 10_000_000 + b"}")
    assert len(bomb) < 20_000
    response = httpx.post(
        base + "/v1/traces",
        content=bomb,
        headers={**JSON_HEADERS, "content-encoding": "gzip"},
    )
    assert response.status_code == 413
    assert "inflates to more than 100000 bytes" in response.json()["message"]


def test_unsupported_content_type_is_415(receiver: Start) -> None:
    base = receiver()
    response = httpx.post(
        base + "/v1/traces",
        content=b"<xml/>",
        headers={"content-type": "text/xml", "authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 415
    assert "application/json or application/x-protobuf" in response.json()["message"]


def test_malformed_payloads_are_400_naming_the_problem(receiver: Start) -> None:
    base = receiver()
    bad_json = httpx.post(base + "/v1/traces", content=b'{"resourceSpans": [', headers=JSON_HEADERS)
    assert bad_json.status_code == 400
    assert bad_json.json()["message"].startswith("malformed JSON")

    bad_id = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz", "spanId": "1"}]}]}]}
    wrong_field = httpx.post(
        base + "/v1/traces", content=orjson.dumps(bad_id), headers=JSON_HEADERS
    )
    assert wrong_field.status_code == 400
    assert "resourceSpans[0].scopeSpans[0].spans[0].traceId" in wrong_field.json()["message"]

    bad_protobuf = httpx.post(
        base + "/v1/traces",
        content=b"\xff\xff\xff",
        headers={"content-type": "application/x-protobuf", "authorization": f"Bearer {TOKEN}"},
    )
    assert bad_protobuf.status_code == 400
    assert bad_protobuf.headers["content-type"] == "application/x-protobuf"
    assert b"malformed protobuf" in bad_protobuf.content  # google.rpc.Status field 2


def test_invalid_spans_are_rejected_with_partial_success_and_the_rest_stored(
    receiver: Start, database_url: str
) -> None:
    base = receiver()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    spans = [
        {"traceId": trace, "spanId": "00f067aa0ba902b7", "name": "kept"},
        {"traceId": trace, "spanId": "nope", "name": "bad id"},
        {"traceId": trace, "spanId": "00f067aa0ba902b8", "name": "kept too"},
        {"traceId": trace, "spanId": "00f067aa0ba902b9", "startTimeUnixNano": "-1"},
    ]
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    response = httpx.post(base + "/v1/traces", content=body, headers=JSON_HEADERS)
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert partial["errorMessage"].startswith(
        "2 span(s) rejected: resourceSpans[0].scopeSpans[0].spans[1].spanId: not a 16-char hex"
    )
    assert "spans[3].startTimeUnixNano" in partial["errorMessage"]
    assert sorted(r["name"] for r in stored(database_url)) == ["kept", "kept too"]


def test_get_is_405(receiver: Start) -> None:
    base = receiver()
    response = httpx.get(base + "/v1/traces")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


_content_types = st.sampled_from(
    [
        "application/json",
        "application/x-protobuf",
        "application/json; charset=latin-1",
        "text/plain",
        "",
    ]
)
_json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "scopeSpans",
                    "spans",
                    "traceId",
                    "spanId",
                    "attributes",
                    "key",
                    "value",
                    "intValue",
                    "stringValue",
                    "kvlistValue",
                    "values",
                    "events",
                    "status",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=30,
)


def test_fuzzed_requests_never_get_a_500(receiver: Start, database_url: str) -> None:
    base = receiver(ingest_max_body_bytes=64 * 1024)
    statuses: set[int] = set()
    with httpx.Client(base_url=base, timeout=10) as client:

        @seed(20261102)
        @settings(
            max_examples=150,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            body=st.binary(max_size=512) | _json_bodies.map(lambda v: json.dumps(v).encode()),
            content_type=_content_types,
            gzipped=st.booleans(),
        )
        def post(body: bytes, content_type: str, gzipped: bool) -> None:
            headers = {"authorization": f"Bearer {TOKEN}", "content-type": content_type}
            if gzipped:
                body = gzip.compress(body)
                headers["content-encoding"] = "gzip"
            response = client.post("/v1/traces", content=body, headers=headers)
            assert response.status_code in (200, 400, 413, 415), response.text
            statuses.add(response.status_code)

        post()
    assert {400, 415} <= statuses


# --------------------------------------------------------------------------- stored form


def test_span_data_round_trips_values_json_cannot_hold() -> None:
    span = SpanRecord(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        name="odd",
        kind=1,
        start_unix_nano=2**64 - 1,
        end_unix_nano=0,
        status_code=2,
        status_message="boom",
        attributes={
            "raw": b"\x00\xff",
            "nan": math.inf,
            "neg": -math.inf,
            "looks_like_a_tag": {"$bytes": "not base64!"},
            "nested": [{"$float": "x"}, b"ab", 1.5, None, True],
        },
        resource_attributes={"service.name": "x"},
        events=(SpanEvent("exception", 5, {"exception.message": "bad"}),),
        scope_name="s",
    )
    data = orjson.loads(orjson.dumps(span_data(span)))
    assert span_from_data(span.trace_id, span.span_id, data) == span
    nan = orjson.loads(orjson.dumps(span_data(_with_attr(span, math.nan))))
    restored = span_from_data(span.trace_id, span.span_id, nan).attributes["value"]
    assert isinstance(restored, float) and math.isnan(restored)


def _with_attr(span: SpanRecord, value: Any) -> SpanRecord:
    from dataclasses import replace

    return replace(span, attributes={"value": value})


# --------------------------------------------------------------------------- the writer


def _spans(prefix: str, count: int, *, name: str = "LLM Generation") -> list[SpanRecord]:
    trace = (prefix * 32)[:32]
    return [
        SpanRecord(
            trace_id=trace,
            span_id=f"{i:016x}",
            parent_span_id=None,
            name=name,
            kind=0,
            start_unix_nano=0,
            end_unix_nano=0,
            status_code=0,
            status_message="",
            attributes={"i": i},
            resource_attributes={},
            events=(),
        )
        for i in range(count)
    ]


def _count(db: Database) -> int:
    """Distinct spans stored, once the processor has taken every delivery."""
    while process_pending(db, DbLookup(db), T0, PolicyContext()).deliveries:
        pass
    with db.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM ingested_span")).scalar_one())


async def test_concurrent_requests_share_transactions_and_all_commit(db: Database) -> None:
    writer = SpanWriter(db.engine)
    writer.start()
    try:
        await asyncio.gather(
            *(writer.write(_spans(f"{i:02x}", 3), T0) for i in range(100)),
            writer.write(_spans("00", 3), T0),  # a duplicate of the first request
        )
    finally:
        await writer.close()
    assert _count(db) == 300
    assert writer.stats.requests == 101
    assert writer.stats.batches < 20  # group commit: far fewer transactions than requests
    assert writer.stats.largest_batch > 10


async def test_failing_database_fails_every_request_of_the_batch_with_503(
    empty_database_url: str,
) -> None:
    engine = make_engine(empty_database_url)  # no schema: every insert fails
    writer = SpanWriter(engine, retry_after=2.0)
    writer.start()
    try:
        results = await asyncio.gather(
            *(writer.write(_spans(f"{i:02x}", 2), T0) for i in range(5)), return_exceptions=True
        )
    finally:
        await writer.close()
        engine.dispose()
    assert all(isinstance(r, IngestError) and r.status_code == 503 for r in results)
    assert all(isinstance(r, IngestError) and r.retry_after == 2.0 for r in results)
    assert writer.stats.requests == 0


async def test_a_poisonous_request_fails_alone_and_the_rest_of_its_batch_commits(
    db: Database,
) -> None:
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "sqlite":
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON ingest_delivery "
                    "WHEN NEW.spans LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poison'); END"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.spans LIKE '%poison%' THEN RAISE EXCEPTION 'poison' "
                    "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON ingest_delivery "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
    writer = SpanWriter(db.engine)
    writer.start()
    try:
        results = await asyncio.gather(
            writer.write(_spans("aa", 2), T0),
            writer.write(_spans("bb", 2, name="poison"), T0),
            writer.write(_spans("cc", 2), T0),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IngestError) and results[1].status_code == 400
    assert _count(db) == 4


async def test_a_batch_split_over_several_sqlite_statements_commits_all_or_nothing(
    sqlite_db: Database,
) -> None:
    # Two rows per INSERT at most: a batch of five requests takes three statements in one
    # transaction; the poison in the last one must roll back the first two before the retry.
    @sa.event.listens_for(sqlite_db.engine, "connect")
    def _few_variables(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 6)

    sqlite_db.engine.dispose()
    with sqlite_db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON ingest_delivery "
                "WHEN NEW.spans LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poison'); END"
            )
        )
    writer = SpanWriter(sqlite_db.engine)
    writer.start()
    try:
        results = await asyncio.gather(
            *(writer.write(_spans(f"{i:02x}", 1), T0) for i in range(4)),
            writer.write(_spans("ee", 1, name="poison"), T0),
            return_exceptions=True,
        )
        clean = await asyncio.gather(*(writer.write(_spans(f"f{i}", 1), T0) for i in range(5)))
    finally:
        await writer.close()
    assert results[:4] == [None] * 4
    assert isinstance(results[4], IngestError) and results[4].status_code == 400
    assert clean == [None] * 5
    with sqlite_db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM ingest_delivery")).scalar_one()
    assert rows == 9  # each acknowledged delivery once: the failed statements left nothing
    sa.event.remove(sqlite_db.engine, "connect", _few_variables)
    sqlite_db.engine.dispose()
    assert _count(sqlite_db) == 9


async def test_more_waiting_spans_than_the_bound_is_429(db: Database) -> None:
    writer = SpanWriter(db.engine, max_queued_spans=4, retry_after=3.0)
    writer.start()
    try:
        results = await asyncio.gather(
            *(writer.write(_spans(f"{i:02x}", 3), T0) for i in range(3)), return_exceptions=True
        )
    finally:
        await writer.close()
    assert results[0] is None
    assert all(isinstance(r, IngestError) and r.status_code == 429 for r in results[1:])
    assert all(isinstance(r, IngestError) and r.retry_after == 3.0 for r in results[1:])
    assert writer.stats.overloaded == 2
    assert _count(db) == 3


async def test_close_commits_what_is_queued_and_then_refuses_with_503(db: Database) -> None:
    writer = SpanWriter(db.engine)
    writer.start()
    pending = [asyncio.ensure_future(writer.write(_spans(f"{i:02x}", 2), T0)) for i in range(10)]
    await asyncio.sleep(0)  # every request is queued
    await writer.close()
    assert all(task.done() and task.exception() is None for task in pending)
    assert _count(db) == 20
    with pytest.raises(IngestError) as refused:
        await writer.write(_spans("ff", 1), T0)
    assert refused.value.status_code == 503


async def test_a_processing_backlog_past_its_bound_is_429_until_the_processor_works_it_off(
    db: Database,
) -> None:
    backlog = Backlog(5)
    writer = SpanWriter(db.engine, backlog=backlog, retry_after=2.0)
    writer.start()
    try:
        await writer.write(_spans("01", 3), T0)
        await writer.write(_spans("02", 2), T0)  # 5 waiting: at the bound, still taken
        with pytest.raises(IngestError) as refused:
            await writer.write(_spans("03", 1), T0)
        assert (refused.value.status_code, refused.value.retry_after) == (429, 2.0)
        assert "LEDGER_INGEST_MAX_BACKLOG_SPANS" in str(refused.value)
        assert waiting_spans(db) == 5
        assert _count(db) == 5  # the processor applies them...
        backlog.resync(waiting_spans(db))  # ...and measures what is left after its pass
        assert backlog.spans == 0
        await writer.write(_spans("03", 1), T0)
    finally:
        await writer.close()
    assert writer.stats.overloaded == 1
    assert _count(db) == 6


async def test_the_backlog_bound_is_a_setting_and_reaches_the_daemons_writer(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings().ingest_max_backlog_spans == 15_000
    monkeypatch.setenv("LEDGER_INGEST_MAX_BACKLOG_SPANS", "4")
    settings = Settings(broadcast_tokens=TOKEN)
    ingest = await open_ingest(settings, db, FakeClock(T0))
    try:
        assert ingest.writer.backlog.limit == 4
    finally:
        await ingest.close()
