"""Runs prepared before their slot: requests held on open connections and written together at
the slot's instant — never before it — by the lean transport, or waited for by the client
when its transport cannot hold them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.behaviors.schema import Behavior
from ledger.clock import SystemClock
from ledger.db.models import BudgetWindow, Run
from ledger.db.session import Database
from ledger.gates import Tier
from ledger.runner.call import call_model
from ledger.runner.lean_http import LeanTransport
from ledger.runner.openrouter import OpenRouterClient, build_chat_request
from ledger.runner.run import RunPlan, SlotClaim, begin_runs, claim_slots
from ledger.runner.scheduler import RunnerService, SlotTrigger, lead_for, trigger_for
from ledger.runner.send_gate import SendGate, SendGates
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_background
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import VALID_BEHAVIOR, make_behavior, write_behavior

KEY = "sk-or-v1-gatetest" + "ef" * 20


@dataclass
class Writer:
    """A connection's writing end that records what was written, and when."""

    closing: bool = False
    writes: list[tuple[float, bytes]] = field(default_factory=list)

    def write(self, data: bytes) -> None:
        self.writes.append((time.time(), data))

    def is_closing(self) -> bool:
        return self.closing


def behavior(schedule: str, tz: str = "UTC") -> Behavior:
    return make_behavior(schedule=schedule, timezone=tz)


# -- the gate ----------------------------------------------------------------------------------


async def test_held_requests_are_written_together_at_the_instant_and_not_before() -> None:
    at = time.time() + 0.2
    loop = asyncio.get_running_loop()
    gate = SendGate(at, at - time.time(), loop)
    writers = [Writer() for _ in range(50)]
    held = [gate.hold(w, b"request %d" % i) for i, w in enumerate(writers)]
    # What the loop sees 10 ms before the instant (its timers run in deadline order).
    just_before: list[tuple[bool, bool]] = []
    loop.call_later(
        at - time.time() - 0.01,
        lambda: just_before.append((gate.opened, any(w.writes for w in writers))),
    )
    written = await asyncio.gather(*(h for h in held if h is not None))
    assert just_before == [(False, False)]
    assert len(written) == 50 and gate.opened
    times = [w.writes[0][0] for w in writers]
    assert min(times) >= at - 0.005  # the loop's timer, not a moment before the instant
    assert max(times) - min(times) < 0.02  # one callback wrote them all
    assert [w.writes[0][1] for w in writers] == [b"request %d" % i for i in range(50)]
    assert gate.hold(Writer(), b"late") is None  # after the instant: write at once


async def test_a_request_given_up_before_the_instant_is_never_written() -> None:
    gate = SendGate(0.0, 0.05, asyncio.get_running_loop())
    kept, dropped = Writer(), Writer()
    keep = gate.hold(kept, b"keep")
    drop = gate.hold(dropped, b"drop")
    assert keep is not None and drop is not None
    drop.cancel()
    await keep
    assert kept.writes and not dropped.writes


async def test_a_connection_closed_while_waiting_fails_only_its_own_request() -> None:
    gate = SendGate(0.0, 0.02, asyncio.get_running_loop())
    good, closed = Writer(), Writer(closing=True)
    ok = gate.hold(good, b"a")
    broken = gate.hold(closed, b"b")
    assert ok is not None and broken is not None
    await ok
    with pytest.raises(ConnectionResetError):
        await broken
    assert good.writes and not closed.writes


async def test_one_gate_per_instant_none_for_a_passed_instant_forgotten_once_open() -> None:
    gates = SendGates()
    at = time.time() + 0.05
    first = gates.gate_for(at)
    assert first is not None and gates.gate_for(at) is first and len(gates) == 1
    assert gates.gate_for(time.time() - 1) is None
    opened_at = await first.wait()
    assert opened_at >= at - 0.005 and len(gates) == 0


# -- triggers ----------------------------------------------------------------------------------


def test_the_lead_trigger_fires_lead_before_every_slot() -> None:
    lead = timedelta(seconds=5)
    now = datetime(2026, 11, 25, 12, 2, tzinfo=UTC)
    every15 = trigger_for(behavior("15m"), lead)
    assert isinstance(every15, SlotTrigger)
    first = every15.get_next_fire_time(None, now)
    assert first == datetime(2026, 11, 25, 12, 14, 55, tzinfo=UTC)
    assert every15.get_next_fire_time(first, first) == datetime(
        2026, 11, 25, 12, 29, 55, tzinfo=UTC
    )
    # Within the lead of a slot, the next firing is for the slot after it.
    assert every15.get_next_fire_time(None, datetime(2026, 11, 25, 12, 14, 57, tzinfo=UTC)) == (
        datetime(2026, 11, 25, 12, 29, 55, tzinfo=UTC)
    )
    daily = trigger_for(behavior("0 6 * * *", "Europe/Paris"), lead)
    fire = daily.get_next_fire_time(None, now)
    assert fire.astimezone(UTC) == datetime(2026, 11, 26, 4, 59, 55, tzinfo=UTC)
    assert trigger_for(behavior("15m")).get_next_fire_time(None, now) == datetime(  # no lead
        2026, 11, 25, 12, 15, tzinfo=UTC
    )


