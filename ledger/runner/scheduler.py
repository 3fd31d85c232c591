"""APScheduler wiring: one job per active behavior; a job only claims its slot and hands off.

A job fires ``lead`` before its slot (``LeadTrigger``): the slot is claimed, the run started
(budget reserved, prompt rendered at the slot's time) and its request prepared on an open
connection, and every request of the slot is written together at the slot's instant
(``ledger.runner.send_gate``). Slot claims from many jobs firing together are batched and
claimed in short transactions of ``CLAIM_CHUNK`` (``claim_chunks``: replicas share a wave
without deadlocks); each won run then starts at once (bounded by a semaphore), without
waiting on the others or on the rest of the wave. After downtime, the
latest slot missed within the behavior's misfire grace is claimed once at start-up; the unique
(behavior, slot) claim makes "once" hold across restarts and replicas. Finished runs are handed
to one recording loop that writes them in batches, set-based (``finish_runs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from pydantic import ValidationError
from sqlmodel import col, select

from ledger.behaviors.schema import Behavior
from ledger.clock import Clock
from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from ledger.runner.catalog import ModelCatalog
from ledger.runner.multi import adopt_expired_runs, resume_plan
from ledger.runner.run import (
    DEFAULT_LEASE,
    CallOutcome,
    FinishedRun,
    RunPlan,
    SlotClaim,
    begin_runs,
    claim_slots,
    finish_run,
    finish_runs,
    renew_leases,
)
from ledger.schedule import Schedule
from ledger.transitions import PolicyContext

log = structlog.get_logger("ledger.scheduler")

MAX_MISFIRE_GRACE = timedelta(hours=1)
CLAIM_BATCH_WINDOW = 0.005  # seconds to gather claims due at the same instant
# Claims are taken in chunks: the first runs of a big wave start while the next chunk is being
# claimed, instead of every run waiting for one transaction over the whole wave.
CLAIM_BATCH_MAX = 1000
CLAIM_CHUNK = 50  # claims per transaction (see ``claim_chunks``)
FINISH_BATCH_MAX = 200  # finishes per transaction, recorded set-based (``finish_runs``)
# Recording gives way to claiming (a wave's runs start first), for at most this long a batch.
FINISH_YIELD_MAX = 1.0
# Model calls in flight at once (the OpenRouter client's pool holds as many connections).
MAX_CONCURRENT_CALLS = 1024
# Runs are claimed, budgeted, rendered and connected this long before their slot, and their
# requests written together at the slot's instant (at most a quarter of a behavior's interval).
DEFAULT_LEAD_SECONDS = 5.0
_TICK = timedelta(microseconds=1)

CallModel = Callable[[RunPlan], Awaitable[CallOutcome]]
FD_RESERVE = 256  # open files kept for everything but model calls (ingest, database, logs)


def calls_that_fit(wanted: int = MAX_CONCURRENT_CALLS) -> int:
    """How many model calls may be in flight given the open-files limit: the soft limit is
    raised toward the hard one when ``wanted`` connections would not fit (a common default is
    1,024), and what still does not fit is given up rather than failing with EMFILE."""
    try:
        import resource  # POSIX only
    except ImportError:
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - FD_RESERVE))


@dataclass(frozen=True, slots=True)
class ScheduledBehavior:
    """What a job needs to know: its behavior's id, tier and schedule, and how long before
    each slot its run is prepared (``lead``)."""

    id: int
    name: str
    tier: str
    behavior: Behavior
    lead: timedelta = timedelta(0)

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
    return behavior.slots.latest_at(now)


def trigger_for(behavior: Behavior, lead: timedelta = timedelta(0)) -> SlotTrigger:
    """The behavior's schedule as an APScheduler trigger, firing ``lead`` before each slot."""
    return SlotTrigger(behavior.slots, lead)


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 ships no types
    """Fires ``lead`` before each slot of a schedule, so the run is prepared by the time its
    slot comes. The slots are ``ledger.schedule``'s: the ones status shows and catch-up
    claims (APScheduler's own cron trigger counts weekdays from Monday = 0)."""

    __slots__ = ("lead", "schedule")

    def __init__(self, schedule: Schedule, lead: timedelta = timedelta(0)) -> None:
        self.schedule = schedule
        self.lead = lead

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # As APScheduler's triggers do: the first firing after the previous one (even if that
        # is already past: the scheduler applies the misfire grace), else at or after ``now``.
        start = now
        if previous_fire_time is not None:
            start = min(now, previous_fire_time + _TICK)
            if start == previous_fire_time:
                start += _TICK
        return self.schedule.next_after(start + self.lead - _TICK) - self.lead

    def __str__(self) -> str:
        if self.lead:
            return f"{self.schedule} (fires {self.lead.total_seconds():g}s ahead)"
        return str(self.schedule)

    def __repr__(self) -> str:
        return f"<SlotTrigger {self}>"


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("manual run failed", task=task.get_name(), exc_info=exc)


