"""The call's text in a stored broadcast span is masked; the rest of the span is left alone."""

from __future__ import annotations

from typing import Any

from ledger.ingest.content import is_content_key, mask_span_content

KEY = "sk-or-v1-" + "c0ffee42" * 8
MASKED_KEY = "<openrouter_key: sk-or-v1-…(73 chars)>"


def span(attributes: dict[str, Any], events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": "LLM Generation", "attributes": attributes, "events": events or []}


def test_the_completion_and_prompt_are_masked_and_nothing_else() -> None:
    data = span(
        {
            "gen_ai.completion": f'{{"completion": "use {KEY}"}}',
            "gen_ai.prompt": "mail jane@example.com",
            "user.id": "alpha",
            "trace.metadata.note": f"not text of the call: {KEY}",
        }
    )
    masked = mask_span_content(data)
    assert masked["attributes"] == {
        "gen_ai.completion": f'{{"completion": "use {MASKED_KEY}"}}',
        "gen_ai.prompt": "mail <email: j***@***.com>",
        "user.id": "alpha",
        "trace.metadata.note": f"not text of the call: {KEY}",
    }
    assert data["attributes"]["gen_ai.completion"] == f'{{"completion": "use {KEY}"}}'


def test_a_span_without_findings_comes_back_as_is() -> None:
    data = span({"gen_ai.completion": "all good", "gen_ai.usage.input_tokens": 3})
    assert mask_span_content(data) is data


def test_nested_messages_and_gen_ai_events_are_masked() -> None:
    data = span(
        {"gen_ai.input.messages": [{"role": "user", "content": f"key {KEY}"}]},
        [
            {"name": "gen_ai.choice", "time_unix_nano": 1, "attributes": {"message": KEY}},
            {"name": "exception", "time_unix_nano": 2, "attributes": {"exception.type": "X"}},
        ],
    )
    masked = mask_span_content(data)
    assert masked["attributes"]["gen_ai.input.messages"] == [
        {"role": "user", "content": f"key {MASKED_KEY}"}
    ]
    assert masked["events"][0]["attributes"] == {"message": MASKED_KEY}
    assert masked["events"][1] is data["events"][1]


def test_a_span_an_earlier_version_stored_as_it_came_is_masked_too() -> None:
    data = {
        "otlp": {
            "traceId": "0" * 32,
            "attributes": [
                {"key": "gen_ai.completion", "value": {"stringValue": KEY}},
                {"key": "user.id", "value": {"stringValue": "alpha"}},
            ],
        }
    }
    masked = mask_span_content(data)
    assert masked["otlp"]["attributes"] == [
        {"key": "gen_ai.completion", "value": {"stringValue": MASKED_KEY}},
        {"key": "user.id", "value": {"stringValue": "alpha"}},
    ]


def test_content_keys_cover_the_conventions_spellings() -> None:
    assert all(
        is_content_key(key)
        for key in (
            "gen_ai.prompt",
            "gen_ai.completion",
            "gen_ai.prompt.0.content",
            "gen_ai.output.messages",
            "input.value",
            "llm.output_messages.0.message.content",
        )
    )
    assert not any(is_content_key(k) for k in ("gen_ai.usage.input_tokens", "user.id"))
