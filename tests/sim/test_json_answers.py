"""The simulator answers in JSON when the request's ``response_format`` asks for it, as
OpenRouter does (``json_object``, or ``json_schema`` with ``{name, schema, strict?}``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from ledger.sim.openrouter import (
    Preset,
    SimConfig,
    SimKey,
    json_answer,
    read_response_format,
    run_in_background,
    schema_instance,
)

KEY = "sk-or-v1-test-json-answers"
SEO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["fixes"],
    "properties": {
        "fixes": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "required": ["page", "problem", "fix"],
                "properties": {
                    "page": {"type": "string"},
                    "problem": {"type": "string"},
                    "fix": {"type": "string"},
                },
            },
        }
    },
}


@pytest.fixture
async def sim() -> AsyncIterator[httpx.AsyncClient]:
    config = SimConfig(
        presets={"seo-audit": Preset(model="anthropic/claude-haiku-4.5")},
        keys=[SimKey(key=KEY, name="seo-audit-weekly")],
        seed=5,
    )
    async with (
        run_in_background(config) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=5) as http,
    ):
        yield http


async def chat(http: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    body = {
        "model": "@preset/seo-audit",
        "messages": [{"role": "user", "content": "Audit https://example.com."}],
        **extra,
    }
    return await http.post(
        "/api/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body
    )


def content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


async def test_json_schema_response_format_answers_with_an_instance_of_the_schema(
    sim: httpx.AsyncClient,
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "seo-audit-weekly", "strict": False, "schema": SEO_SCHEMA},
    }

    answer = json.loads(content(await chat(sim, response_format=response_format)))

    Draft202012Validator(SEO_SCHEMA).validate(answer)
    assert answer["fixes"] and all(fix["page"] for fix in answer["fixes"])


async def test_json_object_response_format_answers_with_a_json_object(
    sim: httpx.AsyncClient,
) -> None:
    answer = json.loads(content(await chat(sim, response_format={"type": "json_object"})))

    assert isinstance(answer, dict) and answer["answer"]


async def test_text_response_format_and_none_answer_in_words(sim: httpx.AsyncClient) -> None:
    plain = content(await chat(sim))

    assert content(await chat(sim, response_format={"type": "text"})) == plain
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain)


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "xml"}, "response_format.type must be one of text, json_object, json_schema"),
        ("json", "response_format.type must be one of"),
        ({"type": "json_schema"}, "response_format.json_schema must be an object with a name"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
            "response_format.json_schema.schema must be an object",
        ),
    ],
)
async def test_malformed_response_format_is_refused_with_400_saying_what(
    sim: httpx.AsyncClient, response_format: Any, message: str
) -> None:
    response = await chat(sim, response_format=response_format)

    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def words() -> Iterator[str]:
    while True:
        yield from ("audit", "crawl", "index")


@pytest.mark.parametrize(
    "schema",
    [
        SEO_SCHEMA,
        {"type": "object", "required": ["title", "tags"]},
        {"type": "array", "minItems": 4, "items": {"type": "integer", "minimum": 3}},
        {"type": "array", "maxItems": 1, "items": {"enum": ["draft", "publish"]}},
        {"type": "object", "properties": {"n": {"type": "number", "maximum": 0.5}}},
        {"type": "object", "properties": {"kind": {"const": "digest"}, "ok": {"type": "boolean"}}},
        {"type": ["null", "string"], "minLength": 30, "maxLength": 40},
        {"anyOf": [{"type": "integer", "exclusiveMinimum": 7}, {"type": "string"}]},
        {"properties": {"summary": {"type": "string", "maxLength": 5}}, "required": ["summary"]},
    ],
)
def test_schema_instance_is_valid_against_its_schema(schema: dict[str, Any]) -> None:
    Draft202012Validator(schema).validate(schema_instance(schema, words()))


def test_json_answer_is_deterministic_for_the_same_words() -> None:
    fmt = read_response_format({"type": "json_schema", "json_schema": {"name": "x"}})
    assert fmt is not None

    assert json_answer(fmt, ["Audit", "crawl."]) == json_answer(fmt, ["Audit", "crawl."])
    assert json.loads(json_answer({"type": "json_object"}, ["Audit", "crawl."])) == {
        "answer": "Audit crawl."
    }
