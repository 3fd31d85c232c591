"""``[alert_channels.NAME]``: every channel type's shape, its events, what is missing said
clearly, secrets masked, and ``ledger serve``'s start-up check accepting each type."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.config import load_settings
from ledger.daemon import build_policy_context
from ledger.errors import ConfigError
from ledger.web.app import startup_problems

CHANNELS = """\
public_url = "https://ledger.example.com/"
alert_dedup_minutes = 10

[alert_channels.chat]
type = "slack"
url = "env:CFG_SLACK_URL"
events = ["demotion", "recovery", "dead_letter"]

[alert_channels.mail]
type = "email"
host = "smtp.example.com"
username = "ledger"
password = "env:CFG_SMTP_PASSWORD"
sender = "ledger@example.com"
to = ["ops@example.com"]

[alert_channels.notes]
type = "notion"
mention = ["8f1c0a3e-1111-4222-8333-944455556666"]
"""


def test_every_channel_type_is_configured_in_ledger_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CFG_SLACK_URL", "https://hooks.slack.com/services/T0/B0/abc")
    monkeypatch.setenv("CFG_SMTP_PASSWORD", "hunter2-smtp")
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(CHANNELS)
    settings = load_settings(cfg, database_url="sqlite://")
    assert settings.public_url == "https://ledger.example.com"
    assert settings.alert_channels["mail"].port is None  # 587 with STARTTLS by default
    assert settings.alert_channels["notes"].mention == ["8f1c0a3e-1111-4222-8333-944455556666"]
    ctx = build_policy_context(settings)
    assert ctx.alert_channels == ("chat", "mail", "notes")
    assert ctx.channel_events == {"chat": ("demotion", "recovery", "dead_letter")}
    assert ctx.alert_window.total_seconds() == 600
    masked = settings.masked()["alert_channels"]
    assert masked["mail"]["password"] == "env:CFG_SMTP_PASSWORD"
    assert masked["chat"]["url"] == "env:CFG_SLACK_URL"
    assert "hunter2" not in repr(masked)
    assert startup_problems(settings, database=False) == []


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'type = "log"\nevents = ["demotoin"]',
            "3:11: alert_channels.ops.events[0]: must be one of 'demotion', ",
        ),
        (
            'type = "pager"',
            "2:8: alert_channels.ops.type: must be one of 'slack', 'webhook', 'email', 'notion' "
            "or 'log', got \"pager\"",
        ),
    ],
)
def test_an_invalid_channel_says_what_and_where(tmp_path: Path, table: str, message: str) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(f"[alert_channels.ops]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert str(caught.value).startswith(f"{cfg}:{message}")


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('type = "email"\nhost = "smtp.example.com"', "an email channel needs sender, to"),
        ('type = "slack"', "a slack channel needs a url (a reference: env:NAME)"),
        ('type = "webhook"\nurl = "env:X"', "a webhook channel needs a signing secret"),
    ],
)
def test_an_incomplete_channel_is_reported_by_the_start_up_check(
    tmp_path: Path, table: str, problem: str
) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(f"[alert_channels.ops]\n{table}\n")
    (line,) = startup_problems(load_settings(cfg, database_url="sqlite://"), database=False)
    assert line.startswith(f"alert_channels.ops: {problem}")


def test_an_email_password_reference_that_does_not_resolve_stops_the_start(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text(
        '[alert_channels.mail]\ntype = "email"\nhost = "h"\nsender = "a@b.c"\nto = ["d@e.f"]\n'
        'password = "env:CFG_NOT_SET_ANYWHERE"\n'
    )
    (problem,) = startup_problems(load_settings(cfg, database_url="sqlite://"), database=False)
    assert problem.startswith("alert_channels.mail: ")
    assert "CFG_NOT_SET_ANYWHERE" in problem
