"""Broadcast ingestion end to end: deliveries sent the way real senders send them reach the right
behavior's spend, as the API and ``ledger status`` show it; and the receiver's refusals (429,
503) carry Retry-After and an OTLP ``Status`` over real HTTP.

All run the daemon's app (``create_app``, its lifespan: writer and processor) under uvicorn on a
loopback port in a thread: the OpenTelemetry exporter sends over real HTTP, and the refusal tests
can hold the database's write lock from the test while deliveries arrive.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ledger.config import Settings
from ledger.db.engine import make_engine
from ledger.signatures import sign_generic
from ledger.sim.openrouter import GenerationRecord, build_broadcast
from ledger.web.app import create_app
from tests.factories import VALID_BEHAVIOR, write_behavior
from tests.servers import ledger, serve_app, wait_until

TOKEN = "e2e-broadcast-token-" + "4" * 20
BEARER = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json", **BEARER}
PROTOBUF = {"content-type": "application/x-protobuf", **BEARER}


# --------------------------------------------------------------------------- the daemon


@pytest.fixture
def alpha_daemon(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The daemon's app (built from ``Settings``, its lifespan running: registry, writer,
    processor) under uvicorn on a loopback port, with one behavior, ``alpha`` (key name
    ``alpha-key``, $1 a day), that the scheduler never runs during a test (it fires on 1
    January); its base URL."""
    body = VALID_BEHAVIOR.format(key_env="E2E_ALPHA_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    monkeypatch.setenv("E2E_ALPHA_KEY", "sk-or-v1-" + "a1" * 32)
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        broadcast_tokens=TOKEN,
        auth="off",
        watch=False,
    )
    with serve_app(create_app(settings)) as base_url:
        yield base_url


def behavior(base_url: str, name: str = "alpha") -> dict[str, Any]:
    response = httpx.get(f"{base_url}/api/behaviors/{name}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ingest_summary(base_url: str) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/api/behaviors", timeout=10)
    assert response.status_code == 200, response.text
    summary: dict[str, Any] = response.json()["ingest"]
    return summary


def wait_for_spans(base_url: str, count: int, name: str = "alpha") -> dict[str, Any]:
    """The behavior once the processor has applied ``count`` of its spans (a delivery's spans
    and its spend are applied in one transaction)."""
    seen: dict[str, Any] = {}

    def applied() -> bool:
        seen.update(behavior(base_url, name))
        return len(seen["last_deliveries"]) >= count

    wait_until(applied, timeout=15, what=f"{count} spans applied to {name}")
    # Read again: on PostgreSQL each statement of a read sees its own snapshot, so the read
    # that first saw the spans may have read the spend before the last delivery committed.
    return behavior(base_url, name)


