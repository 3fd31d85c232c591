"""Outbound URL safety, and every HTTP outcome mapped to a retry decision."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Sequence

import httpx
import pytest

from ledger.http import parse_retry_after
from ledger.outbox.dispatcher import DeliveryError
from ledger.outbox.urls import (
    OutboundURLError,
    check_outbound_url,
    delivery_error_for_status,
    post_json,
    translate_http_error,
)
from tests.factories import T0
from tests.servers import capture_server


def resolves_to(*addresses: str) -> object:
    def resolver(host: str, port: int) -> Sequence[str]:
        return list(addresses)

    return resolver


def unresolvable(host: str, port: int) -> Sequence[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/hook", "a loopback"),
        ("http://[::1]:8080/hook", "a loopback"),
        ("http://10.1.2.3/hook", "a private"),
        ("https://192.168.1.10/hook", "a private"),
        ("http://100.64.0.1/", "a private"),  # carrier-grade NAT
        ("http://169.254.169.254/latest/meta-data/", "a link-local"),  # cloud metadata
        ("http://[fe80::1]/", "a link-local"),
        ("http://[fd00::1]/", "a private"),
        ("http://[::ffff:127.0.0.1]/", "a loopback"),  # IPv4-mapped
        ("http://[64:ff9b::a00:1]/", "a private"),  # NAT64 of 10.0.0.1
        ("http://[2002:7f00:1::1]/", "a loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused_unless_allowed(
    url: str, kind: str
) -> None:
    with pytest.raises(OutboundURLError, match=f"is {kind} address") as refused:
        check_outbound_url(url, allow_private=False, resolver=unresolvable)
    assert refused.value.permanent
    assert "LEDGER_ALLOW_PRIVATE_URLS" in str(refused.value)
    check_outbound_url(url, allow_private=True, resolver=unresolvable)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://224.0.0.1/", "a multicast"),
        ("http://[ff02::1]/", "a multicast"),
        ("http://0.0.0.0:8600/", "an unspecified"),
        ("http://240.0.0.1/", "a reserved"),
        ("http://255.255.255.255/", "a reserved"),
    ],
)
def test_multicast_unspecified_and_reserved_addresses_are_refused_even_when_private_is_allowed(
    url: str, kind: str
) -> None:
    for allow_private in (False, True):
        with pytest.raises(OutboundURLError, match=f"is {kind} address"):
            check_outbound_url(url, allow_private=allow_private, resolver=unresolvable)


def test_a_host_name_is_checked_by_every_address_it_resolves_to() -> None:
    check_outbound_url("https://hooks.example.com/x", False, resolves_to("93.184.215.14"))
    with pytest.raises(OutboundURLError, match=r"hooks\.example\.com \(10\.0\.0\.7\) is a private"):
        check_outbound_url(
            "https://hooks.example.com/x", False, resolves_to("93.184.215.14", "10.0.0.7")
        )
    with pytest.raises(OutboundURLError, match=r"localhost \(::1\) is a loopback"):
        check_outbound_url("http://localhost:8600/", False, resolves_to("::1"))


def test_the_resolver_is_asked_for_the_url_port_or_the_scheme_default() -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> Sequence[str]:
        asked.append((host, port))
        return ["93.184.215.14"]

    check_outbound_url("https://a.example/", False, resolver)
    check_outbound_url("http://b.example/", False, resolver)
    check_outbound_url("http://c.example:8443/", False, resolver)
    assert asked == [("a.example", 443), ("b.example", 80), ("c.example", 8443)]


def test_a_host_that_does_not_resolve_now_is_a_transient_refusal() -> None:
    with pytest.raises(OutboundURLError, match=r"cannot resolve nowhere\.invalid") as refused:
        check_outbound_url("https://nowhere.invalid/", False, unresolvable)
    assert not refused.value.permanent


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.example.com/x", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("hooks.example.com/x", "only http and https"),
        ("http:///nohost", "has no host"),
        ("http://[::1/", "malformed"),
    ],
)
def test_only_http_and_https_urls_with_a_host_are_accepted(url: str, message: str) -> None:
    with pytest.raises(OutboundURLError, match=message):
        check_outbound_url(url, allow_private=True, resolver=resolves_to("93.184.215.14"))


def test_a_refusal_never_repeats_the_url_path_which_may_be_a_credential() -> None:
    url = "http://10.0.0.1/services/T000/B000/sekrit-token-path"
    with pytest.raises(OutboundURLError) as refused:
        check_outbound_url(url, allow_private=False)
    assert "sekrit" not in str(refused.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("Mon, 02 Nov 2026 09:02:00 GMT", 120.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_headers_are_read_as_seconds_or_an_http_date(
    value: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(value, T0) == seconds


@pytest.mark.parametrize(
    ("status", "retry", "attributable"),
    [
        (408, True, False),
        (425, True, False),
        (429, True, False),
        (500, True, False),
        (502, True, False),
        (503, True, False),
        (301, False, False),
        (400, False, True),
        (409, False, True),
        (413, False, True),
        (415, False, True),
        (422, False, True),
        (401, False, False),
        (403, False, False),
        (404, False, False),
        (410, False, False),
    ],
)
def test_http_status_maps_to_retry_or_dead_letter(
    status: int, retry: bool, attributable: bool
) -> None:
    error = delivery_error_for_status(
        status, {"retry-after": "30"}, target="t", attributable_rejections=True, now=T0
    )
    assert error is not None
    assert (error.permanent, error.attributable, error.status_code) == (
        not retry,
        attributable,
        status,
    )
    assert error.retry_after == (30.0 if retry else None) or not retry
    quiet = delivery_error_for_status(status, {}, target="t", attributable_rejections=False, now=T0)
    assert quiet is not None and not quiet.attributable


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    assert (
        delivery_error_for_status(status, {}, target="t", attributable_rejections=True, now=T0)
        is None
    )


def _httpx_exception_classes() -> list[type[Exception]]:
    found: list[type[Exception]] = []
    for _name, obj in inspect.getmembers(httpx):
        if inspect.isclass(obj) and issubclass(obj, Exception):
            found.append(obj)
    return found


@pytest.mark.parametrize("cls", _httpx_exception_classes(), ids=lambda c: c.__name__)
def test_every_httpx_exception_is_translated(cls: type[Exception]) -> None:
    request = httpx.Request("POST", "https://hooks.example.com/secret-path")
    response = httpx.Response(500, request=request)
    if issubclass(cls, httpx.HTTPStatusError):
        exc: Exception = cls("boom", request=request, response=response)
    elif issubclass(cls, httpx.RequestError):
        exc = cls("boom", request=request)
    else:
        try:
            exc = cls("boom")
        except TypeError:  # the stream errors take no message
            exc = cls()
    error = translate_http_error(exc, target="alert channel ops")
    assert isinstance(error, DeliveryError)
    assert "secret-path" not in str(error)
    assert str(error).startswith(("alert channel ops", "cannot reach", "calling", "the request"))


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (httpx.ReadTimeout("slow"), False),
        (httpx.ConnectTimeout("slow"), False),
        (httpx.ConnectError("refused"), False),
        (httpx.RemoteProtocolError("bad"), False),
        (httpx.TooManyRedirects("loop"), True),
        (httpx.UnsupportedProtocol("gopher"), True),
        (httpx.LocalProtocolError("bad header"), True),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_timeouts_and_network_errors_are_retried_and_our_own_mistakes_are_not(
    exc: Exception, permanent: bool
) -> None:
    assert translate_http_error(exc, target="t").permanent is permanent


async def test_post_json_raises_a_retryable_error_when_the_call_times_out() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(timeout)) as client:
        with pytest.raises(DeliveryError, match="did not answer in time") as failed:
            await post_json(
                client,
                "https://hooks.example.com/x",
                b"{}",
                target="alert channel ops",
                resolver=resolves_to("93.184.215.14"),
            )
    assert not failed.value.permanent


async def test_post_json_refuses_loopback_before_sending_anything_unless_allowed() -> None:
    async with capture_server() as capture, httpx.AsyncClient() as client:
        with pytest.raises(DeliveryError, match=r"alert channel ops: 127\.0\.0\.1 is a loopback"):
            await post_json(client, capture.url("/x"), b"{}", target="alert channel ops")
        assert capture.requests == []
        await post_json(client, capture.url("/x"), b"{}", target="ops", allow_private=True)
        assert [r.headers["content-type"] for r in capture.to("/x")] == ["application/json"]


async def test_post_json_does_not_follow_redirects() -> None:
    async with capture_server() as capture, httpx.AsyncClient(follow_redirects=True) as client:
        capture.answer("/moved", 302, {"location": capture.url("/elsewhere")})
        with pytest.raises(DeliveryError, match="redirect") as failed:
            await post_json(client, capture.url("/moved"), b"{}", target="t", allow_private=True)
        assert failed.value.permanent
        assert capture.to("/elsewhere") == []
