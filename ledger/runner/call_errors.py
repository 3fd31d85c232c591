"""What a failed OpenRouter call means: HTTP outcome → gate, outcome, and what to do next.

Pure: no I/O, no clock (``now`` is passed in). Implements DESIGN.md's gate table for the
answers the runner sees. The order of evidence, most stable first: ``error.metadata.error_type``
(OpenRouter's canonical discriminator), then the HTTP status, then the message text for the
cases OpenRouter only tells apart in words (key limit vs. workspace budget vs. guardrail, all
403). A 401 is always an auth error, whatever else the body says.

Decisions not spelled out in DESIGN.md:

- **400 (and other 4xx not listed)** → ``provider_error``, non-attributable, permanent. The
  daemon built the request from the behavior's file (preset, limits, inputs); a bad request is a
  configuration or daemon bug, not the behavior's conduct, so it must never demote — and being
  persistent, it alerts. ``context_length_exceeded`` and friends land here too.
- **402** depends on the key: when the key's own limit is spent it is ``spend_cap``
  (attributable); when the key still has credit the refusal is the account's, not the
  behavior's (``provider_error``, and a fallback endpoint may help). Without that knowledge the
  result says ``needs_key_check`` and is provisionally a non-attributable, non-fallback
  ``provider_error``: the runner asks ``GET /api/v1/key`` and classifies again.
- **Unrecognised 403** → ``provider_error`` permanent (we cannot tell it is policy, so it must
  not demote; it alerts when persistent). A disabled key → ``auth_error`` (configuration).
- **Fallback** only for failures a different endpoint could avoid and the behavior did not
  cause: network errors, 408, 429, 5xx, and a 402 the key's balance does not explain. Never for
  a spend cap, a guardrail, an auth error or a workspace budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ledger.errors import OpenRouterError
from ledger.gates import ATTRIBUTABLE, Gate, GateResult, Outcome
from ledger.http import parse_retry_after
from ledger.sensitive import redact_sensitive

__all__ = [
    "SENSITIVE_LABELS",
    "Classification",
    "classify_200",
    "classify_deadline",
    "classify_response",
    "classify_transport_error",
    "to_error",
]

# OpenRouter's built-in sensitive-info guardrail labels ("Request blocked by content filter: [X]").
SENSITIVE_LABELS = frozenset(
    {"EMAIL", "PHONE", "SSN", "CREDIT-CARD", "IP-ADDRESS", "PERSON-NAME", "ADDRESS"}
)
_MAX_TEXT = 500  # evidence strings are clipped to this many characters
_MAX_MESSAGE_SCAN = 2000  # message matching looks at this many characters


@dataclass(frozen=True, slots=True)
class Classification:
    """How one failed call counts and what the runner should do about it.

    ``permanent``: retrying the same request cannot help (``retryable`` is its opposite).
    ``fallback_eligible``: the fallback endpoint / model may be tried; never for an
    attributable failure. ``pause_behavior``: configuration is broken (auth); stop scheduling.
    ``needs_key_check``: a 402 whose meaning depends on the key's balance — look it up and call
    ``classify_response`` again with ``key_has_credit``. ``reason`` is a stable snake_case word
    (``key_limit``, ``rate_limited``, …) callers may branch on.
    """

    gate: Gate
    outcome: Outcome
    reason: str
    permanent: bool
    fallback_eligible: bool = False
    pause_behavior: bool = False
    needs_key_check: bool = False
    retry_after: float | None = None
    status_code: int | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @property
    def attributable(self) -> bool:
        return ATTRIBUTABLE[self.gate]

    @property
    def retryable(self) -> bool:
        return not self.permanent

    def to_gate_result(
        self, *, run_id: str | None = None, observed_at: datetime | None = None
    ) -> GateResult:
        return GateResult(
            gate=self.gate,
            outcome=self.outcome,
            attributable=self.attributable,
            evidence=dict(self.evidence),
            run_id=run_id,
            observed_at=observed_at,
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    gate: Gate
    outcome: Outcome
    permanent: bool
    fallback_eligible: bool = False
    pause_behavior: bool = False
    needs_key_check: bool = False
    explanation: str = ""


_RULES: dict[str, _Rule] = {
    "key_limit": _Rule(
        Gate.SPEND_CAP, Outcome.FAIL, True, explanation="the behavior's key limit is reached"
    ),
    "key_credit_exhausted": _Rule(
        Gate.SPEND_CAP, Outcome.FAIL, True, explanation="the behavior's key has no credit left"
    ),
    "insufficient_credits": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        True,
        fallback_eligible=True,
        explanation="OpenRouter refused for credits although the key has credit left "
        "(account balance)",
    ),
    "payment_unverified": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        True,
        needs_key_check=True,
        explanation="402 payment required; the key's balance must be checked to tell whether "
        "the key's own limit is spent",
    ),
    "workspace_budget": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        True,
        explanation="the workspace budget is exhausted: an organisation-wide limit, not this "
        "behavior's key",
    ),
    "prompt_injection": _Rule(
        Gate.PROMPT_INJECTION,
        Outcome.FAIL,
        True,
        explanation="OpenRouter's guardrail blocked the request: prompt injection detected",
    ),
    "sensitive_info": _Rule(
        Gate.SENSITIVE_INFO,
        Outcome.FAIL,
        True,
        explanation="OpenRouter's guardrail blocked the request: sensitive information",
    ),
    "guardrail": _Rule(
        Gate.GUARDRAIL_BLOCK,
        Outcome.FAIL,
        True,
        explanation="OpenRouter refused the request for policy (guardrail or moderation)",
    ),
    "auth": _Rule(
        Gate.AUTH_ERROR,
        Outcome.FAIL,
        True,
        pause_behavior=True,
        explanation="the behavior's key was rejected (invalid or disabled)",
    ),
    "unknown_model": _Rule(
        Gate.PROVIDER_ERROR, Outcome.FAIL, True, explanation="the model or preset was not found"
    ),
    "bad_request": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        True,
        explanation="OpenRouter rejected the request as invalid (behavior configuration or "
        "daemon bug)",
    ),
    "payload_too_large": _Rule(
        Gate.PROVIDER_ERROR, Outcome.FAIL, True, explanation="the request is too large"
    ),
    "forbidden": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        True,
        explanation="OpenRouter refused the request for a reason it did not make recognisable",
    ),
    "request_timeout": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        False,
        fallback_eligible=True,
        explanation="OpenRouter timed out",
    ),
    "rate_limited": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        False,
        fallback_eligible=True,
        explanation="rate limited",
    ),
    "upstream_error": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        False,
        fallback_eligible=True,
        explanation="the provider or OpenRouter failed",
    ),
    "transport_error": _Rule(
        Gate.PROVIDER_ERROR,
        Outcome.FAIL,
        False,
        fallback_eligible=True,
        explanation="the connection to OpenRouter failed",
    ),
    "deadline": _Rule(
        Gate.TIMEOUT,
        Outcome.WARN,
        True,
        explanation="no answer within the behavior's timeout",
    ),
}

# metadata.error_type → the reason, or the family resolver that reads the message.
_ERROR_TYPES: dict[str, str] = {
    "authentication": "auth",
    "permission_denied": "@forbidden",
    "content_policy_violation": "@policy",
    "refusal": "@policy",
    "guardrail_blocked": "@forbidden",
    "key_limit_exceeded": "key_limit",
    "workspace_budget_exceeded": "workspace_budget",
    "payment_required": "@payment",
    "rate_limit_exceeded": "rate_limited",
    "provider_overloaded": "upstream_error",
    "provider_unavailable": "upstream_error",
    "provider_error": "upstream_error",
    "server": "upstream_error",
    "server_error": "upstream_error",
    "internal_error": "upstream_error",
    "timeout": "request_timeout",
    "not_found": "unknown_model",
    "payload_too_large": "payload_too_large",
    "context_length_exceeded": "@bad_request",
    "max_tokens_exceeded": "@bad_request",
    "token_limit_exceeded": "@bad_request",
    "string_too_long": "@bad_request",
    "invalid_request": "@bad_request",
    "invalid_prompt": "@bad_request",
    "precondition_failed": "@bad_request",
    "unprocessable": "@bad_request",
    "invalid_image": "@bad_request",
    "image_too_large": "@bad_request",
    "image_too_small": "@bad_request",
    "unsupported_image_format": "@bad_request",
    "image_not_found": "@bad_request",
    "image_download_failed": "@bad_request",
}

_KEY_LIMIT = re.compile(r"key limit exceeded(?: \((?P<window>\w+) limit\))?", re.IGNORECASE)
_WORKSPACE_BUDGET = re.compile(r"\bworkspace\b[^.]{0,80}\bbudget\b", re.IGNORECASE)
_PROMPT_INJECTION = re.compile(r"prompt[ _-]?injection", re.IGNORECASE)
_CONTENT_FILTER = re.compile(r"content filter:?\s*\[(?P<labels>[^\]]{1,200})\]", re.IGNORECASE)
_MODERATION = re.compile(
    r"moderation|flagged|guardrail|blocked|content polic|violat", re.IGNORECASE
)
_KEY_DISABLED = re.compile(
    r"\bkey\b[^.]{0,40}\bdisabled\b|\bdisabled\b[^.]{0,40}\bkey\b", re.IGNORECASE
)


def classify_response(
    status: int,
    body: bytes | Mapping[str, Any] | None,
    headers: Mapping[str, str],
    *,
    key_has_credit: bool | None = None,
    now: datetime | None = None,
) -> Classification:
    """Classify a non-2xx answer from OpenRouter.

    ``key_has_credit`` is the key's own balance (``GET /api/v1/key``: limit_remaining > 0),
    needed only for a 402. ``now`` converts an HTTP-date ``Retry-After`` into seconds; without
    it such a header is ignored. Raises ``ValueError`` for a 2xx (use ``classify_200``).
    """
    if 200 <= status <= 299:
        raise ValueError(f"status {status} is a success; use classify_200 for errors in a 200")
    document = _parse_body(body)
    classification = _classify_error(
        status,
        _error_object(document),
        headers,
        wire_status=status,
        key_has_credit=key_has_credit,
        now=now,
    )
    return _with_generation_id(classification, document)


def classify_200(
    body: Mapping[str, Any],
    *,
    key_has_credit: bool | None = None,
) -> Classification | None:
    """The error inside a 200 answer (or a streamed chunk), or None when the answer is good.

    An error is a top-level ``error`` object, or a choice with ``finish_reason: "error"``
    (its ``error`` object, if any, says what). The error's ``code`` is read as an HTTP status;
    without a usable one it is an upstream failure (``provider_error``, retryable).
    """
    error = _error_object(body) or None
    errored_choice = False
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, Mapping) and choice.get("finish_reason") == "error":
                errored_choice = True
                if not isinstance(error, Mapping) and isinstance(choice.get("error"), Mapping):
                    error = choice["error"]
                break
    if error is None:
        if not errored_choice:
            return None
        error = {}
    code = error.get("code")
    status = code if isinstance(code, int) and not isinstance(code, bool) else 502
    if not 400 <= status <= 599:
        status = 502
    classification = _classify_error(
        status, error, {}, wire_status=200, key_has_credit=key_has_credit, now=None
    )
    return _with_generation_id(classification, body)


def _with_generation_id(
    classification: Classification, document: Mapping[str, Any]
) -> Classification:
    generation_id = document.get("id")
    if not isinstance(generation_id, str) or "generation_id" in classification.evidence:
        return classification
    evidence = {**classification.evidence, "generation_id": generation_id}
    return replace(classification, evidence=evidence)


def classify_deadline(
    *, timeout_class: str | None = None, seconds: float | None = None
) -> Classification:
    """No answer within the behavior's own deadline: ``timeout``, WARN, attributable.

    The runner's clock decides this, not httpx: an httpx timeout that fires while the
    behavior's deadline is still ahead is a transport error (``classify_transport_error``).
    """
    evidence: dict[str, Any] = {"reason": "deadline", "detail": _RULES["deadline"].explanation}
    if timeout_class is not None:
        evidence["timeout_class"] = timeout_class
    if seconds is not None:
        evidence["seconds"] = seconds
    return _build("deadline", evidence=evidence)


def classify_transport_error(kind: str, detail: str | None = None) -> Classification:
    """A network failure before an HTTP answer (connect error, reset, protocol error, an httpx
    timeout inside the deadline): ``provider_error``, retryable, fallback eligible.

    ``kind`` names the failure (e.g. the httpx exception class); ``detail`` is clipped and
    masked before it becomes evidence.
    """
    evidence: dict[str, Any] = {
        "reason": "transport_error",
        "transport_error": kind,
        "detail": _RULES["transport_error"].explanation,
    }
    if detail:
        evidence["message"] = _clean(detail)
    return _build("transport_error", evidence=evidence)


def to_error(classification: Classification, message: str | None = None) -> OpenRouterError:
    """The boundary error carrying ``classification``'s decision (message defaults to its
    explanation)."""
    text = message or _RULES[classification.reason].explanation
    return OpenRouterError(
        text,
        status_code=classification.status_code,
        gate=classification.gate.value,
        attributable=classification.attributable,
        permanent=classification.permanent,
        retry_after=classification.retry_after,
        evidence=dict(classification.evidence),
    )


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


def _classify_error(
    status: int,
    error: Mapping[str, Any],
    headers: Mapping[str, str],
    *,
    wire_status: int,
    key_has_credit: bool | None,
    now: datetime | None,
) -> Classification:
    message = error.get("message")
    message = message if isinstance(message, str) else ""
    raw_metadata = error.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, Mapping) else {}
    error_type = metadata.get("error_type")
    error_type = error_type if isinstance(error_type, str) else None

    # A 401 is unambiguous (the key was refused); elsewhere error_type is the better witness.
    route = "auth" if status == 401 else _ERROR_TYPES.get(error_type or "")
    route = route or _route_by_status(status)
    extra: dict[str, Any] = {}
    reason = _resolve(route, message[:_MAX_MESSAGE_SCAN], metadata, key_has_credit, extra)

    evidence: dict[str, Any] = {"reason": reason, "status": wire_status}
    evidence["detail"] = _RULES[reason].explanation
    if message:
        evidence["message"] = _clean(message)
    code = error.get("code")
    if code is not None:
        evidence["code"] = code if _is_int(code) else _clean(str(code))
    if error_type is not None:
        evidence["error_type"] = _clean(error_type)
    if metadata:
        evidence["metadata"] = _clean_value(metadata, depth=0)
    generation_id = error.get("generation_id") or metadata.get("generation_id")
    if isinstance(generation_id, str):
        evidence["generation_id"] = generation_id
    evidence.update(extra)

    retry_after = parse_retry_after(_header(headers, "retry-after"), now)
    if retry_after is not None:
        evidence["retry_after"] = retry_after
    return _build(reason, evidence=evidence, status_code=wire_status, retry_after=retry_after)


def _route_by_status(status: int) -> str:
    if status == 401:
        return "auth"
    if status == 402:
        return "@payment"
    if status == 403:
        return "@forbidden"
    if status == 404:
        return "unknown_model"
    if status == 408:
        return "request_timeout"
    if status == 413:
        return "payload_too_large"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "upstream_error"
    return "@bad_request"


def _resolve(
    route: str,
    message: str,
    metadata: Mapping[str, Any],
    key_has_credit: bool | None,
    extra: dict[str, Any],
) -> str:
    """The reason for ``route``: a reason as is, or a family (``@…``) decided by the message."""
    if not route.startswith("@"):
        return route
    limit = _KEY_LIMIT.search(message)
    if limit is not None:
        if limit.group("window"):
            extra["limit_window"] = limit.group("window").lower()
        return "key_limit"
    if _WORKSPACE_BUDGET.search(message):
        return "workspace_budget"
    if route == "@payment":
        return _resolve_payment(metadata, key_has_credit, extra)
    if route == "@bad_request":
        return "bad_request"
    # @forbidden and @policy: OpenRouter's guardrails and moderation.
    if _PROMPT_INJECTION.search(message):
        patterns = metadata.get("patterns")
        if isinstance(patterns, list):
            extra["patterns"] = [_clean(str(p)) for p in patterns[:20]]
        return "prompt_injection"
    content_filter = _CONTENT_FILTER.search(message)
    if content_filter is not None:
        labels = [
            label.upper().replace("_", "-")
            for label in re.split(r"[\s,|]+", content_filter.group("labels"))
            if label
        ]
        extra["labels"] = labels
        return "sensitive_info" if SENSITIVE_LABELS.intersection(labels) else "guardrail"
    if route == "@policy" or "reasons" in metadata or "flagged_input" in metadata:
        return "guardrail"
    if _MODERATION.search(message):
        return "guardrail"
    if _KEY_DISABLED.search(message):
        return "auth"
    return "forbidden"


def _resolve_payment(
    metadata: Mapping[str, Any], key_has_credit: bool | None, extra: dict[str, Any]
) -> str:
    limit_source = metadata.get("limit_source")
    if limit_source == "openrouter_key_limit":
        return "key_limit"
    if key_has_credit is None:
        return "payment_unverified"
    extra["key_has_credit"] = key_has_credit
    return "insufficient_credits" if key_has_credit else "key_credit_exhausted"


def _build(
    reason: str,
    *,
    evidence: dict[str, Any],
    status_code: int | None = None,
    retry_after: float | None = None,
) -> Classification:
    rule = _RULES[reason]
    return Classification(
        gate=rule.gate,
        outcome=rule.outcome,
        reason=reason,
        permanent=rule.permanent,
        fallback_eligible=rule.fallback_eligible,
        pause_behavior=rule.pause_behavior,
        needs_key_check=rule.needs_key_check,
        retry_after=retry_after,
        status_code=status_code,
        evidence=evidence,
    )


def _parse_body(body: bytes | Mapping[str, Any] | None) -> Mapping[str, Any]:
    """An answer body as a mapping; a non-JSON body becomes ``{"error": text}``."""
    if body is None:
        return {}
    if not isinstance(body, bytes | bytearray):
        return body
    text = bytes(body).decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"error": text} if text else {}
    return parsed if isinstance(parsed, Mapping) else {}


def _error_object(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``error`` object of an answer (``{}`` when there is none)."""
    error = document.get("error")
    if isinstance(error, Mapping):
        return error
    if isinstance(error, str):
        return {"message": error}
    return {}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _clean(text: str) -> str:
    """Evidence text: sensitive values masked, clipped (it goes to the database and Notion)."""
    clipped = text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
    return redact_sensitive(clipped)


def _clean_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return _clean(json.dumps(value, default=str))
    if isinstance(value, Mapping):
        return {str(k): _clean_value(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [_clean_value(v, depth + 1) for v in value[:50]]
    return _clean(str(value))