def status_output(tmp_path: Path, database_url: str) -> str:
    result = ledger("status", cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_line(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f" {name} " in line)


# --------------------------------------------------------------------------- OpenTelemetry SDK


def gen_ai_spans(*calls: dict[str, Any]) -> list[Any]:
    """One finished ``chat`` span per call, made by the OpenTelemetry SDK; each call's items
    become the span's attributes, over a GenAI chat call's usual ones."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "alpha-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("gen_ai.e2e")
    for attributes in calls:
        with tracer.start_as_current_span("chat anthropic/claude-haiku-4.5") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "anthropic/claude-haiku-4.5")
            span.set_attribute("gen_ai.usage.input_tokens", 120)
            span.set_attribute("gen_ai.usage.output_tokens", 30)
            for key, value in attributes.items():
                span.set_attribute(key, value)
    provider.shutdown()
    return list(memory.get_finished_spans())


def export(base_url: str, spans: list[Any]) -> None:
    """Send ``spans`` as the real exporter does: OTLP/HTTP protobuf, gzip-compressed."""
    exporter = OTLPSpanExporter(
        endpoint=base_url + "/v1/traces",
        headers={"Authorization": f"Bearer {TOKEN}"},
        compression=Compression.Gzip,
        timeout=10,
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def test_opentelemetry_exporter_spans_become_the_behaviors_exact_spend(
    alpha_daemon: str, tmp_path: Path, database_url: str
) -> None:
    # Attributed the way OpenRouter's broadcast attributes a daemon's call: the behavior in the
    # trace metadata, its key's name, user and session.
    attributed = {
        "trace.metadata.behavior": "alpha",
        "trace.metadata.openrouter.api_key_name": "alpha-key",
        "user.id": "alpha",
        "session.id": "alpha-session-1",
    }
    first = gen_ai_spans(
        {**attributed, "gen_ai.usage.total_cost": 0.000123},
        {**attributed, "gen_ai.usage.total_cost": 0.000456},
    )
    export(alpha_daemon, first)

    alpha = wait_for_spans(alpha_daemon, 2)
    # Unrounded: the float sum exactly (0.0005790000000000001), not a rounded 0.000579.
    assert alpha["spend"]["usd"] == 0.000123 + 0.000456
    assert alpha["spend"]["budget_usd"] == 1 and alpha["spend"]["reset"] == "day"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert datetime.fromisoformat(alpha["spend"]["window_start"]) == today
    sent = {(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}") for s in first}
    listed = {(d["trace_id"], d["span_id"]) for d in alpha["last_deliveries"]}
    assert listed == sent
    assert sorted(d["cost_usd"] for d in alpha["last_deliveries"]) == [0.000123, 0.000456]
    assert {d["attribution"] for d in alpha["last_deliveries"]} == {"trace.metadata.behavior"}
    assert {d["name"] for d in alpha["last_deliveries"]} == {"chat anthropic/claude-haiku-4.5"}
    assert "$0.0006 / $1.00 per day" in status_line(status_output(tmp_path, database_url), "alpha")

    # A call made outside the daemon with alpha's key: only the key's name says whose it is.
    outside = gen_ai_spans(
        {"trace.metadata.openrouter.api_key_name": "alpha-key", "gen_ai.usage.total_cost": 0.000789}
    )
    export(alpha_daemon, outside)

    alpha = wait_for_spans(alpha_daemon, 3)
    assert alpha["spend"]["usd"] == 0.000123 + 0.000456 + 0.000789
    by_span = {d["span_id"]: d for d in alpha["last_deliveries"]}
    key_only = by_span[f"{outside[0].context.span_id:016x}"]
    assert (key_only["attribution"], key_only["cost_usd"], key_only["run_id"]) == (
        "key_name",
        0.000789,
        None,
    )
    output = status_output(tmp_path, database_url)
    assert "$0.0014 / $1.00 per day" in status_line(output, "alpha")
    assert "0 waiting to be processed · 0 unattributed span(s) in 24h" in output


# --------------------------------------------------------------------------- OpenRouter JSON


def openrouter_delivery(key_name: str, cost_tokens: int, **changes: Any) -> tuple[bytes, float]:
    """One delivery as OpenRouter's broadcast sends it (JSON, ``intValue`` as strings), for a
    call that cost ``cost_tokens`` millionths of a dollar; and that cost."""
    now = datetime.now(UTC)
    record = GenerationRecord(
        generation_id=f"gen-{int(now.timestamp())}-{secrets.token_hex(10)}",
        started_at=now - timedelta(seconds=2),
        ended_at=now,
        key_name=key_name,
        request_model="anthropic/claude-haiku-4.5",
        response_model="anthropic/claude-haiku-4.5",
        messages=[{"role": "user", "content": "Audit the site."}],
        completion="All good.",
        prompt_tokens=cost_tokens,
        completion_tokens=0,
        input_unit_price=0.000001,
        **changes,
    )
    return orjson.dumps(build_broadcast(record, int_as_string=True)), record.total_cost


def test_openrouter_json_deliveries_on_both_urls_reach_the_behavior_and_the_rest_is_kept(
    alpha_daemon: str, tmp_path: Path, database_url: str
) -> None:
    # As the daemon's own calls are broadcast: ``user`` and ``trace`` are what it sent.
    one, one_cost = openrouter_delivery("alpha-key", 123, user="alpha", trace={"behavior": "alpha"})
    two, two_cost = openrouter_delivery("alpha-key", 456, user="alpha")
    nobodys, _ = openrouter_delivery("someone-elses-key", 789)
    assert (one_cost, two_cost) == (0.000123, 0.000456)
    sends = [("/v1/traces", one), ("/v1/traces/v1/traces", two), ("/v1/traces", nobodys)]
    for path, body in sends:
        response = httpx.post(alpha_daemon + path, content=body, headers=JSON)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {}

    # Each delivery is a root ``LLM Generation`` span and two children, all alpha's.
    alpha = wait_for_spans(alpha_daemon, 6)
    assert alpha["spend"]["usd"] == 0.000123 + 0.000456
    roots = sorted(
        (d["cost_usd"], d["attribution"])
        for d in alpha["last_deliveries"]
        if d["name"] == "LLM Generation"
    )
    assert roots == [(0.000123, "trace.metadata.behavior"), (0.000456, "user.id")]
    assert sum(1 for d in alpha["last_deliveries"] if d["cost_usd"] is None) == 4

    # The delivery nobody claims is kept, its three spans marked unattributed, and counted.
    wait_until(
        lambda: ingest_summary(alpha_daemon)["waiting_deliveries"] == 0,
        timeout=15,
        what="the processor to take every delivery",
    )
    summary = ingest_summary(alpha_daemon)
    assert (summary["unattributed_spans_24h"], summary["set_aside_deliveries"]) == (3, 0)
    nobodys_trace = orjson.loads(nobodys)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(
                sa.text(
                    "SELECT attribution, behavior_id, cost_usd FROM ingested_span "
                    "WHERE trace_id = :trace"
                ),
                {"trace": nobodys_trace["traceId"]},
            ).all()
    finally:
        engine.dispose()
    assert len(kept) == 3
    assert {(row.attribution, row.behavior_id) for row in kept} == {("unattributed", None)}
    assert [row.cost_usd for row in kept if row.cost_usd is not None] == [0.000789]
    output = status_output(tmp_path, database_url)
    assert "$0.0006 / $1.00 per day" in status_line(output, "alpha")
    assert "0 waiting to be processed · 3 unattributed span(s) in 24h" in output


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def daemon_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """The daemon's app under uvicorn on a loopback port, with a webhook source ``deploys``."""
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        broadcast_tokens=TOKEN,
        watch=False,
        webhook_sources={"deploys": {"scheme": "generic", "secrets": "deploys-secret"}},
    )
    with serve_app(create_app(settings)) as base:
        yield base


