"""The OpenRouter client: one pooled HTTP client, a chat call with retries inside the behavior's
deadline, the key's self-inspection, and the one-shot transport fallback.

Every failure leaves this module as an ``OpenRouterCallError`` that carries the
``Classification`` (``ledger.runner.call_errors``) deciding how it counts; foreign exceptions
(httpx, invalid JSON, the deadline's own timeout) are translated in one place,
``translate_exception``, with ``raise … from exc``. Keys stay ``SecretStr`` until the
``Authorization`` header is built and are never logged; log lines name the endpoint, not URLs.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, Literal, Self

import httpx
import structlog
from pydantic import SecretStr
from structlog.typing import FilteringBoundLogger

from ledger.behaviors.schema import Behavior
from ledger.clock import Clock, SystemClock
from ledger.errors import OpenRouterError
from ledger.gates import Gate, Tier
from ledger.http import backoff_delay
from ledger.runner.call_errors import (
    Classification,
    classify_200,
    classify_deadline,
    classify_response,
    classify_transport_error,
    to_error,
)
from ledger.runner.lean_http import LeanTransport
from ledger.runner.send_gate import SEND_GATE, SendGates

__all__ = [
    "DEFAULT_APP_TITLE",
    "DEFAULT_APP_URL",
    "DEFAULT_BASE_URL",
    "FOREIGN_ERRORS",
    "ChatResult",
    "KeyInfo",
    "OpenRouterCallError",
    "OpenRouterClient",
    "Usage",
    "build_chat_request",
    "build_fallback_request",
    "new_http_client",
    "should_fall_back",
    "translate_exception",
]

MAX_CONNECTIONS = 1024  # as many as the runner's calls in flight (MAX_CONCURRENT_CALLS)
# Idle connections are kept two minutes, so behaviors that run every minute find their
# connections open; one the server closed meanwhile is noticed before reuse (and a race with
# the close is a network error, which is retried).
KEEPALIVE_EXPIRY = 120.0

DEFAULT_BASE_URL: Final = "https://openrouter.ai"
DEFAULT_APP_URL: Final = "https://github.com/promotion-ledger"
DEFAULT_APP_TITLE: Final = "Promotion Ledger"
CHAT_PATH: Final = "/api/v1/chat/completions"
KEY_PATH: Final = "/api/v1/key"
SESSION_ID_MAX: Final = 256  # OpenRouter's limit on session_id
_TIMER_SLACK: Final = 0.05  # seconds an event-loop timer may fire before the deadline

# Every exception httpx can raise out of ``AsyncClient.request``, and the builtin
# ``TimeoutError`` that ``asyncio.timeout`` raises when the behavior's deadline passes.
FOREIGN_ERRORS: Final = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.CookieConflict,
    httpx.StreamError,
    TimeoutError,
)
# Failures a retry cannot cure: the request or the configuration (base URL) is wrong.
_CONFIGURATION_ERRORS: Final = (
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.InvalidURL,
    httpx.CookieConflict,
    httpx.StreamError,
    httpx.TooManyRedirects,
)
# What to do, by classification reason, appended to the error message.
_HINTS: Final[Mapping[str, str]] = {
    "auth": "check the behavior's api_key reference and the key's status on OpenRouter",
    "key_limit": "raise the key's limit on OpenRouter or wait for its reset",
    "key_credit_exhausted": "raise the key's limit on OpenRouter or wait for its reset",
    "insufficient_credits": "add credits to the OpenRouter account",
    "workspace_budget": "ask the workspace admin to raise the budget",
    "unknown_model": "check the preset slug in the behavior file and on OpenRouter",
    "bad_request": "check the behavior file (preset, max_output_tokens, prompt)",
    "deadline": "raise the behavior's timeout or choose a faster preset",
}

_log = structlog.get_logger("ledger.openrouter")

Sleep = Callable[[float], Awaitable[None]]
Endpoint = Literal["openrouter", "fallback"]


class OpenRouterCallError(OpenRouterError):
    """An ``OpenRouterError`` that also carries its ``classification`` (gate, outcome, reason,
    fallback eligibility, pause, evidence) and how many HTTP ``attempts`` were made.

    The plain ``OpenRouterError`` attributes (``gate``, ``attributable``, ``permanent``,
    ``retry_after``, ``status_code``, ``evidence``) come from the classification via
    ``call_errors.to_error``, so the two never disagree.
    """

    def __init__(self, classification: Classification, *, attempts: int, context: str) -> None:
        base = to_error(classification)
        status = classification.status_code
        details = ", ".join(
            [
                *([f"HTTP {status}"] if status is not None else []),
                f"{attempts} attempt{'s' if attempts != 1 else ''}",
            ]
        )
        hint = _HINTS.get(classification.reason)
        message = f"{context} failed ({details}): {base}" + (f"; {hint}" if hint else "")
        super().__init__(
            message,
            status_code=base.status_code,
            gate=base.gate,
            attributable=base.attributable,
            permanent=base.permanent,
            retry_after=base.retry_after,
            evidence=base.evidence,
        )
        self.classification = classification
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and cost of one answer. ``cost`` is in US dollars as the endpoint reported it;
    None when it reported none (fallback endpoints usually don't)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A successful answer.

    ``model`` is the model that answered (the response's ``model``): with a preset that has
    fallback models it may differ from the preset's primary. ``primary_model_answered`` is
    ``model == expected_model`` when the caller passed ``expected_model``, else None.
    ``raw`` is the response body as received (it never contains the request or its headers).
    ``attempts`` counts the HTTP attempts this answer took; ``endpoint`` says whether it came
    from OpenRouter or the fallback endpoint.
    """

    generation_id: str | None
    output: str
    model: str | None
    usage: Usage
    finish_reason: str | None
    raw: Mapping[str, Any]
    attempts: int
    endpoint: Endpoint = "openrouter"
    primary_model_answered: bool | None = None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key's view of itself (``GET /api/v1/key``). ``limit`` None means no limit."""

    limit: float | None
    limit_remaining: float | None
    limit_reset: str | None
    usage: float | None
    usage_daily: float | None
    usage_weekly: float | None
    usage_monthly: float | None
    is_free_tier: bool | None
    label: str | None = None  # how the account lists the key (the management API shows it too)

    @property
    def has_credit(self) -> bool:
        """Whether the key's own limit leaves credit (an unlimited key always has)."""
        return self.limit is None or self.limit_remaining is None or self.limit_remaining > 0

    @classmethod
    def from_api(cls, document: Mapping[str, Any]) -> KeyInfo:
        data = document.get("data")
        data = data if isinstance(data, Mapping) else {}
        reset = data.get("limit_reset")
        free = data.get("is_free_tier")
        return cls(
            limit=_number(data.get("limit")),
            limit_remaining=_number(data.get("limit_remaining")),
            limit_reset=reset if isinstance(reset, str) else None,
            usage=_number(data.get("usage")),
            usage_daily=_number(data.get("usage_daily")),
            usage_weekly=_number(data.get("usage_weekly")),
            usage_monthly=_number(data.get("usage_monthly")),
            is_free_tier=free if isinstance(free, bool) else None,
            label=label if isinstance(label := data.get("label"), str) and label else None,
        )


