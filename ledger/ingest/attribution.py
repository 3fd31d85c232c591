"""Broadcast spans → generations, and a generation → the behavior it was made for.

Pure: ``extract_generations`` reads ``SpanRecord``s only; ``attribute`` asks an
``AttributionLookup`` the caller implements over the registry and the database.

A *generation* is one model call: each root ``LLM Generation`` span (OpenRouter's broadcast), and
each other span carrying ``gen_ai.usage.*`` or ``gen_ai.request.model`` attributes (generic
OpenTelemetry GenAI exporters). Guardrail and limit signals are read from the error text and from
OpenRouter-set attributes, never from ``trace.metadata.*`` (the caller writes those) nor from the
prompt or completion. Broadcast is a second source: the runner classifies the HTTP response it sees
first (see fixtures/openrouter/README.md), so these signals are *suggestions*.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Final, Protocol

from ledger.gates import ATTRIBUTABLE, Gate, Outcome
from ledger.ingest.otlp import Attributes, AttrValue, SpanRecord
from ledger.ingest.otlp.model import first_text

__all__ = [
    "Attribution",
    "AttributionLookup",
    "ErrorInfo",
    "GateSignal",
    "Generation",
    "Rule",
    "attribute",
    "classify_error_text",
    "extract_generations",
]

ROOT_SPAN_NAME: Final = "LLM Generation"
_STATUS_ERROR: Final = 2


@dataclass(frozen=True, slots=True)
class GateSignal:
    """A suggested gate result read from a generation; ``reason`` is the text that matched."""

    gate: Gate
    outcome: Outcome
    attributable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why a generation failed: ``message`` is the most specific text found (exception message,
    then status message), ``type`` the exception type when one was reported."""

    message: str
    type: str | None
    status_message: str
    level: str | None


@dataclass(frozen=True, slots=True)
class Generation:
    """One model call as broadcast reported it.

    The hints are the values attribution tries, in order: ``behavior_hint``
    (``trace.metadata.behavior``), ``run_id_hint`` (``trace.metadata.run_id``), ``session_id``,
    ``user_id``, ``key_name``. ``cost`` is a ``Decimal`` in USD made from the reported double's
    shortest repr (``gen_ai.usage.total_cost``, else input + output cost), None when not reported.
    """

    trace_id: str
    span_id: str
    generation_id: str | None
    behavior_hint: str | None
    run_id_hint: str | None
    session_id: str | None
    user_id: str | None
    key_name: str | None
    model_requested: str | None
    model_answered: str | None
    provider: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost: Decimal | None
    start_unix_nano: int
    end_unix_nano: int
    error: ErrorInfo | None
    signals: tuple[GateSignal, ...]


# --------------------------------------------------------------------------- extraction


def extract_generations(spans: Sequence[SpanRecord]) -> list[Generation]:
    """The generations in one delivery, in span order (see the module docstring for which)."""
    span_ids = {span.span_id for span in spans}
    generations = []
    for span in spans:
        attrs = span.attributes
        is_root = span.parent_span_id is None or span.parent_span_id not in span_ids
        if (span.name == ROOT_SPAN_NAME and is_root) or _looks_like_gen_ai(attrs):
            generations.append(_generation(span))
    return generations


def _looks_like_gen_ai(attrs: Attributes) -> bool:
    return "gen_ai.request.model" in attrs or any(k.startswith("gen_ai.usage.") for k in attrs)