def otlp_json(span_count: int) -> tuple[bytes, str]:
    """An OTLP/HTTP JSON request of ``span_count`` spans in one new trace; and the trace id."""
    trace_id = secrets.token_hex(16)
    spans = [
        {"traceId": trace_id, "spanId": f"{i + 1:016x}", "name": "step"} for i in range(span_count)
    ]
    request = {"resourceSpans": [{"scopeSpans": [{"scope": {"name": "e2e"}, "spans": spans}]}]}
    return orjson.dumps(request), trace_id


def otlp_protobuf(span_count: int) -> tuple[bytes, str]:
    """A request like ``otlp_json``'s, protobuf-encoded."""
    trace_id = secrets.token_hex(16)
    request = ExportTraceServiceRequest()
    for i in range(span_count):
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id = bytes.fromhex(trace_id)
        span.span_id = bytes.fromhex(f"{i + 1:016x}")
        span.name = "step"
    return request.SerializeToString(), trace_id


def stored_spans(database_url: str, trace_id: str) -> int:
    """Spans of ``trace_id`` durably stored, processed or not (one snapshot of both tables)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                waiting = conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(span_count), 0) FROM ingest_delivery "
                        "WHERE spans LIKE :pattern"
                    ),
                    {"pattern": f"%{trace_id}%"},
                ).scalar_one()
                processed = conn.execute(
                    sa.text("SELECT count(*) FROM ingested_span WHERE trace_id = :trace"),
                    {"trace": trace_id},
                ).scalar_one()
        return int(waiting) + int(processed)
    finally:
        engine.dispose()


@contextlib.contextmanager
def writes_blocked(database_url: str) -> Iterator[None]:
    """Another client holds a write transaction: on SQLite the database's write lock (``BEGIN
    IMMEDIATE``), on PostgreSQL an EXCLUSIVE lock on ``ingest_delivery``. The daemon's writer
    waits for it; it is released when the block ends."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn, conn.begin() as transaction:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("LOCK TABLE ingest_delivery IN EXCLUSIVE MODE"))
            yield
            transaction.rollback()
    finally:
        engine.dispose()


