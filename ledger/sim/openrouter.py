"""A local stand-in for OpenRouter: chat completions (in JSON when ``response_format`` asks for
it), key inspection, the key management API, programmable faults and the observability
broadcast, spoken in OpenRouter's wire formats.

It imports nothing from the daemon: it is what the outside world looks like. Build it with
``create_app(SimConfig(...))``, start it with ``serve()`` (the CLI) or ``run_in_background()``
(tests), and steer it at runtime through the ``/_sim/*`` control endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import string
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import orjson
import uvicorn
from ruamel.yaml import YAML
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

__all__ = [
    "Fault",
    "FaultKind",
    "GenerationRecord",
    "ModelInfo",
    "Preset",
    "SimConfig",
    "SimConfigError",
    "SimKey",
    "build_broadcast",
    "create_app",
    "json_answer",
    "limit_exceeded_message",
    "read_response_format",
    "run_asgi_in_background",
    "run_in_background",
    "run_in_thread",
    "schema_instance",
    "serve",
]

JSON = dict[str, Any]
LimitReset = Literal["daily", "weekly", "monthly"]
FaultKind = Literal[
    "rate_limit",
    "payment_required",
    "key_limit",
    "workspace_budget",
    "prompt_injection",
    "content_filter",
    "server_error",
    "delay",
    "sensitive_output",
    "error_in_200",
    "wrong_model",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
LIMIT_RESETS: frozenset[str] = frozenset(get_args(LimitReset))
# Faults that replace the answer with an error response; the first one that applies wins.
_REFUSALS = frozenset(FAULT_KINDS - {"delay", "sensitive_output", "error_in_200", "wrong_model"})

CREDITS_MESSAGE = "Insufficient credits. Add more using https://openrouter.ai/credits"
DEFAULT_SENSITIVE_TEXT = (
    "Audit finished. Send questions to jane.doe@example.com; debug token "
    "sk-or-v1-" + "d3adb33f" * 8 + "."
)
DEFAULT_FALLBACK_MODEL = "openai/gpt-4o-mini"
SESSION_ID_MAX = 256
# Trace keys OpenRouter treats specially: they shape the trace instead of becoming metadata.
_SPECIAL_TRACE_KEYS = frozenset(
    {"trace_id", "trace_name", "span_name", "generation_name", "parent_span_id"}
)
# fmt: off
_WORDS = (
    "audit", "crawl", "index", "canonical", "sitemap", "meta", "description", "heading", "title",
    "link", "anchor", "redirect", "schema", "snippet", "latency", "render", "mobile", "content",
    "keyword", "intent", "page", "section", "draft", "outline", "publish", "review", "summary",
    "finding", "issue", "priority", "fix", "check", "score", "image", "alt", "robots",
)
# fmt: on


class SimConfigError(ValueError):
    """The simulator's configuration (a presets file or a fault) is invalid; says where."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model callable by plain id: its price per token and the provider that serves it."""

    input_price: float = 0.000001
    output_price: float = 0.000002
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class Preset:
    """An OpenRouter preset: the model it calls, fallbacks, price per token, defaults."""

    model: str
    fallback_models: tuple[str, ...] = ()
    input_price: float = 0.000001
    output_price: float = 0.000002
    provider: str | None = None
    max_completion_tokens: int | None = None
    system_prompt: str | None = None
    output: str | None = None  # a fixed answer instead of the generated one


@dataclass(frozen=True, slots=True)
class SimKey:
    """An inference key the simulator knows. ``balance`` is the credit left to it (None =
    plenty); ``output`` forces a fixed answer for every call made with it."""

    key: str
    name: str
    limit: float | None = None
    limit_reset: LimitReset | None = None
    balance: float | None = None
    output: str | None = None
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class Fault:
    """A programmed misbehaviour. It applies to calls whose key name and preset match (None
    matches any), for the first ``times`` matching calls (None = every call).

    kinds: ``rate_limit`` (429 + Retry-After), ``payment_required`` (402 although credit is
    left), ``key_limit`` (403 key limit), ``workspace_budget`` (403), ``prompt_injection`` and
    ``content_filter`` (403 guardrail), ``server_error`` (``status`` 500/502/503/524/529),
    ``delay`` (``seconds`` before answering; combines with the others), ``sensitive_output``
    (the answer is ``text``), ``error_in_200`` (a 200 whose choice has finish_reason "error"),
    ``wrong_model`` (a fallback model answers: ``model`` or the preset's first fallback).
    """

    kind: FaultKind
    key_name: str | None = None
    preset: str | None = None
    times: int | None = None
    status: int | None = None
    retry_after: int | None = None
    seconds: float = 0.0
    text: str | None = None
    label: str = "EMAIL"
    patterns: tuple[str, ...] = ("ignore previous instructions",)
    model: str | None = None
    error_type: str | None = None
    limit_reset: str | None = None
    budget: str = "$500.00"
    broadcast: bool = True

    def matches(self, key_name: str, preset: str | None) -> bool:
        return (self.key_name is None or self.key_name == key_name) and (
            self.preset is None or self.preset == preset
        )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str = "fault") -> Fault:
        """Build a fault from JSON/YAML; raises ``SimConfigError`` naming ``where``."""
        values = _known_fields(cls, raw, where)
        kind = values.get("kind")
        if kind not in FAULT_KINDS:
            raise SimConfigError(
                f"{where}: kind must be one of {sorted(FAULT_KINDS)}, not {kind!r}"
            )
        if "patterns" in values:
            values["patterns"] = tuple(str(p) for p in values["patterns"])
        if kind == "server_error" and values.get("status") not in (None, 500, 502, 503, 524, 529):
            raise SimConfigError(f"{where}: status must be 500, 502, 503, 524 or 529")
        return cls(**values)


