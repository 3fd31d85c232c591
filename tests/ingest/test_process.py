"""Stored broadcast spans become spend and gate results for the right behavior, once."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.db.models import (
    BehaviorRow,
    BudgetWindow,
    GateResultRow,
    IngestDelivery,
    IngestedSpan,
    Run,
)
from ledger.db.session import Database
from ledger.ingest.otlp import Limits, RawRequest, decode_for_storage, decode_request
from ledger.ingest.process import DbLookup, process_pending
from ledger.ingest.writer import SpanWriter, delivery_text, span_data
from ledger.runner.run import CallOutcome, SlotClaim, begin_run, claim_slots, finish_run
from ledger.sim.openrouter import GenerationRecord, build_broadcast
from ledger.spend import pending_broadcast
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import T0, VALID_BEHAVIOR, make_run, write_behavior
from tests.servers import ledger

CTX = PolicyContext()


def delivery(**overrides: Any) -> bytes:
    record = GenerationRecord(
        **{
            "generation_id": "gen-" + secrets.token_hex(8),
            "started_at": T0,
            "ended_at": T0 + timedelta(seconds=2),
            "key_name": "nobody-key",
            "request_model": "openai/gpt-4o-mini",
            "response_model": "openai/gpt-4o-mini",
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "input_unit_price": 0.0001,
            "output_unit_price": 0.0002,
            **overrides,
        }
    )
    return orjson.dumps(build_broadcast(record))


def failed_call(status: int, message: str, **hints: Any) -> bytes:
    """A delivery of a call OpenRouter refused (no completion, no tokens)."""
    return delivery(
        error_status=status,
        completion=None,
        prompt_tokens=0,
        completion_tokens=0,
        error_message=message,
        **hints,
    )


INJECTION = "Request blocked: prompt injection patterns detected"


def store(db: Database, body: bytes, *, raw: bool = False, at: datetime = T0) -> None:
    """Store a delivery as the receiver does: ``raw`` as it came (the JSON fast path), else
    decoded (protobuf, or JSON the fast path leaves to the full decoder)."""
    spans: Any
    if raw:
        spans = decode_for_storage(body, "application/json", None, Limits())
        assert isinstance(spans, RawRequest)
    else:
        spans = decode_request(body, "application/json", None, Limits())
    store_text(db, delivery_text(spans), len(spans), at)


def store_text(db: Database, text: str, count: int, at: datetime = T0) -> None:
    with db.transaction() as session:
        session.add(IngestDelivery(received_at=at, span_count=count, spans=text))


def setup(db: Database, folder: Path, budget: str = "1") -> None:
    for name in ("alpha", "beta"):
        body = VALID_BEHAVIOR.format(key_env=f"K_{name}", name=name).replace(
            "usd: 1", f"usd: {budget}"
        )
        write_behavior(folder, name, body)
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)


def spent(db: Database, name: str) -> float:
    with db.transaction() as session:
        bid = lock_behavior(session, name=name).id
        rows = session.exec(select(BudgetWindow).where(col(BudgetWindow.behavior_id) == bid)).all()
        return round(sum(r.spent_usd for r in rows), 9)


def test_deliveries_stored_as_they_came_are_attributed_and_a_poison_row_is_set_aside(
    db: Database, tmp_path: Path
) -> None:
    setup(db, tmp_path)
    store(db, delivery(key_name="beta-key"), raw=True)
    # a span no decoder can read back, then a delivery that is not even JSON
    store_text(db, orjson.dumps([["f" * 32, "e" * 16, "bad", {"otlp": 1}]]).decode(), 1)
    store_text(db, "[[not json", 1)
    store(db, delivery(user="alpha"), raw=True)
    stats = process_pending(db, DbLookup(db), T0, CTX)
    assert (stats.attributed, stats.unattributed) == (2, 0)
    assert spent(db, "beta") == 0.2 and spent(db, "alpha") == 0.2
    with db.transaction() as session:
        bad = session.exec(select(IngestedSpan).where(col(IngestedSpan.name) == "bad")).one()
        assert bad.attribution == "invalid" and bad.processed_at is not None
        waiting = session.exec(select(IngestDelivery)).all()
        assert [(d.spans, d.set_aside) for d in waiting] == [("[[not json", "invalid")]
        costs = session.exec(
            select(IngestedSpan.cost_usd).where(col(IngestedSpan.cost_usd).is_not(None))
        ).all()
        assert sorted(costs) == [0.2, 0.2]  # each generation's cost, on its span
    assert process_pending(db, DbLookup(db), T0, CTX).spans == 0


def test_cost_is_attributed_by_key_name_user_and_run(db: Database, tmp_path: Path) -> None:
    setup(db, tmp_path)
    with db.transaction() as session:
        alpha = lock_behavior(session, name="alpha")
        make_run(session, alpha.id or 0, "run-01TEST", T0, cost_usd=0.1)
    store(db, delivery(key_name="beta-key"))  # key name → beta
    store(db, delivery(user="alpha"))  # user.id → alpha
    store(db, delivery(session_id="run-01TEST", user="alpha"))  # a daemon run of alpha
    store(db, delivery())  # nobody
    stats = process_pending(db, DbLookup(db), T0, CTX)
    assert (stats.attributed, stats.unattributed) == (3, 1)
    # each delivery costs 0.1 + 0.1 = $0.2; the run's own figure was $0.1 → +0.1 only
    assert spent(db, "beta") == 0.2
    assert spent(db, "alpha") == 0.3
    with db.transaction() as session:
        run = session.get(Run, "run-01TEST")
        assert run is not None and run.broadcast_cost_usd == 0.2 and run.cost_usd == 0.1
        marks = {(s.attribution, s.behavior_id is None) for s in session.exec(select(IngestedSpan))}
        assert ("unattributed", True) in marks
        assert ("key_name", False) in marks and ("session.id", False) in marks
    # processing again does nothing: every delivery was processed once
    assert process_pending(db, DbLookup(db), T0, CTX).spans == 0
    assert spent(db, "beta") == 0.2


def test_a_redelivered_span_is_stored_once_and_counted_once(db: Database, tmp_path: Path) -> None:
    setup(db, tmp_path)
    body = delivery(key_name="beta-key")
    store(db, body, raw=True)
    store(db, body)  # the same spans again (the sender retried), once through each decoder
    store(db, body, raw=True)
    stats = process_pending(db, DbLookup(db), T0, CTX)
    assert stats.deliveries == 3
    assert spent(db, "beta") == 0.2
    store(db, body, raw=True)  # and once more after it was processed
    process_pending(db, DbLookup(db), T0, CTX)
    assert spent(db, "beta") == 0.2
    with db.transaction() as session:
        spans = decode_request(body, "application/json", None, Limits())
        assert len(session.exec(select(IngestedSpan)).all()) == len(spans) == 3
        assert session.exec(select(IngestDelivery)).all() == []


def test_error_spans_become_gate_results_with_their_attribution(
    db: Database, tmp_path: Path
) -> None:
    setup(db, tmp_path)
    with db.transaction() as session:
        lock_behavior(session, name="alpha").tier = "C"
    store(
        db,
        failed_call(403, INJECTION, user="alpha"),
    )
    store(
        db,
        failed_call(429, "Rate limit exceeded", user="alpha"),
    )
    process_pending(db, DbLookup(db), T0, CTX)
    with db.transaction() as session:
        results = {
            (r.gate, r.outcome, r.attributable, r.source)
            for r in session.exec(select(GateResultRow))
        }
        assert ("prompt_injection", "fail", True, "broadcast") in results
        assert ("provider_error", "fail", False, "broadcast") in results
        assert (
            session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == "alpha")).one().tier
            == "B"
        )


def test_runner_results_are_not_recorded_twice(db: Database, tmp_path: Path) -> None:
    setup(db, tmp_path)
    with db.transaction() as session:
        alpha = lock_behavior(session, name="alpha")
        make_run(session, alpha.id or 0, "run-02TEST", T0)
        session.add(
            GateResultRow(
                behavior_id=alpha.id or 0,
                run_id="run-02TEST",
                gate="prompt_injection",
                outcome="fail",
                attributable=True,
                created_at=T0,
            )
        )
    store(
        db,
        failed_call(403, INJECTION, session_id="run-02TEST"),
    )
    process_pending(db, DbLookup(db), T0, CTX)
    with db.transaction() as session:
        assert len(session.exec(select(GateResultRow)).all()) == 1


def test_several_calls_of_one_run_in_one_batch_record_its_gate_once(
    db: Database, tmp_path: Path
) -> None:
    """A multi-model run (or a fallback) makes several calls under one run id; when their
    deliveries are applied in one batch and carry the same signal, the run has that gate once,
    as when they come one by one (the policy must not count one run's fault twice)."""
    setup(db, tmp_path)
    with db.transaction() as session:
        make_run(session, lock_behavior(session, name="alpha").id or 0, "run-03TEST", T0)
    for _ in range(3):
        store(
            db,
            failed_call(403, INJECTION, session_id="run-03TEST"),
        )
    process_pending(db, DbLookup(db), T0, CTX)
    with db.transaction() as session:
        gates = session.exec(
            select(GateResultRow.gate).where(col(GateResultRow.run_id) == "run-03TEST")
        ).all()
    assert gates == ["prompt_injection"]


def test_spend_seen_only_via_broadcast_can_trigger_spend_cap(db: Database, tmp_path: Path) -> None:
    setup(db, tmp_path, budget="0.5")
    with db.transaction() as session:
        lock_behavior(session, name="beta").tier = "B"
    for _ in range(3):
        store(db, delivery(key_name="beta-key"))  # 3 x $0.2 outside the daemon
    process_pending(db, DbLookup(db), T0, CTX)
    assert spent(db, "beta") == 0.6
    with db.transaction() as session:
        caps = session.exec(
            select(GateResultRow).where(col(GateResultRow.gate) == "spend_cap")
        ).all()
        assert len(caps) == 1 and caps[0].attributable and caps[0].outcome == "fail"
        assert (
            session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == "beta")).one().tier
            == "A"
        )


