"""The OpenRouter client against the simulator on loopback, through the real httpx client.

``httpx.MockTransport`` only where loopback cannot produce the fault: every httpx exception
class, a 402 when the key's own limit is spent (the simulator answers that with a 403, as
OpenRouter does), a key check that fails, and a 2xx body that is not JSON.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import structlog
from pydantic import SecretStr

from ledger.behaviors.schema import Behavior
from ledger.gates import Gate, Outcome, Tier
from ledger.runner.call_errors import Classification, classify_response, classify_transport_error
from ledger.runner.lean_http import LeanTransport
from ledger.runner.openrouter import (
    FOREIGN_ERRORS,
    ChatResult,
    OpenRouterCallError,
    OpenRouterClient,
    build_chat_request,
    build_fallback_request,
    new_http_client,
    should_fall_back,
    translate_exception,
)
from ledger.sim.openrouter import ModelInfo, Preset, SimConfig, SimKey, run_in_background
from tests.factories import make_behavior

SEO_KEY = "sk-or-v1-test-client-seo-audit"
DAILY_SPENT_KEY = "sk-or-v1-test-client-spent"
BROKE_KEY = "sk-or-v1-test-client-broke"
DISABLED_KEY = "sk-or-v1-test-client-disabled"
FALLBACK_KEY = "xai-test-client-fallback"
HAIKU = "anthropic/claude-haiku-4.5"
SONNET = "anthropic/claude-sonnet-4.5"
MINI = "openai/gpt-4o-mini"
CHAT = "/api/v1/chat/completions"
RUN_ID = "run-2026-11-02T09:00Z-seo-audit"


def seo_audit(**overrides: Any) -> Behavior:
    """The behavior these tests call with (``overrides`` replace its fields)."""
    values: dict[str, Any] = {
        "schedule": "1d",
        "preset": {"A": "seo-audit", "C": "seo-audit-strict"},
        "api_key": "env:LEDGER_TEST_SEO_KEY",
        "key_name": "ledger/seo-audit",
        "prompt": "Audit https://example.com for SEO issues.",
        "max_output_tokens": 64,
        "fallback": {
            "base_url": "https://fallback.invalid/v1",
            "model": MINI,
            "api_key": "env:LEDGER_TEST_FALLBACK_KEY",
        },
    }
    return make_behavior("seo-audit", **{**values, **overrides})


def sim_config() -> SimConfig:
    return SimConfig(
        presets={
            "seo-audit": Preset(model=HAIKU, fallback_models=(MINI,), provider="Amazon Bedrock"),
            "seo-audit-strict": Preset(model=SONNET),
        },
        keys=[
            SimKey(key=SEO_KEY, name="ledger/seo-audit", limit=5.0, limit_reset="monthly"),
            SimKey(key=DAILY_SPENT_KEY, name="ledger/spent", limit=0.0, limit_reset="daily"),
            SimKey(key=BROKE_KEY, name="ledger/broke", balance=0.0),
            SimKey(key=DISABLED_KEY, name="ledger/disabled", disabled=True),
        ],
        seed=7,
    )


@dataclass
class Sleeps:
    """An injected ``sleep`` that records how long it was asked to wait, and never waits."""

    waited: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)


@dataclass
class Harness:
    base_url: str
    client: OpenRouterClient
    sleeps: Sleeps
    control: httpx.AsyncClient

    async def fault(self, **fault: Any) -> None:
        response = await self.control.post(f"{self.base_url}/_sim/faults", json=fault)
        assert response.status_code == 201, response.text

    async def calls(self, path: str = CHAT) -> list[dict[str, Any]]:
        response = await self.control.get(f"{self.base_url}/_sim/calls")
        return [c for c in response.json()["calls"] if c["path"] == path]

    async def chat(
        self,
        key: str = SEO_KEY,
        *,
        tier: Tier = Tier.A,
        deadline_in: float = 30.0,
        behavior: Behavior | None = None,
        expected_model: str | None = None,
    ) -> ChatResult:
        body = build_chat_request(behavior or seo_audit(), tier, "Audit it.", RUN_ID)
        return await self.client.chat(
            key=SecretStr(key),
            body=body,
            deadline=time.monotonic() + deadline_in,
            run_id=RUN_ID,
            expected_model=expected_model,
        )

    async def failed_chat(self, key: str = SEO_KEY, **kwargs: Any) -> OpenRouterCallError:
        with pytest.raises(OpenRouterCallError) as caught:
            await self.chat(key, **kwargs)
        return caught.value


def make_client(base_url: str, sleeps: Sleeps, **kwargs: Any) -> OpenRouterClient:
    return OpenRouterClient(base_url=base_url, sleep=sleeps, rng=random.Random(11), **kwargs)


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    async with run_in_background(sim_config()) as base_url:
        yield base_url


@pytest.fixture
async def harness(sim: str) -> AsyncIterator[Harness]:
    sleeps = Sleeps()
    async with make_client(sim, sleeps) as client, httpx.AsyncClient() as control:
        yield Harness(sim, client, sleeps, control)


def mock_client(
    handler: Callable[[httpx.Request], httpx.Response], sleeps: Sleeps, **kwargs: Any
) -> OpenRouterClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return make_client("https://openrouter.test", sleeps, http=http, **kwargs)


async def failed_mock_chat(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> OpenRouterCallError:
    async with mock_client(handler, Sleeps(), **kwargs) as client:
        with pytest.raises(OpenRouterCallError) as caught:
            await client.chat(
                key=SecretStr(SEO_KEY), body={}, deadline=time.monotonic() + 30, run_id=RUN_ID
            )
    return caught.value


# --------------------------------------------------------------------------------------------
# Request shape and a good answer
# --------------------------------------------------------------------------------------------


def test_chat_request_uses_the_tier_preset_and_carries_attribution() -> None:
    body = build_chat_request(seo_audit(), Tier.C, "Audit it.", RUN_ID)

    assert body == {
        "model": "@preset/seo-audit-strict",
        "messages": [{"role": "user", "content": "Audit it."}],
        "max_completion_tokens": 64,
        "user": "seo-audit",
        "session_id": RUN_ID,
        "trace": {
            "behavior": "seo-audit",
            "run_id": RUN_ID,
            "tier": "C",
            "preset": "seo-audit-strict",
        },
    }
    assert build_chat_request(seo_audit(), Tier.B, "x", RUN_ID)["model"] == "@preset/seo-audit"


def test_chat_request_asks_for_json_when_the_behavior_checks_a_json_schema() -> None:
    schema = {"type": "object", "required": ["fixes"]}
    behavior = seo_audit(checks={"json_schema": schema, "max_chars": 100})

    body = build_chat_request(behavior, Tier.A, "Audit it.", RUN_ID)

    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "seo-audit", "schema": schema},
    }
    assert "response_format" not in build_chat_request(seo_audit(), Tier.A, "x", RUN_ID)


def test_chat_request_refuses_a_run_id_longer_than_session_id_allows() -> None:
    with pytest.raises(ValueError, match="session_id allows 256"):
        build_chat_request(seo_audit(), Tier.A, "x", "r" * 257)


async def test_call_sends_key_app_headers_preset_and_attribution_on_the_wire(
    harness: Harness,
) -> None:
    result = await harness.chat(tier=Tier.C, expected_model=SONNET)

    [call] = await harness.calls()
    headers, body = call["headers"], call["body"]
    assert headers["authorization"] == f"Bearer {SEO_KEY}"
    assert headers["http-referer"] == "https://github.com/promotion-ledger"
    assert headers["x-title"] == "Promotion Ledger"
    assert body["model"] == "@preset/seo-audit-strict"
    assert body["user"] == "seo-audit"
    assert body["session_id"] == RUN_ID
    assert body["trace"] == {
        "behavior": "seo-audit",
        "run_id": RUN_ID,
        "tier": "C",
        "preset": "seo-audit-strict",
    }
    assert body["max_completion_tokens"] == 64
    assert call["key_name"] == "ledger/seo-audit"
    assert result.generation_id == call["generation_id"]
    assert result.model == SONNET
    assert result.primary_model_answered is True
    assert result.attempts == 1
    assert result.endpoint == "openrouter"


async def test_answer_carries_text_usage_cost_and_finish_reason(harness: Harness) -> None:
    result = await harness.chat()

    assert result.output
    assert result.output == result.raw["choices"][0]["message"]["content"]
    assert result.finish_reason in {"stop", "length"}
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert isinstance(result.usage.cost, float)
    assert result.usage.cost > 0
    assert result.primary_model_answered is None  # no expected model given


async def test_requests_reuse_one_pooled_connection(harness: Harness) -> None:
    await harness.chat()
    await harness.chat()

    [first, second] = await harness.calls()
    assert first["headers"].get("connection", "keep-alive") == "keep-alive"
    assert second["headers"].get("connection", "keep-alive") == "keep-alive"


async def test_wrong_model_answering_is_reported_on_the_result_not_raised(
    harness: Harness,
) -> None:
    await harness.fault(kind="wrong_model")

    result = await harness.chat(expected_model=HAIKU)

    assert result.model == MINI
    assert result.primary_model_answered is False


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


async def test_429_then_success_waits_exactly_the_retry_after(harness: Harness) -> None:
    await harness.fault(kind="rate_limit", times=1, retry_after=7)

    result = await harness.chat()

    assert harness.sleeps.waited == [7.0]
    assert result.attempts == 2
    assert [c["status"] for c in await harness.calls()] == [429, 200]


async def test_retry_after_beyond_the_deadline_fails_now_without_sleeping(
    harness: Harness,
) -> None:
    await harness.fault(kind="rate_limit", retry_after=60)

    err = await harness.failed_chat(deadline_in=5.0)

    assert harness.sleeps.waited == []
    assert err.attempts == 1
    assert err.classification.reason == "rate_limited"
    assert err.classification.gate is Gate.PROVIDER_ERROR
    assert err.attributable is False
    assert err.retry_after == 60.0
    assert "deadline" in err.evidence["gave_up"]
    assert should_fall_back(err.classification)


async def test_5xx_is_retried_with_full_jitter_backoff_then_given_up(harness: Harness) -> None:
    await harness.fault(kind="server_error", status=503)

    err = await harness.failed_chat()

    expected_rng = random.Random(11)
    expected = [expected_rng.uniform(0, 0.5 * 2**n) for n in range(3)]
    assert harness.sleeps.waited == pytest.approx(expected)
    assert err.attempts == 4
    assert err.evidence["attempts"] == 4
    assert len(await harness.calls()) == 4
    assert err.status_code == 503
    assert err.classification.reason == "upstream_error"
    assert err.gate == "provider_error"
    assert err.attributable is False
    assert should_fall_back(err.classification)
    assert "run-2026-11-02T09:00Z-seo-audit" in str(err)


async def test_5xx_twice_then_success_returns_the_third_answer(harness: Harness) -> None:
    await harness.fault(kind="server_error", status=502, times=2)

    result = await harness.chat()

    assert result.attempts == 3
    assert len(harness.sleeps.waited) == 2


async def test_max_attempts_is_configurable(sim: str) -> None:
    sleeps = Sleeps()
    async with make_client(sim, sleeps, max_attempts=2) as client, httpx.AsyncClient() as ctl:
        harness = Harness(sim, client, sleeps, ctl)
        await harness.fault(kind="server_error", status=529)
        err = await harness.failed_chat()

    assert err.attempts == 2
    assert len(sleeps.waited) == 1


async def test_error_inside_a_200_is_an_error_and_is_retried(harness: Harness) -> None:
    await harness.fault(kind="error_in_200", times=1)

    result = await harness.chat()

    assert result.attempts == 2
    assert [c["status"] for c in await harness.calls()] == [200, 200]


async def test_persistent_error_inside_a_200_is_reported_with_its_generation_id(
    harness: Harness,
) -> None:
    await harness.fault(kind="error_in_200")

    err = await harness.failed_chat()

    calls = await harness.calls()
    assert err.attempts == 4
    assert err.classification.gate is Gate.PROVIDER_ERROR
    assert err.evidence["status"] == 200
    assert err.evidence["generation_id"] == calls[-1]["generation_id"]


# --------------------------------------------------------------------------------------------
# Refusals that are final
# --------------------------------------------------------------------------------------------


async def test_402_while_the_key_has_credit_is_a_provider_error_eligible_for_fallback(
    harness: Harness,
) -> None:
    await harness.fault(kind="payment_required")

    err = await harness.failed_chat()

    assert err.classification.reason == "insufficient_credits"
    assert err.attributable is False
    assert err.evidence["key_has_credit"] is True
    assert err.evidence["key_limit_remaining"] == 5.0
    assert should_fall_back(err.classification)
    assert harness.sleeps.waited == []
    [key_check] = await harness.calls("/api/v1/key")
    assert key_check["headers"]["authorization"] == f"Bearer {SEO_KEY}"


async def test_402_for_an_unlimited_key_means_the_account_is_out_of_credit(
    harness: Harness,
) -> None:
    err = await harness.failed_chat(BROKE_KEY)

    assert err.status_code == 402
    assert err.classification.reason == "insufficient_credits"
    assert err.evidence["key_limit"] is None
    assert should_fall_back(err.classification)


async def test_402_when_the_key_own_limit_is_spent_is_a_spend_cap_fail() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/key":
            data = {"limit": 5.0, "limit_remaining": 0.0, "limit_reset": "monthly"}
            return httpx.Response(200, json={"data": data})
        error = {"code": 402, "message": "This request requires more credits"}
        return httpx.Response(402, json={"error": error})

    err = await failed_mock_chat(handler)

    assert err.classification.reason == "key_credit_exhausted"
    assert err.gate == "spend_cap"
    assert err.attributable is True
    assert err.classification.outcome is Outcome.FAIL
    assert not should_fall_back(err.classification)


async def test_402_whose_key_check_fails_stays_a_non_attributable_provider_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/key":
            return httpx.Response(503, text="upstream down")
        return httpx.Response(402, json={"error": {"code": 402, "message": "more credits"}})

    err = await failed_mock_chat(handler)

    assert err.gate == "provider_error"
    assert err.attributable is False
    assert err.evidence["key_check"] == "failed: upstream_error"
    assert not should_fall_back(err.classification)


async def test_403_key_limit_is_an_attributable_spend_cap_without_retry(harness: Harness) -> None:
    err = await harness.failed_chat(DAILY_SPENT_KEY)

    assert err.status_code == 403
    assert err.gate == "spend_cap"
    assert err.attributable is True
    assert err.evidence["limit_window"] == "daily"
    assert err.attempts == 1
    assert not should_fall_back(err.classification)
    assert "raise the key's limit" in str(err)


async def test_403_workspace_budget_never_demotes_and_never_falls_back(harness: Harness) -> None:
    await harness.fault(kind="workspace_budget")

    err = await harness.failed_chat()

    assert err.classification.reason == "workspace_budget"
    assert err.gate == "provider_error"
    assert err.attributable is False
    assert err.permanent is True
    assert not should_fall_back(err.classification)


@pytest.mark.parametrize(
    ("fault", "gate"),
    [
        ({"kind": "prompt_injection"}, Gate.PROMPT_INJECTION),
        ({"kind": "content_filter", "label": "EMAIL"}, Gate.SENSITIVE_INFO),
        ({"kind": "content_filter", "label": "CREDIT-CARD"}, Gate.SENSITIVE_INFO),
        ({"kind": "content_filter", "label": "VIOLENCE"}, Gate.GUARDRAIL_BLOCK),
    ],
)
async def test_guardrail_refusal_is_an_attributable_fail_and_final(
    harness: Harness, fault: dict[str, Any], gate: Gate
) -> None:
    await harness.fault(**fault)

    err = await harness.failed_chat()

    assert err.classification.gate is gate
    assert err.classification.outcome is Outcome.FAIL
    assert err.attributable is True
    assert err.attempts == 1
    assert not should_fall_back(err.classification)


@pytest.mark.parametrize("key", ["sk-or-v1-test-client-unknown", DISABLED_KEY])
async def test_401_pauses_the_behavior_and_is_not_retried(harness: Harness, key: str) -> None:
    err = await harness.failed_chat(key)

    assert err.status_code == 401
    assert err.gate == "auth_error"
    assert err.attributable is False
    assert err.classification.pause_behavior is True
    assert err.attempts == 1
    assert not should_fall_back(err.classification)
    assert key not in str(err)


async def test_404_unknown_preset_is_a_permanent_provider_error(harness: Harness) -> None:
    err = await harness.failed_chat(behavior=seo_audit(preset="no-such-preset"))

    assert err.status_code == 404
    assert err.classification.reason == "unknown_model"
    assert err.permanent is True
    assert err.attempts == 1
    assert "check the preset slug" in str(err)


# --------------------------------------------------------------------------------------------
# Deadline
# --------------------------------------------------------------------------------------------


async def test_answer_slower_than_the_deadline_is_an_attributable_timeout_warn(
    harness: Harness,
) -> None:
    await harness.fault(kind="delay", seconds=1.0)

    started = time.monotonic()
    err = await harness.failed_chat(deadline_in=0.3)

    assert time.monotonic() - started < 0.9
    assert err.gate == "timeout"
    assert err.classification.outcome is Outcome.WARN
    assert err.attributable is True
    assert err.attempts == 1
    assert not should_fall_back(err.classification)


async def test_a_deadline_already_past_makes_no_call(harness: Harness) -> None:
    err = await harness.failed_chat(deadline_in=-1.0)

    assert err.gate == "timeout"
    assert err.attempts == 0
    assert await harness.calls() == []


async def test_backoff_stops_when_the_injected_clock_passes_the_deadline(sim: str) -> None:
    now = [100.0]
    sleeps = Sleeps()

    async def sleep(seconds: float) -> None:
        await sleeps(seconds)
        now[0] += 20.0  # each wait costs more time than it asked for

    client = OpenRouterClient(
        base_url=sim, sleep=sleep, rng=random.Random(1), monotonic=lambda: now[0]
    )
    async with client, httpx.AsyncClient() as control:
        harness = Harness(sim, client, sleeps, control)
        await harness.fault(kind="server_error", status=500)
        body = build_chat_request(seo_audit(), Tier.A, "x", RUN_ID)
        with pytest.raises(OpenRouterCallError) as caught:
            await client.chat(key=SecretStr(SEO_KEY), body=body, deadline=130.0, run_id=RUN_ID)
        calls = await harness.calls()

    assert len(calls) == 2
    assert caught.value.gate == "timeout"
    assert caught.value.attempts == 2


# --------------------------------------------------------------------------------------------
# Foreign exceptions: every httpx exception class is translated
# --------------------------------------------------------------------------------------------


def _httpx_exception_classes() -> list[type[Exception]]:
    classes = {
        obj
        for name in httpx.__all__
        if inspect.isclass(obj := getattr(httpx, name)) and issubclass(obj, Exception)
    }
    return sorted(classes, key=lambda c: c.__name__)


def _instantiate(cls: type[Exception], request: httpx.Request) -> Exception:
    if issubclass(cls, httpx.HTTPStatusError):
        return cls("bad status", request=request, response=httpx.Response(500, request=request))
    if issubclass(cls, httpx.RequestError):
        return cls("connection trouble", request=request)
    parameters = inspect.signature(cls.__init__).parameters
    return cls("trouble") if "message" in parameters else cls()


def test_the_walk_covers_every_httpx_error_class() -> None:
    walked = set(_httpx_exception_classes())
    assert {httpx.HTTPError, httpx.TransportError, httpx.PoolTimeout} <= walked
    assert all(issubclass(cls, FOREIGN_ERRORS) for cls in walked)
    for cls in (httpx.HTTPError, httpx.TransportError):
        assert set(_all_subclasses(cls)) <= walked


def _all_subclasses(cls: type) -> list[type]:
    out: list[type] = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


@pytest.mark.parametrize("cls", _httpx_exception_classes(), ids=lambda c: c.__name__)
async def test_every_httpx_exception_becomes_a_classified_openrouter_error(
    cls: type[Exception],
) -> None:
    raised: list[Exception] = []

    def handler(request: httpx.Request) -> httpx.Response:
        exc = _instantiate(cls, request)
        raised.append(exc)
        raise exc

    err = await failed_mock_chat(handler, max_attempts=1)

    assert err.__cause__ is raised[0]
    assert err.classification.gate is Gate.PROVIDER_ERROR
    assert err.classification.reason == "transport_error"
    assert err.evidence["transport_error"] == cls.__name__
    assert err.attributable is False
    assert err.status_code is None


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ReadError("reset"), True),
        (httpx.RemoteProtocolError("bad frame"), True),
        (httpx.PoolTimeout("pool"), True),
        (httpx.UnsupportedProtocol("ftp"), False),
        (httpx.LocalProtocolError("bad header"), False),
        (httpx.InvalidURL("bad url"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_transport_errors_are_retryable_unless_the_request_itself_is_wrong(
    exc: Exception, retryable: bool
) -> None:
    classification = translate_exception(exc)

    assert classification.retryable is retryable
    assert classification.fallback_eligible is True


def test_a_timeout_that_ends_at_the_deadline_is_the_timeout_gate() -> None:
    assert (
        translate_exception(httpx.ReadTimeout("slow"), deadline_reached=True).gate is Gate.TIMEOUT
    )
    assert translate_exception(TimeoutError()).gate is Gate.TIMEOUT
    assert translate_exception(httpx.ReadTimeout("slow")).gate is Gate.PROVIDER_ERROR


def test_a_non_foreign_exception_is_refused_as_a_bug() -> None:
    with pytest.raises(TypeError, match="KeyError"):
        translate_exception(KeyError("x"))


async def test_a_2xx_body_that_is_not_json_is_a_retryable_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>gateway</html>")

    err = await failed_mock_chat(handler, max_attempts=2)

    assert isinstance(err.__cause__, ValueError)
    assert err.evidence["transport_error"] == "invalid_json"
    assert err.attempts == 2
    assert should_fall_back(err.classification)


# --------------------------------------------------------------------------------------------
# Fallback transport
# --------------------------------------------------------------------------------------------


def refused_403(message: str) -> Classification:
    return classify_response(403, {"error": {"code": 403, "message": message}}, {})


@pytest.mark.parametrize(
    ("classification", "expected"),
    [
        (classify_response(429, b"", {}), True),
        (classify_response(503, b"", {}), True),
        (classify_response(408, b"", {}), True),
        (classify_transport_error("ConnectError"), True),
        (classify_response(402, b"", {}, key_has_credit=True), True),
        (classify_response(402, b"", {}, key_has_credit=False), False),
        (classify_response(402, b"", {}), False),  # balance not checked
        (refused_403("Key limit exceeded (monthly limit)."), False),
        (refused_403("Workspace monthly budget of $5 exceeded."), False),
        (refused_403("Request blocked: prompt injection"), False),
        (classify_response(401, b"", {}), False),
        (classify_response(404, b"", {}), False),
        (classify_response(400, b"", {}), False),
        (translate_exception(TimeoutError()), False),
    ],
)  # fmt: skip
def test_fallback_only_after_a_non_attributable_failure_another_endpoint_could_avoid(
    classification: Classification, expected: bool
) -> None:
    assert should_fall_back(classification) is expected


def test_fallback_request_keeps_user_and_drops_openrouter_only_fields() -> None:
    body = build_fallback_request(seo_audit(), "Audit it.")

    assert body == {
        "model": MINI,
        "messages": [{"role": "user", "content": "Audit it."}],
        "max_completion_tokens": 64,
        "user": "seo-audit",
    }
    with pytest.raises(ValueError, match="no fallback"):
        build_fallback_request(seo_audit(fallback=None), "x")


async def test_failed_primary_falls_back_once_to_an_openai_compatible_endpoint(
    harness: Harness,
) -> None:
    await harness.fault(kind="server_error", status=502)
    second = SimConfig(
        keys=[SimKey(key=FALLBACK_KEY, name="fallback")], models={MINI: ModelInfo()}, seed=2
    )
    async with run_in_background(second) as fallback_base:
        err = await harness.failed_chat()
        assert should_fall_back(err.classification)

        result = await harness.client.fallback_chat(
            base_url=f"{fallback_base}/api/v1",
            key=SecretStr(FALLBACK_KEY),
            body=build_fallback_request(seo_audit(), "Audit it."),
            deadline=time.monotonic() + 30,
            run_id=RUN_ID,
            expected_model=MINI,
        )
        calls = (await harness.control.get(f"{fallback_base}/_sim/calls")).json()["calls"]

    assert result.endpoint == "fallback"
    assert result.model == MINI
    assert result.primary_model_answered is True
    assert result.output
    assert result.attempts == 1
    [call] = calls
    assert call["path"] == CHAT
    assert call["headers"]["authorization"] == f"Bearer {FALLBACK_KEY}"
    assert "http-referer" not in call["headers"]
    assert "x-title" not in call["headers"]
    assert call["body"]["user"] == "seo-audit"
    assert not {"trace", "session_id", "preset"} & set(call["body"])


async def test_fallback_is_sent_once_and_its_failure_is_classified_the_same_way(
    harness: Harness,
) -> None:
    second = SimConfig(keys=[SimKey(key=FALLBACK_KEY, name="fallback")], models={MINI: ModelInfo()})
    async with run_in_background(second) as fallback_base, httpx.AsyncClient() as control:
        await control.post(
            f"{fallback_base}/_sim/faults", json={"kind": "server_error", "status": 503}
        )
        with pytest.raises(OpenRouterCallError) as caught:
            await harness.client.fallback_chat(
                base_url=f"{fallback_base}/api/v1",
                key=SecretStr(FALLBACK_KEY),
                body=build_fallback_request(seo_audit(), "x"),
                deadline=time.monotonic() + 30,
                run_id=RUN_ID,
            )
        calls = (await control.get(f"{fallback_base}/_sim/calls")).json()["calls"]

    err = caught.value
    assert len(calls) == 1
    assert harness.sleeps.waited == []
    assert err.attempts == 1
    assert err.gate == "provider_error"
    assert str(err).startswith(f"Fallback chat call for run {RUN_ID} failed (HTTP 503")


# --------------------------------------------------------------------------------------------
# Key inspection, logging, lifecycle
# --------------------------------------------------------------------------------------------


async def test_key_info_reads_the_key_own_limit(harness: Harness) -> None:
    info = await harness.client.key_info(SecretStr(SEO_KEY))

    assert info.limit == 5.0
    assert info.limit_remaining == 5.0
    assert info.limit_reset == "monthly"
    assert info.has_credit is True


async def test_key_info_of_a_spent_key_has_no_credit(harness: Harness) -> None:
    info = await harness.client.key_info(SecretStr(DAILY_SPENT_KEY))

    assert info.limit == 0.0
    assert info.has_credit is False


async def test_key_info_with_a_bad_key_raises_an_auth_error(harness: Harness) -> None:
    with pytest.raises(OpenRouterCallError) as caught:
        await harness.client.key_info(SecretStr("sk-or-v1-test-client-nobody"))

    assert caught.value.gate == "auth_error"


async def test_log_events_never_carry_the_key_headers_or_urls(harness: Harness) -> None:
    await harness.fault(kind="rate_limit", times=1, retry_after=1)
    with structlog.testing.capture_logs() as events:
        await harness.chat()
        await harness.failed_chat(DAILY_SPENT_KEY)

    names = [e["event"] for e in events]
    assert names == [
        "openrouter.attempt_failed",
        "openrouter.call_succeeded",
        "openrouter.call_failed",
    ]
    assert all(e["run_id"] == RUN_ID for e in events)
    rendered = repr(events)
    for secret in (SEO_KEY, DAILY_SPENT_KEY, harness.base_url, "Bearer", "authorization"):
        assert secret not in rendered


async def test_a_given_http_client_is_left_open_and_an_own_one_is_closed(sim: str) -> None:
    async with httpx.AsyncClient() as shared:
        client = OpenRouterClient(base_url=sim, http=shared)
        await client.aclose()
        assert not shared.is_closed

    own = OpenRouterClient(base_url=sim)
    await own.aclose()
    with pytest.raises(RuntimeError, match="closed"):  # using a closed client is a bug
        await own.key_info(SecretStr(SEO_KEY))


async def test_lean_pool_serves_many_concurrent_calls_within_its_connection_limit(
    sim: str,
) -> None:
    transport = LeanTransport(max_connections=4, keepalive_expiry=60)
    async with httpx.AsyncClient(transport=transport) as http:
        client = OpenRouterClient(base_url=sim, http=http)

        async def one(i: int) -> ChatResult:
            body = build_chat_request(seo_audit(), Tier.A, f"prompt {i}", f"run-lean-{i}")
            return await client.chat(
                key=SecretStr(SEO_KEY),
                body=body,
                deadline=time.monotonic() + 30,
                run_id=f"run-lean-{i}",
            )

        results = await asyncio.gather(*(one(i) for i in range(48)))
        assert len({r.generation_id for r in results}) == 48
        assert transport.open_connections == 4  # kept alive, never more than the limit
        for i in range(3):  # one at a time: the same connection again
            await one(100 + i)
        assert transport.open_connections == 4
        # A request to another origin closes an idle connection to make room; failing to
        # connect, it gives its place back.
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/")
        assert transport.open_connections == 3
        await one(200)
    assert transport.open_connections == 0


async def test_a_proxy_in_the_environment_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx reads HTTPS_PROXY only on its own transport: with one set, the plain pool."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    async with new_http_client() as proxied:
        assert not isinstance(proxied._transport, LeanTransport)
        assert any(
            getattr(t, "_pool", None).__class__.__name__ == "AsyncHTTPProxy"
            for t in proxied._mounts.values()
            if t is not None
        )
    monkeypatch.delenv("HTTPS_PROXY")
    for name in ("HTTP_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with new_http_client() as direct:
        assert isinstance(direct._transport, LeanTransport)
