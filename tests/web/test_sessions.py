"""Session cookies, CSRF tokens and the login rate limit, without a server; and the dashboard's
pure pieces (Markdown with HTML off, the spend chart)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from ledger.config import Settings
from ledger.errors import ConfigError
from ledger.web.app import startup_problems
from ledger.web.auth import Operator
from ledger.web.dashboard.charts import spend_chart
from ledger.web.dashboard.render import markdown
from ledger.web.sessions import SESSION_SECONDS, LoginRateLimit, SessionSigner, session_secret


def test_a_session_cookie_reads_back_until_it_expires_and_not_when_edited() -> None:
    signer = SessionSigner(b"k" * 32)
    cookie, session = signer.issue(Operator("api:ops", "operator"), now=1000.0)
    back = signer.read(cookie, now=1001.0)
    assert back == session
    assert back is not None and back.operator == Operator("api:ops", "operator")
    assert signer.read(cookie, now=1000.0 + SESSION_SECONDS) is None  # expired
    body, signature = cookie.split(".")
    assert signer.read(body[:-1] + ("A" if body[-1] != "A" else "B") + "." + signature) is None
    assert SessionSigner(b"x" * 32).read(cookie, now=1001.0) is None  # another secret
    assert signer.read("garbage") is None and signer.read(None) is None
    # A value sealed for another purpose (a flash message) is no session.
    assert signer.read(signer.seal("flash", {"n": "x", "r": "admin", "s": "s", "e": 9e9})) is None


def test_csrf_tokens_are_bound_to_their_session() -> None:
    signer = SessionSigner(b"k" * 32)
    token = signer.csrf_token("sid-1")
    assert signer.csrf_ok("sid-1", token)
    assert not signer.csrf_ok("sid-2", token)
    assert not signer.csrf_ok(None, token) and not signer.csrf_ok("sid-1", None)


def test_the_login_limit_counts_failures_per_address_in_a_sliding_window() -> None:
    limit = LoginRateLimit(attempts=3, window=60.0)
    for t in (0.0, 1.0, 2.0):
        assert limit.retry_after("10.0.0.1", now=t) is None
        limit.failed("10.0.0.1", now=t)
    assert limit.retry_after("10.0.0.1", now=3.0) == 57
    assert limit.retry_after("10.0.0.2", now=3.0) is None  # another address
    assert limit.retry_after("10.0.0.1", now=60.5) is None  # the first failure aged out
    limit.succeeded("10.0.0.1")
    assert limit.retry_after("10.0.0.1", now=3.0) is None


def test_the_limit_forgets_old_clients_when_it_holds_too_many() -> None:
    limit = LoginRateLimit(attempts=1, window=10.0, max_clients=2)
    limit.failed("a", now=0.0)
    limit.failed("b", now=0.0)
    limit.failed("c", now=20.0)  # a and b aged out: forgotten
    assert limit.retry_after("c", now=20.0) == 10
    limit.failed("d", now=21.0)
    limit.failed("e", now=22.0)  # full of recent ones: the oldest goes
    assert limit.retry_after("c", now=22.0) is None


def test_a_short_session_secret_is_refused_and_a_reference_is_resolved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = {"database_url": "sqlite://", "behaviors_dir": Path("b")}
    assert session_secret(Settings(**base)) is None
    with pytest.raises(ConfigError, match="at least 32"):
        session_secret(Settings(**base, session_secret=SecretStr("short")))
    monkeypatch.setenv("DASH_SESSION_SECRET", "s" * 40)
    assert session_secret(
        Settings(**base, session_secret=SecretStr("env:DASH_SESSION_SECRET"))
    ) == (b"s" * 40)


def test_a_bad_session_secret_stops_the_start_with_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DASH_NO_SUCH_SECRET", raising=False)
    base = {"database_url": "sqlite://", "behaviors_dir": Path("b")}
    short = startup_problems(Settings(**base, session_secret=SecretStr("short")), database=False)
    missing = startup_problems(
        Settings(**base, session_secret=SecretStr("env:DASH_NO_SUCH_SECRET")), database=False
    )
    assert [p for p in short if p.startswith("session_secret:")] == [
        "session_secret: session_secret is 5 characters; use at least 32 (e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
    ]
    assert any(p.startswith("session_secret:") and "DASH_NO_SUCH_SECRET" in p for p in missing), (
        missing
    )


def test_markdown_renders_formatting_but_shows_html_as_text() -> None:
    html = str(
        markdown(
            "# Title\n\n**bold** <script>alert(1)</script> <img src=x onerror=alert(2)> "
            "[a](javascript:alert(3)) [b](https://example.org)"
        )
    )
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "javascript:" not in html.split("[a]")[0]
    assert 'href="javascript' not in html
    assert '<a href="https://example.org">b</a>' in html


def test_the_spend_chart_scales_bars_to_the_largest_day() -> None:
    days = [datetime(2026, 12, d, tzinfo=UTC) for d in (1, 2, 3)]
    chart = spend_chart(list(zip(days, [0.5, 1.0, 0.0], strict=True)), width=340, height=120)
    assert chart is not None
    heights = [bar.height for bar in chart.bars]
    assert heights[1] == 92.0 and heights[0] == 46.0 and heights[2] == 0.5  # a visible stub
    assert chart.max_label == "$1.00" and chart.first_label == "Dec 01"
    assert "largest day $1.00" in chart.summary
    cheap = spend_chart([(days[0], 0.000031)])
    assert cheap is not None and cheap.max_label == "$0.000031"  # not $0.0000
    assert cheap.bars[0].label == "2026-12-01: $0.000031"
    assert spend_chart([]) is None
    flat = spend_chart([(days[0], 0.0)])
    assert flat is not None and flat.max_label == "$0.00" and flat.bars[0].height == 0.5