def _generation(span: SpanRecord) -> Generation:
    attrs = span.attributes
    resource = span.resource_attributes

    def text(*keys: str) -> str | None:
        return first_text((attrs, resource), keys)

    input_tokens = _int(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens = _int(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    total_tokens = _int(attrs, "gen_ai.usage.total_tokens")
    if total_tokens is None and input_tokens is not None and output_tokens is not None:
        total_tokens = input_tokens + output_tokens
    error = _error_info(span)
    return Generation(
        trace_id=span.trace_id,
        span_id=span.span_id,
        generation_id=text("gen_ai.response.id", "openrouter.trace.id"),
        behavior_hint=text("trace.metadata.behavior"),
        run_id_hint=text("trace.metadata.run_id"),
        session_id=text("session.id"),
        user_id=text("user.id"),
        key_name=text("trace.metadata.openrouter.api_key_name", "openrouter.api_key_name"),
        model_requested=text("gen_ai.request.model"),
        model_answered=text("gen_ai.response.model"),
        provider=text("trace.metadata.openrouter.provider_name", "gen_ai.provider.name"),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        cost=_cost(attrs),
        start_unix_nano=span.start_unix_nano,
        end_unix_nano=span.end_unix_nano,
        error=error,
        signals=_signals(attrs, error),
    )


def _int(attrs: Attributes, *keys: str) -> int | None:
    for key in keys:
        value = attrs.get(key)
        if type(value) is int:
            return value
        if type(value) is float and value.is_integer():
            return int(value)
        if type(value) is str and value.isdigit():
            return int(value)
    return None


def _decimal(value: AttrValue) -> Decimal | None:
    if type(value) is float:
        return Decimal(repr(value)) if math.isfinite(value) else None
    if type(value) is int:
        return Decimal(value)
    if type(value) is str:
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _cost(attrs: Attributes) -> Decimal | None:
    total = _decimal(attrs.get("gen_ai.usage.total_cost"))
    if total is not None:
        return total
    parts = [
        _decimal(attrs.get("gen_ai.usage.input_cost")),
        _decimal(attrs.get("gen_ai.usage.output_cost")),
    ]
    present = [p for p in parts if p is not None]
    return sum(present, Decimal(0)) if present else None


def _error_info(span: SpanRecord) -> ErrorInfo | None:
    attrs = span.attributes
    level = attrs.get("span.level")
    level_text = level if type(level) is str else None
    exc_type: str | None = None
    exc_message: str | None = None
    for event in span.events:
        if event.name == "exception":
            t = event.attributes.get("exception.type")
            m = event.attributes.get("exception.message")
            exc_type = t if type(t) is str and t else exc_type
            exc_message = m if type(m) is str and m else exc_message
    status_attr = attrs.get("span.status_message")
    status_message = span.status_message or (status_attr if type(status_attr) is str else "")
    failed = (
        span.status_code == _STATUS_ERROR
        or (level_text is not None and level_text.upper() == "ERROR")
        or exc_type is not None
        or exc_message is not None
    )
    if not failed:
        return None
    error_message = attrs.get("error.message")
    message = (
        exc_message
        or status_message
        or (error_message if type(error_message) is str else "")
        or "error reported without a message"
    )
    error_type = attrs.get("error.type")
    if exc_type is None and type(error_type) is str and error_type:
        exc_type = error_type
    return ErrorInfo(
        message=message, type=exc_type, status_message=status_message, level=level_text
    )


# --------------------------------------------------------------------------- signals

_BLOCKED = re.compile(r"\bblock", re.IGNORECASE)

# (pattern, gate). First match wins, so the specific guardrails come before the generic
# "request blocked".
_TEXT_RULES: Final[tuple[tuple[re.Pattern[str], Gate], ...]] = (
    (re.compile(r"key limit exceeded", re.IGNORECASE), Gate.SPEND_CAP),
    (re.compile(r"budget\b.*\bexceeded|exceeded\b.*\bbudget", re.IGNORECASE), Gate.PROVIDER_ERROR),
    (re.compile(r"prompt[ _-]?injection|jailbreak", re.IGNORECASE), Gate.PROMPT_INJECTION),
    (
        re.compile(
            r"content[ _-]?filter|sensitive[ _-]?info|\bpii\b|"
            r"\[(?:email|phone|ssn|credit[ _-]?card|ip[ _-]?address|person[ _-]?name|address)\]",
            re.IGNORECASE,
        ),
        Gate.SENSITIVE_INFO,
    ),
    (
        re.compile(r"request blocked|blocked by|guardrail|moderation", re.IGNORECASE),
        Gate.GUARDRAIL_BLOCK,
    ),
    (
        re.compile(r"invalid[ _-]?(?:api[ _-]?)?key|unauthori[sz]ed|\b401\b", re.IGNORECASE),
        Gate.AUTH_ERROR,
    ),
)

# Markers in attribute keys OpenRouter or a gateway may use to report a guardrail verdict on a
# call that still succeeded (flagged or redacted content).
_SIGNAL_KEY: Final = re.compile(
    r"guardrail|content_filter|moderation|sensitive_info|prompt_injection|pii"
)


def classify_error_text(text: str) -> GateSignal:
    """The gate a failed call's error text points at; a refused call is always a ``fail``.

    Blocks and key limits are the behavior's own doing (attributable); rate limits, provider
    failures, client disconnects, workspace budgets, credit shortfalls and anything unrecognised
    are ``provider_error``, which never demotes.
    """
    for pattern, gate in _TEXT_RULES:
        if pattern.search(text):
            return GateSignal(gate, Outcome.FAIL, ATTRIBUTABLE[gate], text)
    return GateSignal(Gate.PROVIDER_ERROR, Outcome.FAIL, False, text)


def _signals(attrs: Attributes, error: ErrorInfo | None) -> tuple[GateSignal, ...]:
    found: dict[Gate, GateSignal] = {}
    if error is not None:
        texts = [error.message, error.status_message, error.type or ""]
        signal = classify_error_text(" | ".join(t for t in texts if t))
        found[signal.gate] = signal
    for key, value in attrs.items():
        if not _is_signal_key(key):
            continue
        for text in _texts(key, value):
            for pattern, gate in _TEXT_RULES:
                if gate in (Gate.PROMPT_INJECTION, Gate.SENSITIVE_INFO, Gate.GUARDRAIL_BLOCK) and (
                    pattern.search(text)
                ):
                    outcome = Outcome.FAIL if _BLOCKED.search(text) else Outcome.WARN
                    if gate not in found or found[gate].outcome is Outcome.WARN:
                        found[gate] = GateSignal(gate, outcome, ATTRIBUTABLE[gate], text)
                    break
    return tuple(found.values())


@functools.lru_cache(maxsize=4096)
def _is_signal_key(key: str) -> bool:
    """Whether an attribute named ``key`` may carry a guardrail verdict (remembered per key: a
    delivery's spans repeat the same few dozen names)."""
    return not key.startswith("trace.metadata.") and _SIGNAL_KEY.search(key) is not None


def _texts(key: str, value: AttrValue) -> Iterable[str]:
    if value is True:
        yield key
    elif type(value) is str and value:
        yield f"{key}={value}"
    elif type(value) is list:
        for item in value:
            if type(item) is str and item:
                yield f"{key}={item}"


# --------------------------------------------------------------------------- attribution


class AttributionLookup(Protocol):
    """What attribution asks of the registry and the database (the caller implements it)."""

    def by_run_id(self, run_id: str) -> str | None:
        """The behavior that owns this run id, or None."""

    def by_name(self, name: str) -> bool:
        """Whether a behavior with this name exists."""

    def by_key_name(self, key_name: str) -> str | None:
        """The behavior whose OpenRouter key carries this name, or None."""


class Rule(StrEnum):
    """Which hint attributed a generation (or that none did)."""

    BEHAVIOR = "trace.metadata.behavior"
    RUN_ID = "trace.metadata.run_id"
    SESSION_ID = "session.id"
    USER_ID = "user.id"
    KEY_NAME = "key_name"
    UNATTRIBUTED = "unattributed"


@dataclass(frozen=True, slots=True)
class Attribution:
    """The behavior a generation belongs to (None: unattributed) and the rule that decided.

    ``hint`` is the value that matched. ``run_id`` is the run the generation belongs to, when a
    run-id hint resolves to the chosen behavior. ``key_conflict`` names a different behavior that
    the key name points at: a behavior calling with another's key, worth an alert.
    """

    behavior: str | None
    rule: Rule
    hint: str | None = None
    run_id: str | None = None
    key_conflict: str | None = None


def attribute(gen: Generation, lookup: AttributionLookup) -> Attribution:
    """Attribute ``gen`` by the first hint that resolves, in the order of ``Rule``."""
    behavior: str | None = None
    rule, hint = Rule.UNATTRIBUTED, None
    candidates: tuple[tuple[Rule, str | None], ...] = (
        (Rule.BEHAVIOR, gen.behavior_hint),
        (Rule.RUN_ID, gen.run_id_hint),
        (Rule.SESSION_ID, gen.session_id),
        (Rule.USER_ID, gen.user_id),
        (Rule.KEY_NAME, gen.key_name),
    )
    for candidate_rule, value in candidates:
        if not value:
            continue
        if candidate_rule in (Rule.BEHAVIOR, Rule.USER_ID):
            found = value if lookup.by_name(value) else None
        elif candidate_rule in (Rule.RUN_ID, Rule.SESSION_ID):
            found = lookup.by_run_id(value)
        else:
            found = lookup.by_key_name(value)
        if found is not None:
            behavior, rule, hint = found, candidate_rule, value
            break
    if behavior is None:
        return Attribution(None, Rule.UNATTRIBUTED)
    run_id: str | None = hint if rule in (Rule.RUN_ID, Rule.SESSION_ID) else None
    if run_id is None:
        for candidate in (gen.run_id_hint, gen.session_id):
            if candidate and lookup.by_run_id(candidate) == behavior:
                run_id = candidate
                break
    key_conflict = None
    if rule is not Rule.KEY_NAME and gen.key_name:
        key_owner = lookup.by_key_name(gen.key_name)
        if key_owner is not None and key_owner != behavior:
            key_conflict = key_owner
    return Attribution(behavior, rule, hint, run_id, key_conflict)