# --------------------------------------------------------------------------------------------
# Pure request building and decisions
# --------------------------------------------------------------------------------------------


def build_chat_request(behavior: Behavior, tier: Tier, prompt: str, run_id: str) -> dict[str, Any]:
    """The chat completion body for one run of ``behavior`` at ``tier``: the tier's preset,
    the behavior's output cap, attribution that broadcast carries back (``user`` = the
    behavior, ``session_id`` = the run, ``trace`` = behavior/run/tier/preset), and, when the
    behavior checks its output against a JSON Schema, ``response_format`` asking for it.

    Raises ``ValueError`` when ``run_id`` is longer than OpenRouter's session_id limit.
    """
    if len(run_id) > SESSION_ID_MAX:
        raise ValueError(f"run id is {len(run_id)} characters; session_id allows {SESSION_ID_MAX}")
    preset = behavior.preset_for(tier)
    body: dict[str, Any] = {
        "model": f"@preset/{preset}",
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": behavior.max_output_tokens,
        "user": behavior.name,
        "session_id": run_id,
        "trace": {
            "behavior": behavior.name,
            "run_id": run_id,
            "tier": tier.value,
            "preset": preset,
        },
    }
    if behavior.checks.json_schema is not None:
        # Not strict: OpenAI-style strict mode accepts only a subset of JSON Schema; the
        # behavior's own json_schema check is what decides.
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": behavior.name, "schema": behavior.checks.json_schema},
        }
    return body


