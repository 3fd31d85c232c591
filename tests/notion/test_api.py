"""The Notion client's pieces that need no server: the limiter's arithmetic, and every foreign
error class translated into a NotionError with the retry decision."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from notion_client.errors import (
    APIResponseError,
    InvalidPathParameterError,
    RequestTimeoutError,
    UnknownHTTPResponseError,
)

from ledger.notion.api import translate
from ledger.notion.limiter import TokenBucket
from tests.notion.checks import max_in_window


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _starts(bucket: TokenBucket, ticker: Ticker, arrivals: list[float]) -> list[float]:
    """When each request starts, given when callers ask (in order)."""
    starts = []
    for at in arrivals:
        ticker.now = max(ticker.now, at)
        while (wait := bucket.delay()) > 0:
            ticker.now += wait
        starts.append(ticker.now)
    return starts


@given(st.lists(st.floats(min_value=0, max_value=60), min_size=1, max_size=400))
def test_the_default_bucket_never_exceeds_30_requests_in_any_10_seconds(
    arrivals: list[float],
) -> None:
    ticker = Ticker()
    starts = _starts(TokenBucket(monotonic=ticker), ticker, sorted(arrivals))
    assert max_in_window(starts, 10.0) <= 30


def test_small_bursts_pass_at_once_then_the_rate_holds() -> None:
    ticker = Ticker()
    starts = _starts(TokenBucket(monotonic=ticker), ticker, [0.0] * 30)
    assert starts[:3] == [0.0, 0.0, 0.0]
    assert starts[-1] == pytest.approx(27 / 2.7)


def test_a_pause_holds_everyone_back() -> None:
    ticker = Ticker()
    bucket = TokenBucket(monotonic=ticker)
    bucket.pause(5.0)
    assert _starts(bucket, ticker, [0.0])[0] >= 5.0


def _response(status: int, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1/v1/pages")
    return httpx.Response(status, text=body, headers=headers or {}, request=request)


def _api_error(status: int, code: str, headers: dict[str, str] | None = None) -> Exception:
    body = f'{{"object":"error","status":{status},"code":"{code}","message":"m {code}"}}'
    response = _response(status, body, headers)
    return APIResponseError(
        code=code,
        status=status,
        message=f"m {code}",
        headers=response.headers,
        raw_body_text=body,
    )


@pytest.mark.parametrize(
    ("exc", "permanent", "retry_after"),
    [
        (_api_error(429, "rate_limited", {"Retry-After": "7"}), False, 7.0),
        (_api_error(500, "internal_server_error"), False, None),
        (_api_error(503, "service_unavailable"), False, None),
        (_api_error(409, "conflict_error"), False, None),
        (_api_error(400, "validation_error"), True, None),
        (_api_error(401, "unauthorized"), True, None),
        (_api_error(403, "restricted_resource"), True, None),
        (_api_error(404, "object_not_found"), True, None),
        (
            UnknownHTTPResponseError(
                status=529, headers=httpx.Headers(), raw_body_text="overloaded"
            ),
            False,
            None,
        ),
        (RequestTimeoutError(), False, None),
        (InvalidPathParameterError("bad ../id"), True, None),
        (httpx.ConnectError("refused"), False, None),
        (httpx.ReadTimeout("slow"), False, None),
    ],
)
def test_every_foreign_error_is_translated_with_its_retry_decision(
    exc: Exception, permanent: bool, retry_after: float | None
) -> None:
    error = translate(exc, "creating a page")
    assert error.permanent is permanent
    assert error.retry_after == retry_after
    assert "creating a page" in str(error)
