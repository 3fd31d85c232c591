"""``create_app(settings)``: the FastAPI app whose lifespan owns the daemon's resources.

The lifespan opens the database (upgrading it), reconciles the behaviors folder, and keeps it
reconciled (file watcher, periodic rescan, SIGHUP) until shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ledger import __version__
from ledger.behaviors.load import check_resolved_keys, load_directory
from ledger.behaviors.registry import ReconcileSummary, reconcile, registered_holders
from ledger.behaviors.watch import rescan_periodically, watch_folder
from ledger.clock import Clock, SystemClock
from ledger.config import AlertChannelConfig, Settings, mask_url_password
from ledger.db.session import Database
from ledger.errors import ConfigError, LedgerError
from ledger.ingest.routes import LedgerApp, install_ingest_routes, open_ingest
from ledger.secrets import is_reference, resolve, resolve_many
from ledger.web.api import router as api_router
from ledger.web.auth import TokenAuth, is_loopback
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
        report = load_directory(directory, holders)
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


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.ledger
    return state


DOCS_URL = "/api/docs"
DOCS_ASSETS_URL = "/api/docs/static"
_DOCS_ASSETS = Path(str(resources.files("fastapi_offline") / "static"))


def install_api_docs(app: FastAPI) -> None:
    """``/api/docs``: Swagger UI whose script, style and icon the daemon serves itself (from
    the fastapi-offline package), so the page works without internet; the OpenAPI document
    declares the bearer token the ``/api`` routes need, so "Authorize" can send it."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=_DOCS_ASSETS), name="api-docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def api_docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    generate = app.openapi

    def openapi_with_bearer() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token configured under [api_tokens] in ledger.toml "
            "(see docs/api.md).",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith("/api/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi_with_bearer  # type: ignore[method-assign]  # FastAPI's documented hook


def startup_problems(settings: Settings, *, database: bool = True) -> list[str]:
    """Everything in ``settings`` that would stop the daemon's start-up, found before anything
    starts: one line each (what, where, what to do). With ``database`` the database is opened
    and upgraded too, as the lifespan would."""
    problems: list[str] = []

    def attempt(where: str, check: Callable[[], object]) -> None:
        try:
            check()
        except LedgerError as exc:
            line = " ".join(str(exc).split())  # a driver's message may span lines
            problems.append(f"{where}: {line}" if where else line)

    if settings.auth == "off" and not is_loopback(settings.host):
        problems.append(
            f"LEDGER_AUTH=off is only allowed when listening on loopback, not {settings.host}: "
            "listen on 127.0.0.1 (--host), or leave auth on and configure [api_tokens] "
            "(docs/api.md)"
        )
    else:
        attempt("api_tokens", lambda: TokenAuth(settings))
    if settings.broadcast_tokens is not None:
        raw = settings.broadcast_tokens.get_secret_value()
        attempt("LEDGER_BROADCAST_TOKENS", lambda: resolve_many(raw))
    for name, source in settings.webhook_sources.items():
        secrets = source.secrets.get_secret_value()
        attempt(f"webhook_sources.{name}.secrets", partial(_some_secret, secrets))
    for name, channel in settings.alert_channels.items():
        attempt(f"alert_channels.{name}", partial(_check_channel, channel))
    if database and not problems:
        attempt("", lambda: _open_database(settings.database_url))
    if not problems:
        attempt("", lambda: _check_port_free(settings.host, settings.port))
    return problems


def _some_secret(raw: str) -> None:
    if not resolve_many(raw):
        raise ConfigError("no signing secret is configured")


def _check_channel(channel: AlertChannelConfig) -> None:
    if channel.type == "log":
        return
    if channel.url is None:
        raise ConfigError(f"a {channel.type} channel needs a url (a reference: env:NAME)")
    if channel.type == "webhook" and channel.secret is None:
        raise ConfigError("a webhook channel needs a signing secret (a reference: env:NAME)")
    for value in (channel.url, channel.secret):
        if value is not None and is_reference(value.get_secret_value()):
            resolve(value.get_secret_value())


def _open_database(url: str) -> None:
    try:
        Database.open(url, migrate=True).close()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip()
        first_line = reason.splitlines()[0] if reason else type(exc).__name__
        raise ConfigError(
            f"cannot open the database {mask_url_password(url)}: {first_line} "
            "(check LEDGER_DATABASE_URL and that the server is up)"
        ) from None


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}: {exc.strerror} (check --host)") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror} (is another daemon running? "
                "stop it or choose another --port)"
            ) from None


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
                lambda: state.tasks.append(asyncio.create_task(state.rescan_on_signal())),
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
        docs_url=None,  # served below from the daemon's own copy of Swagger UI
        redoc_url=None,
    )
    install_error_handlers(app)
    install_api_docs(app)
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
