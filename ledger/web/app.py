"""``create_app(settings)``: the FastAPI app whose lifespan owns the daemon's resources.

The lifespan opens the database (upgrading it), reconciles the behaviors folder, and keeps it
reconciled (file watcher, periodic rescan, SIGHUP) until shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ledger import __version__
from ledger.behaviors.load import check_resolved_keys, load_directory
from ledger.behaviors.registry import ReconcileSummary, reconcile
from ledger.behaviors.watch import rescan_periodically, watch_folder
from ledger.clock import Clock, SystemClock
from ledger.config import Settings
from ledger.db.session import Database
from ledger.ingest.routes import LedgerApp, install_ingest_routes, open_ingest
from ledger.web.api import router as api_router
from ledger.web.auth import TokenAuth
from ledger.web.errors import install_error_handlers
from ledger.web.services import Services, finish_or_cancel, open_services

log = structlog.get_logger("ledger.web")


@dataclass(slots=True)
class AppState:
    settings: Settings
    db: Database
    clock: Clock
    reconcile_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    last_reconcile: ReconcileSummary | None = None
    auth: TokenAuth | None = None
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

    def _reconcile_sync(self) -> ReconcileSummary:
        directory = self.settings.behaviors_dir
        report = load_directory(directory)
        # Each problem is logged once, not at every rescan.
        for warning in check_resolved_keys(report):
            if warning not in self._warned:
                self._warned.add(warning)
                log.warning("behavior key not available", detail=warning)
        for problem in report.problems:
            line = problem.render()
            if line not in self._warned:
                self._warned.add(line)
                log.warning("invalid behavior file", problem=line)
        with self.db.transaction() as session:
            summary = reconcile(session, report, directory, self.clock.now())
        if summary.changed:
            log.info("behaviors reconciled", summary=summary.describe())
        return summary


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.ledger
    return state


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await asyncio.to_thread(Database.open, settings.database_url, migrate=True)
        state = AppState(
            settings=settings, db=db, clock=clock or SystemClock(), auth=TokenAuth(settings)
        )
        app.state.ledger = state
        # Ingestion: broadcast tokens, webhook secrets and the group-commit span writer.
        app.state.ingest = await open_ingest(settings, db, state.clock)
        await state.reconcile_now()
        # Scheduler + runner, broadcast processor, approval expiry (after the first reconcile).
        state.services = await open_services(
            settings, db, state.clock, ingest_busy=app.state.ingest.writer.busy
        )
        if settings.watch:
            state.tasks.append(
                asyncio.create_task(
                    watch_folder(settings.behaviors_dir, state.reconcile_now, state.stop),
                    name="behaviors-watcher",
                )
            )
        state.tasks.append(
            asyncio.create_task(
                rescan_periodically(settings.rescan_seconds, state.reconcile_now, state.stop),
                name="behaviors-rescan",
            )
        )
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(
                signal.SIGHUP,
                lambda: state.tasks.append(asyncio.create_task(state.reconcile_now())),
            )
        log.info("ledger started", version=__version__, behaviors_dir=str(settings.behaviors_dir))
        try:
            yield
        finally:
            state.stop.set()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await finish_or_cancel(state.tasks)
            if state.services is not None:
                await state.services.close()
            await app.state.ingest.close()  # commits what is queued before the database closes
            db.close()
            log.info("ledger stopped")

    app = LedgerApp(
        title="Promotion Ledger",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    install_ingest_routes(app)  # POST /v1/traces, POST /webhooks/{source}
    app.include_router(api_router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the database answers."""
        state = get_state(request)

        def ping() -> None:
            with state.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await asyncio.to_thread(ping)
        except Exception as exc:  # any driver failure means "not ready", with the reason
            return JSONResponse(
                {"status": "unavailable", "reason": type(exc).__name__}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    return app