def claim_chunks(claims: list[SlotClaim], rng: random.Random) -> list[list[SlotClaim]]:
    """A wave's claims in chunks of ``CLAIM_CHUNK``, each sorted by (behavior, slot), the
    chunks in random order.

    Replicas woken by the same instant race for the same slots. Each chunk is one short
    transaction and every replica cuts the wave at the same places, so two transactions that
    meet want the same rows in the same order (one waits for the other, never a deadlock);
    taking the chunks in a random order shares the wave between replicas instead of handing
    all of it to whichever woke first."""
    ordered = sorted(claims, key=lambda c: (c.behavior_id, c.scheduled_for))
    chunks = [ordered[i : i + CLAIM_CHUNK] for i in range(0, len(ordered), CLAIM_CHUNK)]
    rng.shuffle(chunks)
    return chunks


def lead_for(behavior: Behavior, lead: timedelta) -> timedelta:
    """How long before its slots the behavior's runs are prepared: ``lead``, at most half its
    misfire grace (a quarter of its interval), so a slot is never prepared before the previous
    one's grace has passed."""
    return min(lead, misfire_grace(behavior) / 2)


class RunnerService:
    """Schedules behaviors and executes their runs. Started and stopped by the lifespan."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        call_model: CallModel,
        ctx: PolicyContext,
        *,
        max_concurrency: int = MAX_CONCURRENT_CALLS,
        default_estimate_usd: float = 0.05,
        catalog: ModelCatalog | None = None,
        lead_seconds: float = DEFAULT_LEAD_SECONDS,
        rng: random.Random | None = None,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        self.catalog = catalog
        # Runs in flight here: their leases are renewed every third of ``lease``, in one
        # UPDATE per batch (``renew_leases``); a crash stops the renewals.
        self.lease = lease
        self._live: set[str] = set()
        self._leaser: asyncio.Task[None] | None = None
        self._resumer: asyncio.Task[None] | None = None
        # The order a wave's claim chunks are taken in; not a secret.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self.lead = timedelta(seconds=lead_seconds)
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
        self._claiming = False  # the claim loop has slots in hand (recording waits)
        self._finisher: asyncio.Task[None] | None = None
        self._finishes: asyncio.Queue[tuple[RunPlan, CallOutcome, Any]] = asyncio.Queue()

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._scheduler.start()
        self._start_leaser()
        self._claimer = asyncio.create_task(self._claim_loop(), name="slot-claimer")
        self._finisher = asyncio.create_task(self._finish_loop(), name="run-finisher")
        self._resumer = asyncio.create_task(self._resume_loop(), name="run-resumer")
        await self.sync()
        await self._catch_up()

    async def stop(self, timeout: float = 10.0) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for loop in (self._claimer, self._resumer):
            if loop is not None:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
        self._claiming = False  # nothing more is claimed: recording waits for nobody
        cut_short: list[str] = []
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=timeout)
            cut_short = sorted(self._live)
            for task in pending:
                task.cancel()
        if self._finisher is not None:
            self._finisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._finisher
        if self._leaser is not None:
            self._leaser.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leaser
        if cut_short:  # cut short by the stop timeout: give their leases up at once
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._renew, cut_short, self.clock.now())

    # -- leases -------------------------------------------------------------------------------
    def _start_leaser(self) -> None:
        if self._leaser is None or self._leaser.done():
            self._leaser = asyncio.create_task(self._lease_loop(), name="run-leases")

    async def _lease_loop(self) -> None:
        """Renew the leases of the runs in flight here, every third of the lease."""
        every = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            if not self._live:
                continue
            try:
                await asyncio.to_thread(
                    self._renew, list(self._live), self.clock.now() + self.lease
                )
            except Exception:  # the database is down: retried at the next beat
                log.exception("renewing run leases failed", runs=len(self._live))

    def _renew(self, run_ids: list[str], until: datetime) -> None:
        with self.db.transaction() as session:
            renew_leases(session, run_ids, until)

    # -- resuming multi-model runs left behind ----------------------------------------------
    async def _resume_loop(self) -> None:
        """At start, then every half lease: adopt the multi-model runs whose process stopped
        (their lease expired) and resume them from their recorded calls."""
        while True:
            try:
                plans = await asyncio.to_thread(self._adopt)
            except Exception:  # the database is down: retried at the next beat
                log.exception("resuming interrupted multi-model runs failed; retrying")
                plans = []
            for plan in plans:
                log.warning(
                    "resuming a multi-model run left behind by a stopped process",
                    behavior=plan.behavior.name,
                    run_id=plan.run_id,
                )
                self._spawn(self._call(plan), f"run-{plan.run_id}")
            if not plans:
                await asyncio.sleep(self.lease.total_seconds() / 2)

    def _adopt(self) -> list[RunPlan]:
        now = self.clock.now()
        with self.db.transaction() as session:
            plans = []
            for run_id in adopt_expired_runs(session, now, self.lease):
                plan = resume_plan(session, run_id, now)
                if plan is not None:
                    plans.append(plan)
            return plans

    # -- following the registry ---------------------------------------------------------------
    async def sync(self) -> None:
        """Make the jobs match the registry: add, replace changed schedules, remove the rest."""
        active = await asyncio.to_thread(self._load_active)
        for name in set(self._behaviors) - set(active):
            with contextlib.suppress(Exception):
                self._scheduler.remove_job(name)
            del self._behaviors[name]
        now = self.clock.now()
        for name, sb in active.items():
            old = self._behaviors.get(name)
            self._behaviors[name] = sb
            if old is not None and old.key == sb.key:
                continue
            self._scheduler.add_job(
                self._due,
                trigger_for(sb.behavior, sb.lead),
                args=[name],
                id=name,
                name=name,
                replace_existing=True,
                misfire_grace_time=int(misfire_grace(sb.behavior).total_seconds()) or 1,
            )
            # The job's first firing is for a slot at least ``lead`` away: a slot nearer
            # than that is prepared now.
            upcoming = latest_slot(sb.behavior, now + sb.lead)
            if upcoming > now:
                self._claims.put_nowait(SlotClaim(sb.id, upcoming, sb.tier))

    def _load_active(self) -> dict[str, ScheduledBehavior]:
        out: dict[str, ScheduledBehavior] = {}
        with self.db.transaction() as session:
            rows = session.exec(
                select(BehaviorRow).where(
                    col(BehaviorRow.retired).is_(False),
                    col(BehaviorRow.paused).is_(False),
                    col(BehaviorRow.enabled).is_(True),
                    # A key the daemon cannot resolve fails every run (auth_error): such a
                    # behavior is not scheduled until a reconcile finds its key (status says so).
                    col(BehaviorRow.key_problem).is_(None),
                )
            ).all()
            for row in rows:
                try:
                    behavior = Behavior.model_validate(row.definition)
                except ValidationError:
                    continue
                lead = lead_for(behavior, self.lead)
                out[row.name] = ScheduledBehavior(row.id or 0, row.name, row.tier, behavior, lead)
        return out

    def problem(self) -> str | None:
        """Why this runner cannot run behaviors (for /readyz), or None when it can."""
        if not self._scheduler.running:
            return "the scheduler is not running"
        for task, what in ((self._claimer, "slot claimer"), (self._finisher, "run finisher")):
            if task is None or task.done():
                return f"the runner's {what} has stopped"
        return None

    @property
    def job_count(self) -> int:
        return len(self._scheduler.get_jobs())

    # -- firing -------------------------------------------------------------------------------
    async def _due(self, name: str) -> None:
        sb = self._behaviors.get(name)
        if sb is None:
            return
        # Fired ``lead`` before the slot (later if the loop was busy): the slot it fired for.
        slot = latest_slot(sb.behavior, self.clock.now() + sb.lead)
        self._claims.put_nowait(SlotClaim(sb.id, slot, sb.tier))

    async def _catch_up(self) -> None:
        """Claim the latest slot each behavior missed within its grace (at most once)."""
        now = self.clock.now()
        for sb in self._behaviors.values():
            slot = latest_slot(sb.behavior, now)
            if now - slot <= misfire_grace(sb.behavior) and slot < now:
                self._claims.put_nowait(SlotClaim(sb.id, slot, sb.tier, "catch_up"))

    async def run_now(
        self, name: str, check: Callable[[BehaviorRow], None] | None = None
    ) -> str | None:
        """Run a behavior once, now, outside its schedule; returns the run id."""
        run_id = await asyncio.to_thread(self.claim_manual, name, check)
        if run_id is not None:
            await self.run_claimed(run_id)
        return run_id

    def claim_manual(
        self, name: str, check: Callable[[BehaviorRow], None] | None = None
    ) -> str | None:
        """Claim a manual run of ``name`` now; None if it is not registered. ``check`` may
        refuse it (by raising) in the same transaction, before anything is written."""
        now = self.clock.now()
        with self.db.transaction() as session:
            row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
            if row is None:
                return None
            if check is not None:
                check(row)
            runs = claim_slots(
                session, [SlotClaim(row.id or 0, now, row.tier, "manual")], now, self.lease
            )
        return runs[0].id if runs else None

    async def run_claimed(self, run_id: str) -> None:
        """Start, call and finish a claimed run (outside the scheduler's batches)."""
        self._start_leaser()
        self._live.add(run_id)
        try:
            for plan in await asyncio.to_thread(self._begin, [run_id]):
                outcome = await self._call_safely(plan)
                await asyncio.to_thread(self._finish_batch, [(plan, outcome, None)])
        finally:
            self._live.discard(run_id)

    async def _call_safely(self, plan: RunPlan) -> CallOutcome:
        try:
            return await self.call_model(plan)
        except Exception as exc:  # a bug in the call path must not lose the run
            log.exception("model call crashed", run_id=plan.run_id)
            return CallOutcome(error=f"internal error: {type(exc).__name__}")

    def start_claimed(self, run_id: str) -> asyncio.Task[None]:
        """``run_claimed`` as a task that ``stop`` waits for like the scheduled runs."""
        task = asyncio.create_task(self.run_claimed(run_id), name=f"run-{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def _begin(self, run_ids: list[str]) -> list[RunPlan]:
        with self.db.transaction() as session:
            return begin_runs(
                session,
                run_ids,
                now=self.clock.now(),
                ctx=self.ctx,
                default_estimate_usd=self.default_estimate_usd,
                catalog=self.catalog,
            )

    async def _claim_loop(self) -> None:
        while True:
            first = await self._claims.get()
            self._claiming = True
            try:
                await self._claim_batch(first)
            finally:
                self._claiming = not self._claims.empty()

    async def _claim_batch(self, first: SlotClaim) -> None:
        batch = [first]
        if self._claims.qsize() + 1 < CLAIM_BATCH_MAX:
            await asyncio.sleep(CLAIM_BATCH_WINDOW)
        while not self._claims.empty() and len(batch) < CLAIM_BATCH_MAX:
            batch.append(self._claims.get_nowait())
        for chunk in claim_chunks(batch, self._rng):
            try:
                plans = await asyncio.to_thread(self._claim_and_begin, chunk)
            except Exception:  # the database is down: the slots are claimed by nobody
                log.exception("slot claims failed", slots=len(chunk))
                continue
            for plan in plans:
                self._spawn(self._call(plan), f"run-{plan.run_id}")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _claim_and_begin(self, batch: list[SlotClaim]) -> list[RunPlan]:
        """Claim the slots and start the won runs in one short transaction."""
        now = self.clock.now()
        with self.db.transaction() as session:
            won = [run.id for run in claim_slots(session, batch, now, self.lease)]
            if not won:
                return []
            return begin_runs(
                session,
                won,
                now=now,
                ctx=self.ctx,
                default_estimate_usd=self.default_estimate_usd,
                catalog=self.catalog,
            )

    async def _call(self, plan: RunPlan) -> None:
        self._live.add(plan.run_id)
        try:
            async with self._slots:
                outcome = await self._call_safely(plan)
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._finishes.put_nowait((plan, outcome, done))
            await done
        finally:
            self._live.discard(plan.run_id)

    async def _finish_loop(self) -> None:
        """The recording queue's one writer: finished runs are handed over by their tasks and
        recorded in batches of up to ``FINISH_BATCH_MAX``, one transaction each, set-based
        (``finish_runs``); while one batch is written the next gathers. While slots are being
        claimed (a wave too big to claim ahead of its slot) recording waits, at most
        ``FINISH_YIELD_MAX`` a batch: the database writer and the process go to starting runs
        first."""
        loop = asyncio.get_running_loop()
        while True:
            first = await self._finishes.get()
            batch = [first]
            await asyncio.sleep(CLAIM_BATCH_WINDOW)
            until = loop.time() + FINISH_YIELD_MAX
            while self._claiming and loop.time() < until:
                await asyncio.sleep(CLAIM_BATCH_WINDOW)
            while not self._finishes.empty() and len(batch) < FINISH_BATCH_MAX:
                batch.append(self._finishes.get_nowait())
            try:
                results = await asyncio.to_thread(self._finish_batch, batch)
            except Exception as exc:
                log.exception("recording finished runs failed", runs=len(batch))
                results = [exc] * len(batch)
            for (plan, outcome, done), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    if not done.done():
                        done.set_result(None)
                    continue
                log.info(
                    "run finished",
                    behavior=plan.behavior.name,
                    run_id=plan.run_id,
                    tier=plan.tier.value,
                    status=result.status,
                    disposition=result.disposition,
                    decision=result.decision,
                    cost_usd=outcome.cost_usd,
                )
                if not done.done():
                    done.set_result(result)

    def _finish_batch(
        self, batch: list[tuple[RunPlan, CallOutcome, Any]]
    ) -> list[FinishedRun | BaseException]:
        """Record a batch of finished runs in one transaction, set-based (``finish_runs``).
        Should that fail (a run closed or removed meanwhile, a bug), the batch is recorded
        again run by run, each in its own savepoint, so one run cannot lose the others."""
        now = self.clock.now()
        items = [(plan, outcome) for plan, outcome, _done in batch]
        with self.db.transaction() as session:
            try:
                with session.begin_nested():
                    return list(finish_runs(session, items, now=now, ctx=self.ctx))
            except Exception:
                log.exception("recording runs as a batch failed; recording them one by one")
            out: dict[int, FinishedRun | BaseException] = {}
            # Behaviors are locked in id order, as the claims lock them: no deadlock between
            # a batch of finishes and a wave being claimed (here or on another replica).
            for i in sorted(range(len(items)), key=lambda i: items[i][0].behavior_id):
                plan, outcome = items[i]
                try:
                    with session.begin_nested():
                        out[i] = finish_run(session, plan, outcome, now=now, ctx=self.ctx)
                except Exception as exc:
                    log.exception("recording a run failed", run_id=plan.run_id)
                    out[i] = exc
        return [out[i] for i in range(len(batch))]
