"""The daemon's long-running services, opened and closed by the app's lifespan: the OpenRouter
client, the scheduler and runner, the broadcast processor, the approval-expiry loop and the
retention prune."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import structlog

from ledger.clock import Clock
from ledger.config import Settings
from ledger.daemon import build_policy_context
from ledger.db.session import Database
from ledger.heap import settle_heap
from ledger.http import backoff_delay
from ledger.ingest.process import IngestProcessor
from ledger.outbox.dispatcher import Dispatcher
from ledger.outbox.urls import make_client
from ledger.retention import Target, prune, targets_from_settings
from ledger.runner.call import call_model
from ledger.runner.catalog import REFRESH_SECONDS, ModelCatalog
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.run import RunPlan, expire_approvals, interrupt_expired_runs
from ledger.runner.scheduler import RunnerService, calls_that_fit
from ledger.transitions import PolicyContext
from ledger.web.alerting import AlertChannels, build_dispatcher, registry_definitions

log = structlog.get_logger("ledger.services")

APPROVAL_SWEEP_SECONDS = 30.0


@dataclass(slots=True)
class Services:
    openrouter: OpenRouterClient
    runner: RunnerService
    processor: IngestProcessor
    dispatcher: Dispatcher
    channels: AlertChannels
    outbound: httpx.AsyncClient
    db: Database
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def registry_changed(self) -> None:
        """Follow the registry: scheduler jobs and the behaviors' own alert channels."""
        await self.runner.sync()
        self.channels.refresh(await asyncio.to_thread(registry_definitions, self.db))
        self.dispatcher.wake()

    async def close(self) -> None:
        """Stop every loop, letting database work already in a thread finish (a cancelled
        task would leave its thread holding a connection past the engine's disposal)."""
        self.stop.set()
        self.processor.wake.set()
        await self.runner.stop()
        await finish_or_cancel(self.tasks)
        await self.dispatcher.stop()
        await self.openrouter.aclose()
        await self.outbound.aclose()


async def open_services(
    settings: Settings,
    db: Database,
    clock: Clock,
    *,
    scheduler: bool = True,
    ingest_busy: Callable[[], bool] | None = None,
) -> Services:
    ctx = build_policy_context(settings)
    in_flight = calls_that_fit(settings.runner_max_calls)
    if in_flight < settings.runner_max_calls:
        log.warning(
            "the open-files limit allows fewer model calls at once; raise it (ulimit -n) "
            "to run more behaviors in the same instant",
            calls_in_flight=in_flight,
            wanted=settings.runner_max_calls,
        )
    client = OpenRouterClient(base_url=settings.openrouter_base_url, max_connections=in_flight)

    async def call(plan: RunPlan) -> Any:
        return await call_model(client, plan)

    catalog = ModelCatalog(settings.openrouter_base_url)
    runner = RunnerService(
        db,
        clock,
        call,
        ctx,
        max_concurrency=in_flight,
        catalog=catalog,
        lead_seconds=settings.runner_lead_seconds,
        lease=timedelta(seconds=settings.runner_lease_seconds),
    )
    processor = IngestProcessor(
        db, clock, ctx, sources=settings.webhook_sources, ingest_busy=ingest_busy
    )
    outbound = make_client()
    channels = AlertChannels(settings, outbound, clock)
    channels.refresh(await asyncio.to_thread(registry_definitions, db))
    dispatcher = build_dispatcher(settings, db, clock, ctx, outbound, channels)
    services = Services(client, runner, processor, dispatcher, channels, outbound, db)
    dispatcher.start()
    if scheduler:
        await runner.start()
    settle_heap()  # start-up's objects (registry, jobs) out of every later collection
    services.tasks.append(asyncio.create_task(processor.run(services.stop), name="broadcast"))
    services.tasks.append(
        asyncio.create_task(_expire_loop(db, clock, ctx, services.stop), name="approval-expiry")
    )
    services.tasks.append(
        asyncio.create_task(_catalog_loop(catalog, services.stop), name="model-catalog")
    )
    retention = targets_from_settings(settings)
    if retention:
        services.tasks.append(
            asyncio.create_task(
                _prune_loop(db, clock, retention, settings, services.stop), name="retention"
            )
        )
    services.tasks.append(
        asyncio.create_task(
            _interrupt_loop(db, clock, settings.runner_lease_seconds / 2, services.stop),
            name="interrupted-runs",
        )
    )
    return services