def test_bound_webhook_events_feed_the_behaviors_gates(db: Database, tmp_path: Path) -> None:
    from pydantic import SecretStr

    from ledger.config import WebhookSource
    from ledger.db.models import WebhookEvent
    from ledger.ingest.process import process_webhook_events

    setup(db, tmp_path)
    with db.transaction() as session:
        beta = lock_behavior(session, name="beta")
        beta.tier = "C"
        for i, (event, bound) in enumerate(
            [
                ("deploy_failed", True),
                ("deploy_slow", True),
                ("push", True),
                ("deploy_failed", False),
            ]
        ):
            session.add(
                WebhookEvent(
                    source="ci",
                    event=event,
                    replay_key=f"k{i}",
                    payload={},
                    received_at=T0,
                    behavior_id=beta.id if bound else None,
                )
            )
    sources = {
        "ci": WebhookSource(
            secrets=SecretStr("env:X"),
            behavior="beta",
            fail_events=["deploy_failed"],
            warn_events=["deploy_slow"],
        )
    }
    assert process_webhook_events(db, T0, CTX, sources) == 4
    assert process_webhook_events(db, T0, CTX, sources) == 0  # each event once
    with db.transaction() as session:
        results = sorted((r.gate, r.outcome, r.source) for r in session.exec(select(GateResultRow)))
        assert results == [
            ("external_event", "fail", "webhook"),
            ("external_event", "warn", "webhook"),
        ]
        assert (
            session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == "beta")).one().tier
            == "B"
        )


