"""``POST /webhooks/{source}`` over real HTTP: generic, GitHub and Stripe signatures, replays,
refusals, and the recorded ``webhook_event`` rows, on both databases."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.db.models import BehaviorRow, WebhookEvent
from ledger.db.session import Database
from ledger.signatures import sign_generic, sign_github
from ledger.web.app import create_app
from tests.factories import T0, write_behavior
from tests.servers import serve_app, wait_until

SOURCES = {
    "deploys": {"scheme": "generic", "secrets": "old-secret,new-secret", "behavior": "publisher"},
    "github": {"scheme": "github", "secrets": "gh-secret"},
    "stripe": {"scheme": "stripe", "secrets": "whsec_test"},
    "orphan": {"scheme": "generic", "secrets": "s3", "behavior": "no-such-behavior"},
}
NOW = int(T0.timestamp())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def base(database_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[str]:
    write_behavior(tmp_path / "behaviors", "publisher")
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        watch=False,
        webhook_sources=SOURCES,
        ingest_max_body_bytes=4096,
    )
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(serve_app(create_app(settings, clock=clock)))


def events(database_url: str) -> list[dict[str, Any]]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            rows = session.execute(
                select(WebhookEvent, BehaviorRow.name)
                .outerjoin(BehaviorRow, BehaviorRow.id == WebhookEvent.behavior_id)
                .order_by(WebhookEvent.id)
            ).all()
            return [{**event.model_dump(), "behavior": name} for event, name in rows]
    finally:
        db.close()


def generic(
    base: str, body: bytes, signing_key: str = "new-secret", t: int = NOW, **headers: str
) -> httpx.Response:
    return httpx.post(
        base + "/webhooks/deploys",
        content=body,
        headers={"X-Ledger-Signature": sign_generic(signing_key, body, t), **headers},
    )


def test_generic_event_is_recorded_bound_to_its_behavior(base: str, database_url: str) -> None:
    body = orjson.dumps({"event": "deploy.failed", "site": "blog"})
    response = generic(base, body)
    assert response.status_code == 200
    assert response.json() == {"status": "recorded", "event": "deploy.failed"}
    [row] = events(database_url)
    assert row["source"] == "deploys"
    assert row["event"] == "deploy.failed"
    assert row["payload"] == {"event": "deploy.failed", "site": "blog"}
    assert row["behavior"] == "publisher"
    assert row["received_at"] == T0
    # The background processor takes the event whenever it next wakes (it may already have):
    # wait for that rather than race it, then check it was marked at the daemon's clock.
    wait_until(lambda: events(database_url)[0]["processed_at"] is not None, what="processing")
    assert events(database_url)[0]["processed_at"] == T0


def test_event_header_names_the_event_and_the_old_secret_still_verifies(
    base: str, database_url: str
) -> None:
    response = generic(base, b"", signing_key="old-secret", **{"X-Ledger-Event": "cron.ping"})
    assert response.status_code == 200
    [row] = events(database_url)
    assert (row["event"], row["payload"]) == ("cron.ping", {})


def test_replayed_request_is_acknowledged_and_recorded_once(
    base: str, database_url: str, clock: FakeClock
) -> None:
    body = orjson.dumps({"event": "deploy.succeeded"})
    signature = sign_generic("new-secret", body, NOW)
    first = httpx.post(
        base + "/webhooks/deploys", content=body, headers={"X-Ledger-Signature": signature}
    )
    clock.advance(timedelta(seconds=60))
    replay = httpx.post(
        base + "/webhooks/deploys", content=body, headers={"X-Ledger-Signature": signature}
    )
    assert first.json()["status"] == "recorded"
    assert replay.status_code == 200
    assert replay.json()["status"] == "duplicate"
    assert len(events(database_url)) == 1


def test_bad_signatures_are_refused_and_nothing_is_recorded(
    base: str, database_url: str, clock: FakeClock
) -> None:
    body = orjson.dumps({"event": "x"})
    wrong = generic(base, body, signing_key="guessed")
    missing = httpx.post(base + "/webhooks/deploys", content=body)
    malformed = httpx.post(
        base + "/webhooks/deploys", content=body, headers={"X-Ledger-Signature": "garbage"}
    )
    clock.advance(timedelta(minutes=6))
    expired = generic(base, body, t=NOW)
    assert (wrong.status_code, missing.status_code, malformed.status_code, expired.status_code) == (
        401,
        401,
        400,
        401,
    )
    assert wrong.json()["error"]["code"] == "unauthorized"
    assert malformed.json()["error"]["code"] == "bad_request"
    assert "tolerance" in expired.json()["error"]["message"]
    assert events(database_url) == []


def test_unknown_source_is_404_in_the_api_error_shape(base: str) -> None:
    response = httpx.post(base + "/webhooks/nobody", content=b"{}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "nobody" in response.json()["error"]["message"]


def test_body_over_the_limit_is_413_non_json_400_and_a_form_body_415(
    base: str, database_url: str
) -> None:
    too_big = generic(base, b"{" + b" " * 5000 + b"}")
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "too_large"
    not_json = generic(base, b"deploy failed")
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]["message"]
    # JSON sent as curl -d sends it (form-encoded content type) is accepted
    curl_style = orjson.dumps({"event": "cron.ping"})
    accepted = generic(base, curl_style, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert accepted.json() == {"status": "recorded", "event": "cron.ping"}
    # a GitHub webhook left on its form-encoded content type: 415, saying what to change
    form = b"payload=%7B%22action%22%3A%22opened%22%7D"
    github = httpx.post(
        base + "/webhooks/github",
        content=form,
        headers={
            "X-Hub-Signature-256": sign_github("gh-secret", form),
            "X-GitHub-Event": "issues",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert github.status_code == 415
    assert github.json()["error"]["code"] == "unsupported_media_type"
    assert "set the webhook's content type to application/json" in github.json()["error"]["message"]
    assert [e["event"] for e in events(database_url)] == ["cron.ping"]


def test_github_event_is_named_with_its_action_and_deduplicated_by_its_signed_body(
    base: str, database_url: str
) -> None:
    body = orjson.dumps({"action": "opened", "number": 7})
    headers = {
        "X-Hub-Signature-256": sign_github("gh-secret", body),
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }
    first = httpx.post(base + "/webhooks/github", content=body, headers=headers)
    redelivery = httpx.post(base + "/webhooks/github", content=body, headers=headers)
    # a captured request resent under another (unsigned) delivery id is a replay too
    resent = httpx.post(
        base + "/webhooks/github",
        content=body,
        headers={**headers, "X-GitHub-Delivery": "00000000-0000-0000-0000-000000000000"},
    )
    assert first.json() == {"status": "recorded", "event": "pull_request.opened"}
    assert redelivery.json()["status"] == "duplicate"
    assert resent.json()["status"] == "duplicate"
    [row] = events(database_url)
    assert row["replay_key"] == "body:" + hashlib.sha256(body).hexdigest()
    assert row["behavior"] is None

    forged = httpx.post(
        base + "/webhooks/github",
        content=body,
        headers={**headers, "X-Hub-Signature-256": sign_github("other", body)},
    )
    assert forged.status_code == 401


def test_stripe_event_is_named_by_type_and_a_resigned_retry_is_recorded_once(
    base: str, database_url: str, clock: FakeClock
) -> None:
    body = orjson.dumps({"id": "evt_1NG8Du2eZvKYlo2C", "type": "invoice.payment_failed"})
    first = httpx.post(
        base + "/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": sign_generic("whsec_test", body, NOW)},
    )
    clock.advance(timedelta(minutes=30))  # Stripe retries later with a fresh signature
    later = NOW + 1800
    retry = httpx.post(
        base + "/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": sign_generic("whsec_test", body, later)},
    )
    assert first.json() == {"status": "recorded", "event": "invoice.payment_failed"}
    assert retry.json()["status"] == "duplicate"
    [row] = events(database_url)
    assert row["replay_key"] == "event:evt_1NG8Du2eZvKYlo2C"


def test_source_bound_to_an_unknown_behavior_still_records_the_event(
    base: str, database_url: str
) -> None:
    body = orjson.dumps({"event": "ping"})
    response = httpx.post(
        base + "/webhooks/orphan",
        content=body,
        headers={"X-Ledger-Signature": sign_generic("s3", body, NOW)},
    )
    assert response.status_code == 200
    [row] = events(database_url)
    assert (row["event"], row["behavior"]) == ("ping", None)
