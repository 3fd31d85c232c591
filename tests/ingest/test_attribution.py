"""Generations from broadcast spans, guardrail signals, and the attribution order."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.gates import Gate, Outcome
from ledger.ingest.attribution import (
    GateSignal,
    Generation,
    Rule,
    attribute,
    classify_error_text,
    extract_generations,
)
from ledger.ingest.otlp import Attributes, Limits, SpanEvent, SpanRecord, decode_request

TRACE_ID = "9b1de41a703bf6c7f0831bba77573c3e"


def _broadcast() -> bytes:
    repo = Path(__file__).resolve().parents[2]
    for candidate in (
        repo / "fixtures" / "openrouter" / "broadcast-success.json",
        repo / "tests" / "fixtures" / "openrouter" / "broadcast-success.json",
        Path("/work/shared/fixtures/openrouter/broadcast-success.json"),
    ):
        if candidate.is_file():
            return candidate.read_bytes()
    raise FileNotFoundError("fixtures/openrouter/broadcast-success.json")


def span(
    name: str = "LLM Generation",
    *,
    span_id: str = "9b1de41a703bf6c7",
    parent: str | None = None,
    attributes: Attributes | None = None,
    resource: Attributes | None = None,
    status_code: int = 1,
    status_message: str = "",
    events: tuple[SpanEvent, ...] = (),
) -> SpanRecord:
    return SpanRecord(
        trace_id=TRACE_ID,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        kind=3,
        start_unix_nano=1,
        end_unix_nano=2,
        status_code=status_code,
        status_message=status_message,
        attributes=attributes or {},
        resource_attributes=resource or {"openrouter.trace.id": "gen-from-resource"},
        events=events,
    )


def failed(message: str, **attributes: str) -> Generation:
    """A broadcast error span as OpenRouter sends it: status 2, level ERROR, exception event."""
    (gen,) = extract_generations(
        [
            span(
                status_code=2,
                status_message=message,
                attributes={"span.level": "ERROR", "span.status_message": message, **attributes},
                events=(
                    SpanEvent(
                        "exception",
                        3,
                        {"exception.type": "OpenRouterError", "exception.message": message},
                    ),
                ),
            )
        ]
    )
    return gen


# --------------------------------------------------------------------------- extraction


def test_broadcast_fixture_yields_one_generation_with_usage_cost_and_hints() -> None:
    spans = decode_request(_broadcast(), "application/json", None, Limits())

    (gen,) = extract_generations(spans)

    assert gen.span_id == "9b1de41a703bf6c7"
    assert gen.trace_id == TRACE_ID
    assert gen.generation_id == "gen-1790606294-sdYHTGXUVyDKWCLqX5Op"
    assert gen.behavior_hint == "seo-audit-weekly"
    assert gen.run_id_hint == "run-01JD8Z6Q3V4J2K7M9N0P1R2S3T"
    assert gen.session_id == "run-01JD8Z6Q3V4J2K7M9N0P1R2S3T"
    assert gen.user_id == "seo-audit-weekly"
    assert gen.key_name == "ledger/seo-audit-weekly"
    assert gen.model_requested == gen.model_answered == "anthropic/claude-haiku-4.5"
    assert gen.provider == "Amazon Bedrock"
    assert (gen.input_tokens, gen.output_tokens, gen.total_tokens) == (2489, 569, 3058)
    assert gen.cost == Decimal("0.005334")
    assert gen.error is None
    assert gen.signals == ()


def test_root_llm_generation_counts_even_under_a_caller_supplied_parent() -> None:
    spans = [
        span(span_id="aaaaaaaaaaaaaaaa", parent="ffffffffffffffff"),  # parent not in delivery
        span("generation", span_id="bbbbbbbbbbbbbbbb", parent="aaaaaaaaaaaaaaaa"),
        span("LLM Generation", span_id="cccccccccccccccc", parent="aaaaaaaaaaaaaaaa"),
    ]
    assert [g.span_id for g in extract_generations(spans)] == ["aaaaaaaaaaaaaaaa"]


def test_generic_gen_ai_spans_count_as_generations() -> None:
    spans = [
        span("invoke_agent", span_id="aaaaaaaaaaaaaaaa", attributes={"session.id": "run-1"}),
        span(
            "chat gpt-4o",
            span_id="bbbbbbbbbbbbbbbb",
            parent="aaaaaaaaaaaaaaaa",
            attributes={
                "gen_ai.request.model": "openai/gpt-4o",
                "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": "5",
                "gen_ai.usage.input_cost": 0.1,
                "gen_ai.usage.output_cost": 0.2,
                "openrouter.api_key_name": "ledger/writer",
            },
            resource={"service.name": "agent", "user.id": "writer"},
        ),
        span("tool call", span_id="cccccccccccccccc", parent="aaaaaaaaaaaaaaaa"),
    ]

    (gen,) = extract_generations(spans)

    assert gen.span_id == "bbbbbbbbbbbbbbbb"
    assert gen.generation_id is None
    assert gen.model_requested == "openai/gpt-4o"
    assert (gen.input_tokens, gen.output_tokens, gen.total_tokens) == (10, 5, 15)
    assert gen.cost == Decimal("0.3")  # input + output, exact in Decimal
    assert gen.key_name == "ledger/writer"
    assert gen.user_id == "writer"  # from the resource when the span does not say


def test_generation_id_falls_back_to_resource_and_cost_may_be_absent() -> None:
    (gen,) = extract_generations([span()])
    assert gen.generation_id == "gen-from-resource"
    assert gen.cost is None
    assert gen.total_tokens is None


def test_connection_test_span_is_not_a_generation() -> None:
    assert extract_generations([span("openrouter-connection-test")]) == []


# --------------------------------------------------------------------------- errors and signals


def test_error_broadcast_reports_exception_type_message_and_level() -> None:
    gen = failed(
        "Key limit exceeded (monthly limit). Manage it using https://openrouter.ai/settings/keys"
    )
    assert gen.error is not None
    assert gen.error.type == "OpenRouterError"
    assert gen.error.level == "ERROR"
    assert gen.error.message.startswith("Key limit exceeded")
    assert gen.cost is None
    assert gen.signals == (GateSignal(Gate.SPEND_CAP, Outcome.FAIL, True, gen.signals[0].reason),)


def test_span_level_error_alone_marks_a_failure() -> None:
    (gen,) = extract_generations([span(attributes={"span.level": "ERROR"})])
    assert gen.error is not None
    assert gen.error.message == "error reported without a message"
    assert [(s.gate, s.attributable) for s in gen.signals] == [(Gate.PROVIDER_ERROR, False)]


@pytest.mark.parametrize(
    ("message", "gate", "attributable"),
    [
        ("Request blocked: prompt injection patterns detected", Gate.PROMPT_INJECTION, True),
        ("Request blocked by content filter: [EMAIL]", Gate.SENSITIVE_INFO, True),
        ("Request blocked by content filter: [CREDIT_CARD]", Gate.SENSITIVE_INFO, True),
        ("Key limit exceeded (total limit).", Gate.SPEND_CAP, True),
        ("Your input was flagged for moderation", Gate.GUARDRAIL_BLOCK, True),
        ("Request blocked by guardrail policy", Gate.GUARDRAIL_BLOCK, True),
        (
            "Workspace monthly budget of $500.00 exceeded. Contact your org admin.",
            Gate.PROVIDER_ERROR,
            False,
        ),
        ("Rate limit exceeded: free-models-per-min", Gate.PROVIDER_ERROR, False),
        ("Provider returned error (502)", Gate.PROVIDER_ERROR, False),
        ("Client disconnected", Gate.PROVIDER_ERROR, False),
        ("This request requires more credits, or fewer max_tokens", Gate.PROVIDER_ERROR, False),
        ("Invalid API key", Gate.AUTH_ERROR, False),
        ("something nobody has seen before", Gate.PROVIDER_ERROR, False),
    ],
)
def test_error_text_maps_to_gate_and_attributable_flag(
    message: str, gate: Gate, attributable: bool
) -> None:
    signal = classify_error_text(message)
    assert (signal.gate, signal.outcome, signal.attributable) == (gate, Outcome.FAIL, attributable)
    assert signal.reason == message

    (from_span,) = failed(message).signals
    assert (from_span.gate, from_span.attributable) == (gate, attributable)


def test_redaction_reported_on_a_successful_call_is_a_warn() -> None:
    (gen,) = extract_generations(
        [span(attributes={"openrouter.guardrail.sensitive_info": ["redacted [EMAIL]"]})]
    )
    assert gen.error is None
    assert [(s.gate, s.outcome, s.attributable) for s in gen.signals] == [
        (Gate.SENSITIVE_INFO, Outcome.WARN, True)
    ]


def test_caller_supplied_metadata_and_prompt_text_never_produce_signals() -> None:
    (gen,) = extract_generations(
        [
            span(
                attributes={
                    "trace.metadata.guardrail": "Request blocked: prompt injection",
                    "gen_ai.prompt": "Request blocked by content filter: [EMAIL]",
                }
            )
        ]
    )
    assert gen.signals == ()


# --------------------------------------------------------------------------- attribution


@dataclass
class Registry:
    """An in-memory AttributionLookup, the shape the lead implements over the database."""

    behaviors: set[str] = field(default_factory=set)
    runs: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def by_run_id(self, run_id: str) -> str | None:
        self.calls.append(f"run:{run_id}")
        return self.runs.get(run_id)

    def by_name(self, name: str) -> bool:
        self.calls.append(f"name:{name}")
        return name in self.behaviors

    def by_key_name(self, key_name: str) -> str | None:
        self.calls.append(f"key:{key_name}")
        return self.keys.get(key_name)


def hinted(**hints: str | None) -> Generation:
    (gen,) = extract_generations([span()])
    return replace(gen, **hints)


REGISTRY = Registry(
    behaviors={"seo-audit-weekly", "writer"},
    runs={"run-1": "seo-audit-weekly", "run-2": "writer"},
    keys={"ledger/seo-audit-weekly": "seo-audit-weekly", "ledger/writer": "writer"},
)


def test_behavior_hint_wins_and_links_the_run() -> None:
    gen = hinted(behavior_hint="seo-audit-weekly", run_id_hint="run-1", user_id="writer")
    result = attribute(gen, REGISTRY)
    assert (result.behavior, result.rule, result.hint) == (
        "seo-audit-weekly",
        Rule.BEHAVIOR,
        "seo-audit-weekly",
    )
    assert result.run_id == "run-1"


def test_unknown_behavior_hint_falls_through_to_run_id() -> None:
    result = attribute(hinted(behavior_hint="deleted-behavior", run_id_hint="run-2"), REGISTRY)
    assert (result.behavior, result.rule, result.run_id) == ("writer", Rule.RUN_ID, "run-2")


def test_session_id_is_tried_as_a_run_id_before_user_id() -> None:
    result = attribute(hinted(session_id="run-1", user_id="writer"), REGISTRY)
    assert (result.behavior, result.rule, result.run_id) == (
        "seo-audit-weekly",
        Rule.SESSION_ID,
        "run-1",
    )


def test_user_id_is_tried_before_the_key_name() -> None:
    result = attribute(hinted(user_id="writer", key_name="ledger/writer"), REGISTRY)
    assert (result.behavior, result.rule) == ("writer", Rule.USER_ID)
    assert result.run_id is None


def test_key_name_alone_attributes() -> None:
    result = attribute(hinted(key_name="ledger/writer"), REGISTRY)
    assert (result.behavior, result.rule, result.hint) == ("writer", Rule.KEY_NAME, "ledger/writer")


def test_nothing_resolving_is_unattributed() -> None:
    result = attribute(
        hinted(behavior_hint="ghost", run_id_hint="run-9", key_name="other"), REGISTRY
    )
    assert result.behavior is None
    assert result.rule is Rule.UNATTRIBUTED


def test_a_key_belonging_to_another_behavior_is_reported_as_conflict() -> None:
    result = attribute(hinted(behavior_hint="writer", key_name="ledger/seo-audit-weekly"), REGISTRY)
    assert (result.behavior, result.key_conflict) == ("writer", "seo-audit-weekly")


def test_a_run_of_another_behavior_is_not_linked() -> None:
    result = attribute(hinted(behavior_hint="writer", run_id_hint="run-1"), REGISTRY)
    assert result.behavior == "writer"
    assert result.run_id is None


def test_lookups_stop_at_the_first_rule_that_resolves() -> None:
    registry = Registry(behaviors={"writer"})
    attribute(hinted(behavior_hint="writer", run_id_hint="run-7", session_id="s"), registry)
    assert registry.calls[0] == "name:writer"
    assert "run:s" in registry.calls  # only to link the run, after the decision
    assert all(not call.startswith("key:") for call in registry.calls)  # no key name hinted


def test_fixture_attributes_by_behavior_hint() -> None:
    spans = decode_request(_broadcast(), "application/json", None, Limits())
    (gen,) = extract_generations(spans)
    registry = Registry(
        behaviors={"seo-audit-weekly"},
        runs={"run-01JD8Z6Q3V4J2K7M9N0P1R2S3T": "seo-audit-weekly"},
        keys={"ledger/seo-audit-weekly": "seo-audit-weekly"},
    )
    result = attribute(gen, registry)
    assert (result.behavior, result.rule) == ("seo-audit-weekly", Rule.BEHAVIOR)
    assert result.run_id == "run-01JD8Z6Q3V4J2K7M9N0P1R2S3T"
    assert result.key_conflict is None
