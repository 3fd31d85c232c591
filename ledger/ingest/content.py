"""The call's own text in a broadcast span (prompt, completion, messages), masked before it is
stored: every key, token or piece of personal data the sensitive-info detector finds in it is
replaced by its masked preview, as the runner does with a run's output.

The processor applies it to each span's stored ``data`` (``writer.span_data``'s JSON form, whose
strings are the attribute strings), never the receiver: detection costs far more than storing.
"""

from __future__ import annotations

from typing import Any, Final

from ledger.sensitive import mask_sensitive

__all__ = ["is_content_key", "mask_span_content"]

# Attributes that carry the prompt or the completion: OpenRouter's broadcast sends
# ``gen_ai.prompt`` and ``gen_ai.completion`` (a JSON text each); the other spellings are the
# OpenTelemetry GenAI conventions (old indexed ``gen_ai.prompt.0.content``, new
# ``gen_ai.input.messages``) and OpenInference's (``input.value``, ``llm.input_messages.…``).
_CONTENT_KEYS: Final = frozenset(
    {
        "gen_ai.prompt",
        "gen_ai.completion",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "input.value",
        "output.value",
    }
)
_CONTENT_PREFIXES: Final = (
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "llm.input_messages.",
    "llm.output_messages.",
    "llm.prompts.",
)
# Events whose attributes are all text of the call (GenAI conventions: ``gen_ai.user.message``,
# ``gen_ai.choice``, ``gen_ai.content.prompt``, …).
_CONTENT_EVENT_PREFIX: Final = "gen_ai."


def is_content_key(key: str) -> bool:
    """Whether an attribute named ``key`` carries the prompt or completion text."""
    return key in _CONTENT_KEYS or key.startswith(_CONTENT_PREFIXES)


def mask_span_content(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a span as ``writer.span_data`` stores it) with the sensitive values in its
    content attributes masked. Returns ``data`` itself when nothing was found (the common case:
    no copy), else a copy; never changes ``data``."""
    if "otlp" in data:  # a span an earlier version stored as it came (``writer.span_from_data``)
        return _mask_otlp_span(data)
    masked = dict(data)
    attributes = data.get("attributes")
    if isinstance(attributes, dict):
        masked["attributes"] = _mask_attributes(attributes, all_keys=False)
    events = data.get("events")
    if isinstance(events, list):
        masked["events"] = _same_or_new(events, [_mask_event(event) for event in events])
    same = all(masked[key] is data[key] for key in ("attributes", "events") if key in data)
    return data if same else masked


def _mask_event(event: Any) -> Any:
    if not isinstance(event, dict) or not isinstance(event.get("attributes"), dict):
        return event  # not as ``span_data`` writes it: reading it back will say so
    all_keys = str(event.get("name", "")).startswith(_CONTENT_EVENT_PREFIX)
    attributes = _mask_attributes(event["attributes"], all_keys=all_keys)
    return event if attributes is event["attributes"] else {**event, "attributes": attributes}


def _mask_otlp_span(data: dict[str, Any]) -> dict[str, Any]:
    span = data["otlp"]
    if not isinstance(span, dict):
        return data  # reading it back will say what is wrong
    attributes = [
        {**kv, "value": _mask_value(kv.get("value"))}
        if isinstance(kv, dict) and is_content_key(str(kv.get("key")))
        else kv
        for kv in span.get("attributes") or []
    ]
    return {**data, "otlp": {**span, "attributes": attributes}}


def _mask_attributes(attributes: dict[str, Any], *, all_keys: bool) -> dict[str, Any]:
    masked: dict[str, Any] | None = None
    for key, value in attributes.items():
        if not (all_keys or is_content_key(key)):
            continue
        clean = _mask_value(value)
        if clean is not value:
            if masked is None:
                masked = dict(attributes)
            masked[key] = clean
    return attributes if masked is None else masked


def _mask_value(value: Any) -> Any:
    """``value`` with its strings masked (lists and objects walked); itself if nothing was."""
    if isinstance(value, str):
        text, findings = mask_sensitive(value)
        return text if findings else value
    if isinstance(value, list):
        return _same_or_new(value, [_mask_value(item) for item in value])
    if isinstance(value, dict):
        pairs = {key: _mask_value(item) for key, item in value.items()}
        return pairs if any(pairs[k] is not value[k] for k in value) else value
    return value


def _same_or_new(old: list[Any], new: list[Any]) -> list[Any]:
    """``old`` when ``new`` holds the very same items, else ``new``."""
    return old if all(a is b for a, b in zip(old, new, strict=True)) else new