def build_fallback_request(behavior: Behavior, prompt: str) -> dict[str, Any]:
    """The body for the behavior's OpenAI-compatible fallback endpoint: its fallback model,
    the same prompt and output cap, and ``user``; nothing OpenRouter-only (no preset,
    ``session_id`` or ``trace``). Raises ``ValueError`` when the behavior has no fallback."""
    if behavior.fallback is None:
        raise ValueError(f"behavior {behavior.name} has no fallback configured")
    return {
        "model": behavior.fallback.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": behavior.max_output_tokens,
        "user": behavior.name,
    }


def should_fall_back(classification: Classification) -> bool:
    """Whether the fallback endpoint may be tried after this (final) failure: only a
    non-attributable provider failure a different endpoint could avoid — network errors,
    408/429/5xx after retries, a 402 the key's own balance does not explain. Never a spend
    cap, a guardrail, an auth error, a workspace budget or an unverified 402."""
    return (
        classification.fallback_eligible
        and not classification.attributable
        and not classification.needs_key_check
        and classification.gate is Gate.PROVIDER_ERROR
    )


def translate_exception(exc: BaseException, *, deadline_reached: bool = False) -> Classification:
    """The one place a foreign exception becomes a ``Classification``.

    A timeout (httpx's or ``asyncio.timeout``'s) that ended at the behavior's deadline is the
    ``timeout`` gate (attributable warn); any other httpx failure is a ``provider_error``
    transport failure, retryable unless it says the request or configuration itself is wrong
    (unsupported protocol, invalid URL, local protocol error, …). A ``ValueError`` is a 2xx
    body that is not the JSON it should be (retryable). Anything else is a bug and is
    refused with ``TypeError``.
    """
    is_timeout = isinstance(exc, httpx.TimeoutException | TimeoutError)
    if is_timeout and (deadline_reached or isinstance(exc, TimeoutError)):
        return classify_deadline()
    if isinstance(exc, ValueError):
        return classify_transport_error("invalid_json", str(exc))
    if not isinstance(exc, FOREIGN_ERRORS):
        raise TypeError(f"{type(exc).__name__} is not a foreign error this boundary translates")
    classification = classify_transport_error(type(exc).__name__, str(exc) or None)
    if isinstance(exc, _CONFIGURATION_ERRORS):
        classification = replace(classification, permanent=True)
    return classification


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One HTTP attempt: a parsed 2xx ``document``, or a ``failure`` (with its ``cause`` when
    a foreign exception produced it). ``content``/``headers`` keep a refusal for a
    re-classification after the key check."""

    status: int | None = None
    headers: Mapping[str, str] | None = None
    content: bytes = b""
    document: Mapping[str, Any] | None = None
    failure: Classification | None = None
    cause: BaseException | None = None
    sent: bool = True  # False: the deadline had passed, nothing was sent


class OpenRouterClient:
    """The daemon's one OpenRouter client (and its fallback transport).

    ``http`` is the pooled ``httpx.AsyncClient`` (HTTP/1.1 keep-alive) made by the caller's
    lifespan; without it the client makes its own and ``aclose()`` closes it (a given client
    is left open). ``monotonic`` is the clock deadlines are measured on, ``clock`` the wall
    clock for HTTP-date ``Retry-After`` values; ``rng`` and ``sleep`` drive the retry backoff
    (exponential, full jitter: uniform(0, min(max_backoff, base_backoff * 2^(n-1)))).
    ``attempt_timeout`` caps one HTTP attempt (the deadline caps it further), and
    ``connect_timeout`` the connection set-up within it; ``max_connections`` sizes the pool
    the client makes for itself.
    """

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        app_url: str = DEFAULT_APP_URL,
        app_title: str = DEFAULT_APP_TITLE,
        max_attempts: int = 4,
        base_backoff: float = 0.5,
        max_backoff: float = 8.0,
        attempt_timeout: float = 120.0,
        connect_timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        max_connections: int = MAX_CONNECTIONS,
        transport_holds_sends: bool | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        # Whether the transport writes a gated request at its gate's instant (LeanTransport);
        # otherwise ``chat`` itself waits for the instant before sending.
        self._transport_holds_sends = (
            transport_holds_sends
            if transport_holds_sends is not None
            else http is None and not _environment_proxies()
        )
        self._gates = SendGates(wall=lambda: self._clock.now().timestamp())
        self._http = http if http is not None else new_http_client(max_connections=max_connections)
        self._app_headers = {"HTTP-Referer": app_url, "X-Title": app_title}
        self._max_attempts = max_attempts
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._attempt_timeout = attempt_timeout
        self._connect_timeout = connect_timeout
        self._monotonic = monotonic
        self._clock = clock or SystemClock()
        # Backoff jitter, not a secret.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._sleep = sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self._http.aclose()

    # -- chat ---------------------------------------------------------------------------------

    async def chat(
        self,
        *,
        key: SecretStr,
        body: Mapping[str, Any],
        deadline: float,
        run_id: str,
        expected_model: str | None = None,
        send_at: float | None = None,
    ) -> ChatResult:
        """POST ``body`` (see ``build_chat_request``) with the behavior's ``key``.

        ``send_at`` (wall-clock seconds, a run prepared before its slot): the first attempt
        gets its connection now and is written at that instant, together with every other
        request due then; a retry goes at once.
        ``deadline`` is an absolute time on the injected monotonic clock. 408/429/5xx,
        network errors and an error inside a 200 are retried (up to ``max_attempts``,
        honouring ``Retry-After``; a wait that would pass the deadline fails at once with the
        last failure); other refusals are final. A 402 is classified after asking the key for
        its own balance. Raises ``OpenRouterCallError`` (its ``classification`` decides the
        gate and whether ``should_fall_back``); a passed deadline is the ``timeout`` gate.
        """
        log = _log.bind(run_id=run_id, endpoint="openrouter")
        url = f"{self.base_url}{CHAT_PATH}"
        headers = {**self._app_headers, **_auth(key)}
        context = f"OpenRouter chat call for run {run_id}"
        gate = self._gates.gate_for(send_at) if send_at is not None else None
        extensions = {SEND_GATE: gate} if gate is not None else None
        if gate is not None and not self._transport_holds_sends:
            await gate.wait()
            extensions = None
        attempt = 0
        while True:
            attempt += 1
            exchanged = await self._exchange(
                "POST", url, headers, body, deadline, extensions=extensions
            )
            extensions = None  # a retry is sent at once
            outcome = _settle(exchanged, attempt, expected_model, log)
            if isinstance(outcome, ChatResult):
                return outcome
            failure = outcome.failure
            assert failure is not None  # noqa: S101 — a settled outcome that is no result failed
            if failure.needs_key_check:
                failure = await self._explain_payment(key, outcome, deadline)
            delay = self._retry_delay(failure, attempt, deadline)
            if delay is None:
                if failure.retryable and attempt < self._max_attempts:
                    why = "the next attempt could not start before the deadline"
                    failure = replace(failure, evidence={**failure.evidence, "gave_up": why})
                made = attempt if outcome.sent else attempt - 1
                raise self._error(failure, made, context, log) from outcome.cause
            log.warning(
                "openrouter.attempt_failed",
                attempt=attempt,
                status=failure.status_code,
                reason=failure.reason,
                retry_in=round(delay, 3),
            )
            await self._sleep(delay)

    async def fallback_chat(
        self,
        *,
        base_url: str,
        key: SecretStr,
        body: Mapping[str, Any],
        deadline: float,
        run_id: str,
        expected_model: str | None = None,
    ) -> ChatResult:
        """Send ``body`` (see ``build_fallback_request``) once to an OpenAI-compatible
        ``{base_url}/chat/completions`` with the fallback's own ``key``; no retries, no
        OpenRouter app headers. Failures are classified and raised like ``chat``'s (a 402
        stays an unverified ``provider_error``: there is no key to ask)."""
        log = _log.bind(run_id=run_id, endpoint="fallback")
        url = f"{base_url.rstrip('/')}/chat/completions"
        context = f"Fallback chat call for run {run_id}"
        exchanged = await self._exchange("POST", url, _auth(key), body, deadline)
        outcome = _settle(exchanged, 1, expected_model, log)
        if isinstance(outcome, ChatResult):
            return replace(outcome, endpoint="fallback")
        assert outcome.failure is not None  # noqa: S101 — a settled outcome that is no result
        raise self._error(outcome.failure, int(outcome.sent), context, log) from outcome.cause

    # -- keys ---------------------------------------------------------------------------------

    async def key_info(self, key: SecretStr, *, deadline: float | None = None) -> KeyInfo:
        """The key's own limit and usage (``GET /api/v1/key``), one attempt."""
        return KeyInfo.from_api(await self.get_json(KEY_PATH, key=key, deadline=deadline))

    async def get_json(
        self,
        path: str,
        *,
        key: SecretStr,
        params: Mapping[str, str | int] | None = None,
        deadline: float | None = None,
    ) -> Mapping[str, Any]:
        """One authenticated GET of ``{base_url}{path}`` returning its JSON object (the
        management API and key inspection use it). Raises ``OpenRouterCallError``."""
        if deadline is None:
            deadline = self._monotonic() + self._attempt_timeout
        url = f"{self.base_url}{path}"
        outcome = await self._exchange("GET", url, _auth(key), None, deadline, params=params)
        if outcome.failure is not None:
            context = f"OpenRouter GET {path}"
            log = _log.bind(endpoint="openrouter")
            made = int(outcome.sent)
            raise self._error(outcome.failure, made, context, log) from outcome.cause
        assert outcome.document is not None  # noqa: S101 — no failure means a document
        return outcome.document

    # -- internals ----------------------------------------------------------------------------

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None,
        deadline: float,
        *,
        params: Mapping[str, str | int] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> _Outcome:
        """One HTTP attempt bounded by the deadline; every foreign exception is caught here
        and translated by ``translate_exception``."""
        remaining = deadline - self._monotonic()
        if remaining <= 0:
            return _Outcome(failure=classify_deadline(), sent=False)
        total = min(remaining, self._attempt_timeout)
        connect = min(total, self._connect_timeout)
        timeout = httpx.Timeout(total, connect=connect)
        try:
            async with asyncio.timeout(remaining):
                response = await self._http.request(
                    method,
                    url,
                    headers=headers,
                    json=body,
                    params=params,
                    timeout=timeout,
                    extensions=extensions,
                )
            if not response.is_success:
                failure = classify_response(
                    response.status_code,
                    response.content,
                    response.headers,
                    now=self._clock.now(),
                )
                return _Outcome(
                    status=response.status_code,
                    headers=response.headers,
                    content=response.content,
                    failure=failure,
                )
            document = json.loads(response.content)
            if not isinstance(document, Mapping):
                raise ValueError("the answer is JSON but not an object")
        except (*FOREIGN_ERRORS, ValueError) as exc:
            # The runner's clock decides whether the deadline passed, not which timer fired.
            reached = self._monotonic() >= deadline - _TIMER_SLACK
            return _Outcome(failure=translate_exception(exc, deadline_reached=reached), cause=exc)
        return _Outcome(status=response.status_code, headers=response.headers, document=document)

    async def _explain_payment(
        self, key: SecretStr, outcome: _Outcome, deadline: float
    ) -> Classification:
        """Classify a 402 again once the key has said whether its own limit is spent. When
        the key check fails the 402 stays an unverified, non-attributable provider error."""
        pending = outcome.failure
        assert pending is not None  # noqa: S101 — only called for a failure
        try:
            info = await self.key_info(key, deadline=deadline)
        except OpenRouterCallError as err:
            evidence = {**pending.evidence, "key_check": f"failed: {err.classification.reason}"}
            return replace(pending, evidence=evidence)
        has_credit = info.has_credit
        if outcome.document is not None:
            classified = classify_200(outcome.document, key_has_credit=has_credit)
        else:
            classified = classify_response(
                outcome.status or 402,
                outcome.content,
                outcome.headers or {},
                key_has_credit=has_credit,
                now=self._clock.now(),
            )
        if classified is None:  # pragma: no cover — a 200 error stays an error when re-read
            return pending
        evidence = {
            **classified.evidence,
            "key_limit": info.limit,
            "key_limit_remaining": info.limit_remaining,
        }
        return replace(classified, evidence=evidence)

    def _retry_delay(self, failure: Classification, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now."""
        if failure.permanent or attempt >= self._max_attempts:
            return None
        if failure.retry_after is not None:
            delay = failure.retry_after
        else:
            delay = backoff_delay(
                attempt, base=self._base_backoff, cap=self._max_backoff, rng=self._rng
            )
        if delay >= deadline - self._monotonic():
            return None
        return delay

    def _error(
        self,
        failure: Classification,
        attempts: int,
        context: str,
        log: FilteringBoundLogger,
    ) -> OpenRouterCallError:
        failure = replace(failure, evidence={**failure.evidence, "attempts": attempts})
        log.warning(
            "openrouter.call_failed",
            attempts=attempts,
            status=failure.status_code,
            reason=failure.reason,
            gate=failure.gate.value,
            attributable=failure.attributable,
        )
        return OpenRouterCallError(failure, attempts=attempts, context=context)


def new_http_client(*, max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """The pooled HTTP/1.1 keep-alive client for OpenRouter (for a lifespan to own), on the
    lean transport (``LeanTransport``: it writes a prepared wave at its slot's instant; the
    measurements that keep it over httpx's and aiohttp's transports are in its module).
    Redirects are not followed: an API answer that redirects is refused, not chased.

    With a proxy configured in the environment (``HTTPS_PROXY``, ``ALL_PROXY``…), which httpx
    honours only on its own transport, it is httpx's plain pool instead (proxy, ``NO_PROXY``)."""
    if _environment_proxies():
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )
        return httpx.AsyncClient(limits=limits, follow_redirects=False, http2=False)
    return httpx.AsyncClient(
        transport=LeanTransport(max_connections, KEEPALIVE_EXPIRY),
        follow_redirects=False,
        http2=False,
    )


