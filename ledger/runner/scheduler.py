"""APScheduler wiring: one job per active behavior; a job only claims its slot and hands off.

Slot claims from many jobs due at the same instant are batched into one INSERT; each won run
then starts at once (bounded by a semaphore), without waiting on the others. After downtime,
the latest slot missed within the behavior's misfire grace is claimed once at start-up; the
unique (behavior, slot) claim makes "once" hold across restarts and replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from croniter import croniter
from pydantic import ValidationError
from sqlmodel import col, select

from ledger.behaviors.schema import Behavior
from ledger.clock import Clock
from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from ledger.runner.run import (
    CallOutcome,
    RunPlan,
    SlotClaim,
    begin_run,
    claim_slots,
    finish_run,
)
from ledger.transitions import PolicyContext

log = structlog.get_logger("ledger.scheduler")

INTERVAL_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MAX_MISFIRE_GRACE = timedelta(hours=1)
CLAIM_BATCH_WINDOW = 0.005  # seconds to gather claims due at the same instant
CLAIM_BATCH_MAX = 1000

CallModel = Callable[[RunPlan], Awaitable[CallOutcome]]


@dataclass(frozen=True, slots=True)
class ScheduledBehavior:
    """What a job needs to know: its behavior's id, tier and schedule."""

    id: int
    name: str
    tier: str
    behavior: Behavior

    @property
    def key(self) -> tuple[str, str]:
        return (self.behavior.schedule, self.behavior.timezone)


def misfire_grace(behavior: Behavior) -> timedelta:
    """Half the behavior's interval (cron: the gap between its next two slots), at most 1 h."""
    interval = behavior.interval
    if interval is None:
        first = behavior.next_fire_after(datetime.now(UTC))
        interval = behavior.next_fire_after(first) - first
    return min(interval / 2, MAX_MISFIRE_GRACE)


def latest_slot(behavior: Behavior, now: datetime) -> datetime:
    """The most recent slot at or before ``now``."""
    interval = behavior.interval
    if interval is not None:
        steps = int((now - INTERVAL_EPOCH) / interval)
        return INTERVAL_EPOCH + steps * interval
    local = (now + timedelta(microseconds=1)).astimezone(ZoneInfo(behavior.timezone))
    prev: datetime = croniter(behavior.schedule, local).get_prev(datetime)
    return prev.astimezone(UTC)


def trigger_for(behavior: Behavior) -> Any:
    interval = behavior.interval
    if interval is not None:
        return IntervalTrigger(
            seconds=interval.total_seconds(), start_date=INTERVAL_EPOCH, timezone=UTC
        )
    return CronTrigger.from_crontab(behavior.schedule, timezone=ZoneInfo(behavior.timezone))


