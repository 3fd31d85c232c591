"""HTTP outcome → gate: one row per wire case in fixtures/openrouter/README.md, plus properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import OpenRouterError
from ledger.gates import ATTRIBUTABLE, Gate, Outcome
from ledger.http import parse_retry_after
from ledger.runner.call_errors import (
    Classification,
    classify_200,
    classify_deadline,
    classify_response,
    classify_transport_error,
    to_error,
)

NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)
PLANTED_KEY = "sk-or-v1-" + "0123456789abcdef" * 4


def err(code: int, message: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return {"error": error}


CREDITS_402 = err(
    402,
    "This request requires more credits, or fewer max_tokens. You requested up to 4096 "
    "tokens, but can only afford 1000. To increase, visit https://openrouter.ai/settings/credits "
    "and add more credits",
)
KEY_LIMIT_MONTHLY = {
    "error": {
        "message": "Key limit exceeded (monthly limit). Manage it using "
        "https://openrouter.ai/settings/keys",
        "code": 403,
    }
}
WORKSPACE_403 = err(403, "Workspace monthly budget of $500.00 exceeded. Contact your org admin.")


def content_filter(label: str) -> dict[str, Any]:
    return err(403, f"Request blocked by content filter: [{label}]")


# (id, status, body, headers, key_has_credit, gate, outcome, reason, permanent, fallback, pause)
WIRE_CASES: list[tuple[Any, ...]] = [
    ("402 key out of credit", 402, CREDITS_402, {}, False,
     Gate.SPEND_CAP, Outcome.FAIL, "key_credit_exhausted", True, False, False),
    ("402 key has credit", 402, CREDITS_402, {}, True,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "insufficient_credits", True, True, False),
    ("402 key unknown", 402, CREDITS_402, {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "payment_unverified", True, False, False),
    ("403 key limit monthly", 403, KEY_LIMIT_MONTHLY, {}, None,
     Gate.SPEND_CAP, Outcome.FAIL, "key_limit", True, False, False),
    ("403 key limit total", 403,
     err(403, "Key limit exceeded (total limit). Manage it using https://openrouter.ai/settings/keys"),
     {}, True, Gate.SPEND_CAP, Outcome.FAIL, "key_limit", True, False, False),
    ("403 key limit daily", 403,
     err(403, "Key limit exceeded (daily limit). Manage it using https://openrouter.ai/settings/keys"),
     {}, None, Gate.SPEND_CAP, Outcome.FAIL, "key_limit", True, False, False),
    ("403 workspace budget", 403, WORKSPACE_403, {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "workspace_budget", True, False, False),
    ("402 workspace budget", 402,
     err(402, "Workspace monthly budget of $500.00 exceeded. Contact your org admin."), {}, False,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "workspace_budget", True, False, False),
    ("403 prompt injection", 403,
     err(403, "Request blocked: prompt injection patterns detected",
         {"patterns": ["ignore previous instructions"]}),
     {}, None, Gate.PROMPT_INJECTION, Outcome.FAIL, "prompt_injection", True, False, False),
    ("403 content filter EMAIL", 403, content_filter("EMAIL"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter PHONE", 403, content_filter("PHONE"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter SSN", 403, content_filter("SSN"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter CREDIT-CARD", 403, content_filter("CREDIT-CARD"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter IP-ADDRESS", 403, content_filter("IP-ADDRESS"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter PERSON-NAME", 403, content_filter("PERSON-NAME"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter ADDRESS", 403, content_filter("ADDRESS"), {}, None,
     Gate.SENSITIVE_INFO, Outcome.FAIL, "sensitive_info", True, False, False),
    ("403 content filter custom label", 403, content_filter("COMPETITOR-NAMES"), {}, None,
     Gate.GUARDRAIL_BLOCK, Outcome.FAIL, "guardrail", True, False, False),
    ("403 moderation flag", 403,
     err(403, "openai/gpt-4o requires moderation on OpenAI. Your input was flagged for "
         "\"harassment\".",
         {"reasons": ["harassment"], "flagged_input": "you are...", "provider_name": "OpenAI",
          "model_slug": "openai/gpt-4o"}),
     {}, None, Gate.GUARDRAIL_BLOCK, Outcome.FAIL, "guardrail", True, False, False),
    ("403 unrecognised", 403, err(403, "Forbidden"), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "forbidden", True, False, False),
    ("401 invalid key", 401, err(401, "No auth credentials found"), {}, None,
     Gate.AUTH_ERROR, Outcome.FAIL, "auth", True, False, True),
    ("404 unknown model", 404, err(404, "No endpoints found for acme/imaginary-model."), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "unknown_model", True, False, False),
    ("408 timeout", 408, err(408, "Request timed out"), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "request_timeout", False, True, False),
    ("413 too large", 413, err(413, "Request entity too large"), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "payload_too_large", True, False, False),
    ("429 rate limited", 429,
     err(429, "Rate limit exceeded", {"error_type": "rate_limit_exceeded"}),
     {"Retry-After": "7"}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "rate_limited", False, True, False),
    ("500 upstream", 500, err(500, "Internal Server Error"), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "upstream_error", False, True, False),
    ("502 upstream", 502,
     err(502, "Provider returned error", {"error_type": "provider_unavailable"}), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "upstream_error", False, True, False),
    ("503 overloaded", 503,
     err(503, "No instances available", {"error_type": "provider_overloaded"}),
     {"Retry-After": "30"}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "upstream_error", False, True, False),
    ("524 upstream timeout", 524, err(524, "Provider timed out", {"error_type": "timeout"}), {},
     None, Gate.PROVIDER_ERROR, Outcome.FAIL, "request_timeout", False, True, False),
    ("529 overloaded", 529, err(529, "Provider overloaded"), {}, None,
     Gate.PROVIDER_ERROR, Outcome.FAIL, "upstream_error", False, True, False),
    ("400 bad request", 400, err(400, "max_completion_tokens must be a positive integer"), {},
     None, Gate.PROVIDER_ERROR, Outcome.FAIL, "bad_request", True, False, False),
    ("400 context length", 400,
     err(400, "This endpoint's maximum context length is 8192 tokens.",
         {"error_type": "context_length_exceeded"}),
     {}, None, Gate.PROVIDER_ERROR, Outcome.FAIL, "bad_request", True, False, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "headers", "key_has_credit", "gate", "outcome", "reason", "permanent",
     "fallback", "pause"),
    [pytest.param(*row[1:], id=row[0]) for row in WIRE_CASES],
)  # fmt: skip
def test_wire_case_classifies_per_design_table(
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    key_has_credit: bool | None,
    gate: Gate,
    outcome: Outcome,
    reason: str,
    permanent: bool,
    fallback: bool,
    pause: bool,
) -> None:
    c = classify_response(status, body, headers, key_has_credit=key_has_credit, now=NOW)
    assert (c.gate, c.outcome, c.reason) == (gate, outcome, reason)
    assert c.permanent is permanent
    assert c.retryable is not permanent
    assert c.fallback_eligible is fallback
    assert c.pause_behavior is pause
    assert c.attributable is ATTRIBUTABLE[gate]
    assert c.status_code == status
    assert c.evidence["status"] == status
    assert c.evidence["message"] == body["error"]["message"]
    assert c.evidence["reason"] == reason


def test_same_cases_classify_identically_from_raw_bytes() -> None:
    for _, status, body, headers, key_has_credit, *_ in WIRE_CASES:
        from_dict = classify_response(status, body, headers, key_has_credit=key_has_credit)
        raw = json.dumps(body).encode()
        from_bytes = classify_response(status, raw, headers, key_has_credit=key_has_credit)
        assert from_bytes == from_dict


def test_402_without_key_balance_asks_for_a_key_check_and_never_falls_back() -> None:
    c = classify_response(402, CREDITS_402, {})
    assert c.needs_key_check
    assert not c.attributable
    assert not c.fallback_eligible
    again = classify_response(402, CREDITS_402, {}, key_has_credit=False)
    assert not again.needs_key_check
    assert again.gate is Gate.SPEND_CAP
    assert again.evidence["key_has_credit"] is False


def test_402_with_key_limit_source_is_spend_cap_without_a_key_check() -> None:
    body = err(402, "Insufficient credits", {"limit_source": "openrouter_key_limit"})
    c = classify_response(402, body, {})
    assert c.gate is Gate.SPEND_CAP
    assert not c.needs_key_check


def test_key_limit_evidence_names_the_limit_window() -> None:
    c = classify_response(403, KEY_LIMIT_MONTHLY, {})
    assert c.evidence["limit_window"] == "monthly"


def test_workspace_budget_evidence_says_it_is_the_workspace_not_the_key() -> None:
    c = classify_response(403, WORKSPACE_403, {})
    assert "workspace budget" in c.evidence["detail"]
    assert not c.attributable


def test_content_filter_evidence_lists_the_labels() -> None:
    c = classify_response(403, err(403, "Request blocked by content filter: [EMAIL, PHONE]"), {})
    assert c.gate is Gate.SENSITIVE_INFO
    assert c.evidence["labels"] == ["EMAIL", "PHONE"]


def test_prompt_injection_evidence_keeps_the_patterns() -> None:
    body = err(
        403,
        "Request blocked: prompt injection patterns detected",
        {"patterns": ["ignore previous instructions"]},
    )
    c = classify_response(403, body, {})
    assert c.evidence["patterns"] == ["ignore previous instructions"]
    assert c.evidence["metadata"] == {"patterns": ["ignore previous instructions"]}


def test_error_type_decides_before_the_status() -> None:
    body = err(400, "Slow down", {"error_type": "rate_limit_exceeded"})
    c = classify_response(400, body, {})
    assert c.reason == "rate_limited"
    assert c.evidence["error_type"] == "rate_limit_exceeded"


def test_error_type_authentication_inside_a_403_pauses() -> None:
    c = classify_response(403, err(403, "Key is disabled", {"error_type": "authentication"}), {})
    assert c.gate is Gate.AUTH_ERROR
    assert c.pause_behavior


def test_401_pauses_whatever_the_error_type_says() -> None:
    c = classify_response(401, err(401, "nope", {"error_type": "rate_limit_exceeded"}), {})
    assert c.gate is Gate.AUTH_ERROR
    assert c.pause_behavior


def test_unknown_error_type_falls_back_to_the_status() -> None:
    c = classify_response(503, err(503, "busy", {"error_type": "brand_new_kind"}), {})
    assert c.reason == "upstream_error"


def test_html_502_from_a_proxy_is_an_upstream_error_with_its_text_as_message() -> None:
    c = classify_response(502, b"<html><body>502 Bad Gateway</body></html>", {})
    assert c.reason == "upstream_error"
    assert c.evidence["message"] == "<html><body>502 Bad Gateway</body></html>"


def test_empty_body_is_classified_by_status_alone() -> None:
    assert classify_response(429, None, {}).reason == "rate_limited"
    assert classify_response(403, b"", {}).reason == "forbidden"


def test_2xx_is_refused() -> None:
    with pytest.raises(ValueError, match="classify_200"):
        classify_response(200, {}, {})


def test_retry_after_seconds_is_parsed_case_insensitively() -> None:
    c = classify_response(429, None, {"retry-after": "12"})
    assert c.retry_after == 12.0
    assert c.evidence["retry_after"] == 12.0


def test_retry_after_http_date_is_measured_from_the_injected_now() -> None:
    c = classify_response(503, None, {"Retry-After": "Mon, 10 Mar 2025 12:01:30 GMT"}, now=NOW)
    assert c.retry_after == 90.0


def test_retry_after_http_date_without_now_is_ignored() -> None:
    assert (
        classify_response(503, None, {"Retry-After": "Mon, 10 Mar 2025 12:01:30 GMT"}).retry_after
        is None
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("Mon, 10 Mar 2025 11:00:00 GMT", 0.0),  # in the past: do not wait
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_generation_id_is_kept_in_evidence() -> None:
    body = {"id": "gen-123", **err(502, "Provider returned error")}
    assert classify_response(502, body, {}).evidence["generation_id"] == "gen-123"


def test_planted_key_in_an_error_never_reaches_evidence() -> None:
    body = err(
        401,
        f"Invalid key {PLANTED_KEY}",
        {"raw": f"Authorization: Bearer {PLANTED_KEY}", "nested": [{"k": PLANTED_KEY}]},
    )
    c = classify_response(401, body, {})
    dumped = json.dumps(c.evidence, ensure_ascii=False)
    assert PLANTED_KEY not in dumped
    assert "sk-or-v1-…" in dumped


def test_long_provider_messages_are_clipped_in_evidence() -> None:
    c = classify_response(500, err(500, "x" * 5000), {})
    assert len(c.evidence["message"]) == 500


# --- errors inside a 200 ----------------------------------------------------------------------


def test_good_200_has_no_error() -> None:
    body = {
        "id": "gen-1",
        "choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    }
    assert classify_200(body) is None


def test_200_with_errored_choice_is_an_upstream_provider_error() -> None:
    body = {
        "id": "gen-42",
        "choices": [
            {
                "index": 0,
                "finish_reason": "error",
                "error": {
                    "code": 502,
                    "message": "Upstream error from Anthropic: the stream was interrupted",
                    "metadata": {"error_type": "provider_error", "provider_name": "Anthropic"},
                },
                "message": {"role": "assistant", "content": ""},
            }
        ],
    }
    c = classify_200(body)
    assert c is not None
    assert (c.gate, c.reason, c.attributable) == (Gate.PROVIDER_ERROR, "upstream_error", False)
    assert c.evidence["status"] == 200
    assert c.evidence["code"] == 502
    assert c.evidence["generation_id"] == "gen-42"


def test_200_with_errored_choice_but_no_error_object_defaults_to_provider_error() -> None:
    c = classify_200({"choices": [{"finish_reason": "error"}]})
    assert c is not None
    assert c.gate is Gate.PROVIDER_ERROR
    assert c.retryable


def test_streamed_chunk_with_top_level_guardrail_error_is_classified_by_its_code() -> None:
    chunk = {
        "id": "gen-9",
        "error": {"code": 403, "message": "Request blocked by content filter: [SSN]"},
        "choices": [{"finish_reason": "error", "delta": {}}],
    }
    c = classify_200(chunk)
    assert c is not None
    assert c.gate is Gate.SENSITIVE_INFO
    assert c.attributable


# --- deadline and transport -------------------------------------------------------------------


def test_deadline_is_an_attributable_timeout_warning() -> None:
    c = classify_deadline(timeout_class="reasoning", seconds=120.0)
    assert (c.gate, c.outcome, c.attributable) == (Gate.TIMEOUT, Outcome.WARN, True)
    assert not c.fallback_eligible
    assert c.evidence["timeout_class"] == "reasoning"


def test_transport_error_is_a_retryable_provider_error_eligible_for_fallback() -> None:
    c = classify_transport_error("ConnectError", f"connect to 10.0.0.1 failed {PLANTED_KEY}")
    assert (c.gate, c.outcome, c.attributable) == (Gate.PROVIDER_ERROR, Outcome.FAIL, False)
    assert c.retryable
    assert c.fallback_eligible
    assert c.evidence["transport_error"] == "ConnectError"
    assert PLANTED_KEY not in c.evidence["message"]


# --- to_error / to_gate_result ----------------------------------------------------------------


def test_to_error_carries_the_decision() -> None:
    c = classify_response(429, None, {"Retry-After": "5"})
    error = to_error(c, "rate limited by OpenRouter for behavior seo-audit")
    assert isinstance(error, OpenRouterError)
    assert str(error) == "rate limited by OpenRouter for behavior seo-audit"
    assert (error.gate, error.attributable, error.permanent) == ("provider_error", False, False)
    assert (error.retry_after, error.status_code) == (5.0, 429)
    assert error.evidence["reason"] == "rate_limited"


def test_to_error_defaults_to_the_explanation() -> None:
    error = to_error(classify_response(403, KEY_LIMIT_MONTHLY, {}))
    assert str(error) == "the behavior's key limit is reached"
    assert error.gate == "spend_cap"
    assert error.attributable


def test_to_gate_result_copies_gate_outcome_and_evidence() -> None:
    c = classify_response(403, WORKSPACE_403, {})
    result = c.to_gate_result(run_id="run-1", observed_at=NOW)
    assert (result.gate, result.outcome, result.attributable) == (
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        False,
    )
    assert result.run_id == "run-1"
    assert result.evidence == dict(c.evidence)


# --- properties -------------------------------------------------------------------------------

_MESSAGES = [
    "Key limit exceeded (monthly limit). Manage it using https://openrouter.ai/settings/keys",
    "Workspace monthly budget of $500.00 exceeded. Contact your org admin.",
    "Request blocked: prompt injection patterns detected",
    "Request blocked by content filter: [EMAIL]",
    "Request blocked by content filter: [CUSTOM]",
    "Your input was flagged",
    "This request requires more credits, or fewer max_tokens.",
    "Key is disabled",
    "Provider returned error",
    "",
]
_ERROR_TYPES = [
    "authentication", "permission_denied", "payment_required", "rate_limit_exceeded",
    "provider_overloaded", "provider_unavailable", "context_length_exceeded", "not_found",
    "content_policy_violation", "refusal", "server", "timeout", "unmapped", "brand_new_kind",
]  # fmt: skip


@st.composite
def error_bodies(draw: st.DrawFn) -> Any:
    message = draw(st.sampled_from(_MESSAGES) | st.text(max_size=80))
    metadata: dict[str, Any] = {}
    if draw(st.booleans()):
        metadata["error_type"] = draw(st.sampled_from(_ERROR_TYPES))
    if draw(st.booleans()):
        metadata["limit_source"] = draw(st.sampled_from(["openrouter_key_limit", "other"]))
    if draw(st.booleans()):
        metadata["reasons"] = ["hate"]
    body = {"error": {"code": draw(st.integers(300, 599)), "message": message}}
    if metadata:
        body["error"]["metadata"] = metadata
    shape = draw(st.sampled_from(["dict", "bytes", "garbage", "none"]))
    if shape == "bytes":
        return json.dumps(body).encode()
    if shape == "garbage":
        return draw(st.binary(max_size=60))
    return None if shape == "none" else body


error_statuses = st.integers(300, 599)
retry_after_values = st.sampled_from(
    ["", "3", "2.5", "Mon, 10 Mar 2025 12:00:30 GMT", "tomorrow", "-1", "99999999999"]
)
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "X-Other"]), retry_after_values
)


def _classify_any(
    status: int, body: Any, hdrs: dict[str, str], credit: bool | None
) -> Classification:
    return classify_response(status, body, hdrs, key_has_credit=credit, now=NOW)


@settings(max_examples=400)
@given(error_statuses, error_bodies(), headers, st.none() | st.booleans())
def test_no_classification_is_both_fallback_eligible_and_attributable(
    status: int, body: Any, hdrs: dict[str, str], credit: bool | None
) -> None:
    c = _classify_any(status, body, hdrs, credit)
    assert not (c.fallback_eligible and c.attributable)
    assert c.attributable is ATTRIBUTABLE[c.gate]


@settings(max_examples=200)
@given(error_bodies(), headers, st.none() | st.booleans())
def test_401_always_pauses_as_auth_error(
    body: Any, hdrs: dict[str, str], credit: bool | None
) -> None:
    c = _classify_any(401, body, hdrs, credit)
    assert c.gate is Gate.AUTH_ERROR
    assert c.pause_behavior
    assert not c.fallback_eligible


@settings(max_examples=400)
@given(error_statuses, error_bodies(), headers, st.none() | st.booleans())
def test_only_auth_errors_pause_and_only_provider_errors_retry(
    status: int, body: Any, hdrs: dict[str, str], credit: bool | None
) -> None:
    c = _classify_any(status, body, hdrs, credit)
    assert c.pause_behavior is (c.gate is Gate.AUTH_ERROR)
    if c.retryable or c.fallback_eligible:
        assert c.gate is Gate.PROVIDER_ERROR
    if c.gate in (Gate.SPEND_CAP, Gate.GUARDRAIL_BLOCK, Gate.SENSITIVE_INFO, Gate.PROMPT_INJECTION):
        assert c.permanent and not c.fallback_eligible
    if c.needs_key_check:
        assert not c.attributable and not c.fallback_eligible


@settings(max_examples=300)
@given(error_statuses, error_bodies(), headers, st.none() | st.booleans())
def test_evidence_is_json_and_retry_after_never_negative(
    status: int, body: Any, hdrs: dict[str, str], credit: bool | None
) -> None:
    c = _classify_any(status, body, hdrs, credit)
    json.dumps(c.evidence)
    assert c.retry_after is None or c.retry_after >= 0
    assert c.evidence["status"] == status


@given(
    st.sampled_from([500, 502, 503, 524, 529, 408, 429]),
    st.sampled_from(_MESSAGES) | st.text(max_size=80),
)
def test_server_side_trouble_without_an_error_type_is_retryable(status: int, message: str) -> None:
    c = classify_response(status, err(status, message), {})
    assert c.gate is Gate.PROVIDER_ERROR
    assert c.retryable
    assert c.fallback_eligible


@given(st.sampled_from([402, 403]), st.none() | st.booleans())
def test_spend_cap_is_never_fallback_eligible(status: int, credit: bool | None) -> None:
    for body in (KEY_LIMIT_MONTHLY, CREDITS_402):
        c = classify_response(status, body, {}, key_has_credit=credit)
        if c.gate is Gate.SPEND_CAP:
            assert not c.fallback_eligible
            assert c.attributable
