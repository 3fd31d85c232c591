"""Which alerts go where, how often, and when not at all: per-channel events, dedup of a
flapping behavior delivered to real loopback receivers, recovery, persistent provider errors,
spend, dead letters and silences (SQLite and PostgreSQL, a fake clock)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import FakeClock
from ledger.db.models import BehaviorRow, LedgerEntry, OutboxRow, Run, Silence
from ledger.db.session import Database
from ledger.errors import ConflictError, LedgerError, NotFoundError
from ledger.gates import Gate, GateResult, Outcome
from ledger.outbox.alerts import (
    LogChannel,
    SignedWebhookChannel,
    SlackChannel,
    alert_handlers,
    chain_dead_letter_hooks,
    dead_letter_alert_hook,
)
from ledger.outbox.dispatcher import dispatch_one
from ledger.outbox.urls import make_client
from ledger.transitions import (
    PolicyContext,
    end_expired_silences,
    end_silence,
    lock_behavior,
    note_dead_letter,
    note_provider_errors,
    note_spend,
    operator_action,
    record_results,
    start_silence,
)
from tests.conftest import T0, VALID_BEHAVIOR, write_behavior
from tests.outbox import capture_server

WINDOW = timedelta(minutes=15)


def register(db: Database, folder: Path, name: str = "alpha", extra: str = "") -> None:
    write_behavior(
        folder, name, VALID_BEHAVIOR.format(key_env=f"K_{name.upper()}", name=name) + extra
    )
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)


def set_tier(db: Database, tier: str, name: str = "alpha") -> None:
    with db.transaction() as session:
        row = lock_behavior(session, name=name)
        row.tier = tier
        session.add(row)


def act(db: Database, verb: str, at: Any, ctx: PolicyContext, name: str = "alpha") -> str:
    with db.transaction() as session:
        return operator_action(
            session, name, verb, reason=f"{verb} at {at}", actor="cli:ann", now=at, ctx=ctx
        )


def alert_rows(db: Database) -> list[OutboxRow]:
    with db.transaction() as session:
        rows = session.exec(select(OutboxRow).order_by(col(OutboxRow.id))).all()
        return [r for r in rows if r.kind.startswith("alert")]


def routed(db: Database) -> list[tuple[str, str]]:
    return [(r.payload["channel"], r.payload["alert"]["event"]) for r in alert_rows(db)]


async def deliver_all(db: Database, channels: dict[str, Any], clock: FakeClock, **kw: Any) -> int:
    delivered = 0
    while await dispatch_one(db, alert_handlers(channels), clock, **kw):
        delivered += 1
    return delivered


def test_channels_hear_the_events_they_ask_for_and_the_log_hears_them_all(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "B")
    ctx = PolicyContext(
        alert_channels=("pager", "chat"),
        channel_events={"chat": ("demotion", "promotion", "promotion_proposed")},
    )
    act(db, "promote", T0, ctx)  # only chat asked for promotions
    act(db, "demote", T0 + timedelta(minutes=1), ctx)  # both (pager: the defaults)
    act(db, "pause", T0 + timedelta(minutes=2), ctx)  # pager only
    assert routed(db) == [
        ("chat", "promotion"),
        ("log", "promotion"),
        ("pager", "demotion"),
        ("chat", "demotion"),
        ("log", "demotion"),
        ("pager", "pause"),
        ("log", "pause"),
    ]


def test_a_behavior_files_channels_take_their_own_events(db: Database, tmp_path: Path) -> None:
    register(
        db,
        tmp_path,
        extra="alerts:\n  channels:\n    - type: log\n      events: [promotion]\n    - type: log\n",
    )
    act(db, "promote", T0, PolicyContext(alert_channels=("global",)))
    assert routed(db) == [("alpha#0", "promotion"), ("log", "promotion")]


async def test_a_behavior_flapping_50_times_in_10_minutes_yields_at_most_2_alerts_per_channel(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "C")
    clock = FakeClock(T0)
    ctx = PolicyContext(alert_channels=("chat", "hook"), alert_window=WINDOW)
    for _ in range(50):  # 50 demotions and 50 promotions back, over 10 minutes
        act(db, "demote", clock.now(), ctx)
        clock.advance(timedelta(seconds=6))
        act(db, "promote", clock.now(), ctx)
        clock.advance(timedelta(seconds=6))
    assert clock.now() - T0 == timedelta(minutes=10)
    async with capture_server() as capture, make_client() as client:
        channels: dict[str, Any] = {
            "chat": SlackChannel("chat", SecretStr(capture.url("chat")), client, True),
            "hook": SignedWebhookChannel(
                "hook", SecretStr(capture.url("hook")), SecretStr("s3cret"), client, clock, True
            ),
            "log": LogChannel(),
        }
        await deliver_all(db, channels, clock)  # the first demotion, at once
        assert [len(capture.to("chat")), len(capture.to("hook"))] == [1, 1]
        clock.set(T0 + WINDOW)
        await deliver_all(db, channels, clock)  # the follow-up, when the window ends
        chat, hook = capture.to("chat"), capture.to("hook")
    assert len(chat) == 2 and len(hook) == 2
    assert chat[0].json()["text"].startswith("alpha demoted from C · autonomous to B")
    assert chat[1].json()["text"].startswith("alpha demoted 50 times in 15 min; latest from C")
    assert hook[1].json()["alert"]["count"] == 50
    assert Counter(r.status for r in alert_rows(db)) == {"delivered": 6}


async def test_earning_the_tier_back_is_a_recovery_delivered_to_the_demotions_channels(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "C")
    ctx = PolicyContext(
        alert_channels=("chat", "quiet", "deaf"),
        channel_events={
            "chat": ("demotion", "recovery"),
            "quiet": ("recovery",),
            "deaf": ("demotion",),
        },
    )
    act(db, "demote", T0, ctx)  # C → B
    act(db, "promote", T0 + timedelta(hours=1), ctx)  # B → C: earned back
    act(db, "demote", T0 + timedelta(hours=2), ctx)
    act(db, "demote", T0 + timedelta(hours=3), ctx)  # C → B → A
    act(db, "promote", T0 + timedelta(hours=4), ctx)  # A → B: the tier it lost last
    recoveries = [
        (r.payload["channel"], r.payload["alert"]["from"], r.payload["alert"]["to"])
        for r in alert_rows(db)
        if r.payload["alert"]["event"] == "recovery"
    ]
    assert recoveries == [
        ("chat", "B", "C"),
        ("log", "B", "C"),
        ("chat", "A", "B"),
        ("log", "A", "B"),
    ]
    clock = FakeClock(T0 + timedelta(hours=5))
    async with capture_server() as capture, make_client() as client:
        channels: dict[str, Any] = {
            name: SlackChannel(name, SecretStr(capture.url(name)), client, True)
            for name in ("chat", "quiet", "deaf")
        } | {"log": LogChannel()}
        await deliver_all(db, channels, clock)
        texts = [r.json()["text"] for r in capture.to("chat")]
        assert capture.to("quiet") == []
        assert [r.json()["text"].split(" from ")[0] for r in capture.to("deaf")] == [
            "alpha demoted"
        ] * 3
    recovered = [t for t in texts if " recovered: " in t]
    assert recovered[0].startswith(
        "alpha recovered: promoted from B · human-in-the-loop to C · autonomous, back where it "
        "was before its demotion: back at C · autonomous after its demotion from C · autonomous"
    )
    assert len(texts) == 5  # three demotions, two recoveries


def add_run(db: Database, run_id: str, minute: int, provider_error: bool) -> list[GateResult]:
    at = T0 + timedelta(minutes=minute)
    results = (
        [GateResult(Gate.PROVIDER_ERROR, Outcome.FAIL, False, {"reason": "HTTP 503 upstream"})]
        if provider_error
        else []
    )
    with db.transaction() as session:
        row = lock_behavior(session, name="alpha")
        session.add(
            Run(
                id=run_id,
                behavior_id=row.id or 0,
                scheduled_for=at,
                claimed_at=at,
                finished_at=at,
                status="failed" if provider_error else "succeeded",
                tier=row.tier,
            )
        )
        session.flush()
        record_results(session, row, results, now=at, source="runner", run_id=run_id)
    return results


def test_provider_errors_alert_once_when_they_persist(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path, extra="alerts:\n  on: [demotion, provider_error]\n")
    ctx = PolicyContext(provider_error_runs=3)
    outcomes = [True, True, False, True, True, True, True, True]  # a streak of 5 from run 3
    alerted = []
    for i, failed in enumerate(outcomes):
        results = add_run(db, f"r{i}", i, failed)
        with db.transaction() as session:
            row = lock_behavior(session, name="alpha")
            alerted.append(
                note_provider_errors(
                    session,
                    row,
                    run_id=f"r{i}",
                    results=results,
                    now=T0 + timedelta(minutes=i),
                    ctx=ctx,
                )
            )
    assert alerted == [False, False, False, False, False, True, False, False]
    ((channel, alert),) = [(r.payload["channel"], r.payload["alert"]) for r in alert_rows(db)]
    assert (channel, alert["event"]) == ("log", "provider_error")
    assert alert["reason"].startswith("3 runs in a row failed with provider errors")
    assert alert["runs"] == ["r5", "r4", "r3"]


def test_spend_alerts_once_when_it_crosses_80_percent_of_the_budget(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path, extra="alerts:\n  on: [spend]\n")  # budget: 1 USD a day
    spends = [(0.0, 0.5), (0.5, 0.79), (0.79, 0.85), (0.85, 0.95)]
    alerted = []
    for before, after in spends:
        with db.transaction() as session:
            row = lock_behavior(session, name="alpha")
            alerted.append(
                note_spend(session, row, before=before, after=after, now=T0, ctx=PolicyContext())
            )
    assert alerted == [False, False, True, False]
    ((row,),) = [alert_rows(db)]
    assert row.payload["alert"]["reason"] == (
        "spent $0.85 of its $1.00 day budget (85%); runs are refused once it is used up"
    )


async def test_a_dead_letter_alerts_but_an_alert_about_a_dead_letter_never_does(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "B")
    ctx = PolicyContext(
        alert_channels=("chat", "ops"), channel_events={"ops": ("demotion", "dead_letter")}
    )
    clock = FakeClock(T0)
    act(db, "demote", T0, ctx)
    on_dead = chain_dead_letter_hooks(dead_letter_alert_hook(ctx, clock))
    async with capture_server() as capture, make_client() as client:
        capture.answer("chat", 404)  # the chat webhook was deleted: permanent
        capture.answer("ops", 200)  # the demotion reaches ops…
        capture.answer("ops", 410)  # …but the dead-letter alert does not
        channels: dict[str, Any] = {
            name: SlackChannel(name, SecretStr(capture.url(name)), client, True)
            for name in ("chat", "ops")
        } | {"log": LogChannel()}
        await deliver_all(db, channels, clock, on_dead=on_dead)
        ops = [r.json()["text"] for r in capture.to("ops")]
    assert ops[0].startswith("alpha demoted")
    assert ops[1].startswith("alpha had an outbox delivery dead-lettered: outbox row 1 (alert")
    assert "`ledger outbox retry 1`" in ops[1]
    statuses = [
        (r.payload["channel"], r.payload["alert"]["event"], r.status) for r in alert_rows(db)
    ]
    assert statuses == [
        ("chat", "demotion", "dead"),
        ("ops", "demotion", "delivered"),
        ("log", "demotion", "delivered"),
        ("ops", "dead_letter", "dead"),  # no alert about this one: no loops
        ("log", "dead_letter", "delivered"),
    ]


def test_a_dead_letter_without_a_behavior_goes_to_the_channels_that_ask(db: Database) -> None:
    ctx = PolicyContext(alert_channels=("ops", "chat"), channel_events={"ops": ("dead_letter",)})
    with db.transaction() as session:
        assert note_dead_letter(
            session,
            outbox_id=9,
            kind="mirror",
            behavior_id=None,
            payload={},
            error="Notion said 400 validation_error",
            now=T0,
            ctx=ctx,
        )
    assert routed(db) == [("ops", "dead_letter"), ("log", "dead_letter")]
    assert alert_rows(db)[0].payload["alert"]["behavior"] == "outbox"


def test_a_dead_mirror_row_alerts_without_queuing_another_mirror_row(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    ctx = PolicyContext(
        mirror=True, alert_channels=("ops",), channel_events={"ops": ("dead_letter",)}
    )
    with db.transaction() as session:
        alpha = lock_behavior(session, name="alpha")
        note_dead_letter(
            session,
            outbox_id=5,
            kind="mirror",
            behavior_id=alpha.id,
            payload={"event": "demotion"},
            error="400 validation_error",
            now=T0,
            ctx=ctx,
        )
        kinds = [r.kind for r in session.exec(select(OutboxRow))]
    assert kinds == ["alert", "alert"]  # ops and the log; no mirror row that could die in turn
    assert routed(db) == [("ops", "dead_letter"), ("log", "dead_letter")]


def test_a_silence_mutes_alerts_while_tiers_and_the_ledger_carry_on(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    register(db, tmp_path, "beta")
    set_tier(db, "C")
    set_tier(db, "C", "beta")
    ctx = PolicyContext(alert_channels=("chat",))
    with db.transaction() as session:
        silence = start_silence(
            session,
            behavior="alpha",
            duration=timedelta(hours=2),
            reason="key rotation",
            actor="cli:ann",
            now=T0,
        )
        silence_id = silence.id or 0
    act(db, "demote", T0 + timedelta(minutes=1), ctx)
    act(db, "pause", T0 + timedelta(minutes=2), ctx)
    act(db, "demote", T0 + timedelta(minutes=3), ctx, "beta")  # not silenced
    assert routed(db) == [("chat", "demotion"), ("log", "demotion")]
    assert alert_rows(db)[0].payload["behavior"] == "beta"
    with db.transaction() as session:
        alpha = lock_behavior(session, name="alpha")
        assert (alpha.tier, alpha.paused) == ("B", True)
        entry_kinds = [
            e.kind
            for e in session.exec(
                select(LedgerEntry)
                .where(col(LedgerEntry.behavior_name) == "alpha")
                .order_by(col(LedgerEntry.id))
            )
        ]
        assert entry_kinds[-3:] == ["silenced", "demoted", "paused"]
    # Ended by an operator: a ledger entry with the summary, and one alert with it.
    with db.transaction() as session:
        ended = end_silence(
            session, silence_id, actor="cli:bob", now=T0 + timedelta(minutes=30), ctx=ctx
        )
        assert ended.muted == {"demotion": 1, "pause": 1}
        last = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.id).desc())).first()
        assert last is not None
        assert (last.kind, last.actor, last.behavior_name) == ("silence_ended", "cli:bob", "alpha")
        assert last.reason == (
            f"silence {silence_id} of alpha ended by cli:bob; muted while it lasted: "
            "1 demotion alert, 1 pause alert"
        )
    summary = [r for r in alert_rows(db) if r.payload["alert"]["event"] == "silence_ended"]
    assert [r.payload["channel"] for r in summary] == ["chat", "log"]
    assert summary[0].payload["alert"]["reason"] == (
        "muted while it lasted (key rotation): 1 demotion alert, 1 pause alert"
    )
    with db.transaction() as session, pytest.raises(ConflictError, match="already ended"):
        end_silence(session, silence_id, actor="cli:bob", now=T0 + timedelta(hours=1), ctx=ctx)
    # After the silence, alerts flow again.
    act(db, "resume", T0 + timedelta(minutes=31), ctx)
    act(db, "demote", T0 + timedelta(minutes=32), ctx)
    assert routed(db)[-2:] == [("chat", "demotion"), ("log", "demotion")]


def test_a_silence_of_all_behaviors_expires_by_itself_with_its_summary(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "C")
    ctx = PolicyContext()
    with db.transaction() as session:
        start_silence(
            session,
            behavior=None,
            duration=timedelta(minutes=30),
            reason="upgrade",
            actor="api:ops",
            now=T0,
        )
    act(db, "demote", T0 + timedelta(minutes=5), ctx)
    assert routed(db) == []
    with db.transaction() as session:
        assert end_expired_silences(session, T0 + timedelta(minutes=29), ctx) == []
    with db.transaction() as session:
        assert len(end_expired_silences(session, T0 + timedelta(minutes=31), ctx)) == 1
        silence = session.exec(select(Silence)).one()
        assert silence.ended_at == T0 + timedelta(minutes=30)
        assert silence.ended_by == "silence"
        last = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.id).desc())).first()
        assert last is not None and last.reason.endswith(
            "of all behaviors expired; muted while it lasted: 1 demotion alert"
        )
    assert routed(db) == [("log", "silence_ended")]


def test_a_silence_needs_a_reason_a_sane_length_and_a_known_behavior(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"reason": " "}, LedgerError, "reason is required"),
        ({"duration": timedelta(0)}, LedgerError, "at most 90 days"),
        ({"duration": timedelta(days=91)}, LedgerError, "at most 90 days"),
        ({"behavior": "nobody"}, NotFoundError, "'nobody' is not registered"),
    ]
    for change, error, message in cases:
        args: dict[str, Any] = {
            "behavior": "alpha",
            "duration": timedelta(hours=1),
            "reason": "why",
            "actor": "cli:ann",
            "now": T0,
            **change,
        }
        with db.transaction() as session, pytest.raises(error, match=message):
            start_silence(session, **args)
    with db.transaction() as session:
        assert session.exec(select(BehaviorRow)).first() is not None
        assert session.exec(select(Silence)).first() is None
