"""Output checks and the sensitive-info detector."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.gates import Gate, GateResult, Outcome
from ledger.runner.checks import CheckSpec, run_checks
from ledger.sensitive import (
    KIND_LABELS,
    SECRET_KINDS,
    Finding,
    detect_sensitive,
    looks_like_secret,
    redact_sensitive,
)

OPENROUTER_KEY = "sk-or-v1-" + "d3adb33f" * 8
ITEMS_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
                "required": ["name", "price"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "items"],
}


def output_checks(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if r.gate is Gate.OUTPUT_CHECK]


def sensitive(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if r.gate is Gate.SENSITIVE_INFO]


# --- CheckSpec ----------------------------------------------------------------------------------


def test_spec_with_invalid_regex_names_the_field_and_index() -> None:
    with pytest.raises(ValueError, match=r"must_not_match\[1\]: invalid regular expression"):
        CheckSpec(must_not_match=("ok", "([unclosed"))


def test_spec_with_invalid_json_schema_says_where() -> None:
    with pytest.raises(ValueError, match=r"json_schema: invalid JSON Schema at \$\.properties\.a"):
        CheckSpec(json_schema={"properties": {"a": {"type": "strng"}}})


def test_spec_rejects_non_positive_max_chars() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        CheckSpec(max_chars=0)


def test_spec_defaults_warn_on_failure_and_flag_sensitive_info() -> None:
    spec = CheckSpec()
    assert (spec.outcome_on_failure, spec.sensitive_info) == ("warn", "warn")


# --- run_checks ---------------------------------------------------------------------------------


def test_clean_output_gives_one_pass_per_gate() -> None:
    spec = CheckSpec(json_schema=ITEMS_SCHEMA, max_chars=500, must_match=(r'"title"',))
    output = json.dumps({"title": "Weekly", "items": [{"name": "a", "price": 1}]})
    results = run_checks(output, spec)
    assert [(r.gate, r.outcome) for r in results] == [
        (Gate.OUTPUT_CHECK, Outcome.PASS),
        (Gate.SENSITIVE_INFO, Outcome.PASS),
    ]
    assert results[0].evidence["checks"] == ["json_schema", "max_chars", "must_match[0]"]
    assert all(r.attributable for r in results)


def test_no_configured_checks_still_passes_output_check() -> None:
    results = run_checks("plain text", CheckSpec())
    assert output_checks(results)[0].outcome is Outcome.PASS
    assert output_checks(results)[0].evidence == {"checks": []}


def test_schema_violation_evidence_gives_the_json_path() -> None:
    output = json.dumps({"title": "T", "items": [{"name": "a", "price": 1}, {"name": "b"}]})
    [result] = output_checks(run_checks(output, CheckSpec(json_schema=ITEMS_SCHEMA)))
    assert result.outcome is Outcome.WARN
    assert result.evidence["check"] == "json_schema"
    assert result.evidence["errors"][0]["path"] == "$.items[1]"
    assert result.evidence["errors"][0]["keyword"] == "required"
    assert "'price' is a required property" in result.evidence["reason"]


def test_schema_errors_are_all_counted_and_listed_by_path() -> None:
    output = json.dumps({"title": 5, "items": [{"name": 1, "price": "x", "extra": True}]})
    [result] = output_checks(run_checks(output, CheckSpec(json_schema=ITEMS_SCHEMA)))
    paths = [e["path"] for e in result.evidence["errors"]]
    assert result.evidence["error_count"] == 4
    assert paths == ["$.items[0]", "$.items[0].name", "$.items[0].price", "$.title"]


def test_schema_error_message_masks_sensitive_values() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    output = json.dumps({"n": "jane.doe@example.com"})
    [result] = output_checks(run_checks(output, CheckSpec(json_schema=schema)))
    assert "jane.doe@example.com" not in json.dumps(result.evidence)


def test_schema_keys_needing_quotes_are_bracketed_in_the_path() -> None:
    schema = {"type": "object", "properties": {"a b": {"type": "string"}}}
    [result] = output_checks(run_checks('{"a b": 1}', CheckSpec(json_schema=schema)))
    assert result.evidence["errors"][0]["path"] == '$["a b"]'


def test_output_that_is_not_json_fails_the_schema_check_with_position() -> None:
    [result] = output_checks(run_checks("```json\n{}\n```", CheckSpec(json_schema=ITEMS_SCHEMA)))
    assert result.evidence["check"] == "json_schema"
    assert result.evidence["line"] == 1
    assert "not valid JSON" in result.evidence["reason"]


def test_too_long_output_fails_max_chars() -> None:
    [result] = output_checks(run_checks("x" * 11, CheckSpec(max_chars=10)))
    assert result.evidence == {
        "check": "max_chars",
        "reason": "output is 11 characters, over the limit of 10",
        "limit": 10,
        "actual": 11,
    }


def test_missing_required_pattern_fails_must_match() -> None:
    spec = CheckSpec(must_match=(r"^# ", r"(?i)summary"))
    [result] = output_checks(run_checks("# Title\nno recap", spec))
    assert result.evidence["check"] == "must_match[1]"
    assert result.evidence["pattern"] == r"(?i)summary"


def test_forbidden_pattern_fails_must_not_match_with_its_position() -> None:
    spec = CheckSpec(must_not_match=(r"lorem ipsum",))
    [result] = output_checks(run_checks("Intro. lorem ipsum dolor", spec))
    assert result.evidence["check"] == "must_not_match[0]"
    assert (result.evidence["start"], result.evidence["end"]) == (7, 18)
    assert result.evidence["match"] == "lorem ipsum"


def test_each_failed_check_is_its_own_result() -> None:
    spec = CheckSpec(max_chars=5, must_match=("needle",), must_not_match=("hay",))
    results = output_checks(run_checks("haystack", spec))
    assert [r.evidence["check"] for r in results] == [
        "max_chars",
        "must_match[0]",
        "must_not_match[0]",
    ]
    assert {r.outcome for r in results} == {Outcome.WARN}


def test_outcome_on_failure_fail_makes_failed_checks_fail() -> None:
    [result] = output_checks(
        run_checks("x" * 20, CheckSpec(max_chars=10, outcome_on_failure="fail"))
    )
    assert result.outcome is Outcome.FAIL
    assert result.attributable


def test_sensitive_output_warns_by_default_with_masked_evidence() -> None:
    output = f"Send questions to jane.doe@example.com; debug token {OPENROUTER_KEY}."
    [result] = sensitive(run_checks(output, CheckSpec()))
    assert result.outcome is Outcome.WARN
    assert result.attributable
    assert result.evidence["action"] == "flagged"
    assert result.evidence["kinds"] == ["email", "openrouter_key"]
    assert result.evidence["count"] == 2
    dumped = json.dumps(result.evidence, ensure_ascii=False)
    assert OPENROUTER_KEY not in dumped
    assert "jane.doe@example.com" not in dumped
    assert "sk-or-v1-…(73 chars)" in dumped


def test_sensitive_output_fails_when_the_behavior_blocks_it() -> None:
    [result] = sensitive(run_checks("call +44 20 7946 0958", CheckSpec(sensitive_info="block")))
    assert result.outcome is Outcome.FAIL
    assert result.evidence["action"] == "blocked"


def test_sensitive_evidence_lists_at_most_twenty_findings_but_counts_all() -> None:
    output = " ".join(f"user{i}@example.com" for i in range(30))
    [result] = sensitive(run_checks(output, CheckSpec()))
    assert result.evidence["count"] == 30
    assert len(result.evidence["findings"]) == 20


# --- detect_sensitive: what is found ------------------------------------------------------------


def found(kind: str, value: str, template: str = "see {} here") -> tuple[str, str, str]:
    return kind, template.format(value), value


FOUND = [
    found("email", "jane.doe+news@mail.example.co.uk", "reach {} today"),
    found("phone", "+44 20 7946 0958", "call {} now"),
    found("phone", "+1 (415) 555-2671"),
    found("phone", "(415) 555-2671", "call {}."),
    found("phone", "415-555-2671"),
    found("phone", "415.555.2671"),
    found("phone", "+49 30 901820"),
    found("credit_card", "4111 1111 1111 1111"),
    found("credit_card", "4111-1111-1111-1111"),
    found("credit_card", "378282246310005", "amex {}."),
    found("credit_card", "5555555555554444"),
    found("ssn", "123-45-6789", "ssn {} on file"),
    found("ip_address", "192.168.1.10", "host {}."),
    found("ip_address", "2001:db8::8a2e:370:7334"),
    found("ip_address", "::1"),
    found("ip_address", "::ffff:10.0.0.1"),
    found("openrouter_key", OPENROUTER_KEY, "key {}."),
    found("openai_key", "sk-proj-AbCdEf1234567890GhIjKlMn", "OPENAI={}"),
    found("openai_key", "sk-T3BlbkFJ0123456789abcdefABCDEF01234567"),
    found("anthropic_key", "sk-ant-api03-abcDEF1234567890abcdefghij"),
    found("notion_token", "secret_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789abc"),
    found("notion_token", "ntn_1234567890abcdefghijABCDEFGHIJ12345678"),
    found("slack_token", "xoxb-1234567890-0987654321-abcdefABCDEF"),
    found("slack_webhook", "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX"),
    found("github_token", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    found("github_token", "gho_abcdefghijklmnopqrstuvwxyz0123456789"),
    found("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    found("aws_access_key", "AKIAIOSFODNN7EXAMPLE", "aws {} key"),
    found("generic_secret", "Xk29vLq8Zp3mNw7Rt5Yb", 'password: "{}"'),
    found("generic_secret", "3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c", "api_key={}"),
    found(
        "generic_secret",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
        "Authorization: Bearer {}",
    ),
]


@pytest.mark.parametrize(
    ("kind", "text", "value"), FOUND, ids=[f"{k}:{v[:24]}" for k, _, v in FOUND]
)
def test_detector_finds_the_value_and_masks_it(kind: str, text: str, value: str) -> None:
    [finding] = detect_sensitive(text)
    assert finding.kind == kind
    assert text[finding.start : finding.end] == value
    assert value not in finding.preview
    assert len(finding.preview) < len(value) or kind in ("ssn", "ip_address")


NOT_FOUND = [
    "In 2023 we served 12345 users across 42 countries.",
    "epoch 1700000000 and millis 1700000000000",
    "order #4111111111111112 failed Luhn",
    "pi is 3.14159265358979323846",
    "ssn-like 000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000",
    "dates 2024-01-15 and 01/15/2024 and 15.01.2024",
    "version 1.2.3 and 999.1.1.1 is no address",
    "times 12:30:45 and std::vector and Vec::new and x :: Int",
    "mac 00:1a:2b:3c:4d:5e",
    "a task-1234567890abcdefghijklmnopqrstuvwxyz slug",
    "sk-learn and sk-some-long-kebab-case-identifier-words",
    "tokenizer_config_2024_version_abc and the secret sauce_recipe_for_2024_edition",
    "token count: 123456789012345678901234",
    "phone-ish 555-1234 and 123-456-7890 (area code starts with 1)",
    "score +2 and +10 points",
    "user@localhost is not a routable address",
]


@pytest.mark.parametrize("text", NOT_FOUND)
def test_detector_ignores_look_alikes(text: str) -> None:
    assert detect_sensitive(text) == []


def test_specific_key_kind_wins_over_generic_secret() -> None:
    [finding] = detect_sensitive(f"debug token {OPENROUTER_KEY}")
    assert finding.kind == "openrouter_key"


def test_us_phone_with_country_code_is_one_finding() -> None:
    [finding] = detect_sensitive("+1 415-555-2671")
    assert (finding.kind, finding.start, finding.end) == ("phone", 0, 15)


def test_findings_are_ordered_by_position() -> None:
    text = f"10.0.0.1 then jane@example.com then {OPENROUTER_KEY}"
    assert [f.kind for f in detect_sensitive(text)] == ["ip_address", "email", "openrouter_key"]


def test_card_preview_keeps_only_the_last_four() -> None:
    [finding] = detect_sensitive("4111 1111 1111 1111")
    assert finding.preview == "card …1111"


def test_every_kind_has_a_label_and_secret_kinds_are_labelled() -> None:
    assert KIND_LABELS.keys() >= SECRET_KINDS
    assert Finding("phone", 0, 1, "…").label == "phone number"


def test_redact_replaces_each_finding_with_its_preview() -> None:
    text = f"mail jane@example.com key {OPENROUTER_KEY} end"
    assert redact_sensitive(text) == (
        "mail <email: j***@***.com> key <openrouter_key: sk-or-v1-…(73 chars)> end"
    )
    assert redact_sensitive("nothing here") == "nothing here"


# --- detect_sensitive: properties ---------------------------------------------------------------


def _luhn_complete(partial: str) -> str:
    for check in "0123456789":
        digits = partial + check
        total = 0
        for index, char in enumerate(reversed(digits)):
            value = int(char) * (2 if index % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


@given(st.text(alphabet="0123456789", min_size=14, max_size=14))
def test_any_luhn_valid_visa_number_is_found_and_masked(body: str) -> None:
    number = _luhn_complete("4" + body)
    grouped = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    [finding] = detect_sensitive(f"paid with {grouped}.")
    assert finding.kind == "credit_card"
    assert number not in finding.preview and grouped not in finding.preview


@given(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_any_openrouter_key_is_found_and_never_shown(hex64: str) -> None:
    key = "sk-or-v1-" + hex64
    [finding] = detect_sensitive(f"Authorization: Bearer {key}\n")
    assert finding.kind == "openrouter_key"
    assert hex64[:8] not in finding.preview


@given(
    st.from_regex(r"[a-z][a-z0-9._]{0,20}", fullmatch=True),
    st.from_regex(r"[a-z][a-z0-9]{0,10}\.(com|org|io|co\.uk)", fullmatch=True),
)
def test_any_plain_email_is_found(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    findings = detect_sensitive(f"write to {address} please")
    assert [f.kind for f in findings] == ["email"]
    assert address not in findings[0].preview


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_findings_never_overlap_and_stay_in_bounds(text: str) -> None:
    findings = detect_sensitive(text)
    for finding in findings:
        assert 0 <= finding.start < finding.end <= len(text)
        assert finding.kind in KIND_LABELS
    for before, after in itertools.pairwise(findings):
        assert before.end <= after.start


@settings(max_examples=200)
@given(st.text(alphabet="0123456789 -+.()@:abcdefABCDEFsk_=x\n", max_size=400))
def test_detector_handles_symbol_soup(text: str) -> None:
    for finding in detect_sensitive(text):
        assert text[finding.start : finding.end] not in (finding.preview, "")


# --- linear time on adversarial input ----------------------------------------------------------

MEGABYTE = 1_000_000
ADVERSARIAL = {
    "letters": "a" * MEGABYTE,
    "digits": "1" * MEGABYTE,
    "spaced digits": "1 " * (MEGABYTE // 2),
    "local parts without a domain": "a." * (MEGABYTE // 2) + "@",
    "at signs and labels": "a@b." * (MEGABYTE // 4),
    "colons": "ffff:" * (MEGABYTE // 5),
    "phone prefixes": ("+1 " * 8 + "x") * (MEGABYTE // 25),
    "keywords without values": "key=" * (MEGABYTE // 4),
    "key prefix then junk": "sk-" + "a" * MEGABYTE,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_detector_completes_on_a_megabyte_of_adversarial_text(text: str) -> None:
    assert isinstance(detect_sensitive(text), list)


def test_detector_finds_everything_in_a_megabyte_of_mixed_text() -> None:
    line = "x 4111 1111 1111 1111 jane@example.com 10.0.0.1 "
    text = line * (MEGABYTE // len(line))
    findings = detect_sensitive(text)
    assert len(findings) == 3 * (MEGABYTE // len(line))


# --- looks_like_secret --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (OPENROUTER_KEY, "OpenRouter API key"),
        (f"  {OPENROUTER_KEY}\n", "OpenRouter API key"),
        (f"Bearer {OPENROUTER_KEY}", "OpenRouter API key"),
        ("sk-or-v1-abcdef0123456789abcd", "OpenRouter API key"),  # truncated, still a literal
        ("sk-ant-api03-abcDEF1234567890abcdefghij", "Anthropic API key"),
        ("sk-proj-AbCdEf1234567890GhIjKlMn", "OpenAI API key"),
        ("ntn_1234567890abcdefghijABCDEFGHIJ12345678", "Notion token"),
        ("xoxb-1234567890-0987654321-abcdefABCDEF", "Slack token"),
        ("https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX", "Slack webhook URL"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "GitHub token"),
        ("AKIAIOSFODNN7EXAMPLE", "AWS access key ID"),
        ("Xk29vLq8Zp3mNw7Rt5YbQ2wE", "secret token"),
        ("3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c", "secret token"),
    ],
)
def test_looks_like_secret_names_the_kind(value: str, kind: str) -> None:
    assert looks_like_secret(value) == kind


@pytest.mark.parametrize(
    "value",
    [
        "env:OPENROUTER_KEY_SEO_AUDIT",
        "file:/run/secrets/openrouter_api_key_2024",
        "anthropic/claude-3.5-sonnet-20241022",
        "claude-3-5-sonnet-20241022",
        "seo-audit-weekly-2024",
        "https://example.com/hooks/publish",
        "jane.doe@example.com",
        "",
    ],
)
def test_looks_like_secret_accepts_references_and_ordinary_values(value: str) -> None:
    assert looks_like_secret(value) is None


def test_looks_like_secret_flags_a_key_hidden_in_a_reference() -> None:
    assert looks_like_secret(f"env:{OPENROUTER_KEY}") == "OpenRouter API key"


def test_random_tokens_are_mostly_recognised() -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    tokens = ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(200)]
    flagged = sum(looks_like_secret(t) == "secret token" for t in tokens)
    assert flagged >= 195