_TOP_LEVEL_FIELDS = frozenset(
    {"presets", "models", "keys", "management_key", "faults", "broadcast", "seed"}
)
_MONEY_FIELDS = ("input_price", "output_price", "limit", "balance")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class SimConfig:
    """Everything the simulator starts from. ``/_sim/reset`` returns to exactly this state.

    ``presets`` maps slug → preset; ``keys`` are the inference keys it accepts;
    ``management_key`` unlocks ``/api/v1/keys``; ``faults`` apply from the start;
    ``broadcast_url``/``broadcast_headers`` receive an OTLP/HTTP JSON delivery after every
    chat call (None: no broadcast); ``models`` adds plain model ids; ``seed`` fixes the ids
    and answers; ``clock`` gives the time (limit windows, span times)."""

    presets: dict[str, Preset] = field(default_factory=dict)
    keys: list[SimKey] = field(default_factory=list)
    management_key: str | None = None
    faults: list[Fault] = field(default_factory=list)
    broadcast_url: str | None = None
    broadcast_headers: dict[str, str] = field(default_factory=dict)
    broadcast_timeout: float = 5.0
    models: dict[str, ModelInfo] = field(default_factory=dict)
    seed: int = 0
    clock: Callable[[], datetime] = _utc_now

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SimConfig:
        """Load a presets file (see ``presets.example.yaml``); keyword overrides win."""
        path = Path(path)
        try:
            raw = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SimConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except Exception as exc:  # ruamel's parser errors share no public base class
            raise SimConfigError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_mapping(raw or {}, source=str(path), **overrides)

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], source: str = "config", **overrides: Any
    ) -> SimConfig:
        if not isinstance(raw, Mapping):
            raise SimConfigError(f"{source}: the top level must be a mapping")
        unknown = set(raw) - _TOP_LEVEL_FIELDS
        if unknown:
            raise SimConfigError(f"{source}: unknown fields {sorted(unknown)}")
        presets = {}
        for slug, preset in (raw.get("presets") or {}).items():
            values = _known_fields(Preset, preset, f"{source}: presets.{slug}")
            if "model" not in values:
                raise SimConfigError(f"{source}: presets.{slug}: model is required")
            values["fallback_models"] = tuple(values.get("fallback_models") or ())
            presets[str(slug)] = Preset(**values)
        models = {
            str(model_id): ModelInfo(
                **_known_fields(ModelInfo, info or {}, f"{source}: models.{model_id}")
            )
            for model_id, info in (raw.get("models") or {}).items()
        }
        keys = []
        for index, key in enumerate(raw.get("keys") or []):
            values = _known_fields(SimKey, key, f"{source}: keys[{index}]")
            if "key" not in values or "name" not in values:
                raise SimConfigError(f"{source}: keys[{index}]: key and name are required")
            if values.get("limit_reset") not in (None, *LIMIT_RESETS):
                raise SimConfigError(
                    f"{source}: keys[{index}]: limit_reset must be daily, weekly, monthly or null"
                )
            keys.append(SimKey(**values))
        faults = [
            Fault.from_mapping(fault, f"{source}: faults[{index}]")
            for index, fault in enumerate(raw.get("faults") or [])
        ]
        broadcast = raw.get("broadcast") or {}
        config: dict[str, Any] = {
            "presets": presets,
            "models": models,
            "keys": keys,
            "management_key": raw.get("management_key"),
            "faults": faults,
            "broadcast_url": broadcast.get("url"),
            "broadcast_headers": {
                str(k): str(v) for k, v in (broadcast.get("headers") or {}).items()
            },
            "seed": int(raw.get("seed", 0)),
        }
        if "timeout" in broadcast:
            config["broadcast_timeout"] = float(broadcast["timeout"])
        config.update(overrides)
        return cls(**config)


def _known_fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SimConfigError(f"{where}: must be a mapping")
    allowed = {f.name for f in fields(cls)}
    unknown = set(raw) - allowed
    if unknown:
        raise SimConfigError(f"{where}: unknown fields {sorted(unknown)}")
    values = dict(raw)
    for name in _MONEY_FIELDS:
        if values.get(name) is not None:
            try:
                values[name] = float(values[name])
            except (TypeError, ValueError) as exc:
                raise SimConfigError(f"{where}: {name} must be a number") from exc
    return values


# --------------------------------------------------------------------------------------------
# Broadcast: pure span building
# --------------------------------------------------------------------------------------------


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
        return _money(self.prompt_tokens * self.input_unit_price)

    @property
    def output_cost(self) -> float:
        return _money(self.completion_tokens * self.output_unit_price)

    @property
    def total_cost(self) -> float:
        return _money(self.input_cost + self.output_cost)


def _money(value: float) -> float:
    return round(value, 12)


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


def _vendor(model: str) -> str:
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
        ("gen_ai.system", _vendor(record.response_model)),
        ("gen_ai.provider.name", _vendor(record.response_model)),
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


# --------------------------------------------------------------------------------------------
# Pure helpers: limits, tokens, deterministic answers
# --------------------------------------------------------------------------------------------


def limit_exceeded_message(limit_reset: str | None) -> str:
    """OpenRouter's 403 text when a key's credit limit is reached (reset word: total if none)."""
    return (
        f"Key limit exceeded ({limit_reset or 'total'} limit). "
        "Manage it using https://openrouter.ai/settings/keys"
    )


