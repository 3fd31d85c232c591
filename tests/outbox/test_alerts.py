"""Alerts: the words, the Slack payload, dedup, and delivery through each channel."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from sqlmodel import col, select
from structlog.testing import capture_logs

from ledger.clock import FakeClock, json_time
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.outbox.alerts import (
    LogChannel,
    SignedWebhookChannel,
    SlackChannel,
    alert_handlers,
    alert_headline,
    alert_text,
    slack_message,
)
from ledger.outbox.dispatcher import OutboxItem, dispatch_one
from ledger.outbox.enqueue import KIND_ALERT, KIND_DEMOTION_ALERT, enqueue_alert
from ledger.outbox.urls import make_client
from ledger.signatures import GENERIC_HEADER, verify_generic
from tests.factories import DEMOTION_ALERT as DEMOTION
from tests.factories import T0
from tests.servers import capture_server


def item(alert: dict[str, Any], outbox_id: int = 7) -> OutboxItem:
    return OutboxItem(outbox_id, KIND_DEMOTION_ALERT, {"alert": alert}, 1, None, T0)


def queue(db: Database, alert: dict[str, Any], channels: list[str], **kw: Any) -> list[int]:
    kw.setdefault("now", T0)
    with db.transaction() as session:
        return [row.id for row in enqueue_alert(session, alert, channels=channels, **kw) if row.id]


def test_a_demotion_reads_as_plain_english_with_tier_meanings() -> None:
    assert alert_headline(DEMOTION) == (
        "seo-audit demoted from C · autonomous to B · human-in-the-loop: "
        "guardrail_block failed on run r-41"
    )
    assert alert_text(DEMOTION) == (
        "seo-audit demoted from C · autonomous to B · human-in-the-loop: "
        "guardrail_block failed on run r-41\n"
        "Evidence:\n"
        "- gate guardrail_block, outcome fail, run r-41\n"
        "At 2026-11-02T09:00:00Z"
    )


def test_evidence_given_as_ids_says_they_are_gate_results_and_where_to_read_them() -> None:
    alert = {**DEMOTION, "evidence": [7, 8], "behavior": "seo-audit"}
    lines = alert_text(alert).splitlines()
    assert lines[1:4] == [
        "Evidence (`ledger explain seo-audit` shows each gate result's run):",
        "- gate result 7",
        "- gate result 8",
    ]
    blocks = slack_message(alert)["blocks"]
    assert any("• gate result 7" in str(block) for block in blocks)


@pytest.mark.parametrize(
    ("alert", "headline"),
    [
        (
            {
                "event": "promotion",
                "behavior": "digest",
                "from": "A",
                "to": "B",
                "reason": "10 clean runs",
            },
            "digest promoted from A · proposal-only to B · human-in-the-loop: 10 clean runs",
        ),
        (
            {"event": "promotion_proposed", "behavior": "digest", "from": "B", "to": "C"},
            "digest is proposed for promotion from B · human-in-the-loop to C · autonomous "
            "(an operator must confirm)",
        ),
        (
            {"event": "pause", "behavior": "digest", "reason": "second fail within 24 h"},
            "digest paused: second fail within 24 h",
        ),
        (
            {"event": "provider_error", "behavior": "digest", "reason": "5 failures in a row"},
            "digest failing with provider errors: 5 failures in a row",
        ),
    ],
)
def test_other_events_read_as_plain_english(alert: dict[str, Any], headline: str) -> None:
    assert alert_headline(alert) == headline


def test_long_evidence_is_shortened() -> None:
    alert = {**DEMOTION, "evidence": [f"result {n}" for n in range(12)]}
    text = alert_text(alert)
    assert "- result 7" in text and "- result 8" not in text
    assert "- …and 4 more" in text


def test_the_slack_message_has_fallback_text_and_escaped_blocks() -> None:
    alert = {**DEMOTION, "reason": "output matched <script> & more"}
    message = slack_message(alert, "https://ledger.example.com/")
    assert message["text"] == alert_headline(alert)
    assert [block["type"] for block in message["blocks"]] == [
        "header",
        "section",
        "section",
        "section",
        "section",
        "context",
    ]
    header, who, reason, evidence, link, context = message["blocks"]
    assert header["text"] == {"type": "plain_text", "text": "seo-audit demoted"}
    assert who["fields"] == [
        {"type": "mrkdwn", "text": "*Behavior*\nseo-audit"},
        {"type": "mrkdwn", "text": "*Tier*\nC · autonomous → B · human-in-the-loop"},
    ]
    assert reason["text"]["text"] == "*Reason*\noutput matched &lt;script&gt; &amp; more"
    assert evidence["text"]["text"] == "*Evidence*\n• gate guardrail_block, outcome fail, run r-41"
    assert link["text"]["text"] == (
        "<https://ledger.example.com/behaviors/seo-audit|Open seo-audit in the dashboard>"
    )
    assert context["elements"] == [{"type": "mrkdwn", "text": "At 2026-11-02T09:00:00Z"}]


def test_without_a_public_url_the_slack_message_has_no_dashboard_link() -> None:
    message = slack_message(DEMOTION)
    assert "dashboard" not in orjson.dumps(message).decode()


def test_a_folded_alert_says_how_often_it_happened() -> None:
    folded = {**DEMOTION, "count": 4, "window_seconds": 900, "first_at": "2026-11-02T08:50:00"}
    assert alert_headline(folded) == (
        "seo-audit demoted 4 times in 15 min; latest from C · autonomous to "
        "B · human-in-the-loop: guardrail_block failed on run r-41"
    )
    message = slack_message(folded)
    assert message["blocks"][0]["text"]["text"] == "seo-audit demoted 4 times in 15 min"
    assert message["blocks"][-1]["elements"][0]["text"] == (
        "4 times in 15 min, first at 2026-11-02T08:50:00"
    )


def _rows(db: Database) -> list[OutboxRow]:
    with db.transaction() as session:
        return list(session.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all())


def test_the_first_alert_goes_at_once_and_repeats_fold_into_one_follow_up(db: Database) -> None:
    window = timedelta(minutes=15)
    first = queue(db, DEMOTION, ["slack", "log"], window=window)
    assert len(first) == 2
    # Repeats within the window, with other reasons and run ids: one follow-up per channel.
    follow = queue(
        db,
        {**DEMOTION, "reason": "r-42"},
        ["slack", "log"],
        window=window,
        now=T0 + timedelta(minutes=1),
    )
    assert len(follow) == 2
    for minute in (2, 3):
        assert (
            queue(
                db,
                {**DEMOTION, "reason": f"r-4{minute + 1}"},
                ["slack", "log"],
                window=window,
                now=T0 + timedelta(minutes=minute),
            )
            == []
        )
    rows = [r for r in _rows(db) if r.payload["channel"] == "slack"]
    assert len(rows) == 2
    sent, pending = rows
    assert sent.payload == {"channel": "slack", "behavior": "seo-audit", "alert": DEMOTION}
    assert sent.next_attempt_at == T0
    assert pending.next_attempt_at == T0 + window  # sent when the window ends
    assert pending.kind == KIND_DEMOTION_ALERT
    alert = pending.payload["alert"]
    assert (alert["count"], alert["reason"], alert["window_seconds"]) == (4, "r-44", 900)
    assert alert["first_at"] == json_time(T0) == "2026-11-02T09:00:00Z"
    # After the window: a new window, sent at once.
    again = queue(db, DEMOTION, ["slack"], window=window, now=T0 + timedelta(minutes=16))
    assert len(again) == 1
    with db.transaction() as session:
        row = session.get(OutboxRow, again[0])
        assert row is not None and row.next_attempt_at == T0 + timedelta(minutes=16)
        assert "count" not in row.payload["alert"]


def test_other_events_and_behaviors_do_not_fold_together(db: Database) -> None:
    queue(db, DEMOTION, ["slack"])
    assert len(queue(db, {**DEMOTION, "behavior": "digest"}, ["slack"])) == 1
    assert len(queue(db, {**DEMOTION, "event": "pause"}, ["slack"])) == 1
    assert len(queue(db, DEMOTION, ["other"])) == 1


def test_only_demotions_get_the_demotion_kind(db: Database) -> None:
    paused = {"event": "paused", "behavior": "seo-audit", "reason": "x"}
    (row_id,) = queue(db, paused, ["log"])
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and row.kind == KIND_ALERT
        assert row.payload["alert"]["at"] == json_time(T0)


def test_an_alert_without_event_or_behavior_is_refused(db: Database) -> None:
    with pytest.raises(ValueError, match="needs an event and a behavior"), db.transaction() as s:
        enqueue_alert(s, {"event": "demotion"}, channels=["log"], now=T0)


async def test_a_demotion_reaches_slack_as_json_with_text_and_blocks(db: Database) -> None:
    async with capture_server() as capture, make_client() as client:
        channels = {"slack": SlackChannel("slack", SecretStr(capture.url("/slack")), client, True)}
        (row_id,) = queue(db, DEMOTION, ["slack"])
        assert await dispatch_one(db, alert_handlers(channels), FakeClock(T0))
    (request,) = capture.to("/slack")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == slack_message(DEMOTION)
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and row.status == "delivered"


async def test_the_signed_webhook_channel_verifies_with_the_shared_secret(db: Database) -> None:
    clock = FakeClock(T0)
    async with capture_server() as capture, make_client() as client:
        channel = SignedWebhookChannel(
            "ops", SecretStr(capture.url("/ops")), SecretStr("whsec-ops"), client, clock, True
        )
        (row_id,) = queue(db, DEMOTION, ["ops"])
        assert await dispatch_one(db, alert_handlers({"ops": channel}), clock)
    (request,) = capture.to("/ops")
    verified = verify_generic(
        request.headers[GENERIC_HEADER.lower()],
        request.body,
        ["whsec-ops"],
        now=T0.timestamp(),
    )
    assert verified.timestamp == int(T0.timestamp())
    assert request.headers["x-ledger-delivery"] == str(row_id)
    assert request.json() == {
        "event": "demotion",
        "behavior": "seo-audit",
        "text": alert_text(DEMOTION),
        "alert": DEMOTION,
        "delivery": row_id,
    }


async def test_alerts_go_out_with_z_times_even_from_rows_stored_with_plus_00_00(
    db: Database,
) -> None:
    """Times in a delivered alert are the API's ("…Z"): those the daemon writes now, and those
    of a row an older version stored with "+00:00" (a follow-up's ``first_at`` too); the
    signature covers the body as sent."""
    clock = FakeClock(T0)
    old = {**DEMOTION, "at": "2026-11-02T09:00:00+00:00", "first_at": "2026-11-02T08:50:00+00:00"}
    with db.transaction() as session:
        (fresh,) = enqueue_alert(session, {**DEMOTION, "at": None}, channels=["ops"], now=T0)
        assert fresh.payload["alert"]["at"] == "2026-11-02T09:00:00Z"
        stored = OutboxRow(
            kind=KIND_ALERT,
            payload={"channel": "ops", "behavior": "seo-audit", "alert": old},
            next_attempt_at=T0,
            created_at=T0,
        )
        session.add(stored)
    async with capture_server() as capture, make_client() as client:
        channel = SignedWebhookChannel(
            "ops", SecretStr(capture.url("/ops")), SecretStr("whsec-ops"), client, clock, True
        )
        assert await dispatch_one(db, alert_handlers({"ops": channel}), clock)
        assert await dispatch_one(db, alert_handlers({"ops": channel}), clock)
    requests = capture.to("/ops")
    assert len(requests) == 2
    for request in requests:
        verify_generic(
            request.headers[GENERIC_HEADER.lower()], request.body, ["whsec-ops"], now=T0.timestamp()
        )
        alert = request.json()["alert"]
        assert alert["at"] == "2026-11-02T09:00:00Z"
        assert "+00:00" not in request.body.decode()
    assert requests[1].json()["alert"]["first_at"] == "2026-11-02T08:50:00Z"
    assert "At 2026-11-02T09:00:00Z" in requests[1].json()["text"]


async def test_slack_answering_429_is_retried_after_its_retry_after(db: Database) -> None:
    clock = FakeClock(T0)
    async with capture_server() as capture, make_client() as client:
        capture.answer("/slack", 429, {"Retry-After": "90"})
        handlers = alert_handlers(
            {"slack": SlackChannel("slack", SecretStr(capture.url("/slack")), client, True)}
        )
        (row_id,) = queue(db, DEMOTION, ["slack"])
        assert await dispatch_one(db, handlers, clock)
        with db.transaction() as session:
            row = session.get(OutboxRow, row_id)
            assert row is not None
            assert (row.status, row.next_attempt_at) == ("pending", T0 + timedelta(seconds=90))
            assert row.last_error == "alert channel slack answered HTTP 429; will retry"
        clock.set(T0 + timedelta(seconds=89))
        assert not await dispatch_one(db, handlers, clock)
        clock.set(T0 + timedelta(seconds=90))
        assert await dispatch_one(db, handlers, clock)
    assert len(capture.to("/slack")) == 2
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and (row.status, row.attempts) == ("delivered", 2)


@pytest.mark.parametrize(("status", "outcome"), [(503, "pending"), (500, "pending"), (404, "dead")])
async def test_channel_failures_are_retried_or_dead_lettered_by_status(
    db: Database, status: int, outcome: str
) -> None:
    async with capture_server() as capture, make_client() as client:
        capture.answer("/slack", status)
        handlers = alert_handlers(
            {"slack": SlackChannel("slack", SecretStr(capture.url("/slack")), client, True)}
        )
        (row_id,) = queue(db, DEMOTION, ["slack"])
        assert await dispatch_one(db, handlers, FakeClock(T0))
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and row.status == outcome
        assert row.last_error is not None and capture.base_url not in row.last_error


async def test_a_slack_url_on_a_private_address_is_refused_without_the_setting(
    db: Database,
) -> None:
    async with capture_server() as capture, make_client() as client:
        handlers = alert_handlers(
            {"slack": SlackChannel("slack", SecretStr(capture.url("/slack")), client)}
        )
        (row_id,) = queue(db, DEMOTION, ["slack"])
        assert await dispatch_one(db, handlers, FakeClock(T0))
    assert capture.requests == []
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and row.status == "dead"
        assert row.last_error is not None and "is a loopback address" in row.last_error


async def test_the_log_channel_writes_the_headline_as_a_warning(db: Database) -> None:
    queue(db, DEMOTION, ["log"])
    with capture_logs() as logs:
        assert await dispatch_one(db, alert_handlers({"log": LogChannel()}), FakeClock(T0))
    (line,) = [entry for entry in logs if entry.get("channel") == "log"]
    assert line["log_level"] == "warning"
    assert line["event"] == alert_headline(DEMOTION)
    assert line["behavior"] == "seo-audit"
    assert line["evidence"] == ["gate guardrail_block, outcome fail, run r-41"]


async def test_an_alert_for_a_channel_no_longer_configured_is_a_dead_letter(
    db: Database,
) -> None:
    (row_id,) = queue(db, DEMOTION, ["pager"])
    assert await dispatch_one(db, alert_handlers({"log": LogChannel()}), FakeClock(T0))
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None and row.status == "dead"
        assert row.last_error == "alert channel 'pager' is not configured (requeue it once it is)"


async def test_log_channel_send_needs_no_network() -> None:
    with capture_logs() as logs:
        await LogChannel("audit").send(DEMOTION, item(DEMOTION))
    assert logs[0]["channel"] == "audit"
