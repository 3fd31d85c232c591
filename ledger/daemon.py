"""The daemon: the one place that builds the long-lived parts from ``Settings`` and wires them
together — the database, the behaviors registry and its watchers, the span writer and the
broadcast processor, the scheduler and runner, the outbox dispatcher and its channels, and the
background loops (approval expiry, model catalog, retention, interrupted runs).

``open_daemon`` starts everything in order and returns the ``Daemon``; ``close_daemon`` stops
it in reverse. The web app's lifespan calls both; nothing here knows about HTTP routes. It also
holds the one ``PolicyContext`` builder, used by the daemon, the API and the CLI alike, so an
alert caused by an operator's action reaches the same channels as one caused by a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import httpx
import structlog
from pydantic import SecretStr
from sqlmodel import Session, select

from ledger import __version__
from ledger.behaviors.load import check_resolved_keys, load_directory
from ledger.behaviors.registry import ReconcileSummary, reconcile, registered_holders
from ledger.behaviors.watch import rescan_periodically, watch_folder
from ledger.clock import Clock, SystemClock
from ledger.config import Settings
from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from ledger.errors import ConfigError, LedgerError
from ledger.heap import settle_heap
from ledger.http import backoff_delay
from ledger.ingest.otlp import Limits
from ledger.ingest.process import IngestProcessor
from ledger.ingest.receiver import BroadcastAuth, Ingest, WebhookSourceConfig
from ledger.ingest.worker import ProcessorProcess
from ledger.ingest.writer import Backlog, SpanWriter
from ledger.metrics import install_event_counters, observe_dispatch
from ledger.notion.api import NotionApi
from ledger.notion.approvals import ApprovalPoller, Decide
from ledger.notion.deliver import NotionCommentChannel, NotionDeliverer
from ledger.notion.mirror import Mirror
from ledger.notion.setup import open_api
from ledger.outbox.actions import ActionDeliverer, action_handlers, dead_letter_hook
from ledger.outbox.alerts import (
    AlertChannel,
    ChannelDeps,
    ChannelFactory,
    ChannelSpec,
    LogChannel,
    alert_handlers,
    build_channel,
    chain_dead_letter_hooks,
    dead_letter_alert_hook,
)
from ledger.outbox.dispatcher import DeliveryDeferred, Dispatcher, Handler, OutboxItem
from ledger.outbox.enqueue import KIND_MIRROR
from ledger.outbox.urls import make_client
from ledger.retention import PruneResult, Target, prune, targets_from_settings
from ledger.runner.call import call_model
from ledger.runner.catalog import REFRESH_SECONDS, ModelCatalog
from ledger.runner.multi import MultiModelRunner
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.run import (
    RunPlan,
    approve,
    expire_approvals,
    interrupt_expired_runs,
    reject,
)
from ledger.runner.scheduler import RunnerService, calls_that_fit
from ledger.secrets import resolve_many
from ledger.signatures import Scheme
from ledger.transitions import PolicyContext, behavior_channel_name, end_expired_silences

log = structlog.get_logger("ledger.daemon")

APPROVAL_SWEEP_SECONDS = 30.0
MIRROR_RETRY_SECONDS = 6 * 3600.0
NOTION_SYNC_SECONDS = 6 * 3600.0  # a full compare with Notion (first one after this long)
SILENCE_SWEEP_SECONDS = 15.0

# Constructors for alert channel types built outside ``ledger.outbox.alerts`` — the lead plugs
# the Notion comment channel in here: ``{"notion": notion_comment_channel}`` (a
# ``ChannelFactory``: ``(ChannelSpec, ChannelDeps) -> AlertChannel``; ``spec.mention`` holds
# the user ids to @mention). Without one, ``type = "notion"`` is valid and its alerts wait.
ALERT_CHANNEL_TYPES: Final[dict[str, ChannelFactory]] = {}


def build_policy_context(settings: Settings) -> PolicyContext:
    """The context every decision is applied with: ``[policy]`` overrides, whether the Notion
    mirror is on, and the alert channels of ledger.toml (``[alert_channels.NAME]``)."""
    return PolicyContext(
        global_overrides=settings.policy,
        mirror=settings.notion_token is not None,
        alert_channels=tuple(settings.alert_channels),
        channel_events={
            name: tuple(cfg.events) for name, cfg in settings.alert_channels.items() if cfg.events
        },
        alert_window=timedelta(minutes=settings.alert_dedup_minutes),
        provider_error_runs=settings.alert_provider_error_runs,
    )


# --------------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Daemon:
    """The running daemon's parts, opened by ``open_daemon``. The behaviors folder is
    reconciled into the registry on start, on every change the watcher sees, at each periodic
    rescan and on SIGHUP; the services follow the registry."""

    settings: Settings
    db: Database
    clock: Clock
    reconcile_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    last_reconcile: ReconcileSummary | None = None
    ingest: Ingest | None = None
    services: Services | None = None
    _warned: set[str] = field(default_factory=set)

    async def reconcile_now(self) -> ReconcileSummary:
        """Reconcile the folder into the database (one at a time, off the event loop), then
        let the scheduler follow the registry."""
        async with self.reconcile_lock:
            try:
                summary = await asyncio.to_thread(self._reconcile_sync)
            except Exception:
                if self.last_reconcile is None:
                    raise  # at start-up: better not to start than to run blind
                log.exception(
                    "reconciling the behaviors folder failed; retrying at the next change or rescan"
                )
                return self.last_reconcile
            self.last_reconcile = summary
            if self.services is not None:
                await self.services.registry_changed()
            return summary

    async def rescan_on_signal(self) -> None:
        """SIGHUP: reconcile the folder now and say what it found, "no changes" included."""
        summary = await self.reconcile_now()
        names = {k: v for k, v in dataclasses.asdict(summary).items() if v}
        log.info(
            "SIGHUP: behaviors folder rescanned",
            found=summary.describe(),
            behaviors_dir=str(self.settings.behaviors_dir),
            **names,
        )

    def _reconcile_sync(self) -> ReconcileSummary:
        directory = self.settings.behaviors_dir
        # A file reusing what a registered behavior has is the one refused: read who has what.
        with self.db.transaction() as session:
            holders = registered_holders(session)
        report = load_directory(directory, holders, global_policy=self.settings.policy)
        if report.folder_error and report.folder_error not in self._warned:
            self._warned.add(report.folder_error)
            log.warning(report.folder_error)
        # Each problem is logged once, not at every rescan.
        missing_keys = check_resolved_keys(report, holders=holders)
        for name, why in missing_keys.items():
            warning = f"{name}: {why}"
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning("behavior key not available", detail=warning)
        for problem in report.problems:
            line = problem.render()
            if line not in self._warned:
                self._warned.add(line)
                log.warning("invalid behavior file", problem=line)
        with self.db.transaction() as session:
            summary = reconcile(session, report, directory, self.clock.now(), missing_keys)
        if summary.changed:
            log.info("behaviors reconciled", summary=summary.describe())
        return summary


async def open_daemon(settings: Settings, clock: Clock) -> Daemon:
    """Open the database (upgrading it), start ingestion, reconcile the behaviors folder, then
    start the services and keep the folder reconciled (watcher, periodic rescan, SIGHUP)."""
    db = await asyncio.to_thread(Database.open, settings.database_url, migrate=True)
    install_event_counters()  # /metrics: runs, gate results, tier changes (ledger.metrics)
    daemon = Daemon(settings=settings, db=db, clock=clock)
    # Ingestion: broadcast tokens, webhook secrets and the group-commit span writer.
    daemon.ingest = await open_ingest(settings, db, clock)
    await daemon.reconcile_now()
    # Scheduler + runner, broadcast processor, approval expiry (after the first reconcile).
    daemon.services = await open_services(
        settings,
        db,
        clock,
        ingest_busy=daemon.ingest.writer.busy,
        backlog=daemon.ingest.writer.backlog,
    )
    if settings.watch:
        daemon.tasks.append(
            asyncio.create_task(
                watch_folder(settings.behaviors_dir, daemon.reconcile_now, daemon.stop),
                name="behaviors-watcher",
            )
        )
    daemon.tasks.append(
        asyncio.create_task(
            rescan_periodically(settings.rescan_seconds, daemon.reconcile_now, daemon.stop),
            name="behaviors-rescan",
        )
    )
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: daemon.tasks.append(asyncio.create_task(daemon.rescan_on_signal())),
        )
    log.info("ledger started", version=__version__, behaviors_dir=str(settings.behaviors_dir))
    return daemon


async def close_daemon(daemon: Daemon) -> None:
    """Stop everything ``open_daemon`` started, in reverse; the span writer commits what is
    queued before the database closes."""
    daemon.stop.set()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    await finish_or_cancel(daemon.tasks)
    if daemon.services is not None:
        await daemon.services.close()
    if daemon.ingest is not None:
        await daemon.ingest.close()
    daemon.db.close()
    log.info("ledger stopped")


# --------------------------------------------------------------------------------------------
# Ingestion
# --------------------------------------------------------------------------------------------

_SCHEMES: Final = {"generic": Scheme.LEDGER, "github": Scheme.GITHUB, "stripe": Scheme.STRIPE}


async def open_ingest(
    settings: Settings, db: Database, clock: Clock, *, writer: SpanWriter | None = None
) -> Ingest:
    """Resolve tokens and webhook secrets, start the span writer. Raises ConfigError/SecretError
    when a configured reference cannot be resolved."""
    raw_tokens = settings.broadcast_tokens.get_secret_value() if settings.broadcast_tokens else ""
    tokens = [s.get_secret_value() for s in resolve_many(raw_tokens)]
    auth = BroadcastAuth(tokens, settings.broadcast_header)
    if not tokens:
        log.warning(
            "broadcast ingestion is off: LEDGER_BROADCAST_TOKENS is not set, "
            "so POST /v1/traces answers 401"
        )
    sources: dict[str, WebhookSourceConfig] = {}
    for name, source in settings.webhook_sources.items():
        secrets = tuple(
            s.get_secret_value() for s in resolve_many(source.secrets.get_secret_value())
        )
        if not secrets:
            raise ConfigError(f"webhook_sources.{name}.secrets: no signing secret is configured")
        sources[name] = WebhookSourceConfig(name, _SCHEMES[source.scheme], secrets, source.behavior)
    span_writer = writer or SpanWriter(
        db.engine, backlog=Backlog(settings.ingest_max_backlog_spans)
    )
    span_writer.start()
    return Ingest(
        db=db,
        clock=clock,
        writer=span_writer,
        auth=auth,
        limits=Limits(
            max_body_bytes=settings.ingest_max_body_bytes,
            max_inflated_bytes=settings.ingest_max_inflated_bytes,
        ),
        sources=sources,
    )


# --------------------------------------------------------------------------------------------
# Services: OpenRouter client, scheduler and runner, broadcast processor, dispatcher, loops
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Services:
    """The parts that do the work once the registry is loaded (``open_services``); the
    retention tests open them without a scheduler."""

    openrouter: OpenRouterClient
    runner: RunnerService
    processor: IngestProcessor | ProcessorProcess
    dispatcher: Dispatcher
    channels: AlertChannels
    outbound: httpx.AsyncClient
    db: Database
    notion: NotionParts | None = None
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
        if self.notion is not None:
            await self.notion.api.aclose()
        await self.openrouter.aclose()
        await self.outbound.aclose()


def build_processor(
    settings: Settings,
    db: Database,
    clock: Clock,
    ctx: PolicyContext,
    ingest_busy: Callable[[], bool] | None,
    backlog: Backlog | None,
) -> IngestProcessor | ProcessorProcess:
    """The broadcast processor: in a child process (``ledger.ingest.worker``) unless
    ``LEDGER_INGEST_PROCESSOR=thread``, the clock is not the system's (a child has its own)
    or the database is an in-memory SQLite one (a child would open another)."""
    url = settings.database_url
    in_memory = url.startswith("sqlite") and (
        url.rstrip("/").endswith(":memory:") or url in ("sqlite://", "sqlite:///")
    )
    if settings.ingest_processor == "process" and isinstance(clock, SystemClock) and not in_memory:
        return ProcessorProcess(
            url,
            ctx,
            sources=settings.webhook_sources,
            ingest_busy=ingest_busy,
            backlog=backlog,
            log_format=settings.log_format,
            log_level=settings.log_level,
        )
    return IngestProcessor(
        db, clock, ctx, sources=settings.webhook_sources, ingest_busy=ingest_busy, backlog=backlog
    )


async def open_services(
    settings: Settings,
    db: Database,
    clock: Clock,
    *,
    scheduler: bool = True,
    ingest_busy: Callable[[], bool] | None = None,
    backlog: Backlog | None = None,
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

    catalog = ModelCatalog(settings.openrouter_base_url)
    multi = MultiModelRunner(db, clock, client, catalog, mirror=ctx.mirror)

    async def call(plan: RunPlan) -> Any:
        if plan.behavior.kind != "single":
            return await multi.run(plan)
        return await call_model(client, plan)

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
    processor = build_processor(settings, db, clock, ctx, ingest_busy, backlog)
    outbound = make_client()
    notion = build_notion(settings, db, clock, ctx)
    channels = AlertChannels(settings, outbound, clock, alert_channel_types(notion))
    channels.refresh(await asyncio.to_thread(registry_definitions, db))
    dispatcher = build_dispatcher(settings, db, clock, ctx, outbound, channels, notion)
    services = Services(client, runner, processor, dispatcher, channels, outbound, db, notion)
    dispatcher.start()
    if notion is not None:
        services.tasks.append(
            asyncio.create_task(
                notion.mirror.run(services.stop, dispatcher.wake, sync_every=NOTION_SYNC_SECONDS),
                name="notion-mirror-feed",
            )
        )
        services.tasks.append(
            asyncio.create_task(
                notion.poller.run(services.stop, settings.notion_poll_seconds),
                name="notion-approvals",
            )
        )
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
    services.tasks.append(
        asyncio.create_task(_silence_loop(db, clock, ctx, services.stop), name="silences")
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


_Swept = TypeVar("_Swept")


async def _sweep_every(
    seconds: float,
    stop: asyncio.Event,
    sweep: Callable[[], _Swept],
    report: Callable[[_Swept], bool],
    failed: str,
) -> None:
    """Run ``sweep`` in a thread at start, then every ``seconds`` until ``stop`` is set.
    ``report`` logs what a sweep did and says whether to sweep again at once (more may be
    waiting); a failure is logged as ``failed`` and the sweep retried at the next interval."""
    while not stop.is_set():
        try:
            if report(await asyncio.to_thread(sweep)):
                continue
        except Exception:
            log.exception(failed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _expire_loop(db: Database, clock: Clock, ctx: PolicyContext, stop: asyncio.Event) -> None:
    def sweep() -> int:
        with db.transaction() as session:
            return expire_approvals(session, clock.now(), ctx)

    def report(expired: int) -> bool:
        if expired:
            log.info("approval requests expired", count=expired)
        return False

    await _sweep_every(
        APPROVAL_SWEEP_SECONDS, stop, sweep, report, "expiring approval requests failed; retrying"
    )


async def _silence_loop(
    db: Database, clock: Clock, ctx: PolicyContext, stop: asyncio.Event
) -> None:
    """End silences whose time is up, with the summary of what they muted."""

    def sweep() -> list[int]:
        with db.transaction() as session:
            return end_expired_silences(session, clock.now(), ctx)

    def report(ended: list[int]) -> bool:
        if ended:
            log.info("silences ended", silence_ids=ended)
        return False

    await _sweep_every(
        SILENCE_SWEEP_SECONDS, stop, sweep, report, "ending silences failed; retrying"
    )


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

    def sweep() -> list[PruneResult]:
        return prune(
            db,
            targets,
            clock.now(),
            settings.retention_batch_size,
            between_batches=between_batches,
        )

    def report(results: list[PruneResult]) -> bool:
        deleted = {r.target: r.deleted for r in results if r.deleted}
        if deleted:
            log.info("old rows pruned", **deleted)
        return False

    await _sweep_every(
        settings.retention_interval_seconds,
        stop,
        sweep,
        report,
        "pruning old rows failed; retrying at the next interval",
    )


async def _interrupt_loop(db: Database, clock: Clock, every: float, stop: asyncio.Event) -> None:
    """At start, then every half lease: close runs left behind by a crash as interrupted."""

    def sweep() -> list[str]:
        with db.transaction() as session:
            return interrupt_expired_runs(session, clock.now())

    def report(closed: list[str]) -> bool:
        if closed:
            log.warning(
                "runs left behind by a stopped process closed as interrupted (reservations "
                "released; not held against their behaviors)",
                count=len(closed),
                run_ids=closed[:20],
            )
        return bool(closed)  # more may be waiting

    await _sweep_every(every, stop, sweep, report, "closing interrupted runs failed; retrying")


# --------------------------------------------------------------------------------------------
# Alert channels and the outbox dispatcher
# --------------------------------------------------------------------------------------------


def channel_spec(name: str, fields: Mapping[str, Any]) -> ChannelSpec:
    """A channel's configuration (a ``[alert_channels.NAME]`` table as dumped, secrets as their
    references, or a behavior file's channel) as a ``ChannelSpec``."""

    def text(key: str) -> str | None:
        value = fields.get(key)
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return None if value is None else str(value)

    return ChannelSpec(
        name=name,
        type=str(fields["type"]),
        url=text("url"),
        secret=text("secret"),
        mention=tuple(fields.get("mention") or ()),
        host=text("host"),
        port=fields.get("port"),
        security=str(fields.get("security") or "starttls"),
        username=text("username"),
        password=text("password"),
        sender=text("sender"),
        to=tuple(fields.get("to") or ()),
        timeout=float(fields.get("timeout") or 10.0),
    )