async def finish_or_cancel(tasks: list[asyncio.Task[Any]], grace: float = 10.0) -> None:
    """Wait up to ``grace`` seconds for tasks told to stop; cancel what is left."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


CATALOG_RETRY_SECONDS = 60.0


def catalog_retry_delay(failures: int) -> float:
    """Seconds until the next catalog refresh after ``failures`` failures in a row: hourly
    when it works; after a failure a minute, doubling each time up to the hour (an offline
    daemon logs a handful of warnings, not one a minute)."""
    if failures <= 0:
        return REFRESH_SECONDS
    return backoff_delay(failures, base=CATALOG_RETRY_SECONDS, cap=REFRESH_SECONDS, jitter=0.0)


async def _catalog_loop(catalog: ModelCatalog, stop: asyncio.Event) -> None:
    """Model prices for reservations: at start, then hourly (backing off after failures)."""
    failures = 0
    while not stop.is_set():
        refresh = asyncio.ensure_future(catalog.refresh())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({refresh, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not refresh.done():  # stopping: a slow catalog must not hold the shutdown up
            refresh.cancel()
            await asyncio.gather(refresh, return_exceptions=True)
            return
        try:
            ok = refresh.result()
        except Exception:
            log.exception("refreshing the model catalog failed; retrying")
            ok = False
        failures = 0 if ok else failures + 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=catalog_retry_delay(failures))


async def _expire_loop(db: Database, clock: Clock, ctx: PolicyContext, stop: asyncio.Event) -> None:
    def sweep() -> int:
        with db.transaction() as session:
            return expire_approvals(session, clock.now(), ctx)

    while not stop.is_set():
        try:
            expired = await asyncio.to_thread(sweep)
            if expired:
                log.info("approval requests expired", count=expired)
        except Exception:
            log.exception("expiring approval requests failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=APPROVAL_SWEEP_SECONDS)


# Between two batches of a prune, give other writers the database (SQLite's lock is the whole
# file, and a waiting writer polls for it: back-to-back batches could starve the receiver).
PRUNE_PAUSE_SECONDS = 0.05


async def _prune_loop(
    db: Database, clock: Clock, targets: list[Target], settings: Settings, stop: asyncio.Event
) -> None:
    """Prune old rows at start, then every ``retention_interval_seconds``."""

    def between_batches() -> bool:
        time.sleep(PRUNE_PAUSE_SECONDS)  # a pause, not a reading of the time
        return not stop.is_set()

    while not stop.is_set():
        try:
            results = await asyncio.to_thread(
                prune,
                db,
                targets,
                clock.now(),
                settings.retention_batch_size,
                between_batches=between_batches,
            )
            deleted = {r.target: r.deleted for r in results if r.deleted}
            if deleted:
                log.info("old rows pruned", **deleted)
        except Exception:
            log.exception("pruning old rows failed; retrying at the next interval")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.retention_interval_seconds)


async def _interrupt_loop(db: Database, clock: Clock, every: float, stop: asyncio.Event) -> None:
    """At start, then every half lease: close runs left behind by a crash as interrupted."""

    def sweep() -> list[str]:
        with db.transaction() as session:
            return interrupt_expired_runs(session, clock.now())

    while not stop.is_set():
        try:
            closed = await asyncio.to_thread(sweep)
            if closed:
                log.warning(
                    "runs left behind by a stopped process closed as interrupted (reservations "
                    "released; not held against their behaviors)",
                    count=len(closed),
                    run_ids=closed[:20],
                )
                continue  # more may be waiting
        except Exception:
            log.exception("closing interrupted runs failed; retrying")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
