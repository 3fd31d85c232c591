"""The outbox: enqueue, claim, deliver, retry, dead letters, leases, priority, concurrency."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from ledger.clock import FakeClock
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.errors import ConflictError, NotFoundError
from ledger.outbox.actions import ActionDeliverer, action_handlers
from ledger.outbox.dispatcher import (
    DeliveryDeferred,
    DeliveryError,
    Dispatcher,
    OutboxItem,
    RetryPolicy,
    claim_one,
    count_by_status,
    dead_letters,
    dispatch_one,
    record_delivered,
    requeue,
    retry_decision,
)
from ledger.outbox.enqueue import KIND_ALERT, KIND_DEMOTION_ALERT, enqueue, enqueue_action
from ledger.outbox.urls import make_client
from ledger.secrets import register_secret_value
from tests.factories import T0
from tests.servers import capture_server

LEASE = timedelta(minutes=5)


class Recorder:
    """A handler that records what it is given and raises the scripted errors, in order."""

    def __init__(self, errors: Iterable[Exception] = ()) -> None:
        self.seen: list[OutboxItem] = []
        self.errors: deque[Exception] = deque(errors)

    async def __call__(self, item: OutboxItem) -> None:
        self.seen.append(item)
        if self.errors:
            raise self.errors.popleft()


def add(db: Database, kind: str = "test", payload: dict[str, Any] | None = None, **kw: Any) -> int:
    kw.setdefault("now", T0)
    with db.transaction() as session:
        row = enqueue(session, kind=kind, payload=payload or {}, **kw)
        assert row is not None and row.id is not None
        return row.id


def get(db: Database, row_id: int) -> OutboxRow:
    with db.transaction() as session:
        row = session.get(OutboxRow, row_id)
        assert row is not None
        return row


async def test_enqueued_row_is_delivered_once_and_marked_delivered(db: Database) -> None:
    row_id = add(db, payload={"behavior": "seo-audit", "n": 1})
    handler = Recorder()
    clock = FakeClock(T0 + timedelta(seconds=1))

    assert await dispatch_one(db, {"test": handler}, clock) is True
    assert await dispatch_one(db, {"test": handler}, clock) is False

    assert [item.payload for item in handler.seen] == [{"behavior": "seo-audit", "n": 1}]
    row = get(db, row_id)
    assert (row.status, row.attempts, row.delivered_at, row.last_error) == (
        "delivered",
        1,
        clock.now(),
        None,
    )


async def test_a_duplicate_dedup_key_is_a_no_op(db: Database) -> None:
    first = add(db, dedup_key="alert:x:1")
    with db.transaction() as session:
        assert (
            enqueue(session, kind="test", payload={"other": True}, now=T0, dedup_key="alert:x:1")
            is None
        )
        # Rows without a key never collide.
        assert enqueue(session, kind="test", payload={}, now=T0) is not None
        assert enqueue(session, kind="test", payload={}, now=T0) is not None
    assert get(db, first).payload == {}
    with db.transaction() as session:
        assert count_by_status(session) == {"pending": 3}


async def test_a_row_is_not_claimed_before_it_is_due(db: Database) -> None:
    add(db, not_before=T0 + timedelta(minutes=10))
    handler = Recorder()
    assert await dispatch_one(db, {"test": handler}, FakeClock(T0 + timedelta(minutes=9))) is False
    assert await dispatch_one(db, {"test": handler}, FakeClock(T0 + timedelta(minutes=10))) is True
    assert len(handler.seen) == 1


async def test_a_transient_failure_is_retried_after_a_jittered_exponential_backoff(
    db: Database,
) -> None:
    row_id = add(db)
    policy = RetryPolicy(base_delay=10.0, max_attempts=5)
    handler = Recorder([DeliveryError("down"), DeliveryError("still down")])
    clock = FakeClock(T0)
    rng = random.Random(7)

    assert await dispatch_one(db, {"test": handler}, clock, policy=policy, rng=rng)
    row = get(db, row_id)
    assert row.status == "pending" and row.attempts == 1 and row.last_error == "down"
    assert T0 + timedelta(seconds=5) <= row.next_attempt_at <= T0 + timedelta(seconds=10)

    clock.set(row.next_attempt_at)
    assert await dispatch_one(db, {"test": handler}, clock, policy=policy, rng=rng)
    row = get(db, row_id)
    assert row.attempts == 2 and row.last_error == "still down"
    wait = row.next_attempt_at - clock.now()
    assert timedelta(seconds=10) <= wait <= timedelta(seconds=20)

    clock.set(row.next_attempt_at)
    assert await dispatch_one(db, {"test": handler}, clock, policy=policy, rng=rng)
    row = get(db, row_id)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 3, None)


async def test_retry_after_from_the_error_replaces_the_backoff(db: Database) -> None:
    row_id = add(db)
    handler = Recorder([DeliveryError("slow down", retry_after=120.0)])
    clock = FakeClock(T0)
    assert await dispatch_one(db, {"test": handler}, clock)
    assert get(db, row_id).next_attempt_at == T0 + timedelta(seconds=120)

    clock.set(T0 + timedelta(seconds=119))
    assert await dispatch_one(db, {"test": handler}, clock) is False
    clock.set(T0 + timedelta(seconds=120))
    assert await dispatch_one(db, {"test": handler}, clock) is True
    assert get(db, row_id).status == "delivered"


async def test_a_permanent_error_is_a_dead_letter_that_can_be_listed_and_requeued(
    db: Database,
) -> None:
    row_id = add(db, payload={"behavior": "seo-audit"})
    handler = Recorder([DeliveryError("HTTP 404: check its URL", permanent=True)])
    dead_seen: list[tuple[int, bool]] = []

    def on_dead(session: Any, item: OutboxItem, error: DeliveryError) -> None:
        assert session.get(OutboxRow, item.id).status == "dead"  # same transaction
        dead_seen.append((item.id, error.attributable))

    clock = FakeClock(T0)
    assert await dispatch_one(db, {"test": handler}, clock, on_dead=on_dead)
    assert dead_seen == [(row_id, False)]
    with db.transaction() as session:
        letters = dead_letters(session)
        assert [(r.id, r.status, r.attempts, r.last_error) for r in letters] == [
            (row_id, "dead", 1, "HTTP 404: check its URL")
        ]
    assert await dispatch_one(db, {"test": handler}, FakeClock(T0 + timedelta(days=1))) is False

    clock.set(T0 + timedelta(hours=2))
    with db.transaction() as session:
        row = requeue(session, row_id, clock.now())
        assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, clock.now())
    assert await dispatch_one(db, {"test": handler}, clock)
    assert get(db, row_id).status == "delivered"
    with db.transaction() as session:
        assert dead_letters(session) == []


async def test_requeue_refuses_rows_that_are_not_dead_and_rows_that_do_not_exist(
    db: Database,
) -> None:
    row_id = add(db)
    with pytest.raises(ConflictError, match="is pending, not dead"), db.transaction() as session:
        requeue(session, row_id, T0)
    with pytest.raises(NotFoundError, match="999999"), db.transaction() as session:
        requeue(session, 999999, T0)


async def test_a_row_that_keeps_failing_goes_dead_after_max_attempts(db: Database) -> None:
    row_id = add(db)
    policy = RetryPolicy(max_attempts=3, base_delay=1.0)
    handler = Recorder([DeliveryError(f"fail {n}") for n in range(10)])
    clock = FakeClock(T0)
    for _ in range(3):
        assert await dispatch_one(db, {"test": handler}, clock, policy=policy)
        clock.set(max(get(db, row_id).next_attempt_at, clock.now()))
    row = get(db, row_id)
    assert (row.status, row.attempts, row.last_error) == ("dead", 3, "fail 2")
    assert len(handler.seen) == 3


async def test_a_crashing_handler_is_a_transient_failure_not_a_crash(db: Database) -> None:
    row_id = add(db)
    handler = Recorder([ZeroDivisionError("division by zero")])
    assert await dispatch_one(db, {"test": handler}, FakeClock(T0))
    row = get(db, row_id)
    assert row.status == "pending"
    assert row.last_error == "handler crashed: ZeroDivisionError: division by zero"


async def test_a_secret_in_an_error_message_never_reaches_the_database(db: Database) -> None:
    leaked = "tok-outbox-9d8c7b6a5f4e"
    register_secret_value(leaked)
    row_id = add(db)
    handler = Recorder([RuntimeError(f"upstream said {leaked} is wrong")])
    assert await dispatch_one(db, {"test": handler}, FakeClock(T0))
    last_error = get(db, row_id).last_error
    assert last_error is not None and leaked not in last_error
    assert last_error == "handler crashed: RuntimeError: upstream said ******** is wrong"


async def test_a_row_of_an_unknown_kind_is_a_dead_letter(db: Database) -> None:
    row_id = add(db, kind="carrier_pigeon")
    assert await dispatch_one(db, {"test": Recorder()}, FakeClock(T0))
    row = get(db, row_id)
    assert row.status == "dead"
    assert row.last_error == "no handler for outbox kind 'carrier_pigeon'"


async def test_a_deferred_delivery_stays_pending_without_spending_an_attempt(
    db: Database,
) -> None:
    row_id = add(db)
    handler = Recorder([DeliveryDeferred("not configured yet", retry_after=3600.0)] * 20)
    policy = RetryPolicy(max_attempts=2)
    clock = FakeClock(T0)
    for _ in range(5):
        assert await dispatch_one(db, {"test": handler}, clock, policy=policy)
        clock.advance(timedelta(hours=1))
    row = get(db, row_id)
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, "not configured yet")
    assert row.next_attempt_at == T0 + timedelta(hours=5)


async def test_a_crash_between_claim_and_delivery_is_redelivered_after_the_lease_expires(
    db: Database,
) -> None:
    row_id = add(db)
    with db.transaction() as session:
        claimed = claim_one(session, T0, LEASE)
        assert claimed is not None and claimed.id == row_id
    # The process dies here: the attempt is recorded, nothing was sent, nothing recorded after.
    row = get(db, row_id)
    assert (row.status, row.attempts, row.next_attempt_at) == ("in_flight", 1, T0 + LEASE)

    handler = Recorder()
    clock = FakeClock(T0 + LEASE - timedelta(seconds=1))
    assert await dispatch_one(db, {"test": handler}, clock) is False
    clock.set(T0 + LEASE)
    assert await dispatch_one(db, {"test": handler}, clock) is False  # expiry is strict
    clock.set(T0 + LEASE + timedelta(seconds=1))
    assert await dispatch_one(db, {"test": handler}, clock) is True
    assert [item.attempts for item in handler.seen] == [2]
    assert get(db, row_id).status == "delivered"


async def test_an_expired_lease_cannot_record_over_the_new_claim(db: Database) -> None:
    row_id = add(db)
    with db.transaction() as session:
        first = claim_one(session, T0, LEASE)
        assert first is not None
        first_item = OutboxItem.from_row(first)
    later = T0 + LEASE + timedelta(seconds=1)
    with db.transaction() as session:
        second = claim_one(session, later, LEASE)
        assert second is not None and second.attempts == 2
        second_item = OutboxItem.from_row(second)
    with db.transaction() as session:
        assert record_delivered(session, first_item, later) is False
    assert get(db, row_id).status == "in_flight"
    with db.transaction() as session:
        assert record_delivered(session, second_item, later) is True


async def test_a_row_that_crashes_the_deliverer_every_time_goes_dead_after_max_attempts(
    db: Database,
) -> None:
    row_id = add(db)
    policy = RetryPolicy(max_attempts=3)
    now = T0
    for _ in range(3):
        with db.transaction() as session:
            assert claim_one(session, now, policy.lease) is not None
        now += policy.lease + timedelta(seconds=1)
    handler = Recorder()
    assert await dispatch_one(db, {"test": handler}, FakeClock(now), policy=policy)
    assert handler.seen == []
    row = get(db, row_id)
    assert row.status == "dead"
    assert row.last_error is not None and row.last_error.startswith("gave up after 3 attempts")


async def test_demotion_alerts_are_claimed_before_other_due_rows(db: Database) -> None:
    logs = [add(db, kind="action.log", now=T0 - timedelta(minutes=10)) for _ in range(3)]
    alert = add(db, kind=KIND_ALERT, now=T0 - timedelta(minutes=5))
    demotion = add(db, kind=KIND_DEMOTION_ALERT, now=T0)
    not_yet = add(db, kind=KIND_DEMOTION_ALERT, now=T0, not_before=T0 + timedelta(hours=1))
    order: list[int] = []

    async def record(item: OutboxItem) -> None:
        order.append(item.id)

    handlers = {"action.log": record, KIND_ALERT: record, KIND_DEMOTION_ALERT: record}
    clock = FakeClock(T0)
    while await dispatch_one(db, handlers, clock):
        pass
    assert order == [demotion, alert, *logs]
    assert get(db, not_yet).status == "pending"


def test_retry_decision_is_dead_for_permanent_errors_and_after_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=4)
    rng = random.Random(1)
    assert retry_decision(1, DeliveryError("x", permanent=True), T0, policy, rng) is None
    assert retry_decision(4, DeliveryError("x"), T0, policy, rng) is None
    assert retry_decision(4, DeliveryError("x", retry_after=5), T0, policy, rng) is None
    assert retry_decision(3, DeliveryError("x", retry_after=5), T0, policy, rng) == T0 + timedelta(
        seconds=5
    )
    huge = DeliveryError("x", retry_after=10**9)
    assert retry_decision(1, huge, T0, policy, rng) == T0 + timedelta(
        seconds=policy.max_retry_after
    )


@given(attempts=st.integers(1, 200), seed=st.integers(0, 2**32))
def test_backoff_doubles_up_to_the_cap_with_at_most_half_jitter(attempts: int, seed: int) -> None:
    policy = RetryPolicy(base_delay=10.0, max_delay=3600.0)
    delay = min(3600.0, 10.0 * 2 ** min(attempts - 1, 60))
    assert delay / 2 <= policy.backoff(attempts, random.Random(seed)) <= delay


async def test_four_dispatchers_deliver_200_rows_each_exactly_once(
    database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with capture_server() as capture:
        monkeypatch.setenv("OUTBOX_TEST_HOOK_URL", capture.url("/hook"))
        monkeypatch.setenv("OUTBOX_TEST_HOOK_SECRET", "whsec-outbox-test")
        with db.transaction() as session:
            for n in range(200):
                enqueue_action(
                    session,
                    action="webhook",
                    behavior="publisher",
                    run_id=f"run-{n:03d}",
                    tier="C",
                    output=f"output {n}",
                    now=T0,
                    options={
                        "url": "env:OUTBOX_TEST_HOOK_URL",
                        "secret": "env:OUTBOX_TEST_HOOK_SECRET",
                    },
                )
        clock = FakeClock(T0 + timedelta(seconds=1))
        databases = [Database.open(database_url) for _ in range(4)]
        async with make_client() as client:
            handlers = action_handlers(ActionDeliverer(client, clock, allow_private=True))
            dispatchers = [
                Dispatcher(each, handlers, clock, concurrency=2, idle_wait=0.05)
                for each in databases
            ]
            try:
                for dispatcher in dispatchers:
                    dispatcher.start()
                async with asyncio.timeout(120):
                    while True:
                        with db.transaction() as session:
                            if count_by_status(session) == {"delivered": 200}:
                                break
                        await asyncio.sleep(0.05)
            finally:
                for dispatcher in dispatchers:
                    await dispatcher.stop()
                for each in databases:
                    each.close()

    deliveries = Counter(request.json()["run_id"] for request in capture.to("/hook"))
    assert len(deliveries) == 200
    assert set(deliveries.values()) == {1}
    with db.transaction() as session:
        attempts = {row.attempts for row in session.exec(select(OutboxRow)).all()}
    assert attempts == {1}


async def test_dispatcher_stop_waits_for_the_delivery_in_progress(db: Database) -> None:
    row_id = add(db)
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(item: OutboxItem) -> None:
        started.set()
        await release.wait()

    dispatcher = Dispatcher(db, {"test": slow}, FakeClock(T0), concurrency=1, idle_wait=0.05)
    dispatcher.start()
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.create_task(dispatcher.stop(grace=10))
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert get(db, row_id).status == "delivered"


async def test_a_dispatcher_stopped_mid_delivery_leaves_the_row_for_lease_expiry(
    db: Database,
) -> None:
    row_id = add(db)
    started = asyncio.Event()

    async def hangs(item: OutboxItem) -> None:
        started.set()
        await asyncio.Event().wait()

    dispatcher = Dispatcher(db, {"test": hangs}, FakeClock(T0), concurrency=1)
    dispatcher.start()
    await asyncio.wait_for(started.wait(), 10)
    await dispatcher.stop(grace=0.05)
    assert get(db, row_id).status == "in_flight"

    handler = Recorder()
    assert await dispatch_one(db, {"test": handler}, FakeClock(T0 + LEASE + timedelta(seconds=1)))
    assert get(db, row_id).status == "delivered"


def test_httpx_is_not_needed_to_build_a_delivery_error() -> None:
    # DeliveryError is the dispatcher's vocabulary: handlers of any transport raise it.
    error = DeliveryError("x", permanent=True, retry_after=3.0, attributable=True, status_code=422)
    assert (error.permanent, error.retry_after, error.attributable, error.status_code) == (
        True,
        3.0,
        True,
        422,
    )
    assert not isinstance(error, httpx.HTTPError)
