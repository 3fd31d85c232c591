"""HMAC signing and verification, pure: the checks behind ``POST /webhooks/{source}`` and the
signature our own outbound webhooks (actions, alert channels) carry. A base module: ingest and
the outbox both use it.

Every check compares in constant time (``hmac.compare_digest``), accepts several secrets at once
(rotation: configure the new secret next to the old one, then drop the old), and takes the time
as an argument. Refusals are ``IngestError``: 401 for a missing, wrong or expired signature, 400
for a header that cannot be parsed. Messages never contain a secret or an expected signature.

Schemes
-------
``ledger`` (ours, also what our own outbound webhook actions send)::

    X-Ledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

  ``t`` is the decimal timestamp exactly as sent; the signed bytes are ``t``, a dot, then the raw
  body. The sender may repeat ``v1=`` (one per secret while rotating); items are comma-separated,
  whitespace around them is ignored, unknown keys are ignored. The timestamp must be within
  ``tolerance`` (300 s) of now, either side. Build it with ``sign_generic``.

``stripe``: ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>][,v0=…]``, the same construction
  (signed payload ``"<t>." + body``, 300 s tolerance; ``v0`` and other schemes are ignored).

``github``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``. No timestamp: the
  replay key is the digest of the signed body. Not the ``X-GitHub-Delivery`` id: it is outside
  the signature, so anyone holding one signed request could resend it under new ids (GitHub's
  own redeliveries repeat the event's id and body alike, and are caught either way).

A verified request carries a ``replay_key``; ``ReplayCache.seen`` tells whether it was already
accepted. A replay of a request we already accepted is harmless to acknowledge: answer 2xx and
record nothing (senders retry when our answer is lost).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from ledger.errors import ConfigError, IngestError

__all__ = [
    "GENERIC_HEADER",
    "GITHUB_DELIVERY_HEADER",
    "GITHUB_HEADER",
    "STRIPE_HEADER",
    "ReplayCache",
    "Scheme",
    "VerifiedWebhook",
    "sign_generic",
    "sign_github",
    "verify_generic",
    "verify_github",
    "verify_stripe",
    "verify_webhook",
]

GENERIC_HEADER: Final = "X-Ledger-Signature"
STRIPE_HEADER: Final = "Stripe-Signature"
GITHUB_HEADER: Final = "X-Hub-Signature-256"
GITHUB_DELIVERY_HEADER: Final = "X-GitHub-Delivery"
DEFAULT_TOLERANCE_S: Final = 300.0

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")

Secret = str | bytes


class Scheme(StrEnum):
    LEDGER = "ledger"
    STRIPE = "stripe"
    GITHUB = "github"


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """A request whose signature checked out.

    ``timestamp`` is the signed unix time (None for GitHub). ``replay_key`` identifies the request
    for ``ReplayCache`` (a timestamp and body digest, or GitHub's delivery id); ``replayed`` is set
    by ``verify_webhook`` when a cache was given and had seen the key.
    """

    scheme: Scheme
    timestamp: int | None
    replay_key: str
    replayed: bool = False


def _key(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _hmac_hex(secret: Secret, payload: bytes) -> str:
    return hmac.new(_key(secret), payload, hashlib.sha256).hexdigest()


def _require_secrets(secrets: Sequence[Secret], header: str) -> None:
    if not secrets:
        raise ConfigError(f"no signing secret is configured to check {header}")


def sign_generic(secret: Secret, body: bytes, t: int) -> str:
    """The ``X-Ledger-Signature`` value for ``body`` signed at unix time ``t``."""
    return f"t={t},v1={_hmac_hex(secret, f'{t}.'.encode() + body)}"


def sign_github(secret: Secret, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for ``body``."""
    return f"sha256={_hmac_hex(secret, body)}"


def _parse_timestamped(header_name: str, header: str | None) -> tuple[str, list[str]]:
    """``t=…,v1=…[,v1=…]`` → (raw t, lowercase v1 candidates). 401 if absent, 400 if malformed."""
    if header is None or not header.strip():
        raise IngestError(f"missing {header_name} header", status_code=401)
    timestamp: str | None = None
    candidates: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise IngestError(
                f"{header_name} header is malformed: expected key=value items, "
                f"got {item.strip()[:40]!r}",
                status_code=400,
            )
        value = value.strip()
        if name == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                raise IngestError(
                    f"{header_name} header is malformed: t must be one unix timestamp",
                    status_code=400,
                )
            timestamp = value
        elif name == "v1":
            candidates.append(value.lower())
    if timestamp is None:
        raise IngestError(f"{header_name} header is malformed: no t= timestamp", status_code=400)
    if not candidates:
        raise IngestError(f"{header_name} header is malformed: no v1= signature", status_code=400)
    return timestamp, candidates


def _matches(expected: str, candidates: Sequence[str]) -> bool:
    matched = False
    for candidate in candidates:
        # Both sides are ASCII hex here, so compare_digest accepts them.
        if _SHA256_HEX.fullmatch(candidate) and hmac.compare_digest(expected, candidate):
            matched = True
    return matched


def _verify_timestamped(
    scheme: Scheme,
    header_name: str,
    header: str | None,
    body: bytes,
    secrets: Sequence[Secret],
    now: float,
    tolerance: float,
) -> VerifiedWebhook:
    _require_secrets(secrets, header_name)
    raw_t, candidates = _parse_timestamped(header_name, header)
    payload = raw_t.encode("ascii") + b"." + body
    if not any(_matches(_hmac_hex(secret, payload), candidates) for secret in secrets):
        raise IngestError(
            f"{header_name} does not match the body with any configured secret", status_code=401
        )
    t = int(raw_t)
    age = now - t
    if abs(age) > tolerance:
        when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
        raise IngestError(
            f"{header_name} timestamp is {when}; the tolerance is {tolerance:.0f} s "
            "(check the sender's clock, or this is a replay)",
            status_code=401,
        )
    digest = hashlib.sha256(body).hexdigest()
    return VerifiedWebhook(scheme, t, f"{raw_t}:{digest}")


def verify_generic(
    header: str | None,
    body: bytes,
    secrets: Sequence[Secret],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> VerifiedWebhook:
    """Check an ``X-Ledger-Signature`` header (format in the module docstring)."""
    return _verify_timestamped(Scheme.LEDGER, GENERIC_HEADER, header, body, secrets, now, tolerance)


def verify_stripe(
    header: str | None,
    body: bytes,
    secrets: Sequence[Secret],
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> VerifiedWebhook:
    """Check a ``Stripe-Signature`` header against Stripe endpoint secrets (``whsec_…``)."""
    return _verify_timestamped(Scheme.STRIPE, STRIPE_HEADER, header, body, secrets, now, tolerance)


def verify_github(header: str | None, body: bytes, secrets: Sequence[Secret]) -> VerifiedWebhook:
    """Check an ``X-Hub-Signature-256`` header; the replay key is the signed body's digest
    (GitHub bodies are unique per event; the delivery id header is not signed)."""
    _require_secrets(secrets, GITHUB_HEADER)
    if header is None or not header.strip():
        raise IngestError(f"missing {GITHUB_HEADER} header", status_code=401)
    algorithm, sep, candidate = header.strip().partition("=")
    if not sep or algorithm != "sha256" or not _SHA256_HEX.fullmatch(candidate):
        raise IngestError(
            f"{GITHUB_HEADER} header is malformed: expected sha256=<64 hex digits>",
            status_code=400,
        )
    if not any(_matches(_hmac_hex(secret, body), [candidate.lower()]) for secret in secrets):
        raise IngestError(
            f"{GITHUB_HEADER} does not match the body with any configured secret", status_code=401
        )
    return VerifiedWebhook(Scheme.GITHUB, None, f"body:{hashlib.sha256(body).hexdigest()}")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def verify_webhook(
    scheme: Scheme,
    source: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[Secret],
    *,
    now: float,
    replay_cache: ReplayCache | None = None,
    tolerance: float = DEFAULT_TOLERANCE_S,
) -> VerifiedWebhook:
    """Verify a request for ``source`` by its scheme, then consult ``replay_cache``.

    ``headers`` may be Starlette's case-insensitive ``Headers`` or a plain dict. A replay is not an
    error: the result has ``replayed=True`` and the route should acknowledge without recording.
    """
    if scheme is Scheme.LEDGER:
        verified = verify_generic(
            _header(headers, GENERIC_HEADER), body, secrets, now=now, tolerance=tolerance
        )
    elif scheme is Scheme.STRIPE:
        verified = verify_stripe(
            _header(headers, STRIPE_HEADER), body, secrets, now=now, tolerance=tolerance
        )
    else:
        verified = verify_github(_header(headers, GITHUB_HEADER), body, secrets)
    if replay_cache is not None and replay_cache.seen(source, verified.replay_key):
        return VerifiedWebhook(verified.scheme, verified.timestamp, verified.replay_key, True)
    return verified


class ReplayCache:
    """Bounded memory of accepted requests: at most ``max_size`` keys, each for ``ttl`` seconds.

    ``clock`` returns seconds (monotonic or wall, as long as it does not go backwards). Keep
    ``ttl`` at least twice the signature tolerance so a timestamped request cannot be replayed
    inside its window; when full, the oldest key is forgotten first. One process only: replicas
    each keep their own (the ledger's idempotency keys are the durable guard).
    """

    def __init__(
        self, clock: Callable[[], float], *, max_size: int = 100_000, ttl: float = 600.0
    ) -> None:
        if max_size < 1 or ttl <= 0:
            raise ValueError("ReplayCache needs max_size >= 1 and ttl > 0")
        self._clock = clock
        self._max_size = max_size
        self._ttl = ttl
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        self._purge(self._clock())
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            oldest_key = next(iter(expiry))
            if expiry[oldest_key] > now:
                break
            del expiry[oldest_key]

    def seen(self, source: str, key: str) -> bool:
        """Whether ``(source, key)`` was recorded within the TTL; records it if not."""
        now = self._clock()
        self._purge(now)
        entry = (source, key)
        if entry in self._expiry:
            return True
        self._expiry[entry] = now + self._ttl
        while len(self._expiry) > self._max_size:
            self._expiry.popitem(last=False)
        return False
