"""Signed webhooks: each scheme valid, tampered, expired, replayed and rotated."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import ConfigError, IngestError
from ledger.signatures import (
    ReplayCache,
    Scheme,
    sign_generic,
    sign_github,
    verify_generic,
    verify_github,
    verify_stripe,
    verify_webhook,
)

SECRET = "whsec_current_0123456789"
OLD_SECRET = "whsec_previous_9876543210"
BODY = b'{"id":"evt_1","type":"charge.refunded"}'
NOW = 1_790_606_294.0
T = int(NOW)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refusal(call: Callable[..., object], *args: object, **kwargs: object) -> IngestError:
    with pytest.raises(IngestError) as info:
        call(*args, **kwargs)
    assert SECRET not in str(info.value)
    assert OLD_SECRET not in str(info.value)
    return info.value


# --------------------------------------------------------------------------- generic (ours)


def test_generic_signature_format_is_documented_hmac_of_timestamp_dot_body() -> None:
    header = sign_generic(SECRET, BODY, T)
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"


def test_generic_valid_signature_verifies() -> None:
    verified = verify_generic(sign_generic(SECRET, BODY, T), BODY, [SECRET], now=NOW + 299)
    assert verified.scheme is Scheme.LEDGER
    assert verified.timestamp == T
    assert verified.replay_key == f"{T}:{hashlib.sha256(BODY).hexdigest()}"


def test_generic_tampered_body_or_wrong_secret_is_401() -> None:
    header = sign_generic(SECRET, BODY, T)
    err = refusal(verify_generic, header, BODY + b" ", [SECRET], now=NOW)
    assert err.status_code == 401
    assert "does not match" in str(err)
    assert refusal(verify_generic, header, BODY, ["other"], now=NOW).status_code == 401


def test_generic_changed_timestamp_is_401() -> None:
    signature = sign_generic(SECRET, BODY, T).split(",")[1]
    err = refusal(verify_generic, f"t={T + 1},{signature}", BODY, [SECRET], now=NOW)
    assert err.status_code == 401


def test_generic_expired_or_future_timestamp_is_401() -> None:
    header = sign_generic(SECRET, BODY, T)
    old = refusal(verify_generic, header, BODY, [SECRET], now=NOW + 301)
    assert old.status_code == 401
    assert "301 s old" in str(old)
    future = refusal(verify_generic, header, BODY, [SECRET], now=NOW - 400)
    assert "in the future" in str(future)


def test_generic_missing_header_is_401_and_malformed_is_400() -> None:
    assert refusal(verify_generic, None, BODY, [SECRET], now=NOW).status_code == 401
    assert refusal(verify_generic, "  ", BODY, [SECRET], now=NOW).status_code == 401
    for header in (
        "garbage",
        "v1=abc",
        f"t={T}",
        f"t=yesterday,v1={'0' * 64}",
        f"t={T},t={T},v1={'0' * 64}",
    ):
        err = refusal(verify_generic, header, BODY, [SECRET], now=NOW)
        assert err.status_code == 400, header
        assert "X-Ledger-Signature header is malformed" in str(err)


def test_generic_rotation_accepts_either_secret_and_either_signature() -> None:
    signed_old = sign_generic(OLD_SECRET, BODY, T)
    assert verify_generic(signed_old, BODY, [SECRET, OLD_SECRET], now=NOW).timestamp == T

    v1_new = sign_generic(SECRET, BODY, T).split(",")[1]
    both = f"{signed_old}, {v1_new}"
    assert verify_generic(both, BODY, [SECRET], now=NOW).timestamp == T
    assert verify_generic(both, BODY, [OLD_SECRET], now=NOW).timestamp == T


def test_no_configured_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError):
        verify_generic(sign_generic(SECRET, BODY, T), BODY, [], now=NOW)


def test_non_hex_or_non_ascii_signature_is_a_mismatch_not_a_crash() -> None:
    err = refusal(verify_generic, f"t={T},v1=zé{'0' * 62}", BODY, [SECRET], now=NOW)
    assert err.status_code == 401


@settings(derandomize=True, max_examples=300, deadline=None)
@given(header=st.text(max_size=120), body=st.binary(max_size=64))
def test_random_headers_raise_only_ingest_error(header: str, body: bytes) -> None:
    for verify in (verify_generic, verify_stripe):
        with pytest.raises(IngestError) as info:
            verify(header, body, [SECRET], now=NOW)
        assert info.value.status_code in (400, 401)
    with pytest.raises(IngestError):
        verify_github(header, body, [SECRET])


# --------------------------------------------------------------------------- Stripe


def _stripe_header(secret: str, body: bytes, t: int, *, extra: str = "") -> str:
    signature = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={signature}{extra}"


def test_stripe_valid_signature_with_v0_present_verifies() -> None:
    header = _stripe_header(SECRET, BODY, T, extra=",v0=6ffbb59b2300aae63f27")
    verified = verify_stripe(header, BODY, [SECRET], now=NOW)
    assert (verified.scheme, verified.timestamp) == (Scheme.STRIPE, T)


def test_stripe_invalid_expired_and_rotated() -> None:
    header = _stripe_header(SECRET, BODY, T)
    assert refusal(verify_stripe, header, b"{}", [SECRET], now=NOW).status_code == 401
    expired = refusal(verify_stripe, header, BODY, [SECRET], now=NOW + 301)
    assert "Stripe-Signature timestamp" in str(expired)
    rotated = _stripe_header(OLD_SECRET, BODY, T) + "," + header.split(",")[1]
    assert verify_stripe(rotated, BODY, [SECRET], now=NOW).timestamp == T
    assert verify_stripe(rotated, BODY, [OLD_SECRET], now=NOW).timestamp == T


def test_stripe_header_without_v1_is_400() -> None:
    err = refusal(verify_stripe, f"t={T},v0=abc", BODY, [SECRET], now=NOW)
    assert err.status_code == 400
    assert "no v1= signature" in str(err)


# --------------------------------------------------------------------------- GitHub


def test_github_valid_signature_uses_the_signed_body_as_replay_key() -> None:
    header = sign_github(SECRET, BODY)
    assert header == "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    verified = verify_github(header, BODY, [SECRET])
    assert verified.scheme is Scheme.GITHUB
    assert verified.timestamp is None
    assert verified.replay_key == "body:" + hashlib.sha256(BODY).hexdigest()


def test_github_invalid_malformed_and_rotated() -> None:
    header = sign_github(SECRET, BODY)
    assert refusal(verify_github, header, BODY + b"x", [SECRET]).status_code == 401
    assert refusal(verify_github, None, BODY, [SECRET]).status_code == 401
    for malformed in ("sha1=abc", header[7:], "sha256=xyz"):
        assert refusal(verify_github, malformed, BODY, [SECRET]).status_code == 400
    assert verify_github(header.upper().replace("SHA256", "sha256"), BODY, [OLD_SECRET, SECRET])


# --------------------------------------------------------------------------- replay


def test_replay_cache_remembers_keys_for_the_ttl_only() -> None:
    clock = FakeClock()
    cache = ReplayCache(clock, ttl=600)
    assert cache.seen("stripe", "k1") is False
    assert cache.seen("stripe", "k1") is True
    assert cache.seen("github", "k1") is False  # per source
    clock.now = 599
    assert cache.seen("stripe", "k1") is True
    clock.now = 600
    assert cache.seen("stripe", "k1") is False  # expired, recorded afresh
    assert len(cache) == 1


def test_replay_cache_is_bounded_and_forgets_the_oldest_first() -> None:
    clock = FakeClock()
    cache = ReplayCache(clock, max_size=2, ttl=600)
    for key in ("a", "b", "c"):
        assert cache.seen("src", key) is False
    assert len(cache) == 2
    assert cache.seen("src", "c") is True
    assert cache.seen("src", "a") is False  # evicted


def test_replay_cache_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="max_size"):
        ReplayCache(FakeClock(), max_size=0)


def test_verify_webhook_marks_a_replayed_request() -> None:
    cache = ReplayCache(FakeClock(NOW), ttl=600)
    headers = {"x-ledger-signature": sign_generic(SECRET, BODY, T)}  # lower-case, as ASGI has it

    first = verify_webhook(
        Scheme.LEDGER, "deploys", headers, BODY, [SECRET], now=NOW, replay_cache=cache
    )
    again = verify_webhook(
        Scheme.LEDGER, "deploys", headers, BODY, [SECRET], now=NOW + 5, replay_cache=cache
    )

    assert first.replayed is False
    assert again.replayed is True
    assert again.replay_key == first.replay_key


def test_verify_webhook_replay_of_github_delivery_and_stripe_event() -> None:
    cache = ReplayCache(FakeClock(NOW))
    github = {"X-Hub-Signature-256": sign_github(SECRET, BODY), "X-GitHub-Delivery": "d-1"}
    stripe = {"Stripe-Signature": _stripe_header(SECRET, BODY, T)}

    def run(scheme: Scheme, headers: dict[str, str]) -> bool:
        verified = verify_webhook(
            scheme, scheme.value, headers, BODY, [SECRET], now=NOW, replay_cache=cache
        )
        return verified.replayed

    assert [run(Scheme.GITHUB, github), run(Scheme.GITHUB, github)] == [False, True]
    assert [run(Scheme.STRIPE, stripe), run(Scheme.STRIPE, stripe)] == [False, True]
    # The delivery id is not signed: the same signed body under a new id is still a replay.
    resent = {**github, "X-GitHub-Delivery": "d-2"}
    assert run(Scheme.GITHUB, resent) is True


def test_verify_webhook_refuses_before_touching_the_cache() -> None:
    cache = ReplayCache(FakeClock(NOW))
    headers = {"X-Ledger-Signature": sign_generic("wrong", BODY, T)}
    with pytest.raises(IngestError):
        verify_webhook(Scheme.LEDGER, "s", headers, BODY, [SECRET], now=NOW, replay_cache=cache)
    assert len(cache) == 0