class RunnerService:
    """Schedules behaviors and executes their runs. Started and stopped by the lifespan."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        call_model: CallModel,
        ctx: PolicyContext,
        *,
        max_concurrency: int = 256,
        default_estimate_usd: float = 0.05,
    ) -> None:
        self.db = db
        self.clock = clock
        self.call_model = call_model
        self.ctx = ctx
        self.default_estimate_usd = default_estimate_usd
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            executors={"default": AsyncIOExecutor()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        )
        self._behaviors: dict[str, ScheduledBehavior] = {}
        self._claims: asyncio.Queue[SlotClaim] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._claimer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._scheduler.start()
        self._claimer = asyncio.create_task(self._claim_loop(), name="slot-claimer")
        await self.sync()
        await self._catch_up()

    async def stop(self, timeout: float = 10.0) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self._claimer is not None:
            self._claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claimer
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    # -- following the registry ---------------------------------------------------------------
    async def sync(self) -> None:
        """Make the jobs match the registry: add, replace changed schedules, remove the rest."""
        active = await asyncio.to_thread(self._load_active)
        for name in set(self._behaviors) - set(active):
            with contextlib.suppress(Exception):
                self._scheduler.remove_job(name)
            del self._behaviors[name]
        for name, sb in active.items():
            old = self._behaviors.get(name)
            self._behaviors[name] = sb
            if old is not None and old.key == sb.key:
                continue
            self._scheduler.add_job(
                self._due,
                trigger_for(sb.behavior),
                args=[name],
                id=name,
                name=name,
                replace_existing=True,
                misfire_grace_time=int(misfire_grace(sb.behavior).total_seconds()) or 1,
            )

    def _load_active(self) -> dict[str, ScheduledBehavior]:
        out: dict[str, ScheduledBehavior] = {}
        with self.db.transaction() as session:
            rows = session.exec(
                select(BehaviorRow).where(
                    col(BehaviorRow.retired).is_(False),
                    col(BehaviorRow.paused).is_(False),
                    col(BehaviorRow.enabled).is_(True),
                )
            ).all()
            for row in rows:
                try:
                    behavior = Behavior.model_validate(row.definition)
                except ValidationError:
                    continue
                out[row.name] = ScheduledBehavior(row.id or 0, row.name, row.tier, behavior)
        return out

    @property
    def job_count(self) -> int:
        return len(self._scheduler.get_jobs())

    # -- firing -------------------------------------------------------------------------------
    async def _due(self, name: str) -> None:
        sb = self._behaviors.get(name)
        if sb is None:
            return
        slot = latest_slot(sb.behavior, self.clock.now())
        self._claims.put_nowait(SlotClaim(sb.id, slot, sb.tier))

    async def _catch_up(self) -> None:
        """Claim the latest slot each behavior missed within its grace (at most once)."""
        now = self.clock.now()
        for sb in self._behaviors.values():
            slot = latest_slot(sb.behavior, now)
            if now - slot <= misfire_grace(sb.behavior) and slot < now:
                self._claims.put_nowait(SlotClaim(sb.id, slot, sb.tier, "catch_up"))

    async def run_now(self, name: str) -> str | None:
        """Run a behavior once, now, outside its schedule; returns the run id."""
        with self.db.transaction() as session:
            row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
            if row is None:
                return None
            runs = claim_slots(
                session,
                [SlotClaim(row.id or 0, self.clock.now(), row.tier, "manual")],
                self.clock.now(),
            )
        for run in runs:
            await self._execute(run.id)
        return runs[0].id if runs else None

    async def _claim_loop(self) -> None:
        while True:
            first = await self._claims.get()
            batch = [first]
            await asyncio.sleep(CLAIM_BATCH_WINDOW)
            while not self._claims.empty() and len(batch) < CLAIM_BATCH_MAX:
                batch.append(self._claims.get_nowait())
            try:
                run_ids = await asyncio.to_thread(self._claim_batch, batch)
            except Exception:  # the database is down: these slots are retried by nobody
                log.exception("slot claims failed", slots=len(batch))
                continue
            for run_id in run_ids:
                task = asyncio.create_task(self._guarded(run_id), name=f"run-{run_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _claim_batch(self, batch: list[SlotClaim]) -> list[str]:
        now = self.clock.now()
        with self.db.transaction() as session:
            return [run.id for run in claim_slots(session, batch, now)]

    async def _guarded(self, run_id: str) -> None:
        async with self._slots:
            try:
                await self._execute(run_id)
            except Exception:
                log.exception("run crashed", run_id=run_id)

    async def _execute(self, run_id: str) -> None:
        plan = await asyncio.to_thread(self._begin, run_id)
        if plan is None:
            return
        bound = log.bind(behavior=plan.behavior.name, run_id=run_id, tier=plan.tier.value)
        bound.info("run started", preset=plan.preset)
        outcome = await self.call_model(plan)
        finished = await asyncio.to_thread(self._finish, plan, outcome)
        bound.info(
            "run finished",
            status=finished.status,
            disposition=finished.disposition,
            decision=finished.decision,
            cost_usd=outcome.cost_usd,
        )

    def _begin(self, run_id: str) -> RunPlan | None:
        with self.db.transaction() as session:
            return begin_run(
                session,
                run_id,
                now=self.clock.now(),
                ctx=self.ctx,
                default_estimate_usd=self.default_estimate_usd,
            )

    def _finish(self, plan: RunPlan, outcome: CallOutcome) -> Any:
        with self.db.transaction() as session:
            return finish_run(session, plan, outcome, now=self.clock.now(), ctx=self.ctx)
