"""Deterministic answers: token estimates, the generated words for a prompt, and JSON answers
(an instance of the requested schema) for calls that ask for JSON. Pure."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from ledger.sim.openrouter.config import JSON

# fmt: off
_WORDS = (
    "audit", "crawl", "index", "canonical", "sitemap", "meta", "description", "heading", "title",
    "link", "anchor", "redirect", "schema", "snippet", "latency", "render", "mobile", "content",
    "keyword", "intent", "page", "section", "draft", "outline", "publish", "review", "summary",
    "finding", "issue", "priority", "fix", "check", "score", "image", "alt", "robots",
)
# fmt: on


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
