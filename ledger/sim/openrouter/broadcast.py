"""The observability broadcast as OpenRouter sends it: one OTLP/HTTP JSON delivery per
generation, built purely from a ``GenerationRecord``."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.sim.openrouter.config import JSON, money

# Trace keys OpenRouter treats specially: they shape the trace instead of becoming metadata.
_SPECIAL_TRACE_KEYS = frozenset(
    {"trace_id", "trace_name", "span_name", "generation_name", "parent_span_id"}
)


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """What one chat call looked like, enough to build its broadcast delivery.

    ``error_status`` set means the call failed (an HTTP error, or an error inside a 200)."""

    generation_id: str
    started_at: datetime
    ended_at: datetime
    key_name: str
    request_model: str
    response_model: str
    provider_name: str = "Amazon Bedrock"
    user: str | None = None
    session_id: str | None = None
    trace: Mapping[str, Any] = field(default_factory=dict)
    messages: Sequence[Mapping[str, Any]] = ()
    completion: str | None = None
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    input_unit_price: float = 0.0
    output_unit_price: float = 0.0
    error_status: int | None = None
    error_message: str | None = None
    error_type: str | None = None

    @property
    def input_cost(self) -> float:
        return money(self.prompt_tokens * self.input_unit_price)

    @property
    def output_cost(self) -> float:
        return money(self.completion_tokens * self.output_unit_price)

    @property
    def total_cost(self) -> float:
        return money(self.input_cost + self.output_cost)


def _otlp_value(value: Any, int_as_string: bool) -> JSON:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value) if int_as_string else value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    return {"stringValue": json.dumps(value)}


def _hex_id(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def _nanos(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1_000_000) * 1000)


def vendor(model: str) -> str:
    return model.split("/", 1)[0] if "/" in model else model


def build_broadcast(record: GenerationRecord, *, int_as_string: bool = False) -> JSON:
    """One OTLP/HTTP JSON delivery for one generation, shaped like OpenRouter's broadcast: a
    root ``LLM Generation`` span and two children, each in its own ``resourceSpans`` entry.

    Pure: ids are derived from the generation id, times from the record. ``int_as_string``
    renders ``intValue`` as a string (the OTLP JSON canonical form) instead of a number."""

    def attrs(pairs: Sequence[tuple[str, Any]]) -> list[JSON]:
        return [
            {"key": k, "value": _otlp_value(v, int_as_string)} for k, v in pairs if v is not None
        ]

    trace = dict(record.trace)
    raw_trace_id = str(trace.get("trace_id") or record.generation_id)
    trace_id = raw_trace_id.lower() if _is_hex(raw_trace_id, 32) else _hex_id(raw_trace_id, 32)
    root_id = _hex_id(record.generation_id + "/root", 16)
    start, end = _nanos(record.started_at), _nanos(record.ended_at)
    failed = record.error_status is not None
    message = record.error_message or ""
    status: JSON = {"code": 2, "message": message} if failed else {"code": 1}
    provider_slug = record.provider_name.lower().replace(" ", "-")

    pairs: list[tuple[str, Any]] = [
        ("trace.name", str(trace.get("trace_name") or "OpenRouter Request")),
        ("span.type", "generation"),
        ("span.level", "ERROR" if failed else "DEFAULT"),
        ("span.status_message", message if failed else None),
        ("user.id", record.user),
        ("session.id", record.session_id),
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.system", vendor(record.response_model)),
        ("gen_ai.provider.name", vendor(record.response_model)),
        ("gen_ai.request.model", record.request_model),
        ("gen_ai.response.model", record.response_model),
        ("gen_ai.response.id", record.generation_id),
        ("gen_ai.usage.input_tokens", record.prompt_tokens),
        ("gen_ai.usage.output_tokens", record.completion_tokens),
        ("gen_ai.usage.total_tokens", record.prompt_tokens + record.completion_tokens),
        ("gen_ai.usage.input_tokens.cached", record.cached_tokens),
        ("gen_ai.usage.output_tokens.reasoning", record.reasoning_tokens),
    ]
    if not failed:
        pairs += [
            ("gen_ai.usage.input_cost", record.input_cost),
            ("gen_ai.usage.output_cost", record.output_cost),
            ("gen_ai.usage.total_cost", record.total_cost),
        ]
    pairs.append(("gen_ai.prompt", json.dumps({"messages": list(record.messages)})))
    if record.completion is not None:
        pairs.append(
            ("gen_ai.completion", json.dumps({"completion": record.completion, "reasoning": None}))
        )
    if record.finish_reason is not None:
        pairs += [
            ("gen_ai.response.finish_reasons", json.dumps([record.finish_reason])),
            ("gen_ai.response.finish_reason", record.finish_reason),
        ]
    pairs += [(f"trace.metadata.{k}", v) for k, v in trace.items() if k not in _SPECIAL_TRACE_KEYS]
    latency_ms = max(0, int((record.ended_at - record.started_at).total_seconds() * 1000))
    provider_response = {
        "provider_name": record.provider_name,
        "status": record.error_status or 200,
        "latency": latency_ms,
        "is_byok": False,
    }
    pairs += [
        ("trace.metadata.openrouter.source", "openrouter"),
        ("trace.metadata.openrouter.api_key_name", record.key_name),
        ("trace.metadata.openrouter.entity_id", "user_sim000000000000000000000"),
        ("trace.metadata.openrouter.creator_user_id", "user_sim000000000000000000000"),
        ("trace.metadata.openrouter.provider_name", record.provider_name),
        ("trace.metadata.openrouter.provider_slug", provider_slug),
        ("trace.metadata.openrouter.finish_reason", record.finish_reason),
        ("trace.metadata.openrouter.input_unit_price", record.input_unit_price),
        ("trace.metadata.openrouter.output_unit_price", record.output_unit_price),
        ("trace.metadata.openrouter.router_latency_ms", 1),
        ("trace.metadata.openrouter.first_token_ms", latency_ms),
        ("trace.metadata.provider_responses", json.dumps([provider_response])),
    ]
    root: JSON = {
        "traceId": trace_id,
        "spanId": root_id,
        "name": str(trace.get("generation_name") or "LLM Generation"),
        "kind": 3,
        "startTimeUnixNano": start,
        "endTimeUnixNano": end,
        "status": status,
        "attributes": attrs(pairs),
    }
    parent = str(trace.get("parent_span_id") or "")
    if _is_hex(parent, 16):
        root["parentSpanId"] = parent.lower()
    if failed:
        root["events"] = [
            {
                "timeUnixNano": end,
                "name": "exception",
                "attributes": attrs(
                    [
                        ("exception.type", record.error_type or f"http_{record.error_status}"),
                        ("exception.message", message),
                    ]
                ),
            }
        ]

    def child(name: str, span_type: str) -> JSON:
        return {
            "traceId": trace_id,
            "spanId": _hex_id(f"{record.generation_id}/{name}", 16),
            "parentSpanId": root_id,
            "name": name,
            "kind": 3,
            "startTimeUnixNano": start,
            "endTimeUnixNano": end,
            "status": status,
            "attributes": attrs([("span.type", span_type)]),
        }

    spans = [
        root,
        child(f"provider attempt 1: {record.provider_name}", "span"),
        child("generation", "generation"),
    ]
    resource = {
        "attributes": attrs(
            [
                ("service.name", "openrouter"),
                ("openrouter.trace.id", record.generation_id),
                ("service.version", "1.0.0"),
            ]
        )
    }
    return {
        "resourceSpans": [
            {"resource": resource, "scopeSpans": [{"scope": {"name": "openrouter"}, "spans": [s]}]}
            for s in spans
        ]
    }


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in string.hexdigits for c in value)
