"""``create_app(settings)``: the FastAPI app — routes, auth, API docs, health — whose lifespan
opens the daemon (``ledger.daemon.open_daemon``: database, registry and watchers, ingestion,
services) and closes it on shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError

from ledger import __version__
from ledger.clock import Clock, SystemClock
from ledger.config import AlertChannelConfig, Settings, mask_url_password
from ledger.daemon import Daemon, close_daemon, open_daemon
from ledger.db.session import Database
from ledger.errors import ConfigError, LedgerError
from ledger.listen import listen_problem
from ledger.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ledger.metrics import outbox_overdue_seconds
from ledger.metrics import render as render_metrics
from ledger.secrets import is_reference, resolve, resolve_many
from ledger.web.alerting_api import router as alerting_router
from ledger.web.api import router as api_router
from ledger.web.auth import TokenAuth, is_loopback, require_role
from ledger.web.dashboard import install_dashboard
from ledger.web.dashboard.feed import ChangeFeed, database_fingerprint
from ledger.web.errors import install_error_handlers
from ledger.web.ingest_routes import LedgerApp, install_ingest_routes
from ledger.web.read_routes import router as read_router
from ledger.web.security import CONTENT_SECURITY_POLICY, SecurityHeaders
from ledger.web.sessions import (
    LoginRateLimit,
    SessionSigner,
    config_token_digests,
    session_secret,
)
from ledger.web.token_routes import router as token_router

log = structlog.get_logger("ledger.web")


def get_state(request: Request) -> Daemon:
    state: Daemon = request.app.state.ledger
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
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )
        page.headers["content-security-policy"] = docs_page_policy(bytes(page.body))
        return page

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


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def docs_page_policy(page: bytes) -> str:
    """The Swagger UI page's Content-Security-Policy: the app's, plus its one inline script
    (which starts Swagger UI) allowed by its hash, and inline styles (Swagger UI sets some)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.finditer(page)
    )
    return CONTENT_SECURITY_POLICY.replace(
        "script-src 'self'", f"script-src 'self' {hashes}"
    ).replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def startup_problems(settings: Settings, *, database: bool = True) -> list[str]:
    """Everything in ``settings`` that would stop the daemon's start-up, found before anything
    starts: one line each (what, where, what to do). The port is bind-tested whatever else is
    wrong, so every problem is listed at once; with ``database`` the database is opened and
    migrated too, as the lifespan would, once the configuration itself is right."""
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
    attempt("session_secret", lambda: session_secret(settings))
    if settings.broadcast_tokens is not None:
        raw = settings.broadcast_tokens.get_secret_value()
        attempt("LEDGER_BROADCAST_TOKENS", lambda: resolve_many(raw))
    for name, source in settings.webhook_sources.items():
        secrets = source.secrets.get_secret_value()
        attempt(f"webhook_sources.{name}.secrets", partial(_some_secret, secrets))
    for name, channel in settings.alert_channels.items():
        attempt(f"alert_channels.{name}", partial(_check_channel, channel))
    configured = not problems
    busy = listen_problem(settings.host, settings.port, hint=PORT_HINT)
    if busy is not None:
        problems.append(busy)
    if database and configured:  # opening migrates it: only once the configuration is right
        attempt("", lambda: _open_database(settings.database_url))
    return problems


def _some_secret(raw: str) -> None:
    if not resolve_many(raw):
        raise ConfigError("no signing secret is configured")


def _check_channel(channel: AlertChannelConfig) -> None:
    if channel.type in ("log", "notion"):
        return
    if channel.type == "email":
        missing = [n for n in ("host", "sender") if getattr(channel, n) is None]
        if not channel.to:
            missing.append("to")
        if missing:
            raise ConfigError(f"an email channel needs {', '.join(missing)}")
    if channel.type in ("slack", "webhook") and channel.url is None:
        raise ConfigError(f"a {channel.type} channel needs a url (a reference: env:NAME)")
    if channel.type == "webhook" and channel.secret is None:
        raise ConfigError("a webhook channel needs a signing secret (a reference: env:NAME)")
    for value in (channel.url, channel.secret, channel.password):
        if value is not None and is_reference(value.get_secret_value()):
            resolve(value.get_secret_value())


