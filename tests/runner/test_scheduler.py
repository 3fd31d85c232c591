"""The scheduler: jobs follow the registry; slots are claimed once, also after downtime."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.behaviors.schema import Behavior
from ledger.clock import FakeClock
from ledger.db.models import BehaviorRow, Run
from ledger.db.session import Database
from ledger.runner.run import CallOutcome, RunPlan, SlotClaim
from ledger.runner.scheduler import RunnerService, latest_slot, misfire_grace
from ledger.status import KEY_MISSING, collect_status
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import VALID_BEHAVIOR, make_behavior, write_behavior
from tests.servers import Daemon, free_port, wait_until, wait_until_async

NOW = datetime(2026, 11, 25, 12, 2, tzinfo=UTC)


def behavior(schedule: str, tz: str = "UTC") -> Behavior:
    return make_behavior(schedule=schedule, timezone=tz)


def test_latest_slot_and_grace_for_intervals_and_cron() -> None:
    every15 = behavior("15m")
    assert latest_slot(every15, NOW) == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert misfire_grace(every15) == timedelta(minutes=7, seconds=30)
    daily = behavior("0 6 * * *", "Europe/Paris")
    assert latest_slot(daily, NOW) == datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
    assert misfire_grace(daily) == timedelta(hours=1)


async def fake_model(plan: RunPlan) -> CallOutcome:
    return CallOutcome(output=f"answer for {plan.behavior.name}", model="m", cost_usd=0.001)


def runs(db: Database) -> list[Run]:
    with db.transaction() as session:
        return list(session.exec(select(Run).order_by(col(Run.scheduled_for))))


async def test_jobs_follow_the_registry_and_catch_up_once(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("alpha", "beta"):
        write_behavior(tmp_path, name, VALID_BEHAVIOR.format(key_env=f"K_{name}", name=name))
    clock = FakeClock(NOW)  # 2 minutes after the 12:00 slot: within the 7.5-minute grace
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, NOW)
        lock_behavior(session, name="beta").paused = True
    service = RunnerService(db, clock, fake_model, PolicyContext())
    await service.start()
    try:
        assert service.job_count == 1
        await wait_until_async(
            lambda: any(r.status == "succeeded" for r in runs(db)), 10, "the catch-up run"
        )
    finally:
        await service.stop()
    (run,) = runs(db)
    assert (run.scheduled_for, run.trigger, run.status) == (
        datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        "catch_up",
        "succeeded",
    )
    # A restart within the same slot claims nothing more: the slot ran once. (Its catch-up
    # claim is attempted, and comes back empty.)
    again = RunnerService(db, clock, fake_model, PolicyContext())
    loop = asyncio.get_running_loop()
    attempted = asyncio.Event()
    plans_claimed: list[list[RunPlan]] = []
    claim_and_begin = again._claim_and_begin

    def observed(batch: list[SlotClaim]) -> list[RunPlan]:
        plans = claim_and_begin(batch)
        plans_claimed.append(plans)
        loop.call_soon_threadsafe(attempted.set)
        return plans

    monkeypatch.setattr(again, "_claim_and_begin", observed)
    await again.start()
    try:
        await asyncio.wait_for(attempted.wait(), timeout=10)
    finally:
        await again.stop()
    assert plans_claimed == [[]]
    assert len(runs(db)) == 1


async def test_a_behavior_whose_key_the_daemon_lacks_is_not_scheduled_and_status_says_why(
    db: Database, tmp_path: Path
) -> None:
    for name in ("alpha", "beta"):
        write_behavior(tmp_path, name, VALID_BEHAVIOR.format(key_env=f"K_{name}", name=name))
    clock = FakeClock(NOW)  # 2 minutes after the 12:00 slot: within the 7.5-minute grace
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, NOW)
        alpha = lock_behavior(session, name="alpha").id
        lock_behavior(session, name="beta").key_problem = "environment variable K_beta is not set"
    service = RunnerService(db, clock, fake_model, PolicyContext())
    await service.start()
    try:
        assert service.job_count == 1
        await wait_until_async(
            lambda: any(r.status == "succeeded" for r in runs(db)), 10, "alpha's catch-up run"
        )
        with db.transaction() as session:
            (beta,) = [b for b in collect_status(session, NOW).behaviors if b.name == "beta"]
        assert (beta.state, beta.next_run_at) == (KEY_MISSING, None)
        # A later reconcile finds the key: the behavior is scheduled again.
        with db.transaction() as session:
            lock_behavior(session, name="beta").key_problem = None
        await service.sync()
        assert service.job_count == 2
    finally:
        await service.stop()
    assert [r.behavior_id for r in runs(db)] == [alpha]  # beta's catch-up slot was never claimed


async def test_run_now_runs_once_outside_the_schedule(db: Database, tmp_path: Path) -> None:
    write_behavior(tmp_path, "alpha", VALID_BEHAVIOR.format(key_env="K", name="alpha"))
    clock = FakeClock(NOW + timedelta(minutes=10))  # outside the grace: no catch-up
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, NOW)
    service = RunnerService(db, clock, fake_model, PolicyContext())
    await service.start()
    try:
        run_id = await service.run_now("alpha")
    finally:
        await service.stop()
    (run,) = runs(db)
    assert run.id == run_id and run.trigger == "manual" and run.output == "answer for alpha"


async def test_a_due_interval_job_fires_on_the_real_clock(db: Database, tmp_path: Path) -> None:
    body = VALID_BEHAVIOR.format(key_env="K", name="alpha").replace("15m", "10s")
    write_behavior(tmp_path, "alpha", body)
    from ledger.clock import SystemClock

    with db.transaction() as session:
        reconcile_directory(session, tmp_path, datetime.now(UTC))
    service = RunnerService(db, SystemClock(), fake_model, PolicyContext())
    await service.start()
    try:
        await wait_until_async(
            lambda: any(r.trigger == "schedule" and r.status == "succeeded" for r in runs(db)),
            30,
            "a scheduled run to succeed",
        )
    finally:
        await service.stop()
    scheduled = [r for r in runs(db) if r.trigger == "schedule"]
    assert scheduled and scheduled[0].scheduled_for.second % 10 == 0


@pytest.mark.parametrize(
    ("soft", "hard", "expected"),
    [(512, 512, 256), (512, 4096, 1024), (4096, 4096, 1024), (100, 100, 16)],
)
def test_calls_in_flight_fit_the_open_files_limit(soft: int, hard: int, expected: int) -> None:
    """The soft limit is raised toward the hard one; what still does not fit is given up."""
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from ledger.runner.scheduler import calls_that_fit\n"
        "print(calls_that_fit(1024), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) == expected
    assert int(out[1]) == min(hard, max(soft, 1024 + 256))


def test_replicas_cut_a_wave_into_the_same_sorted_chunks_and_take_them_in_their_own_order() -> None:
    import random

    from ledger.runner.run import SlotClaim
    from ledger.runner.scheduler import CLAIM_CHUNK, claim_chunks

    wave = [SlotClaim(bid, NOW, "A") for bid in range(1, 4 * CLAIM_CHUNK + 8)]
    shuffled = list(wave)
    random.Random(3).shuffle(shuffled)
    one = claim_chunks(wave, random.Random(1))
    other = claim_chunks(shuffled, random.Random(2))
    # The same chunks (same rows, same order inside: a lock wait, never a deadlock)…
    assert sorted(map(tuple, one), key=lambda c: c[0].behavior_id) == sorted(
        map(tuple, other), key=lambda c: c[0].behavior_id
    )
    for chunk in one:
        assert [c.behavior_id for c in chunk] == sorted(c.behavior_id for c in chunk)
        assert len(chunk) <= CLAIM_CHUNK
    assert sum(map(len, one)) == len(wave)
    # …taken in different orders, so neither replica takes the whole wave.
    assert [c[0].behavior_id for c in one] != [c[0].behavior_id for c in other]


@pytest.mark.slow
def test_serve_fires_a_schedule_naming_today_and_not_one_naming_tomorrow(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    """A real ``ledger serve``: ``* * * * <today>`` fires within a minute, ``<tomorrow>``
    does not, and the API's next run for each is the engine's."""
    # A zone where it is about noon now, so "today" cannot end during the test.
    utc_now = datetime.now(UTC)
    offset = 12 - utc_now.hour  # Etc/GMT-3 is UTC+3
    zone = f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"
    local = utc_now.astimezone(ZoneInfo(zone))
    today = local.isoweekday() % 7  # crontab: 0 = Sunday
    folder = tmp_path / "behaviors"
    for name, day in (("today", today), ("tomorrow", (today + 1) % 7)):
        body = VALID_BEHAVIOR.format(key_env=f"K_{name.upper()}", name=name)
        write_behavior(folder, name, body.replace("15m", f'"* * * * {day}"\ntimezone: {zone}'))
    url = f"sqlite:///{tmp_path / 'cron.db'}"
    daemon = start_daemon(
        url,
        {
            "K_TODAY": "sk-or-v1-" + "1" * 64,
            "K_TOMORROW": "sk-or-v1-" + "2" * 64,
            "LEDGER_AUTH": "off",
            "LEDGER_OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}",
        },
    )
    db = Database.open(url)
    try:

        def scheduled(name: str) -> list[Run]:
            with db.transaction() as session:
                return list(
                    session.exec(
                        select(Run)
                        .join(BehaviorRow, col(BehaviorRow.id) == col(Run.behavior_id))
                        .where(col(BehaviorRow.name) == name, col(Run.trigger) == "schedule")
                    )
                )

        asked = datetime.now(UTC)
        listed = httpx.get(daemon.base_url + "/api/behaviors").json()["behaviors"]
        answered = datetime.now(UTC)
        next_run = {b["name"]: datetime.fromisoformat(b["next_run_at"]) for b in listed}
        tomorrow_midnight = datetime.combine(
            local.date() + timedelta(days=1), time(0), ZoneInfo(zone)
        )
        assert next_run["tomorrow"] == tomorrow_midnight
        # The next minute from when the daemon answered (a loaded machine may answer slowly).
        assert asked < next_run["today"] <= answered + timedelta(minutes=1)
        wait_until(lambda: bool(scheduled("today")), timeout=90, what="today's slot to fire")
        (run,) = scheduled("today")[:1]
        slot = run.scheduled_for.replace(tzinfo=UTC)
        assert slot.second == 0 and slot.astimezone(ZoneInfo(zone)).date() == local.date()
        assert scheduled("tomorrow") == []
    finally:
        db.close()