def test_status_shows_broadcast_spend_waiting_and_unattributed_deliveries(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    """``ledger status``, as an operator runs it: spend seen only via broadcast is in the
    behavior's window; unattributed spans, waiting and set-aside deliveries are counted."""
    setup(db, tmp_path)
    now = datetime.now(UTC)
    store(db, delivery(key_name="beta-key"), at=now)  # $0.2, outside the daemon
    store(db, delivery(), at=now)  # nobody's: its 3 spans are kept, unattributed
    store_text(db, "[[not json", 1, at=now)  # set aside
    process_pending(db, DbLookup(db), now, CTX)
    store(db, delivery(user="alpha"), at=now)  # acknowledged, not processed yet
    result = ledger("status", cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    beta = next(line for line in result.stdout.splitlines() if "beta" in line)
    assert "$0.20 / $1.00 per day" in beta
    assert "1 waiting to be processed · 3 unattributed span(s) in 24h" in result.stdout
    assert "1 delivery(ies) set aside" in result.stdout


def test_a_span_repeated_within_one_delivery_counts_once(db: Database, tmp_path: Path) -> None:
    setup(db, tmp_path)
    doc = orjson.loads(delivery(key_name="beta-key"))
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            ss["spans"] = ss["spans"] * 2
    store(db, orjson.dumps(doc), raw=True)
    process_pending(db, DbLookup(db), T0, CTX)
    assert spent(db, "beta") == 0.2


def test_a_malformed_stored_delivery_is_set_aside_and_the_rest_go_on(
    db: Database, tmp_path: Path
) -> None:
    setup(db, tmp_path)
    store_text(db, orjson.dumps([["a" * 32, "b" * 16, "three fields"]]).decode(), 1)
    store_text(db, orjson.dumps([[1, "b" * 16, "x", {}]]).decode(), 1)
    store(db, delivery(key_name="beta-key"))
    process_pending(db, DbLookup(db), T0, CTX)
    assert spent(db, "beta") == 0.2
    with db.transaction() as session:
        aside = session.exec(select(IngestDelivery.set_aside)).all()
    assert aside == ["invalid", "invalid"]


def test_a_later_copy_without_effects_does_not_take_the_span_from_the_first(
    db: Database, tmp_path: Path
) -> None:
    """Deliveries are applied in the order they came: a later delivery carrying the same
    spans plus one no decoder can read (its trace kept as ``invalid``) must not store them
    first and leave the earlier, attributed delivery without its effects."""
    setup(db, tmp_path)
    body = delivery(key_name="beta-key")
    store(db, body)
    entries = [
        [s.trace_id, s.span_id, s.name, span_data(s)]
        for s in decode_request(body, "application/json", None, Limits())
    ]
    entries.append([entries[0][0], "e" * 16, "bad", {"otlp": 1}])
    store_text(db, orjson.dumps(entries).decode(), len(entries))
    process_pending(db, DbLookup(db), T0, CTX)
    assert spent(db, "beta") == 0.2
    with db.transaction() as session:
        marks = {s.name: s.attribution for s in session.exec(select(IngestedSpan))}
    assert marks["bad"] == "invalid"
    assert "key_name" in marks.values()


@pytest.mark.parametrize(("runner_cost", "counted"), [(0.05, 0.2), (0.5, 0.5)])
def test_broadcast_seen_before_the_run_finishes_is_not_counted_twice(
    db: Database, tmp_path: Path, runner_cost: float, counted: float
) -> None:
    """Broadcast can arrive while the run is still in flight: the larger figure counts, once."""
    setup(db, tmp_path)
    with db.transaction() as session:
        alpha = lock_behavior(session, name="alpha").id or 0
        (claimed,) = claim_slots(session, [SlotClaim(alpha, T0, "A")], T0)
        plan = begin_run(session, claimed.id, now=T0, ctx=CTX)
    assert plan is not None and plan.reserved_usd > 0
    store(db, delivery(session_id=plan.run_id, user="alpha"))  # costs $0.2
    assert process_pending(db, DbLookup(db), T0, CTX).attributed == 1
    assert spent(db, "alpha") == 0.2
    outcome = CallOutcome(output="ok", model="openai/gpt-4o-mini", cost_usd=runner_cost)
    with db.transaction() as session:
        finish_run(session, plan, outcome, now=T0, ctx=CTX)
    assert spent(db, "alpha") == counted
    with db.transaction() as session:
        window = session.exec(
            select(BudgetWindow).where(col(BudgetWindow.behavior_id) == alpha)
        ).one()
        assert window.reserved_usd == 0  # the run's reservation was released
        run = session.get(Run, plan.run_id)
        assert run is not None and (run.cost_usd, run.broadcast_cost_usd) == (runner_cost, 0.2)


def test_tokens_are_kept_per_generation_and_a_cost_disagreement_shows_in_status(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    setup(db, tmp_path)
    now = datetime.now(UTC)
    with db.transaction() as session:
        alpha = lock_behavior(session, name="alpha").id or 0
        make_run(
            session,
            alpha,
            "run-01TOKENS",
            now,
            finished_at=now,
            cost_usd=0.1,  # broadcast will say $0.2
        )
    store(db, delivery(session_id="run-01TOKENS", user="alpha"), at=now)
    store(db, delivery(user="alpha", prompt_tokens=7, completion_tokens=3), at=now, raw=True)
    process_pending(db, DbLookup(db), now, CTX)
    with db.transaction() as session:
        tokens = session.exec(
            select(IngestedSpan.run_id, IngestedSpan.prompt_tokens, IngestedSpan.completion_tokens)
            .where(col(IngestedSpan.cost_usd).is_not(None))
            .order_by(col(IngestedSpan.id))
        ).all()
        # the generation's span carries its tokens; its other spans carry none
        assert sorted(tokens, key=str) == sorted(
            [("run-01TOKENS", 1000, 500), (None, 7, 3)], key=str
        )
        assert (
            session.exec(
                select(func.count()).where(
                    col(IngestedSpan.cost_usd).is_(None),
                    col(IngestedSpan.prompt_tokens).is_not(None),
                )
            ).one()
            == 0
        )
    result = ledger("status", cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "alpha: 1 run(s) in 24h whose broadcast cost differs from the runner's" in " ".join(
        result.stdout.split()
    )


def test_broadcast_spend_of_a_behavior_without_a_budget_is_counted_in_the_month(
    db: Database, tmp_path: Path
) -> None:
    from ledger.status import collect_status

    body = VALID_BEHAVIOR.format(key_env="K_beta", name="beta").split("budget:")[0]
    write_behavior(tmp_path, "beta", body)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
    store(db, delivery(key_name="beta-key"))  # $0.2, outside the daemon
    process_pending(db, DbLookup(db), T0, CTX)
    assert spent(db, "beta") == 0.2
    with db.transaction() as session:
        (status,) = collect_status(session, T0).behaviors
        assert session.exec(select(GateResultRow)).all() == []  # no budget: no spend_cap
    assert status.spend_usd == pytest.approx(0.2)


async def test_a_run_is_refused_with_spend_cap_while_its_broadcast_spend_waits_unprocessed(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(
        tmp_path,
        "alpha",
        VALID_BEHAVIOR.format(key_env="K_alpha", name="alpha").replace(
            "  usd: 1\n", "  usd: 0.5\n  per_call_estimate_usd: 0.05\n"
        ),
    )
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        bid = lock_behavior(session, name="alpha").id or 0
    # $0.4 of alpha's key spent outside the daemon, acknowledged by the receiver's writer and
    # waiting: the processor has not run, so nothing is in alpha's budget window yet.
    writer = SpanWriter(db.engine)
    writer.start()
    try:
        for _ in range(2):
            spans = decode_for_storage(
                delivery(key_name="alpha-key"), "application/json", None, Limits()
            )
            await writer.write(spans, T0)
        walked = decode_request(delivery(user="alpha"), "application/json", None, Limits())
        await writer.write(walked, T0)
    finally:
        await writer.close()
    assert spent(db, "alpha") == 0
    with db.transaction() as session:
        assert pending_broadcast(session, bid) == pytest.approx(0.6)
    # 0 spent + $0.6 waiting + $0.05 worst case > $0.5: refused before calling.
    at = T0 + timedelta(minutes=1)
    with db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(bid, at, "A")], at)
        assert begin_run(session, run.id, now=at, ctx=CTX) is None
    with db.transaction() as session:
        refused = session.get(Run, run.id)
        assert refused is not None and refused.status == "refused"
        cap = session.exec(
            select(GateResultRow).where(col(GateResultRow.gate) == "spend_cap")
        ).one()
        assert cap.run_id == run.id and cap.outcome == "fail" and cap.attributable
    # Once processed, the same dollars are spent and no longer waiting: counted once.
    process_pending(db, DbLookup(db), at, CTX)
    assert spent(db, "alpha") == pytest.approx(0.6)
    with db.transaction() as session:
        assert pending_broadcast(session, bid) == 0


async def test_the_daemons_own_calls_waiting_in_broadcast_are_not_counted_twice(
    db: Database, tmp_path: Path
) -> None:
    """A call the daemon made itself (its trace names the run) is reserved and recorded by the
    runner: while its delivery waits, the budget check does not count it again."""
    write_behavior(tmp_path, "alpha", VALID_BEHAVIOR.format(key_env="K_alpha", name="alpha"))
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        bid = lock_behavior(session, name="alpha").id or 0
    writer = SpanWriter(db.engine)
    writer.start()
    try:
        own = delivery(user="alpha", trace={"behavior": "alpha", "run_id": "run-own-call"})
        await writer.write(decode_request(own, "application/json", None, Limits()), T0)
        outside = delivery(key_name="alpha-key")  # $0.2 of alpha's key, outside the daemon
        await writer.write(decode_request(outside, "application/json", None, Limits()), T0)
    finally:
        await writer.close()
    with db.transaction() as session:
        assert pending_broadcast(session, bid) == pytest.approx(0.2)
