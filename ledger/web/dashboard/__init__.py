"""The operator dashboard at ``/``: server-rendered pages (Jinja2), a small static script for
live updates and keyboard shortcuts, and no inline script or style (the CSP forbids them)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from ledger.web.dashboard.render import STATIC
from ledger.web.dashboard.routes import LoginRequired, router

STATIC_URL = "/static/dashboard"


def install_dashboard(app: FastAPI) -> None:
    """Pages, forms, the event stream and the static assets. The lifespan sets
    ``app.state.sessions``, ``app.state.login_limit`` and ``app.state.dashboard_feed``."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="dashboard-static")

    @app.exception_handler(LoginRequired)
    async def _login_required(_request: Request, exc: LoginRequired) -> RedirectResponse:
        from urllib.parse import quote

        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", status_code=303)

    app.include_router(router)