def test_the_lead_is_at_most_a_quarter_of_the_interval() -> None:
    assert lead_for(behavior("15m"), timedelta(seconds=5)) == timedelta(seconds=5)
    assert lead_for(behavior("10s"), timedelta(seconds=5)) == timedelta(seconds=2.5)
    assert lead_for(behavior("15m"), timedelta(0)) == timedelta(0)


# -- a run prepared before its slot --------------------------------------------------------------


def test_a_run_prepared_before_midnight_renders_and_budgets_as_of_its_slot(
    db: Database, tmp_path: Path
) -> None:
    body = VALID_BEHAVIOR.format(key_env="K", name="alpha").replace(
        '"Say hello to {who}"', '"Report for {date} at {now}"'
    )
    write_behavior(tmp_path, "alpha", body)
    slot = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
    now = slot - timedelta(seconds=3)  # prepared 3 s ahead, still on the 25th
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, now - timedelta(hours=1))
        bid = lock_behavior(session, name="alpha").id or 0
        (claimed,) = claim_slots(session, [SlotClaim(bid, slot, "A")], now)
        (plan,) = begin_runs(session, [claimed.id], now=now, ctx=PolicyContext())
    assert plan.send_at == slot
    assert plan.prompt == "Report for 2026-11-26 at 2026-11-26T00:00:00+00:00"
    assert plan.budget_window == slot  # the new day's window, not the 25th's
    with db.transaction() as session:
        run = session.get(Run, claimed.id)
        assert run is not None and run.status == "running"
        assert run.started_at is not None and run.started_at.replace(tzinfo=UTC) == slot
        (window,) = session.exec(select(BudgetWindow)).all()
        assert window.window_start.replace(tzinfo=UTC) == slot and window.reserved_usd > 0


def test_a_run_claimed_after_its_slot_is_sent_at_once(db: Database, tmp_path: Path) -> None:
    write_behavior(tmp_path, "alpha", VALID_BEHAVIOR.format(key_env="K", name="alpha"))
    slot = datetime(2026, 11, 26, 0, 0, tzinfo=UTC)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, slot)
        bid = lock_behavior(session, name="alpha").id or 0
        (claimed,) = claim_slots(session, [SlotClaim(bid, slot, "A")], slot + timedelta(seconds=1))
        (plan,) = begin_runs(
            session, [claimed.id], now=slot + timedelta(seconds=1), ctx=PolicyContext()
        )
    assert plan.send_at is None


# -- over loopback, through the real client ------------------------------------------------------


def sim_config() -> SimConfig:
    return SimConfig(presets={"fast": Preset(model="m/fast")}, keys=[SimKey(key=KEY, name="g")])


@pytest.fixture
async def sim() -> AsyncIterator[str]:
    async with run_in_background(sim_config()) as base_url:
        yield base_url


def gate_behavior(name: str = "gated") -> Behavior:
    return make_behavior(name, preset="fast", api_key="env:GATE_KEY", max_output_tokens=8)


async def arrivals(base_url: str) -> dict[str, float]:
    async with httpx.AsyncClient() as control:
        calls = (await control.get(f"{base_url}/_sim/calls")).json()["calls"]
    return {
        c["body"]["session_id"]: datetime.fromisoformat(c["at"]).timestamp()
        for c in calls
        if c["path"] == "/api/v1/chat/completions"
    }


async def test_the_lean_transport_connects_ahead_and_sends_a_wave_at_its_instant(
    sim: str,
) -> None:
    transport = LeanTransport(max_connections=64, keepalive_expiry=60)
    async with httpx.AsyncClient(transport=transport) as http:
        client = OpenRouterClient(base_url=sim, http=http, transport_holds_sends=True)
        send_at = time.time() + 0.6

        async def one(i: int) -> str:
            run_id = f"run-wave-{i}"
            body = build_chat_request(gate_behavior(), Tier.A, f"prompt {i}", run_id)
            result = await client.chat(
                key=SecretStr(KEY),
                body=body,
                deadline=time.monotonic() + 30,
                run_id=run_id,
                send_at=send_at,
            )
            return result.output

        wave = asyncio.gather(*(one(i) for i in range(40)))
        while transport.open_connections < 40 and time.time() < send_at - 0.1:
            await asyncio.sleep(0.01)  # a poll of the transport, until shortly before the instant
        assert transport.open_connections == 40  # connected before the instant…
        assert await arrivals(sim) == {}  # …and nothing sent
        outputs = await wave
    assert len(outputs) == 40
    arrived = await arrivals(sim)
    assert len(arrived) == 40
    assert min(arrived.values()) >= send_at - 0.005