def window_start(now: datetime, reset: str | None) -> datetime | None:
    """Start of the current limit window in UTC (weeks start Monday); None for a total limit."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "daily":
        return midnight
    if reset == "weekly":
        return midnight - timedelta(days=midnight.weekday())
    if reset == "monthly":
        return midnight.replace(day=1)
    return None


def estimate_tokens(text: str) -> int:
    """About four characters a token; an empty text is zero tokens."""
    return math.ceil(len(text) / 4)


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(estimate_tokens(_message_text(m)) + 3 for m in messages)


def generate_answer(seed: int, model: str, messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """A deterministic answer for a prompt, as a list of words (one token each)."""
    digest = hashlib.sha256(
        orjson.dumps([seed, model, list(messages)], option=orjson.OPT_SORT_KEYS)
    ).digest()
    rng = random.Random(digest)  # noqa: S311 - a stand-in answer, not a secret
    words = [rng.choice(_WORDS) for _ in range(20 + digest[0] % 120)]
    return [
        (w.capitalize() if i % 12 == 0 else w) + ("." if i % 12 == 11 else "")
        for i, w in enumerate(words)
    ]


_RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def read_response_format(raw: Any) -> JSON | None:
    """The request's ``response_format`` when it asks for JSON (``json_object``, or
    ``json_schema`` with ``json_schema: {name, schema, strict?}``), None for plain text.
    Raises ``ValueError`` saying what is wrong with a malformed one."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or raw.get("type") not in _RESPONSE_FORMATS:
        raise ValueError(f"response_format.type must be one of {', '.join(_RESPONSE_FORMATS)}")
    if raw["type"] == "text":
        return None
    if raw["type"] == "json_object":
        return {"type": "json_object"}
    spec = raw.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError("response_format.json_schema must be an object with a name")
    schema = spec.get("schema", {})
    if not isinstance(schema, Mapping):
        raise ValueError("response_format.json_schema.schema must be an object")
    return {"type": "json_schema", "schema": dict(schema)}


def json_answer(response_format: Mapping[str, Any], words: Sequence[str]) -> str:
    """The answer as JSON text for a request that asked for JSON: an instance of the schema
    (``json_schema``), else ``{"answer": "<the words>"}``. Strings are made of ``words``."""
    if response_format.get("type") == "json_schema":
        value = schema_instance(response_format.get("schema") or {}, _word_source(words))
        return json.dumps(value)
    return json.dumps({"answer": " ".join(words)})


def _word_source(words: Sequence[str]) -> Iterator[str]:
    pool = [w.strip(".").lower() for w in words] or ["answer"]
    while True:
        yield from pool