def _open_database(url: str) -> None:
    """Open and migrate the database as the lifespan will. Raises ConfigError (one line)."""
    try:
        Database.open(url, migrate=True).close()
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise ConfigError(
            f"cannot open and migrate the database {mask_url_password(url)}: "
            f"{reason or type(exc).__name__} (check LEDGER_DATABASE_URL)"
        ) from None


PORT_HINT = "is another daemon running? stop it or choose another --port"


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.auth = auth = TokenAuth(settings)
        if not auth.enabled:
            log.warning(
                "LEDGER_AUTH=off: every request is served without a token, as admin; "
                "use it only on a machine nobody else can reach",
                host=settings.host,
            )
        daemon = await open_daemon(settings, clock or SystemClock())
        auth.use_database(daemon.db, daemon.clock)
        app.state.ledger = daemon
        app.state.ingest = daemon.ingest
        app.state.sessions = SessionSigner(session_secret(settings))
        app.state.config_token_digests = config_token_digests(settings)
        app.state.login_limit = LoginRateLimit()
        app.state.dashboard_feed = ChangeFeed(database_fingerprint(daemon))
        try:
            yield
        finally:
            await app.state.dashboard_feed.close()
            await close_daemon(daemon)

    app = LedgerApp(
        title="Promotion Ledger",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # served below from the daemon's own copy of Swagger UI
        redoc_url=None,
    )
    app.state.auth_disabled = settings.auth == "off"  # the dashboard shows a banner
    app.add_middleware(SecurityHeaders)
    install_error_handlers(app)
    install_api_docs(app)
    install_ingest_routes(app)  # POST /v1/traces, POST /webhooks/{source}
    app.include_router(api_router)
    app.include_router(read_router)
    app.include_router(token_router)  # /api/tokens (admins)
    app.include_router(alerting_router)  # /api/outbox, /api/silences
    install_dashboard(app)  # /, /login, /behaviors/..., /approvals, /ledger, /static/dashboard

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"description": "Not ready: `reason` says what is wrong."}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: the database answers, the scheduler is running, the broadcast processor
        is not crash-looping and the outbox is not stalled (no pending row has been due for
        ``outbox_stall_seconds``)."""
        state = get_state(request)

        def overdue() -> float:
            with state.db.transaction() as session:
                return outbox_overdue_seconds(session, state.clock.now())

        try:
            overdue_seconds = await asyncio.to_thread(overdue)
        except Exception as exc:  # any driver failure means "not ready", with the reason
            return JSONResponse(
                {"status": "unavailable", "reason": type(exc).__name__}, status_code=503
            )
        problems: list[str] = []
        services = state.services
        runner_problem = services.runner.problem() if services else "the services are not open"
        if runner_problem is not None:
            problems.append(runner_problem)
        processor_problem = services.processor.problem() if services else None
        if processor_problem is not None:
            problems.append(processor_problem)
        if overdue_seconds > settings.outbox_stall_seconds:
            problems.append(
                f"the outbox is stalled: a delivery has been due for {overdue_seconds:.0f} s "
                f"(limit {settings.outbox_stall_seconds:.0f} s, LEDGER_OUTBOX_STALL_SECONDS)"
            )
        if problems:
            return JSONResponse(
                {"status": "unavailable", "reason": "; ".join(problems)}, status_code=503
            )
        return JSONResponse({"status": "ready"})

    metrics_dependencies = [] if settings.metrics_public else [Depends(require_role("viewer"))]

    @app.get(
        "/metrics",
        tags=["health"],
        dependencies=metrics_dependencies,
        response_class=PlainTextResponse,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "Metrics."}},
        openapi_extra=None if settings.metrics_public else {"security": [{"bearer": []}]},
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text format): this process's counters and histograms, and
        gauges read from the database. Needs a viewer token unless ``metrics_public``."""
        state = get_state(request)
        body = await asyncio.to_thread(render_metrics, state.db, state.clock.now())
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    return app