class AlertChannels(dict[str, AlertChannel]):
    """The live channel map the alert handler reads at delivery time.

    Global channels come from ``[alert_channels.NAME]`` in ledger.toml; a behavior file's own
    ``alerts.channels`` become channels named ``<behavior>#<index>``, refreshed on every
    registry reconcile. Secret references are resolved when a channel is built, never
    stored."""

    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        clock: Clock,
        types: Mapping[str, ChannelFactory] | None = None,
    ) -> None:
        super().__init__()
        self.deps = ChannelDeps(client, clock, settings.allow_private_urls, settings.public_url)
        self.types = dict(ALERT_CHANNEL_TYPES if types is None else types)
        self["log"] = LogChannel("log")
        for name, cfg in settings.alert_channels.items():
            fields = {k: getattr(cfg, k) for k in type(cfg).model_fields}
            self[name] = build_channel(channel_spec(name, fields), self.deps, self.types)

    def refresh(self, rows: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Rebuild the behavior-owned channels from the registry's definitions."""
        for key in [k for k in self if "#" in k]:
            del self[key]
        for behavior, definition in rows:
            channels = ((definition or {}).get("alerts") or {}).get("channels") or []
            for index, channel in enumerate(channels):
                name = behavior_channel_name(behavior, index)
                try:
                    self[name] = build_channel(channel_spec(name, channel), self.deps, self.types)
                except LedgerError as exc:
                    log.warning(
                        "alert channel unavailable", behavior=behavior, channel=name, error=str(exc)
                    )


async def _mirror_later(item: OutboxItem) -> None:
    raise DeliveryDeferred(
        "Notion is not configured (LEDGER_NOTION_TOKEN); the update waits in the outbox",
        retry_after=MIRROR_RETRY_SECONDS,
    )


@dataclass(frozen=True, slots=True)
class NotionParts:
    """The Notion side, on one client and one rate limiter: the mirror (and its feeder), the
    deliverer of actions and event-log lines, and the approvals poller."""

    api: NotionApi
    mirror: Mirror
    deliverer: NotionDeliverer
    poller: ApprovalPoller


def alert_channel_types(notion: NotionParts | None) -> dict[str, ChannelFactory]:
    """The channel types built outside ``ledger.outbox.alerts``: the Notion comment channel
    when Notion is configured (without it, ``type = "notion"`` alerts wait in the outbox)."""
    types = dict(ALERT_CHANNEL_TYPES)
    if notion is not None:
        mirror = notion.mirror

        def notion_comment(spec: ChannelSpec, deps: ChannelDeps) -> AlertChannel:
            return NotionCommentChannel(spec.name, mirror, mentions=spec.mention)

        types.setdefault("notion", notion_comment)
    return types


def notion_decide(ctx: PolicyContext) -> Decide:
    """A decision made in Notion, applied by the code the CLI and the API use."""

    def decide(
        session: Session,
        run_id: str,
        verdict: str,
        actor: str,
        reason: str,
        payload_sha256: str | None,
        now: datetime,
    ) -> str:
        if verdict == "approve":
            return approve(
                session,
                run_id,
                actor=actor,
                now=now,
                ctx=ctx,
                payload_sha256=payload_sha256,
                reason=reason or "approved in Notion",
            )
        return reject(session, run_id, actor=actor, reason=reason, now=now, ctx=ctx)

    return decide


def build_notion(
    settings: Settings, db: Database, clock: Clock, ctx: PolicyContext
) -> NotionParts | None:
    """The Notion parts when ``LEDGER_NOTION_TOKEN`` is set (None otherwise)."""
    if settings.notion_token is None:
        return None
    api = open_api(settings)
    mirror = Mirror(
        db,
        api,
        clock,
        ctx,
        dashboard_url=settings.public_url,
        event_log_page=settings.notion_event_log_page,
    )
    deliverer = NotionDeliverer(mirror, settings.notion_event_log_page)
    poller = ApprovalPoller(db, api, clock, notion_decide(ctx), mirror)
    return NotionParts(api, mirror, deliverer, poller)


def build_dispatcher(
    settings: Settings,
    db: Database,
    clock: Clock,
    ctx: PolicyContext,
    client: httpx.AsyncClient,
    channels: AlertChannels,
    notion: NotionParts | None = None,
) -> Dispatcher:
    handlers: dict[str, Handler] = {
        **alert_handlers(channels),
        **action_handlers(
            ActionDeliverer(
                client,
                clock,
                allow_private=settings.allow_private_urls,
                base_dir=settings.behaviors_dir,
            )
        ),
        KIND_MIRROR: _mirror_later,
    }
    if notion is not None:
        handlers.update(notion.deliverer.handlers())
        handlers[KIND_MIRROR] = notion.mirror.handle
    handlers = {kind: _timed(handler, clock) for kind, handler in handlers.items()}
    on_dead = chain_dead_letter_hooks(
        dead_letter_hook(ctx, clock), dead_letter_alert_hook(ctx, clock)
    )
    return Dispatcher(db, handlers, clock, on_dead=on_dead)


def _timed(handler: Handler, clock: Clock) -> Handler:
    """``handler``, observing each delivery's lag (creation to delivery) for /metrics."""

    async def deliver(item: OutboxItem) -> None:
        await handler(item)
        observe_dispatch(item.kind, item.created_at, clock.now())

    return deliver


def registry_definitions(db: Database) -> list[tuple[str, Mapping[str, Any]]]:
    """Every registered behavior's name and definition (its own alert channels)."""
    with db.transaction() as session:
        return [(n, d) for n, d in session.exec(select(BehaviorRow.name, BehaviorRow.definition))]
