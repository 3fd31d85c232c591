"""Actions through the outbox: signed webhooks, log lines, Notion rows kept until it exists."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlmodel import col, update
from structlog.testing import capture_logs

from ledger.clock import FakeClock
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.errors import SecretError
from ledger.outbox.actions import NOTION_NOT_CONFIGURED, ActionDeliverer, action_handlers
from ledger.outbox.dispatcher import DeliveryError, OutboxItem, dispatch_one
from ledger.outbox.enqueue import KIND_NOTION_APPEND, KIND_NOTION_PAGE, KIND_WEBHOOK, enqueue_action
from ledger.outbox.urls import make_client
from ledger.signatures import GENERIC_HEADER, verify_generic
from tests.factories import T0
from tests.servers import Capture, capture_server

SECRET = "whsec-action-test-3f9a2c"
REFS = {"url": "env:ACTION_TEST_URL", "secret": "env:ACTION_TEST_SECRET"}


def queue(db: Database, action: str = "webhook", run_id: str = "r-1", **kw: Any) -> int | None:
    with db.transaction() as session:
        row = enqueue_action(
            session,
            action=action,
            behavior="publisher",
            run_id=run_id,
            tier="C",
            output='{"title": "Weekly digest"}',
            now=T0,
            options=kw.pop("options", REFS if action == "webhook" else None),
            **kw,
        )
        return None if row is None else row.id


def get(db: Database, row_id: int) -> OutboxRow:
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        return row


@pytest.fixture
def hook_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    def point_at(capture: Capture, path: str = "/action") -> None:
        monkeypatch.setenv("ACTION_TEST_URL", capture.url(path))
        monkeypatch.setenv("ACTION_TEST_SECRET", SECRET)

    return point_at


async def deliver_signed(db: Database, hook_env: Any, clock: FakeClock) -> Any:
    """Dispatch the queued webhook action to a capture server; the request it got, whose
    signature verifies over the body as sent."""
    async with capture_server() as capture, make_client() as client:
        hook_env(capture)
        handlers = action_handlers(ActionDeliverer(client, clock, allow_private=True))
        assert await dispatch_one(db, handlers, clock)
    (request,) = capture.to("/action")
    verify_generic(
        request.headers[GENERIC_HEADER.lower()], request.body, [SECRET], now=clock.now().timestamp()
    )
    return request


async def test_a_webhook_action_posts_the_output_signed_over_timestamp_and_body(
    db: Database, hook_env: Any
) -> None:
    clock = FakeClock(T0 + timedelta(seconds=30))
    row_id = queue(db)
    assert row_id is not None
    request = await deliver_signed(db, hook_env, clock)
    output = '{"title": "Weekly digest"}'
    assert request.json() == {
        "behavior": "publisher",
        "run_id": "r-1",
        "tier": "C",
        "output": output,
        "payload_sha256": hashlib.sha256(output.encode()).hexdigest(),
        "at": "2026-11-02T09:00:00Z",  # as the API writes times
    }
    assert request.headers["x-ledger-delivery"] == "r-1"
    assert get(db, row_id).status == "delivered"


async def test_a_webhook_action_queued_before_the_z_form_is_sent_with_z_and_signed_as_sent(
    db: Database, hook_env: Any
) -> None:
    """A row stored by an older version says "+00:00": it is sent in the API's "Z" form, and
    the signature covers the body as sent."""
    clock = FakeClock(T0 + timedelta(seconds=30))
    row_id = queue(db)
    assert row_id is not None
    with db.transaction() as session:
        session.execute(
            update(OutboxRow)
            .where(col(OutboxRow.id) == row_id)
            .values(payload={**get(db, row_id).payload, "at": "2026-11-02T09:00:00.250000+00:00"})
        )
    request = await deliver_signed(db, hook_env, clock)
    assert request.json()["at"] == "2026-11-02T09:00:00.250000Z"


def test_the_outbox_row_holds_references_never_resolved_values(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTION_TEST_SECRET", SECRET)
    row_id = queue(db)
    assert row_id is not None
    row = get(db, row_id)
    assert row.kind == KIND_WEBHOOK and row.dedup_key == "action.webhook:r-1"
    assert (row.payload["url"], row.payload["secret"]) == (REFS["url"], REFS["secret"])
    assert SECRET not in orjson.dumps(row.payload).decode()


def test_a_literal_secret_is_refused_at_enqueue(db: Database) -> None:
    with pytest.raises(SecretError, match="must be a reference"):
        queue(db, options={"url": "https://hooks.example.com/x", "secret": SECRET})
    with pytest.raises(ValueError, match="needs a url"):
        queue(db, options={"secret": "env:X"})
    with pytest.raises(ValueError, match="unknown action 'email'"):
        queue(db, action="email")


def test_an_action_is_queued_once_per_run(db: Database) -> None:
    assert queue(db, run_id="r-7") is not None
    assert queue(db, run_id="r-7") is None
    assert queue(db, action="log", run_id="r-7") is not None


@pytest.mark.parametrize("status", [400, 409, 413, 415, 422])
async def test_a_target_rejecting_the_content_is_a_permanent_attributable_failure(
    db: Database, hook_env: Any, status: int
) -> None:
    row_id = queue(db)
    assert row_id is not None
    reported: list[tuple[str, bool, int | None]] = []

    def on_dead(session: Any, item: OutboxItem, error: DeliveryError) -> None:
        reported.append((item.payload["run_id"], error.attributable, error.status_code))

    clock = FakeClock(T0)
    async with capture_server() as capture, make_client() as client:
        hook_env(capture)
        capture.answer("/action", status)
        handlers = action_handlers(ActionDeliverer(client, clock, allow_private=True))
        assert await dispatch_one(db, handlers, clock, on_dead=on_dead)
    assert reported == [("r-1", True, status)]
    row = get(db, row_id)
    assert row.status == "dead"
    assert (
        row.last_error == f"the webhook action of publisher rejected the content with HTTP {status}"
    )


@pytest.mark.parametrize(
    ("status", "outcome"), [(401, "dead"), (404, "dead"), (503, "pending"), (429, "pending")]
)
async def test_other_target_failures_are_not_the_behaviors_fault(
    db: Database, hook_env: Any, status: int, outcome: str
) -> None:
    row_id = queue(db)
    assert row_id is not None
    reported: list[bool] = []
    clock = FakeClock(T0)
    async with capture_server() as capture, make_client() as client:
        hook_env(capture)
        capture.answer("/action", status)
        handlers = action_handlers(ActionDeliverer(client, clock, allow_private=True))
        assert await dispatch_one(
            db, handlers, clock, on_dead=lambda s, i, e: reported.append(e.attributable)
        )
    assert get(db, row_id).status == outcome
    assert reported == ([False] if outcome == "dead" else [])


async def test_a_missing_secret_is_retried_and_the_message_names_the_reference(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTION_TEST_URL", raising=False)
    monkeypatch.delenv("ACTION_TEST_SECRET", raising=False)
    row_id = queue(db)
    assert row_id is not None
    async with make_client() as client:
        handlers = action_handlers(ActionDeliverer(client, FakeClock(T0)))
        assert await dispatch_one(db, handlers, FakeClock(T0))
    row = get(db, row_id)
    assert row.status == "pending"
    assert row.last_error == (
        "the webhook action of publisher: url: secret reference env:ACTION_TEST_URL: "
        "environment variable ACTION_TEST_URL is not set"
    )


async def test_the_log_action_writes_the_output_with_behavior_and_run_id(db: Database) -> None:
    row_id = queue(db, action="log", run_id="r-9")
    assert row_id is not None
    async with make_client() as client:
        handlers = action_handlers(ActionDeliverer(client, FakeClock(T0)))
        with capture_logs() as logs:
            assert await dispatch_one(db, handlers, FakeClock(T0))
    (line,) = [entry for entry in logs if entry["event"] == "behavior output"]
    assert (line["behavior"], line["run_id"], line["tier"], line["output"]) == (
        "publisher",
        "r-9",
        "C",
        '{"title": "Weekly digest"}',
    )
    assert get(db, row_id).status == "delivered"


@pytest.mark.parametrize(
    ("action", "kind"), [("notion_page", KIND_NOTION_PAGE), ("notion_append", KIND_NOTION_APPEND)]
)
async def test_notion_actions_wait_in_the_outbox_until_the_mirror_exists(
    db: Database, action: str, kind: str
) -> None:
    row_id = queue(db, action=action)
    assert row_id is not None
    clock = FakeClock(T0)
    async with make_client() as client:
        handlers = action_handlers(ActionDeliverer(client, clock))
        for _ in range(3):
            assert await dispatch_one(db, handlers, clock)
            clock.advance(timedelta(hours=6))
    row = get(db, row_id)
    assert (row.kind, row.status, row.attempts) == (kind, "pending", 0)
    assert row.last_error == NOTION_NOT_CONFIGURED
    assert row.next_attempt_at == T0 + timedelta(hours=18)
