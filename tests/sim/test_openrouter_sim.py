"""The OpenRouter simulator, run for real on loopback and driven with a real httpx client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.sim.openrouter import (
    Fault,
    GenerationRecord,
    Preset,
    SimConfig,
    SimConfigError,
    SimKey,
    build_broadcast,
    limit_exceeded_message,
    run_asgi_in_background,
    run_in_background,
    run_in_thread,
)

SEO_KEY = "sk-or-v1-test-seo-audit"
TINY_KEY = "sk-or-v1-test-tiny-daily"
TOTAL_KEY = "sk-or-v1-test-tiny-total"
BROKE_KEY = "sk-or-v1-test-broke"
FUNDED_KEY = "sk-or-v1-test-funded"
LEAKY_KEY = "sk-or-v1-test-leaky"
MANAGEMENT_KEY = "sk-or-v1-test-management"
HAIKU = "anthropic/claude-haiku-4.5"
MINI = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Audit https://example.com for SEO issues."}]
EXAMPLE_YAML = Path(__file__).parents[2] / "ledger" / "sim" / "presets.example.yaml"

# The root span attributes of a real successful broadcast (fixtures/openrouter/
# broadcast-success.json), given trace keys "behavior" and "run_id".
FIXTURE_ROOT_KEYS = {
    "trace.name", "span.type", "span.level", "user.id", "session.id", "gen_ai.operation.name",
    "gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model",
    "gen_ai.response.id", "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
    "gen_ai.usage.total_tokens", "gen_ai.usage.input_tokens.cached",
    "gen_ai.usage.output_tokens.reasoning", "gen_ai.usage.input_cost",
    "gen_ai.usage.output_cost", "gen_ai.usage.total_cost", "gen_ai.prompt", "gen_ai.completion",
    "gen_ai.response.finish_reasons", "gen_ai.response.finish_reason", "trace.metadata.behavior",
    "trace.metadata.run_id", "trace.metadata.openrouter.source",
    "trace.metadata.openrouter.api_key_name", "trace.metadata.openrouter.entity_id",
    "trace.metadata.openrouter.creator_user_id", "trace.metadata.openrouter.provider_name",
    "trace.metadata.openrouter.provider_slug", "trace.metadata.openrouter.finish_reason",
    "trace.metadata.openrouter.input_unit_price", "trace.metadata.openrouter.output_unit_price",
    "trace.metadata.openrouter.router_latency_ms", "trace.metadata.openrouter.first_token_ms",
    "trace.metadata.provider_responses",
}  # fmt: skip


@dataclass
class Clock:
    now: datetime = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # a Tuesday

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Capture:
    """What a loopback broadcast destination received."""

    requests: asyncio.Queue[tuple[dict[str, str], Any]] = field(default_factory=asyncio.Queue)
    status: int = 200

    async def next(self) -> tuple[dict[str, str], Any]:
        return await asyncio.wait_for(self.requests.get(), timeout=5)


def make_config(clock: Clock, **overrides: Any) -> SimConfig:
    values: dict[str, Any] = {
        "presets": {
            "seo-audit": Preset(
                model=HAIKU,
                fallback_models=(MINI,),
                input_price=0.000001,
                output_price=0.000005,
                provider="Amazon Bedrock",
            ),
            "seo-audit-strict": Preset(
                model="anthropic/claude-sonnet-4.5",
                input_price=0.000003,
                output_price=0.000015,
                max_completion_tokens=5,
            ),
        },
        "keys": [
            SimKey(key=SEO_KEY, name="ledger/seo-audit", limit=5.0, limit_reset="monthly"),
            SimKey(key=TINY_KEY, name="ledger/tiny", limit=0.0002, limit_reset="daily"),
            SimKey(key=TOTAL_KEY, name="ledger/total", limit=0.0001),
            SimKey(key=BROKE_KEY, name="ledger/broke", balance=0.0),
            SimKey(key=FUNDED_KEY, name="ledger/funded", balance=10.0),
            SimKey(key=LEAKY_KEY, name="ledger/leaky", output="Write to ann@example.org today."),
        ],
        "management_key": MANAGEMENT_KEY,
        "seed": 3,
        "clock": clock,
    }
    values.update(overrides)
    return SimConfig(**values)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "@preset/seo-audit", "messages": MESSAGES, **extra}


def attributes(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def capture() -> AsyncIterator[tuple[str, Capture]]:
    seen = Capture()

    async def traces(request: Request) -> Response:
        await seen.requests.put((dict(request.headers), await request.json()))
        return JSONResponse({}, status_code=seen.status)

    app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    async with run_asgi_in_background(app) as base_url:
        yield f"{base_url}/v1/traces", seen


@pytest.fixture
async def client(clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        run_in_background(make_config(clock)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=5) as http,
    ):
        yield http


async def chat(http: httpx.AsyncClient, key: str = SEO_KEY, **extra: Any) -> httpx.Response:
    return await http.post("/api/v1/chat/completions", headers=auth(key), json=chat_body(**extra))


async def add_fault(http: httpx.AsyncClient, **fault: Any) -> None:
    response = await http.post("/_sim/faults", json=fault)
    assert response.status_code == 201, response.text


# ---------------------------------------------------------------------------- chat completions


async def test_preset_call_answers_like_openrouter_with_cost_from_preset_price(
    client: httpx.AsyncClient,
) -> None:
    response = await chat(client, max_completion_tokens=500)

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("gen-")
    assert body["model"] == HAIKU
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected = usage["prompt_tokens"] * 0.000001 + usage["completion_tokens"] * 0.000005
    assert usage["cost"] == pytest.approx(expected)
    assert usage["is_byok"] is False
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


async def test_same_prompt_gets_same_answer_and_another_prompt_another(
    client: httpx.AsyncClient,
) -> None:
    first = (await chat(client)).json()
    again = (await chat(client)).json()
    other = (
        await client.post(
            "/api/v1/chat/completions",
            headers=auth(SEO_KEY),
            json={"model": "@preset/seo-audit", "messages": [{"role": "user", "content": "Hi"}]},
        )
    ).json()

    assert first["choices"][0]["message"] == again["choices"][0]["message"]
    assert first["id"] != again["id"]
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("body", "answered"),
    [
        ({"model": "@preset/seo-audit"}, HAIKU),
        ({"model": f"{MINI}@preset/seo-audit"}, MINI),
        ({"model": HAIKU, "preset": "seo-audit"}, HAIKU),
        ({"model": MINI}, MINI),
    ],
)
async def test_every_model_and_preset_form_resolves(
    client: httpx.AsyncClient, body: dict[str, Any], answered: str
) -> None:
    response = await client.post(
        "/api/v1/chat/completions", headers=auth(SEO_KEY), json={**body, "messages": MESSAGES}
    )

    assert response.status_code == 200, response.text
    assert response.json()["model"] == answered


@pytest.mark.parametrize("model", ["@preset/no-such-preset", "acme/no-such-model"])
async def test_unknown_preset_or_model_is_404_in_openrouter_error_shape(
    client: httpx.AsyncClient, model: str
) -> None:
    response = await chat(client, model=model)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "message"),
    [({}, "No auth credentials found"), (auth("sk-or-v1-unknown"), "User not found.")],
)
async def test_missing_or_unknown_key_is_401(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    response = await client.post("/api/v1/chat/completions", headers=headers, json=chat_body())

    assert response.status_code == 401
    assert response.json() == {"error": {"code": 401, "message": message}}


async def test_management_key_cannot_call_models(client: httpx.AsyncClient) -> None:
    assert (await chat(client, key=MANAGEMENT_KEY)).status_code == 401


async def test_max_completion_tokens_caps_the_answer(client: httpx.AsyncClient) -> None:
    body = (await chat(client, max_completion_tokens=7)).json()

    assert body["usage"]["completion_tokens"] == 7
    assert len(body["choices"][0]["message"]["content"].split()) == 7
    assert body["choices"][0]["finish_reason"] == "length"


async def test_preset_default_cap_applies_and_request_cap_wins(client: httpx.AsyncClient) -> None:
    strict = (await chat(client, model="@preset/seo-audit-strict")).json()
    widened = (await chat(client, model="@preset/seo-audit-strict", max_tokens=9)).json()

    assert strict["usage"]["completion_tokens"] == 5
    assert widened["usage"]["completion_tokens"] == 9


async def test_key_configured_output_is_returned_verbatim(client: httpx.AsyncClient) -> None:
    body = (await chat(client, key=LEAKY_KEY)).json()

    assert body["choices"][0]["message"]["content"] == "Write to ann@example.org today."


async def test_messages_are_required(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/chat/completions", headers=auth(SEO_KEY), json={"model": "@preset/seo-audit"}
    )

    assert response.status_code == 400


# ---------------------------------------------------------------------------- keys and limits


async def test_key_inspects_itself_and_sees_its_usage(client: httpx.AsyncClient) -> None:
    cost = (await chat(client)).json()["usage"]["cost"]

    data = (await client.get("/api/v1/key", headers=auth(SEO_KEY))).json()["data"]

    assert data["label"].startswith("sk-or-v1-")
    assert "hash" not in data and "name" not in data
    assert data["limit"] == 5.0
    assert data["limit_reset"] == "monthly"
    assert data["usage"] == pytest.approx(cost)
    assert data["usage_daily"] == data["usage_weekly"] == data["usage_monthly"] == data["usage"]
    assert data["limit_remaining"] == pytest.approx(5.0 - cost)
    assert data["is_free_tier"] is False


async def test_daily_limit_depletes_to_403_and_resets_at_midnight_utc(
    client: httpx.AsyncClient, clock: Clock
) -> None:
    statuses = [(await chat(client, key=TINY_KEY)).status_code for _ in range(4)]
    refused = await chat(client, key=TINY_KEY)

    assert statuses[0] == 200
    assert 403 in statuses
    assert refused.status_code == 403
    assert refused.json() == {
        "error": {
            "code": 403,
            "message": "Key limit exceeded (daily limit). "
            "Manage it using https://openrouter.ai/settings/keys",
        }
    }
    key = (await client.get("/api/v1/key", headers=auth(TINY_KEY))).json()["data"]
    assert key["limit_remaining"] <= 0

    clock.now = datetime(2026, 3, 11, 0, 0, 1, tzinfo=UTC)
    assert (await chat(client, key=TINY_KEY)).status_code == 200
    key = (await client.get("/api/v1/key", headers=auth(TINY_KEY))).json()["data"]
    assert key["usage_daily"] < key["usage_weekly"]


async def test_total_limit_refusal_says_total(client: httpx.AsyncClient) -> None:
    while (response := await chat(client, key=TOTAL_KEY)).status_code == 200:
        pass

    assert response.status_code == 403
    assert response.json()["error"]["message"] == limit_exceeded_message(None)
    assert "(total limit)" in response.json()["error"]["message"]


async def test_zero_balance_key_gets_402_and_its_credits_show_nothing_left(
    client: httpx.AsyncClient,
) -> None:
    response = await chat(client, key=BROKE_KEY)
    credits = (await client.get("/api/v1/credits", headers=auth(BROKE_KEY))).json()["data"]
    key = (await client.get("/api/v1/key", headers=auth(BROKE_KEY))).json()["data"]

    assert response.status_code == 402
    assert "Insufficient credits" in response.json()["error"]["message"]
    assert credits["total_credits"] - credits["total_usage"] == 0
    assert key["is_free_tier"] is True


async def test_payment_required_fault_gives_402_although_credit_is_left(
    client: httpx.AsyncClient,
) -> None:
    await add_fault(client, kind="payment_required", key_name="ledger/funded")

    response = await chat(client, key=FUNDED_KEY, max_completion_tokens=300)
    credits = (await client.get("/api/v1/credits", headers=auth(FUNDED_KEY))).json()["data"]

    assert response.status_code == 402
    assert "You requested up to 300 tokens" in response.json()["error"]["message"]
    assert credits["total_credits"] - credits["total_usage"] == 10.0


async def test_management_api_creates_reads_updates_and_deletes_keys(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        "/api/v1/keys",
        headers=auth(MANAGEMENT_KEY),
        json={"name": "ledger/new-behavior", "limit": 1.5, "limit_reset": "weekly"},
    )
    assert created.status_code == 201
    new_key, data = created.json()["key"], created.json()["data"]
    key_hash = data["hash"]
    assert new_key.startswith("sk-or-v1-")
    assert data["name"] == "ledger/new-behavior"
    assert data["limit"] == 1.5 and data["limit_reset"] == "weekly"
    assert data["disabled"] is False

    cost = (await chat(client, key=new_key)).json()["usage"]["cost"]
    one = (await client.get(f"/api/v1/keys/{key_hash}", headers=auth(MANAGEMENT_KEY))).json()
    assert one["data"]["usage"] == pytest.approx(cost)
    assert one["data"]["limit_remaining"] == pytest.approx(1.5 - cost)
    listed = (await client.get("/api/v1/keys", headers=auth(MANAGEMENT_KEY))).json()["data"]
    assert {k["name"] for k in listed} >= {"ledger/new-behavior", "ledger/seo-audit"}

    patched = await client.patch(
        f"/api/v1/keys/{key_hash}",
        headers=auth(MANAGEMENT_KEY),
        json={"limit": 3, "limit_reset": None, "disabled": True},
    )
    assert patched.json()["data"]["limit"] == 3.0
    assert patched.json()["data"]["limit_reset"] is None
    assert (await chat(client, key=new_key)).status_code == 401

    deleted = await client.delete(f"/api/v1/keys/{key_hash}", headers=auth(MANAGEMENT_KEY))
    assert deleted.json() == {"deleted": True}
    gone = await client.get(f"/api/v1/keys/{key_hash}", headers=auth(MANAGEMENT_KEY))
    assert gone.status_code == 404


async def test_management_api_refuses_inference_keys_and_bad_fields(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/api/v1/keys", headers=auth(SEO_KEY))).status_code == 401
    bad = await client.post(
        "/api/v1/keys", headers=auth(MANAGEMENT_KEY), json={"name": "x", "limit_reset": "hourly"}
    )
    assert bad.status_code == 400


async def test_a_limit_lowered_through_the_management_api_refuses_the_next_call(
    client: httpx.AsyncClient,
) -> None:
    key_hash = next(
        k["hash"]
        for k in (await client.get("/api/v1/keys", headers=auth(MANAGEMENT_KEY))).json()["data"]
        if k["name"] == "ledger/seo-audit"
    )
    await chat(client)
    await client.patch(
        f"/api/v1/keys/{key_hash}", headers=auth(MANAGEMENT_KEY), json={"limit": 0.0}
    )

    response = await chat(client)

    assert response.status_code == 403
    assert "(monthly limit)" in response.json()["error"]["message"]


# ---------------------------------------------------------------------------- faults


async def test_rate_limit_for_the_first_two_calls_then_success(client: httpx.AsyncClient) -> None:
    await add_fault(client, kind="rate_limit", times=2, retry_after=7)

    first, second, third = [await chat(client) for _ in range(3)]

    assert [r.status_code for r in (first, second, third)] == [429, 429, 200]
    assert first.headers["retry-after"] == "7"
    assert first.json()["error"]["metadata"]["error_type"] == "rate_limit_exceeded"
    faults = (await client.get("/_sim/faults")).json()["faults"]
    assert faults[0]["hits"] == 2


@pytest.mark.parametrize(
    ("fault", "message", "metadata"),
    [
        (
            {"kind": "key_limit"},
            "Key limit exceeded (monthly limit). "
            "Manage it using https://openrouter.ai/settings/keys",
            None,
        ),
        (
            {"kind": "workspace_budget"},
            "Workspace monthly budget of $500.00 exceeded. Contact your org admin.",
            None,
        ),
        (
            {"kind": "prompt_injection", "patterns": ["ignore all previous"]},
            "Request blocked: prompt injection patterns detected",
            {"patterns": ["ignore all previous"]},
        ),
        (
            {"kind": "content_filter", "label": "EMAIL"},
            "Request blocked by content filter: [EMAIL]",
            {"reasons": ["EMAIL"], "flagged_input": "[EMAIL]"},
        ),
    ],
)
async def test_403_faults_answer_with_openrouters_messages(
    client: httpx.AsyncClient, fault: dict[str, Any], message: str, metadata: Any
) -> None:
    await add_fault(client, **fault)

    response = await chat(client)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["message"] == message
    assert error.get("metadata") == metadata


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(500, "internal_error"), (502, "provider_unavailable"), (503, "provider_overloaded")],
)
async def test_server_errors_carry_status_and_error_type(
    client: httpx.AsyncClient, status: int, error_type: str
) -> None:
    await add_fault(client, kind="server_error", status=status, retry_after=3)

    response = await chat(client)

    assert response.status_code == status
    assert response.json()["error"]["metadata"]["error_type"] == error_type
    assert response.headers["retry-after"] == "3"


async def test_delay_fault_makes_a_short_client_timeout_fire(client: httpx.AsyncClient) -> None:
    await add_fault(client, kind="delay", seconds=0.5, times=1)

    with pytest.raises(httpx.ReadTimeout):
        await client.post(
            "/api/v1/chat/completions", headers=auth(SEO_KEY), json=chat_body(), timeout=0.05
        )
    assert (await chat(client)).status_code == 200


async def test_sensitive_output_fault_returns_an_email_and_a_key_shaped_string(
    client: httpx.AsyncClient,
) -> None:
    await add_fault(client, kind="sensitive_output")

    content = (await chat(client)).json()["choices"][0]["message"]["content"]

    assert "jane.doe@example.com" in content
    assert "sk-or-v1-" in content


async def test_error_inside_a_200_has_finish_reason_error_and_an_error_object(
    client: httpx.AsyncClient,
) -> None:
    await add_fault(client, kind="error_in_200")

    response = await chat(client)

    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "error"
    assert choice["error"]["code"] == 502
    assert response.json()["usage"]["prompt_tokens"] > 0


async def test_wrong_model_fault_makes_the_presets_fallback_answer(
    client: httpx.AsyncClient,
) -> None:
    await add_fault(client, kind="wrong_model", preset="seo-audit")

    response = await chat(client)

    assert response.json()["model"] == MINI


async def test_faults_only_hit_their_own_key_and_preset(client: httpx.AsyncClient) -> None:
    await add_fault(client, kind="server_error", status=503, key_name="ledger/seo-audit")
    await add_fault(client, kind="rate_limit", preset="seo-audit-strict")

    assert (await chat(client)).status_code == 503
    assert (await chat(client, key=FUNDED_KEY)).status_code == 200
    assert (await chat(client, key=FUNDED_KEY, model="@preset/seo-audit-strict")).status_code == 429


async def test_unknown_fault_kind_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/_sim/faults", json={"kind": "gremlins"})

    assert response.status_code == 400
    assert "kind" in response.json()["error"]["message"]


async def test_configured_faults_apply_and_reset_restores_them(clock: Clock) -> None:
    config = make_config(clock, faults=[Fault(kind="workspace_budget", times=1)])
    async with (
        run_in_background(config) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        assert (await chat(http)).status_code == 403
        assert (await chat(http)).status_code == 200

        await http.post("/_sim/reset")
        assert (await chat(http)).status_code == 403
        assert (await http.delete("/_sim/faults")).json() == {"cleared": 1}
        await chat(http)
        assert (await http.get("/_sim/faults")).json() == {"faults": []}


async def test_reset_forgets_usage_and_created_keys(client: httpx.AsyncClient) -> None:
    await chat(client)
    created = await client.post(
        "/api/v1/keys", headers=auth(MANAGEMENT_KEY), json={"name": "ledger/temp"}
    )

    await client.post("/_sim/reset")

    usage = (await client.get("/api/v1/key", headers=auth(SEO_KEY))).json()["data"]["usage"]
    assert usage == 0
    assert (await chat(client, key=created.json()["key"])).status_code == 401
    calls = (await client.get("/_sim/calls")).json()["calls"]
    assert [c["path"] for c in calls] == ["/api/v1/key", "/api/v1/chat/completions"]


async def test_calls_record_headers_body_status_and_key(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/chat/completions",
        headers={**auth(SEO_KEY), "X-Title": "Promotion Ledger", "HTTP-Referer": "https://x.test"},
        json=chat_body(user="seo-audit", session_id="run-1"),
    )

    calls = (await client.get("/_sim/calls")).json()["calls"]

    assert len(calls) == 1
    call = calls[0]
    assert call["path"] == "/api/v1/chat/completions"
    assert call["headers"]["x-title"] == "Promotion Ledger"
    assert call["headers"]["authorization"] == f"Bearer {SEO_KEY}"
    assert call["body"]["session_id"] == "run-1"
    assert call["status"] == 200
    assert call["key_name"] == "ledger/seo-audit"
    assert call["generation_id"] == response.json()["id"]


async def test_generation_lookup_returns_cost_and_preset(client: httpx.AsyncClient) -> None:
    body = (await chat(client, session_id="run-9")).json()

    found = await client.get(f"/api/v1/generation?id={body['id']}", headers=auth(SEO_KEY))

    data = found.json()["data"]
    assert data["total_cost"] == body["usage"]["cost"]
    assert data["preset_id"] == "seo-audit"
    assert data["session_id"] == "run-9"


async def test_session_id_may_come_from_the_x_session_id_header(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/api/v1/chat/completions",
        headers={**auth(SEO_KEY), "x-session-id": "run-from-header"},
        json=chat_body(),
    )

    found = await client.get(
        f"/api/v1/generation?id={response.json()['id']}", headers=auth(SEO_KEY)
    )
    assert found.json()["data"]["session_id"] == "run-from-header"


# ---------------------------------------------------------------------------- broadcast


async def test_success_is_broadcast_like_openrouter_after_the_call(
    clock: Clock, capture: tuple[str, Capture]
) -> None:
    url, seen = capture
    config = make_config(
        clock, broadcast_url=url, broadcast_headers={"Authorization": "Bearer bc-token"}
    )
    async with (
        run_in_background(config) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        body = (
            await chat(
                http,
                user="seo-audit-weekly",
                session_id="run-01",
                trace={"behavior": "seo-audit-weekly", "run_id": "run-01"},
            )
        ).json()
        headers, delivery = await seen.next()

    assert headers["authorization"] == "Bearer bc-token"
    assert len(delivery["resourceSpans"]) == 3
    spans = [rs["scopeSpans"][0]["spans"][0] for rs in delivery["resourceSpans"]]
    root, attempt, generation = spans
    assert root["name"] == "LLM Generation"
    assert attempt["name"] == "provider attempt 1: Amazon Bedrock"
    assert generation["name"] == "generation"
    assert attempt["parentSpanId"] == generation["parentSpanId"] == root["spanId"]
    assert root["status"] == {"code": 1}
    resource = attributes(delivery["resourceSpans"][1]["resource"])
    assert resource["openrouter.trace.id"] == body["id"]
    assert resource["service.name"] == "openrouter"
    attrs = attributes(root)
    assert set(attrs) == FIXTURE_ROOT_KEYS
    assert attrs["user.id"] == "seo-audit-weekly"
    assert attrs["session.id"] == "run-01"
    assert attrs["trace.metadata.behavior"] == "seo-audit-weekly"
    assert attrs["trace.metadata.openrouter.api_key_name"] == "ledger/seo-audit"
    assert attrs["gen_ai.response.id"] == body["id"]
    assert attrs["gen_ai.usage.total_cost"] == pytest.approx(body["usage"]["cost"])
    assert attrs["gen_ai.usage.output_tokens"] == body["usage"]["completion_tokens"]


async def test_refusals_are_broadcast_as_error_spans_without_cost(
    clock: Clock, capture: tuple[str, Capture]
) -> None:
    url, seen = capture
    config = make_config(clock, broadcast_url=url, faults=[Fault(kind="content_filter")])
    async with (
        run_in_background(config) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        assert (await chat(http)).status_code == 403
        _, delivery = await seen.next()

    root = delivery["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    attrs = attributes(root)
    assert root["status"] == {"code": 2, "message": "Request blocked by content filter: [EMAIL]"}
    assert attrs["span.level"] == "ERROR"
    assert attrs["span.status_message"] == root["status"]["message"]
    assert not any(k.endswith("_cost") for k in attrs)
    event = root["events"][0]
    assert event["name"] == "exception"
    assert attributes(event)["exception.message"] == root["status"]["message"]


async def test_error_inside_a_200_is_broadcast_as_an_error(
    clock: Clock, capture: tuple[str, Capture]
) -> None:
    url, seen = capture
    config = make_config(clock, broadcast_url=url, faults=[Fault(kind="error_in_200")])
    async with (
        run_in_background(config) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        assert (await chat(http)).status_code == 200
        _, delivery = await seen.next()

    root = delivery["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert root["status"]["code"] == 2
    assert attributes(root)["gen_ai.response.finish_reason"] == "error"


async def test_a_fault_can_suppress_its_broadcast(
    clock: Clock, capture: tuple[str, Capture]
) -> None:
    url, seen = capture
    config = make_config(clock, broadcast_url=url)
    async with (
        run_in_background(config) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        await add_fault(http, kind="prompt_injection", broadcast=False, times=1)
        assert (await chat(http)).status_code == 403
        assert (await chat(http)).status_code == 200
        _, delivery = await seen.next()

    root = delivery["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert root["status"] == {"code": 1}
    assert seen.requests.empty()


async def test_an_unreachable_or_failing_destination_never_fails_the_call(
    clock: Clock, capture: tuple[str, Capture]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1/traces"
    url, seen = capture
    seen.status = 500
    async with (
        run_in_background(make_config(clock, broadcast_url=dead_url)) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        assert (await chat(http)).status_code == 200
        put = await http.put("/_sim/broadcast", json={"url": url, "headers": {"X-A": "1"}})
        assert put.json() == {"url": url, "headers": ["X-A"]}
        assert (await chat(http)).status_code == 200
        await seen.next()
        deliveries = (await http.get("/_sim/deliveries")).json()["deliveries"]
        for _ in range(100):
            if all("status" in d or "error" in d for d in deliveries):
                break
            await asyncio.sleep(0.01)
            deliveries = (await http.get("/_sim/deliveries")).json()["deliveries"]

    assert "ConnectError" in deliveries[0]["error"]
    assert deliveries[1]["status"] == 500


def test_build_broadcast_is_pure_and_honours_special_trace_keys() -> None:
    moment = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    record = GenerationRecord(
        generation_id="gen-1-abc",
        started_at=moment,
        ended_at=moment + timedelta(seconds=2),
        key_name="ledger/seo-audit",
        request_model=HAIKU,
        response_model=HAIKU,
        trace={
            "trace_id": "9b1de41a703bf6c7f0831bba77573c3e",
            "trace_name": "Weekly audit",
            "parent_span_id": "1c2d3e4f5a6b7c8d",
            "behavior": "seo",
        },
        prompt_tokens=100,
        completion_tokens=10,
        input_unit_price=0.000001,
        output_unit_price=0.000005,
    )

    delivery = build_broadcast(record, int_as_string=True)

    assert delivery == build_broadcast(record, int_as_string=True)
    root = delivery["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    attrs = attributes(root)
    assert root["traceId"] == "9b1de41a703bf6c7f0831bba77573c3e"
    assert root["parentSpanId"] == "1c2d3e4f5a6b7c8d"
    assert attrs["trace.name"] == "Weekly audit"
    assert "trace.metadata.trace_id" not in attrs
    assert attrs["trace.metadata.behavior"] == "seo"
    assert attrs["gen_ai.usage.input_tokens"] == "100"
    assert attrs["gen_ai.usage.total_cost"] == pytest.approx(0.00015)
    assert int(root["endTimeUnixNano"]) - int(root["startTimeUnixNano"]) == 2_000_000_000


# ---------------------------------------------------------------------------- config and running


def test_example_presets_file_loads() -> None:
    config = SimConfig.from_yaml(EXAMPLE_YAML)

    assert {"seo-audit", "seo-audit-strict", "content-pipeline"} <= set(config.presets)
    assert config.presets["seo-audit"].fallback_models == (MINI,)
    assert config.management_key is not None
    assert {k.name for k in config.keys} >= {"seo-audit-weekly", "broke"}
    assert config.faults[0].kind == "rate_limit"
    assert config.broadcast_url == "http://127.0.0.1:8600/v1/traces"


def test_bad_presets_file_says_where(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text("presets:\n  seo:\n    model: a/b\n    colour: red\n", encoding="utf-8")

    with pytest.raises(SimConfigError, match=r"presets\.yaml: presets\.seo: unknown fields"):
        SimConfig.from_yaml(path)


def test_run_in_thread_serves_synchronous_callers(clock: Clock) -> None:
    with run_in_thread(make_config(clock)) as base_url:
        response = httpx.post(
            f"{base_url}/api/v1/chat/completions", headers=auth(SEO_KEY), json=chat_body()
        )

    assert response.status_code == 200