def schema_instance(schema: Mapping[str, Any], words: Iterator[str]) -> Any:
    """A value valid against the common subset of JSON Schema that output checks use (type,
    properties, required, items, min/maxItems, min/maxLength, minimum/maximum, enum, const,
    anyOf/oneOf/allOf's first branch). Pure; deterministic for a given ``words``."""
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(combinator)
        if isinstance(branches, list) and branches and isinstance(branches[0], Mapping):
            return schema_instance({**schema, combinator: None, **branches[0]}, words)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties") or {}
        names = [*properties, *(n for n in schema.get("required") or () if n not in properties)]
        return {
            str(n): schema_instance(properties.get(n) or {"type": "string"}, words) for n in names
        }
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), min(3, int(schema.get("maxItems", 3))))
        items = schema.get("items")
        item_schema = items if isinstance(items, Mapping) else {"type": "string"}
        return [schema_instance(item_schema, words) for _ in range(count)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(1, math.ceil(low) + (1 if "exclusiveMinimum" in schema else 0))
        high = schema.get("maximum")
        return min(value, math.floor(high)) if isinstance(high, int | float) else value
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = " ".join(next(words) for _ in range(4))
    while len(text) < int(schema.get("minLength", 0)):
        text += " " + next(words)
    return text[: int(schema["maxLength"])] if "maxLength" in schema else text


# --------------------------------------------------------------------------------------------
# Mutable state
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _KeyState:
    key: str
    name: str
    hash: str
    limit: float | None
    limit_reset: str | None
    balance: float | None
    output: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime | None = None
    include_byok_in_limit: bool = False
    expires_at: str | None = None
    spent: list[tuple[datetime, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.key[:11]}...{self.key[-3:]}"

    def usage_since(self, since: datetime | None) -> float:
        return _money(sum(cost for at, cost in self.spent if since is None or at >= since))

    def limit_remaining(self, now: datetime) -> float | None:
        if self.limit is None:
            return None
        return _money(self.limit - self.usage_since(window_start(now, self.limit_reset)))

    def balance_remaining(self) -> float | None:
        return None if self.balance is None else _money(self.balance - self.usage_since(None))

    def usage_view(self, now: datetime) -> JSON:
        usage = {
            "limit": self.limit,
            "limit_remaining": self.limit_remaining(now),
            "limit_reset": self.limit_reset,
            "include_byok_in_limit": self.include_byok_in_limit,
            "usage": self.usage_since(None),
            "usage_daily": self.usage_since(window_start(now, "daily")),
            "usage_weekly": self.usage_since(window_start(now, "weekly")),
            "usage_monthly": self.usage_since(window_start(now, "monthly")),
        }
        byok = {"byok_usage": 0.0, "byok_usage_daily": 0.0}
        byok |= {"byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0}
        return usage | byok | {"expires_at": self.expires_at}

    def management_view(self, now: datetime) -> JSON:
        return {
            "hash": self.hash,
            "name": self.name,
            "label": self.label,
            "disabled": self.disabled,
            **self.usage_view(now),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


@dataclass(slots=True)
class _ActiveFault:
    id: int
    fault: Fault
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.fault.times is not None and self.hits >= self.fault.times

    def view(self) -> JSON:
        return {"id": self.id, "hits": self.hits, **asdict(self.fault)}


@dataclass(frozen=True, slots=True)
class _Target:
    preset_slug: str | None
    model: str
    fallbacks: tuple[str, ...]
    input_price: float
    output_price: float
    provider: str
    max_completion_tokens: int | None
    system_prompt: str | None
    output: str | None


@dataclass(slots=True)
class _ApiError(Exception):
    status: int
    message: str
    metadata: JSON | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error_type: str | None = None

    def body(self) -> JSON:
        error: JSON = {"code": self.status, "message": self.message}
        if self.metadata is not None:
            error["metadata"] = self.metadata
        return {"error": error}


class _State:
    """Everything the running simulator remembers; ``reset()`` rebuilds it from the config."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.http: httpx.AsyncClient | None = None
        self.reset()

    def reset(self) -> None:
        config = self.config
        now = config.clock()
        self.rng = random.Random(config.seed)  # noqa: S311 - ids for a simulator
        self.keys: dict[str, _KeyState] = {}
        for k in config.keys:
            self.add_key(
                k.key, k.name, k.limit, k.limit_reset, now, k.balance, k.output, k.disabled
            )
        self.models: dict[str, ModelInfo] = {}
        for preset in config.presets.values():
            for model in (preset.model, *preset.fallback_models):
                price = ModelInfo(preset.input_price, preset.output_price, preset.provider)
                self.models.setdefault(model, price)
        self.models |= config.models
        self.next_fault_id = 1
        self.faults: list[_ActiveFault] = []
        for fault in config.faults:
            self.add_fault(fault)
        self.calls: list[JSON] = []
        self.deliveries: list[JSON] = []
        self.generations: dict[str, JSON] = {}
        self.broadcast_url = config.broadcast_url
        self.broadcast_headers = dict(config.broadcast_headers)

    def add_key(
        self,
        key: str,
        name: str,
        limit: float | None,
        limit_reset: str | None,
        now: datetime,
        balance: float | None = None,
        output: str | None = None,
        disabled: bool = False,
    ) -> _KeyState:
        state = _KeyState(
            key=key,
            name=name,
            hash=hashlib.sha256(key.encode()).hexdigest(),
            limit=limit,
            limit_reset=limit_reset,
            balance=balance,
            output=output,
            disabled=disabled,
            created_at=now,
        )
        self.keys[key] = state
        return state

    def by_hash(self, key_hash: str) -> _KeyState:
        for key in self.keys.values():
            if key.hash == key_hash:
                return key
        raise _ApiError(404, "Not Found")

    def add_fault(self, fault: Fault) -> _ActiveFault:
        active = _ActiveFault(self.next_fault_id, fault)
        self.next_fault_id += 1
        self.faults.append(active)
        return active

    def matching_faults(self, key_name: str, preset: str | None) -> list[_ActiveFault]:
        return [f for f in self.faults if not f.exhausted and f.fault.matches(key_name, preset)]

    def new_id(self, now: datetime) -> str:
        alphabet = string.ascii_letters + string.digits
        return f"gen-{int(now.timestamp())}-" + "".join(self.rng.choices(alphabet, k=20))

    def new_key(self) -> str:
        return "sk-or-v1-" + "".join(self.rng.choices("0123456789abcdef", k=64))


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _state(request: Request) -> _State:
    state: _State = request.app.state.sim
    return state


async def _json_body(request: Request) -> JSON:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _ApiError(400, f"Invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise _ApiError(400, "The request body must be a JSON object")
    return body


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _ApiError(401, "No auth credentials found")
    return token.strip()


def _inference_key(request: Request) -> _KeyState:
    state = _state(request)
    token = _bearer(request)
    key = state.keys.get(token)
    if key is None:
        raise _ApiError(401, "User not found.")
    if key.disabled:
        raise _ApiError(401, "API key is disabled")
    return key


def _require_management(request: Request) -> None:
    state = _state(request)
    token = _bearer(request)
    if state.config.management_key is None or token != state.config.management_key:
        raise _ApiError(401, "Only management keys can manage API keys")


Handler = Callable[[Request], Awaitable[Response]]


def _recorded(handler: Handler) -> Handler:
    """Record every request (headers, body, status) for ``GET /_sim/calls``; render
    ``_ApiError`` in OpenRouter's error shape."""

    async def wrapped(request: Request) -> Response:
        state = _state(request)
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        entry: JSON = {
            "at": state.config.clock().isoformat(),
            "method": request.method,
            "path": request.url.path,
            "query": str(request.url.query),
            "headers": dict(request.headers),
            "body": body,
        }
        state.calls.append(entry)
        try:
            response = await handler(request)
        except _ApiError as err:
            response = _JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        entry["status"] = response.status_code
        entry["key_name"] = request.scope.get("sim.key_name")
        entry["generation_id"] = request.scope.get("sim.generation_id")
        return response

    return wrapped


# --------------------------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------------------------


def _resolve_target(body: JSON, state: _State) -> _Target:
    raw_model = body.get("model")
    preset_slug = body.get("preset")
    model: str | None = None
    if isinstance(raw_model, str) and "@preset/" in raw_model:
        model_part, _, preset_slug = raw_model.partition("@preset/")
        model = model_part or None
    elif isinstance(raw_model, str) and raw_model:
        model = raw_model
    elif isinstance(body.get("models"), list) and body["models"]:
        model = str(body["models"][0])
    preset = None
    if preset_slug is not None:
        preset = state.config.presets.get(str(preset_slug))
        if preset is None:
            raise _ApiError(404, f"Preset not found: {preset_slug}")
    if model is None and preset is None:
        raise _ApiError(400, "No model specified: send 'model' or a preset")
    chosen = model or (preset.model if preset else "")
    if chosen not in state.models:
        raise _ApiError(404, f"No endpoints found for {chosen}.")
    info = state.models[chosen]
    use_preset_price = preset is not None and chosen == preset.model
    extra_models = tuple(str(m) for m in body.get("models") or () if str(m) != chosen)
    fallbacks = (preset.fallback_models if preset else ()) + extra_models
    return _Target(
        preset_slug=None if preset_slug is None else str(preset_slug),
        model=chosen,
        fallbacks=fallbacks,
        input_price=preset.input_price if preset and use_preset_price else info.input_price,
        output_price=preset.output_price if preset and use_preset_price else info.output_price,
        provider=(preset.provider if preset else None) or info.provider or _provider_for(chosen),
        max_completion_tokens=preset.max_completion_tokens if preset else None,
        system_prompt=preset.system_prompt if preset else None,
        output=preset.output if preset else None,
    )


def _provider_for(model: str) -> str:
    return _vendor(model).replace("-", " ").title()


def _refusal(fault: Fault, key: _KeyState, target: _Target, cap: int) -> _ApiError:
    kind = fault.kind
    if kind == "rate_limit":
        retry_after = fault.retry_after if fault.retry_after is not None else 1
        return _ApiError(
            429,
            f"{target.model} is temporarily rate-limited upstream. Please retry shortly.",
            {
                "error_type": fault.error_type or "rate_limit_exceeded",
                "provider_name": target.provider,
            },
            {"Retry-After": str(retry_after)},
            "rate_limit_exceeded",
        )
    if kind == "payment_required":
        return _ApiError(
            402,
            "This request requires more credits, or fewer max_tokens. You requested up to "
            f"{cap} tokens, but can only afford {max(1, cap // 4)}. To increase, visit "
            "https://openrouter.ai/settings/credits and add more credits",
            {"error_type": fault.error_type} if fault.error_type else None,
            error_type="payment_required",
        )
    if kind == "key_limit":
        reset = fault.limit_reset or key.limit_reset
        return _ApiError(403, limit_exceeded_message(reset), error_type="key_limit_exceeded")
    if kind == "workspace_budget":
        message = f"Workspace monthly budget of {fault.budget} exceeded. Contact your org admin."
        return _ApiError(403, message, error_type="workspace_budget_exceeded")
    if kind == "prompt_injection":
        return _ApiError(
            403,
            "Request blocked: prompt injection patterns detected",
            {"patterns": list(fault.patterns)},
            error_type="guardrail_blocked",
        )
    if kind == "content_filter":
        return _ApiError(
            403,
            f"Request blocked by content filter: [{fault.label}]",
            {"reasons": [fault.label], "flagged_input": f"[{fault.label}]"},
            error_type="guardrail_blocked",
        )
    status = fault.status or 502
    default_type = {
        500: "internal_error",
        502: "provider_unavailable",
        503: "provider_overloaded",
        524: "timeout",
        529: "provider_overloaded",
    }[status]
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    error_type = fault.error_type or default_type
    return _ApiError(
        status,
        f"Provider returned error ({target.provider})",
        {"error_type": error_type, "provider_name": target.provider},
        headers,
        error_type,
    )


def _read_cap(body: JSON, target: _Target) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _ApiError(400, f"{name} must be a positive integer")
        return value
    return target.max_completion_tokens


def _read_attribution(request: Request, body: JSON) -> tuple[str | None, str | None, JSON]:
    user = body.get("user")
    session_id = body.get("session_id") or request.headers.get("x-session-id")
    trace = body.get("trace") or {}
    if user is not None and not isinstance(user, str):
        raise _ApiError(400, "user must be a string")
    if session_id is not None and (
        not isinstance(session_id, str) or len(session_id) > SESSION_ID_MAX
    ):
        raise _ApiError(400, f"session_id must be a string of at most {SESSION_ID_MAX} characters")
    if not isinstance(trace, dict):
        raise _ApiError(400, "trace must be an object")
    return user, session_id, trace


def _compose(text_words: list[str] | str, cap: int | None) -> tuple[str, int, str]:
    """(content, completion tokens, finish reason) for an answer capped at ``cap`` tokens."""
    if isinstance(text_words, str):
        tokens = estimate_tokens(text_words)
        if cap is not None and tokens > cap:
            return text_words[: cap * 4], cap, "length"
        return text_words, tokens, "stop"
    if cap is not None and len(text_words) > cap:
        return " ".join(text_words[:cap]), cap, "length"
    return " ".join(text_words), len(text_words), "stop"


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    target: _Target
    messages: list[JSON]
    cap: int | None
    user: str | None
    session_id: str | None
    trace: JSON
    response_format: JSON | None  # set when the request asked for JSON


@dataclass(frozen=True, slots=True)
class _Answer:
    model: str
    content: str
    completion_tokens: int
    finish_reason: str
    error: JSON | None  # the error object of a choice that failed inside a 200
    broadcast: bool


def _parse_chat(request: Request, body: JSON, state: _State) -> _ChatRequest:
    target = _resolve_target(body, state)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _ApiError(400, 'Input required: specify "prompt" or "messages"')
    if not all(isinstance(m, dict) for m in messages):
        raise _ApiError(400, "Each message must be an object")
    if body.get("stream"):
        raise _ApiError(400, "The simulator does not stream: send stream=false")
    if target.system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": target.system_prompt}, *messages]
    user, session_id, trace = _read_attribution(request, body)
    try:
        response_format = read_response_format(body.get("response_format"))
    except ValueError as exc:
        raise _ApiError(400, str(exc)) from exc
    cap = _read_cap(body, target)
    return _ChatRequest(target, messages, cap, user, session_id, trace, response_format)


def _pick_refusal(
    key: _KeyState, faults: list[_ActiveFault], chat: _ChatRequest, now: datetime
) -> tuple[_ApiError | None, bool]:
    """(the error that refuses this call or None, whether to broadcast it). The key's own
    limit and balance come first; then the first refusal fault, which counts a hit."""
    remaining = key.limit_remaining(now)
    balance = key.balance_remaining()
    if remaining is not None and remaining <= 0:
        message = limit_exceeded_message(key.limit_reset)
        return _ApiError(403, message, error_type="key_limit_exceeded"), True
    if balance is not None and balance <= 0:
        return _ApiError(402, CREDITS_MESSAGE, error_type="payment_required"), True
    for active in faults:
        if active.fault.kind in _REFUSALS:
            active.hits += 1
            refusal = _refusal(active.fault, key, chat.target, chat.cap or 16384)
            return refusal, active.fault.broadcast
    return None, True


def _answer(
    state: _State, key: _KeyState, chat: _ChatRequest, faults: list[_ActiveFault]
) -> _Answer:
    """The answer to a call that was not refused, with the success-shaped faults applied."""
    target = chat.target
    modifiers = {a.fault.kind: a for a in faults if a.fault.kind not in _REFUSALS | {"delay"}}
    for active in modifiers.values():
        active.hits += 1
    broadcast = all(a.fault.broadcast for a in modifiers.values())
    model = target.model
    if wrong := modifiers.get("wrong_model"):
        fallback = target.fallbacks[0] if target.fallbacks else DEFAULT_FALLBACK_MODEL
        model = wrong.fault.model or fallback
    if errored := modifiers.get("error_in_200"):
        error = {
            "code": errored.fault.status or 502,
            "message": f"Upstream error from {target.provider}: the stream was interrupted",
            "metadata": {
                "error_type": errored.fault.error_type or "provider_error",
                "provider_name": target.provider,
            },
        }
        return _Answer(model, "", 0, "error", error, broadcast)
    answer: list[str] | str
    if sensitive := modifiers.get("sensitive_output"):
        answer = sensitive.fault.text or DEFAULT_SENSITIVE_TEXT
    elif key.output is not None:
        answer = key.output
    elif target.output is not None:
        answer = target.output
    else:
        answer = generate_answer(state.config.seed, model, chat.messages)
        if chat.response_format is not None:
            answer = json_answer(chat.response_format, answer)
    content, completion_tokens, finish_reason = _compose(answer, chat.cap)
    return _Answer(model, content, completion_tokens, finish_reason, None, broadcast)


def _completion_payload(record: GenerationRecord, answer: _Answer) -> JSON:
    choice: JSON = {"index": 0, "logprobs": None}
    if answer.error is not None:
        choice["error"] = answer.error
    choice |= {
        "finish_reason": answer.finish_reason,
        "native_finish_reason": answer.finish_reason,
        "message": {
            "role": "assistant",
            "content": answer.content,
            "refusal": None,
            "reasoning": None,
        },
    }
    prompt, completion = record.prompt_tokens, record.completion_tokens
    return {
        "id": record.generation_id,
        "provider": record.provider_name,
        "model": answer.model,
        "object": "chat.completion",
        "created": int(record.started_at.timestamp()),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cost": record.total_cost,
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "cost_details": {
                "upstream_inference_cost": None,
                "upstream_inference_prompt_cost": record.input_cost,
                "upstream_inference_completions_cost": record.output_cost,
            },
            "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
        },
    }


async def chat_completions(request: Request) -> Response:
    """Authenticate → resolve preset/model → validate → delay faults → refuse (limits,
    balance, refusal faults) or answer (success faults) → charge the key → broadcast after
    the response."""
    state = _state(request)
    body = await _json_body(request)
    key = _inference_key(request)
    request.scope["sim.key_name"] = key.name
    chat = _parse_chat(request, body, state)
    target = chat.target

    faults = state.matching_faults(key.name, target.preset_slug)
    delays = [a for a in faults if a.fault.kind == "delay"]
    for active in delays:
        active.hits += 1
    if delays:
        await asyncio.sleep(sum(a.fault.seconds for a in delays))

    started = state.config.clock()
    generation_id = state.new_id(started)
    request.scope["sim.generation_id"] = generation_id
    record = GenerationRecord(
        generation_id=generation_id,
        started_at=started,
        ended_at=started,
        key_name=key.name,
        request_model=target.model,
        response_model=target.model,
        provider_name=target.provider,
        user=chat.user,
        session_id=chat.session_id,
        trace=chat.trace,
        messages=chat.messages,
        prompt_tokens=count_prompt_tokens(chat.messages),
        input_unit_price=target.input_price,
        output_unit_price=target.output_price,
    )

    refusal, broadcast = _pick_refusal(key, faults, chat, started)
    if refusal is not None:
        record = replace(
            record,
            ended_at=state.config.clock(),
            prompt_tokens=0,
            finish_reason=None,
            error_status=refusal.status,
            error_message=refusal.message,
            error_type=refusal.error_type,
        )
        state.generations[generation_id] = _generation_view(record, target.preset_slug)
        task = _broadcast_task(state, record) if broadcast else None
        return _JSONResponse(refusal.body(), refusal.status, refusal.headers, background=task)

    answer = _answer(state, key, chat, faults)
    record = replace(
        record,
        ended_at=state.config.clock(),
        response_model=answer.model,
        completion=answer.content,
        completion_tokens=answer.completion_tokens,
        finish_reason=answer.finish_reason,
    )
    if answer.error is not None:
        record = replace(
            record,
            error_status=int(answer.error["code"]),
            error_message=str(answer.error["message"]),
            error_type=str(answer.error["metadata"]["error_type"]),
        )
    key.spent.append((record.ended_at, record.total_cost))
    state.generations[generation_id] = _generation_view(record, target.preset_slug)
    task = _broadcast_task(state, record) if answer.broadcast else None
    return _JSONResponse(_completion_payload(record, answer), background=task)


def _generation_view(record: GenerationRecord, preset_slug: str | None) -> JSON:
    cost = 0.0 if record.finish_reason is None else record.total_cost
    return {
        "id": record.generation_id,
        "model": record.response_model,
        "created_at": record.started_at.isoformat(),
        "total_cost": cost,
        "usage": cost,
        "is_byok": False,
        "provider_name": record.provider_name,
        "tokens_prompt": record.prompt_tokens,
        "tokens_completion": record.completion_tokens,
        "native_tokens_prompt": record.prompt_tokens,
        "native_tokens_completion": record.completion_tokens,
        "native_tokens_reasoning": record.reasoning_tokens,
        "finish_reason": record.finish_reason,
        "native_finish_reason": record.finish_reason,
        "generation_time": int((record.ended_at - record.started_at).total_seconds() * 1000),
        "session_id": record.session_id,
        "user": record.user,
        "preset_id": preset_slug,
        "api_key_name": record.key_name,
        "status": record.error_status or 200,
    }


def _broadcast_task(state: _State, record: GenerationRecord) -> BackgroundTask | None:
    if state.broadcast_url is None:
        return None
    return BackgroundTask(
        _deliver, state, state.broadcast_url, dict(state.broadcast_headers), record
    )


async def _deliver(
    state: _State, url: str, headers: dict[str, str], record: GenerationRecord
) -> None:
    """POST one broadcast delivery; any failure is recorded, never raised."""
    entry: JSON = {"generation_id": record.generation_id, "url": url}
    state.deliveries.append(entry)
    client = state.http
    if client is None:
        entry["error"] = "simulator is not running (no HTTP client)"
        return
    try:
        response = await client.post(
            url,
            content=orjson.dumps(build_broadcast(record)),
            headers={"content-type": "application/json", **headers},
            timeout=state.config.broadcast_timeout,
        )
    except Exception as exc:  # a broadcast failure must never reach the chat caller
        entry["error"] = f"{type(exc).__name__}: {exc}"
    else:
        entry["status"] = response.status_code


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


async def list_models(request: Request) -> Response:
    """``GET /api/v1/models``: every model the presets and ``models`` name, with per-token
    prices as decimal strings (as OpenRouter lists them); no key needed."""
    state = _state(request)
    data = [
        {
            "id": model,
            "name": model,
            "context_length": 128_000,
            "pricing": {
                "prompt": f"{info.input_price:.12f}".rstrip("0").rstrip(".") or "0",
                "completion": f"{info.output_price:.12f}".rstrip("0").rstrip(".") or "0",
                "request": "0",
                "image": "0",
            },
        }
        for model, info in sorted(state.models.items())
    ]
    return _JSONResponse({"data": data})


async def current_key(request: Request) -> Response:
    state = _state(request)
    now = state.config.clock()
    token = _bearer(request)
    if state.config.management_key is not None and token == state.config.management_key:
        data: JSON = {
            "label": f"{token[:11]}...{token[-3:]}",
            "limit": None,
            "limit_remaining": None,
        }
        data |= {"usage": 0.0, "is_management_key": True, "is_provisioning_key": True}
        return _JSONResponse({"data": data | {"is_free_tier": False}})
    key = _inference_key(request)
    request.scope["sim.key_name"] = key.name
    data = {"label": key.label, **key.usage_view(now)}
    data |= {
        "is_free_tier": key.balance == 0,
        "is_management_key": False,
        "is_provisioning_key": False,
        "creator_user_id": "user_sim000000000000000000000",
        "rate_limit": {
            "requests": -1,
            "interval": "10s",
            "note": "This field is deprecated and safe to ignore.",
        },
    }
    return _JSONResponse({"data": data})


async def credits(request: Request) -> Response:
    """The key's own credit balance (a simulator simplification of the account balance)."""
    key = _inference_key(request)
    request.scope["sim.key_name"] = key.name
    total = 1_000_000.0 if key.balance is None else key.balance
    return _JSONResponse({"data": {"total_credits": total, "total_usage": key.usage_since(None)}})


async def generation(request: Request) -> Response:
    _inference_key(request)
    found = _state(request).generations.get(request.query_params.get("id", ""))
    if found is None:
        raise _ApiError(404, "Generation not found")
    return _JSONResponse({"data": found})


def _limit_fields(body: JSON, key: _KeyState | None) -> JSON:
    updates: JSON = {}
    if "limit" in body:
        limit = body["limit"]
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | float) or limit < 0
        ):
            raise _ApiError(400, "limit must be a non-negative number or null")
        updates["limit"] = None if limit is None else float(limit)
    if "limit_reset" in body:
        if body["limit_reset"] not in (None, *LIMIT_RESETS):
            raise _ApiError(400, "limit_reset must be daily, weekly, monthly or null")
        updates["limit_reset"] = body["limit_reset"]
    if "include_byok_in_limit" in body:
        updates["include_byok_in_limit"] = bool(body["include_byok_in_limit"])
    if "expires_at" in body:
        updates["expires_at"] = body["expires_at"]
    if "disabled" in body:
        if key is None:
            raise _ApiError(400, "disabled can only be set on an existing key")
        updates["disabled"] = bool(body["disabled"])
    if "name" in body:
        if not isinstance(body["name"], str) or not body["name"].strip():
            raise _ApiError(400, "name must be a non-empty string")
        updates["name"] = body["name"]
    return updates


async def list_keys(request: Request) -> Response:
    _require_management(request)
    state = _state(request)
    now = state.config.clock()
    offset = int(request.query_params.get("offset", "0") or 0)
    include_disabled = request.query_params.get("include_disabled", "false").lower() == "true"
    views = [
        k.management_view(now) for k in state.keys.values() if include_disabled or not k.disabled
    ]
    return _JSONResponse({"data": views[offset : offset + 100]})


async def create_key(request: Request) -> Response:
    _require_management(request)
    state = _state(request)
    body = await _json_body(request)
    if "name" not in body:
        raise _ApiError(400, "name is required")
    updates = _limit_fields(body, None)
    now = state.config.clock()
    key = state.add_key(state.new_key(), updates.pop("name"), None, None, now)
    for name, value in updates.items():
        setattr(key, name, value)
    return _JSONResponse({"data": key.management_view(now), "key": key.key}, status_code=201)


async def one_key(request: Request) -> Response:
    _require_management(request)
    state = _state(request)
    key = state.by_hash(request.path_params["hash"])
    now = state.config.clock()
    if request.method == "DELETE":
        del state.keys[key.key]
        return _JSONResponse({"deleted": True})
    if request.method == "PATCH":
        for name, value in _limit_fields(await _json_body(request), key).items():
            setattr(key, name, value)
        key.updated_at = now
    return _JSONResponse({"data": key.management_view(now)})


# --------------------------------------------------------------------------------------------
# Control endpoints (/_sim/*)
# --------------------------------------------------------------------------------------------


def _fault_list(body: Any) -> list[JSON]:
    if isinstance(body, dict) and isinstance(body.get("faults"), list):
        return list(body["faults"])
    if isinstance(body, dict):
        return [body]
    raise _ApiError(400, 'send a fault object or {"faults": [...]}')


async def sim_faults(request: Request) -> Response:
    state = _state(request)
    if request.method == "GET":
        return _JSONResponse({"faults": [f.view() for f in state.faults]})
    if request.method == "DELETE":
        cleared = len(state.faults)
        state.faults.clear()
        return _JSONResponse({"cleared": cleared})
    try:
        faults = [
            Fault.from_mapping(raw, f"faults[{i}]")
            for i, raw in enumerate(_fault_list(await _json_body(request)))
        ]
    except (SimConfigError, TypeError) as exc:
        raise _ApiError(400, str(exc)) from exc
    added = [state.add_fault(f).view() for f in faults]
    return _JSONResponse({"faults": added}, status_code=201)


async def sim_calls(request: Request) -> Response:
    return _JSONResponse({"calls": _state(request).calls})


async def sim_deliveries(request: Request) -> Response:
    return _JSONResponse({"deliveries": _state(request).deliveries})


async def sim_reset(request: Request) -> Response:
    _state(request).reset()
    return _JSONResponse({"reset": True})


async def sim_broadcast(request: Request) -> Response:
    """Point the broadcast at a destination at runtime: ``{"url": ..., "headers": {...}}``."""
    state = _state(request)
    body = await _json_body(request)
    url = body.get("url")
    headers = body.get("headers") or {}
    if (url is not None and not isinstance(url, str)) or not isinstance(headers, dict):
        raise _ApiError(400, 'send {"url": string|null, "headers": {name: value}}')
    state.broadcast_url = url
    state.broadcast_headers = {str(k): str(v) for k, v in headers.items()}
    return _JSONResponse({"url": url, "headers": sorted(state.broadcast_headers)})


async def _render_error(request: Request, exc: Exception) -> Response:
    """Render routing errors (404/405) and control-endpoint errors in OpenRouter's shape."""
    if isinstance(exc, _ApiError):
        return _JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "Internal error"
    return _JSONResponse({"error": {"code": status, "message": detail}}, status_code=status)


def create_app(config: SimConfig) -> Starlette:
    """The simulator as an ASGI app. Its lifespan owns the HTTP client used for broadcast."""
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=config.broadcast_timeout) as client:
            state.http = client
            try:
                yield
            finally:
                state.http = None

    routes = [
        Route("/api/v1/chat/completions", _recorded(chat_completions), methods=["POST"]),
        Route("/api/v1/key", _recorded(current_key), methods=["GET"]),
        Route("/api/v1/models", _recorded(list_models), methods=["GET"]),
        Route("/api/v1/credits", _recorded(credits), methods=["GET"]),
        Route("/api/v1/generation", _recorded(generation), methods=["GET"]),
        Route("/api/v1/keys", _recorded(list_keys), methods=["GET"]),
        Route("/api/v1/keys", _recorded(create_key), methods=["POST"]),
        Route("/api/v1/keys/{hash}", _recorded(one_key), methods=["GET", "PATCH", "DELETE"]),
        Route("/_sim/faults", sim_faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/calls", sim_calls, methods=["GET"]),
        Route("/_sim/deliveries", sim_deliveries, methods=["GET"]),
        Route("/_sim/reset", sim_reset, methods=["POST"]),
        Route("/_sim/broadcast", sim_broadcast, methods=["PUT"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _render_error, _ApiError: _render_error},
    )
    app.state.sim = state
    return app


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def serve(host: str, port: int, config: SimConfig) -> None:
    """Run the simulator in the foreground until interrupted (``ledger sim openrouter``)."""
    # Like the real service: keep-alive connections live longer than the daemon's pool keeps
    # them idle (120 s), and a wave of connections at once is not refused. No access log: the
    # calls are recorded (GET /_sim/calls), and a line per request costs more than the request.
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        ws="none",
        log_level="info",
        access_log=False,
        timeout_keep_alive=300,
        backlog=4096,
    )


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone (tests own them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_server(app: ASGIApp) -> _QuietServer:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=300,
        backlog=4096,
    )
    return _QuietServer(config)


def _base_url(server: uvicorn.Server) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def run_asgi_in_background(app: ASGIApp) -> AsyncIterator[str]:
    """Serve any ASGI app on a free loopback port in this event loop; yields its base URL."""
    server = _uvicorn_server(app)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise the start-up failure
                raise RuntimeError("the server stopped before it started")
            await asyncio.sleep(0.01)
        yield _base_url(server)
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def run_in_background(config: SimConfig) -> AsyncIterator[str]:
    """Run the OpenRouter simulator on a free loopback port; yields its base URL
    (``http://127.0.0.1:PORT``; the API is under ``/api/v1``)."""
    async with run_asgi_in_background(create_app(config)) as base_url:
        yield base_url


@contextlib.contextmanager
def run_in_thread(config: SimConfig) -> Iterator[str]:
    """Like ``run_in_background`` for synchronous code: the simulator runs in its own thread."""
    server = _uvicorn_server(create_app(config))
    thread = threading.Thread(target=server.run, name="openrouter-sim", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the OpenRouter simulator failed to start")
            thread.join(0.01)
        yield _base_url(server)
    finally:
        server.should_exit = True
        thread.join()