def _environment_proxies() -> bool:
    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())


# --------------------------------------------------------------------------------------------
# Reading answers
# --------------------------------------------------------------------------------------------


def _auth(key: SecretStr) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.get_secret_value()}"}


def _settle(
    outcome: _Outcome, attempts: int, expected_model: str | None, log: FilteringBoundLogger
) -> ChatResult | _Outcome:
    """A 2xx outcome read into a result (logged), or the outcome with its failure set."""
    if outcome.failure is not None:
        return outcome
    assert outcome.document is not None  # noqa: S101 — no failure means a document
    failure, result = _read_answer(outcome.document, attempts, expected_model)
    if result is None:
        return replace(outcome, failure=failure)
    log.info(
        "openrouter.call_succeeded",
        attempts=attempts,
        generation_id=result.generation_id,
        model=result.model,
        cost=result.usage.cost,
    )
    return result


def _read_answer(
    document: Mapping[str, Any], attempts: int, expected_model: str | None
) -> tuple[Classification | None, ChatResult | None]:
    """(the error inside a 200, None) or (None, the result)."""
    failure = classify_200(document)
    if failure is not None:
        return failure, None
    choices = document.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, Mapping) else None
    if not isinstance(message, Mapping):
        detail = "the answer has no choices[0].message"
        return classify_transport_error("malformed_answer", detail), None
    assert isinstance(first, Mapping)  # noqa: S101 — message came from it
    model = document.get("model")
    model = model if isinstance(model, str) else None
    generation_id = document.get("id")
    finish_reason = first.get("finish_reason")
    result = ChatResult(
        generation_id=generation_id if isinstance(generation_id, str) else None,
        output=_content_text(message.get("content")),
        model=model,
        usage=_usage(document.get("usage")),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        raw=document,
        attempts=attempts,
        primary_model_answered=None if expected_model is None else model == expected_model,
    )
    return None, result


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, Mapping):
        return Usage()
    details = raw.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    prompt = _integer(raw.get("prompt_tokens"))
    completion = _integer(raw.get("completion_tokens"))
    total = _integer(raw.get("total_tokens")) or prompt + completion
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        reasoning_tokens=_integer(reasoning),
        cost=_number(raw.get("cost")),
    )


def _integer(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