@contextlib.contextmanager
def table_missing(database_url: str, table: str) -> Iterator[None]:
    """``table`` renamed away while the block runs, then back: the database refuses every write
    into it, for a reason that is no delivery's fault."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {table} RENAME TO {table}_away"))
        try:
            yield
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table}_away RENAME TO {table}"))
    finally:
        engine.dispose()


def test_a_delivery_beyond_the_writers_bound_is_429_with_retry_after(
    daemon_url: str, database_url: str
) -> None:
    # Requests hold at most 10,000 spans and 50,000 may wait for the writer: with the database
    # locked, five deliveries wait and the sixth to arrive is refused.
    requests = [otlp_json(10_000) for _ in range(6)]
    with ThreadPoolExecutor(len(requests)) as pool:
        with writes_blocked(database_url):
            replies = [
                pool.submit(
                    httpx.post, daemon_url + "/v1/traces", content=body, headers=JSON, timeout=60
                )
                for body, _ in requests
            ]
            done, waiting = wait(replies, timeout=20, return_when=FIRST_COMPLETED)
            assert len(done) == 1 and len(waiting) == 5
            refused = replies.index(next(iter(done)))
            response = replies[refused].result()
            assert response.status_code == 429
            assert response.headers["retry-after"] == "1"
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {
                "code": 8,  # RESOURCE_EXHAUSTED
                "message": "ingestion is overloaded (50000 spans waiting); retry later",
            }
        # The lock is gone: the five that waited are committed and acknowledged.
        accepted = [reply.result() for reply in replies if reply is not replies[refused]]
    assert [(r.status_code, r.json()) for r in accepted] == [(200, {})] * 5
    assert [stored_spans(database_url, trace) for _, trace in requests] == [
        0 if i == refused else 10_000 for i in range(len(requests))
    ]


def test_a_delivery_the_database_cannot_take_is_503_with_retry_after_and_not_acknowledged(
    daemon_url: str, database_url: str
) -> None:
    body, trace_id = otlp_protobuf(3)
    with table_missing(database_url, "ingest_delivery"):
        response = httpx.post(daemon_url + "/v1/traces", content=body, headers=PROTOBUF)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == "application/x-protobuf"
    status = Status.FromString(response.content)
    assert status.code == 14  # UNAVAILABLE
    assert status.message.startswith("the database is unavailable (")
    assert status.message.endswith("); retry")
    assert stored_spans(database_url, trace_id) == 0
    # The sender retries after Retry-After; once the database takes writes again, it is stored.
    again = httpx.post(daemon_url + "/v1/traces", content=body, headers=PROTOBUF)
    assert again.status_code == 200
    assert again.headers["content-type"] == "application/x-protobuf"
    assert stored_spans(database_url, trace_id) == 3


def test_a_webhook_event_the_database_cannot_take_is_503_with_retry_after(
    daemon_url: str, database_url: str
) -> None:
    body = orjson.dumps({"event": "deploy.failed"})

    def send() -> httpx.Response:
        signature = sign_generic("deploys-secret", body, int(datetime.now(UTC).timestamp()))
        return httpx.post(
            daemon_url + "/webhooks/deploys",
            content=body,
            headers={"X-Ledger-Signature": signature},
        )

    with table_missing(database_url, "webhook_event"):
        response = send()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    assert error["message"].startswith("the database is unavailable (")
    assert error["message"].endswith("); retry")
    again = send()
    assert again.status_code == 200
    assert again.json() == {"status": "recorded", "event": "deploy.failed"}


class WithoutLifespan:
    """The app as served by a server that has not run its lifespan (still starting, or run
    with ``--lifespan off``): ingestion is not open."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return


def test_before_ingestion_is_open_deliveries_are_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", broadcast_tokens=TOKEN, watch=False
    )
    json_body, _ = otlp_json(1)
    protobuf_body, _ = otlp_protobuf(1)
    with serve_app(WithoutLifespan(create_app(settings))) as base:
        as_json = httpx.post(base + "/v1/traces", content=json_body, headers=JSON)
        as_protobuf = httpx.post(base + "/v1/traces", content=protobuf_body, headers=PROTOBUF)
    assert as_json.status_code == 503
    assert as_json.headers["retry-after"] == "1"
    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json() == {"code": 14, "message": "the daemon is starting; retry"}
    # OTLP/HTTP: the response uses the request's Content-Type, errors included.
    assert as_protobuf.status_code == 503
    assert as_protobuf.headers["retry-after"] == "1"
    assert as_protobuf.headers["content-type"] == "application/x-protobuf"
    assert Status.FromString(as_protobuf.content) == Status(
        code=14, message="the daemon is starting; retry"
    )