async def test_a_client_on_another_transport_waits_for_the_instant_itself() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.time())
        return httpx.Response(
            200, json={"id": "gen-1", "model": "m", "choices": [{"message": {"content": "ok"}}]}
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    async with http, OpenRouterClient(base_url="https://openrouter.test", http=http) as client:
        send_at = time.time() + 0.3
        result = await client.chat(
            key=SecretStr(KEY),
            body={},
            deadline=time.monotonic() + 5,
            run_id="run-x",
            send_at=send_at,
        )
    assert result.output == "ok" and seen and seen[0] >= send_at - 0.005


async def test_the_deadline_of_a_prepared_run_counts_from_its_slot(
    sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATE_KEY", KEY)
    behavior = gate_behavior()
    slot = datetime.now(UTC) + timedelta(seconds=1.5)
    plan = RunPlan(
        run_id="run-deadline",
        behavior_id=1,
        behavior=behavior,
        tier=Tier.A,
        preset="fast",
        prompt="hi",
        reserved_usd=0.0,
        budget_window=None,
        deadline_seconds=1.0,  # shorter than the wait for the slot
        send_at=slot,
    )
    async with OpenRouterClient(base_url=sim) as client:
        outcome = await call_model(client, plan)
    assert outcome.output is not None and not outcome.failures
    assert (await arrivals(sim))["run-deadline"] >= slot.timestamp() - 0.005


async def test_a_scheduled_run_is_prepared_ahead_and_reaches_openrouter_at_its_slot(
    db: Database, tmp_path: Path, sim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATE_KEY", KEY)
    write_behavior(
        tmp_path,
        "gated",
        "schedule: 10s\npreset: fast\napi_key: env:GATE_KEY\nkey_name: g\nprompt: 'at {now}'\n"
        "max_output_tokens: 8\n",
    )
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, datetime.now(UTC))
    until_slot = 10 - time.time() % 10
    if until_slot < 3:  # start outside the lead of the next slot: its job fires 2 s ahead
        await asyncio.sleep(until_slot + 0.1)
    handed: dict[str, float] = {}
    async with OpenRouterClient(base_url=sim) as client:

        async def call(plan: RunPlan) -> object:
            handed[plan.run_id] = time.time()
            return await call_model(client, plan)

        service = RunnerService(db, SystemClock(), call, PolicyContext(), lead_seconds=2.0)
        await service.start()
        try:
            for _ in range(300):
                with db.transaction() as session:
                    done = session.exec(
                        select(Run).where(
                            col(Run.trigger) == "schedule", col(Run.status) == "succeeded"
                        )
                    ).all()
                    if done:
                        run = done[0]
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("no scheduled run finished")
        finally:
            await service.stop()
    slot = run.scheduled_for.replace(tzinfo=UTC)
    assert slot.second % 10 == 0 and run.started_at is not None
    assert run.started_at.replace(tzinfo=UTC) == slot
    assert handed[run.id] < slot.timestamp() - 1.0  # prepared about 2 s ahead
    arrived = (await arrivals(sim))[run.id]
    assert slot.timestamp() - 0.005 <= arrived < slot.timestamp() + 1.0


async def test_a_connection_the_server_closes_during_the_wait_fails_as_a_write_error() -> None:
    """The server may close an idle kept-alive connection while a request waits for its
    instant: the request fails as a network error (which the client retries), not hangs."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def answer_once_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok)
        await writer.drain()
        await asyncio.sleep(0.15)
        writer.close()

    server = await asyncio.start_server(answer_once_then_close, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    transport = LeanTransport(max_connections=4, keepalive_expiry=60)
    gates = SendGates()
    try:
        async with httpx.AsyncClient(transport=transport) as http:
            assert (await http.get(base + "/first")).status_code == 200
            gate = gates.gate_for(time.time() + 0.5)
            with pytest.raises(httpx.WriteError, match="closed while the request waited"):
                await http.get(base + "/second", extensions={"ledger.send_gate": gate})
            assert transport.open_connections == 0
    finally:
        server.close()
