"""The dashboard's pages and forms: login/logout, the tier board (with its live fragment and
event stream), a behavior's page and actions, a run's page, the approvals queue and the ledger
log.

Every form posts a CSRF token bound to the browser's session; every action goes through the
same service functions as the JSON API (``operator_action``, ``approve``, ``reject``,
``decline_proposal``), with the session's name recorded as the actor."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlparse

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import func
from sqlmodel import col, select
from starlette.datastructures import FormData

from ledger import board as read
from ledger.daemon import build_policy_context
from ledger.db.models import ApiToken, LedgerEntry
from ledger.errors import InvalidRequestError, LedgerError, NotFoundError
from ledger.gates import Tier
from ledger.journal import VerifyResult, verify
from ledger.notion.health import MirrorStatus, mirror_status
from ledger.runner.run import approve, reject
from ledger.tokens import digest
from ledger.transitions import decline_proposal, operator_action
from ledger.web.auth import ROLE_RANK, Operator, TokenAuth, authenticate_token
from ledger.web.dashboard import views
from ledger.web.dashboard.charts import spend_chart
from ledger.web.dashboard.feed import ChangeFeed
from ledger.web.dashboard.render import templates
from ledger.web.sessions import (
    CSRF_FIELD,
    FLASH_COOKIE,
    LOGIN_COOKIE,
    LOGIN_NONCE_SECONDS,
    SESSION_COOKIE,
    SESSION_SECONDS,
    LoginRateLimit,
    SessionSigner,
    clear_cookie,
    set_cookie,
)

router = APIRouter(include_in_schema=False)

VERBS = ("promote", "demote", "pin", "unpin", "pause", "resume")
MAX_REASON = 2000


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking, the CSRF token their forms carry, and whether auth is off."""

    operator: Operator
    csrf: str
    auth_off: bool
    new_nonce: str | None = None  # set as the login cookie when the browser had none

    @property
    def may_act(self) -> bool:
        return self.operator.may("operator")


def _signer(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.sessions
    return signer


def _state(request: Request) -> Any:
    return request.app.state.ledger


def _now(request: Request) -> datetime:
    now: datetime = _state(request).clock.now()
    return now


async def viewer(request: Request) -> Viewer:
    """The logged-in browser (or, with LEDGER_AUTH=off, anyone on loopback); else a redirect
    to the login form. A session made with a named token lasts only while the token does (and
    takes its current role)."""
    auth: TokenAuth = request.app.state.auth
    signer = _signer(request)
    if not auth.enabled:
        nonce = request.cookies.get(LOGIN_COOKIE)
        fresh = None if nonce and len(nonce) < 100 else secrets.token_urlsafe(18)
        binding = fresh or nonce or ""
        return Viewer(
            Operator("anonymous (auth off)", "admin"), signer.csrf_token(binding), True, fresh
        )
    session = signer.read(request.cookies.get(SESSION_COOKIE))
    operator = session.operator if session is not None else None
    if session is not None and operator is not None:
        configured: dict[str, str] = request.app.state.config_token_digests
        if operator.name in configured:
            if not hmac.compare_digest(configured[operator.name], session.token_sha256 or ""):
                operator = None  # the token under that name changed (or the session predates it)
        elif session.token_sha256 is not None:
            operator = await asyncio.to_thread(_named_token, request, session.token_sha256)
        else:
            operator = None
    if session is None or operator is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(path)
    return Viewer(operator, signer.csrf_token(session.sid), False)


def _named_token(request: Request, token_sha256: str) -> Operator | None:
    """The named token with this digest as it is now, or None once revoked."""
    with _state(request).db.transaction() as session:
        row = session.execute(
            select(ApiToken).where(col(ApiToken.token_sha256) == token_sha256)
        ).scalar_one_or_none()
        if row is None or row.revoked_at is not None or row.role not in ROLE_RANK:
            return None
        return Operator(f"token:{row.name}", row.role)


def _csrf_binding(request: Request) -> str | None:
    auth: TokenAuth = request.app.state.auth
    if not auth.enabled:
        return request.cookies.get(LOGIN_COOKIE)
    session = _signer(request).read(request.cookies.get(SESSION_COOKIE))
    return session.sid if session else None


async def _form(request: Request) -> FormData:
    return await request.form(max_files=0, max_fields=20, max_part_size=64 * 1024)


def _page(
    request: Request, name: str, who: Viewer | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    flash = _signer(request).unseal("flash", request.cookies.get(FLASH_COOKIE))
    response = templates.TemplateResponse(
        request,
        name,
        {"who": who, "flash": flash, "csrf_field": CSRF_FIELD, **context},
        status_code=status_code,
    )
    if flash is not None:
        clear_cookie(response, request, FLASH_COOKIE)
    if who is not None and who.new_nonce:
        set_cookie(response, request, LOGIN_COOKIE, who.new_nonce, LOGIN_NONCE_SECONDS * 24)
    response.headers["Cache-Control"] = "no-store"
    return response


def _back(request: Request, to: str, message: str, ok: bool) -> RedirectResponse:
    """Post/redirect/get with a one-time message (a signed cookie, shown once)."""
    response = RedirectResponse(to, status_code=303)
    sealed = _signer(request).seal("flash", {"message": message[:600], "ok": ok})
    set_cookie(response, request, FLASH_COOKIE, sealed, 60)
    return response


async def _checked_form(request: Request, who: Viewer, need_operator: bool = True) -> FormData:
    """The form, once its CSRF token matches and the viewer may act; raises ``_Refused``."""
    form = await _form(request)
    given = form.get(CSRF_FIELD)
    if not _signer(request).csrf_ok(
        _csrf_binding(request), given if isinstance(given, str) else None
    ):
        raise _Refused(
            403,
            "The form expired or did not come from this dashboard; reload the page and try again.",
        )
    if need_operator and not who.may_act:
        raise _Refused(
            403, f"{who.operator.name} has the {who.operator.role} role: acting needs operator."
        )
    return form


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


def _reason(form: FormData) -> str:
    raw = form.get("reason")
    reason = raw.strip() if isinstance(raw, str) else ""
    if not reason:
        raise _Refused(400, "Give a reason: it is recorded in the ledger with your name.")
    if len(reason) > MAX_REASON:
        raise _Refused(400, f"The reason is too long ({len(reason)} characters; at most 2000).")
    return reason


def _clean(text: str, limit: int) -> str:
    """A query string's text as the database can take it: no NUL or control characters
    (PostgreSQL refuses NUL in text), trimmed and bounded."""
    return "".join(ch for ch in text if ch.isprintable()).strip()[:limit]


def _safe_next(raw: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme): no open redirect."""
    if not raw or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return "/"
    parsed = urlparse(raw)
    return "/" if parsed.scheme or parsed.netloc else raw


# -- login --------------------------------------------------------------------------------


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> HTMLResponse:
    auth: TokenAuth = request.app.state.auth
    if not auth.enabled:
        return RedirectResponse(_safe_next(next), status_code=303)  # type: ignore[return-value]
    nonce = secrets.token_urlsafe(18)
    response = _page(
        request,
        "login.html",
        None,
        next=_safe_next(next),
        login_csrf=_signer(request).csrf_token("login|" + nonce),
    )
    set_cookie(response, request, LOGIN_COOKIE, nonce, LOGIN_NONCE_SECONDS)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    limiter: LoginRateLimit = request.app.state.login_limit
    form = await _form(request)
    next_path = _safe_next(str(form.get("next") or "/"))
    signer = _signer(request)

    def again(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
        nonce = secrets.token_urlsafe(18)
        response = _page(
            request,
            "login.html",
            None,
            status_code=status,
            next=next_path,
            error=message,
            login_csrf=signer.csrf_token("login|" + nonce),
        )
        set_cookie(response, request, LOGIN_COOKIE, nonce, LOGIN_NONCE_SECONDS)
        response.headers.update(headers or {})
        return response

    client = _client(request)
    wait = limiter.retry_after(client)
    if wait is not None:
        return again(
            f"Too many failed logins from {client}: try again in {wait} seconds.",
            429,
            {"Retry-After": str(wait)},
        )
    nonce = request.cookies.get(LOGIN_COOKIE)
    given_csrf = form.get(CSRF_FIELD)
    if not nonce or not signer.csrf_ok(
        "login|" + nonce, given_csrf if isinstance(given_csrf, str) else None
    ):
        return again("The login form expired; paste your token again.", 403)
    raw = form.get("token")
    token = raw.strip() if isinstance(raw, str) else ""
    operator = (
        await asyncio.to_thread(authenticate_token, request, token)
        if token and len(token) <= 4096
        else None
    )
    if operator is None:
        limiter.failed(client)
        return again(
            "That token is not valid (revoked, mistyped, or from another daemon): paste it "
            "again, or make a new one where the daemon runs with "
            "`ledger token create NAME --role operator`.",
            401,
        )
    limiter.succeeded(client)
    cookie, _session = signer.issue(operator, token_sha256=digest(token))
    response = RedirectResponse(next_path, status_code=303)
    set_cookie(response, request, SESSION_COOKIE, cookie, SESSION_SECONDS)
    clear_cookie(response, request, LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    given = form.get(CSRF_FIELD)
    if not _signer(request).csrf_ok(
        _csrf_binding(request), given if isinstance(given, str) else None
    ):
        return RedirectResponse("/", status_code=303)
    response = RedirectResponse("/login", status_code=303)
    clear_cookie(response, request, SESSION_COOKIE)
    return response


# -- the tier board -----------------------------------------------------------------------


def _board(request: Request, q: str) -> tuple[views.BoardPage, MirrorStatus | None]:
    """The board's columns, and the Notion mirror's status (None when Notion is off)."""
    state = _state(request)
    cursors = {t.value: _clean(request.query_params.get(f"after_{t.value}", ""), 200) for t in Tier}
    now = _now(request)
    with state.db.transaction() as session:
        page = views.board(
            session, now, build_policy_context(state.settings), _clean(q, 200), cursors
        )
        if state.settings.notion_token is None:  # off: nothing to show (nor to read)
            return page, None
        return page, mirror_status(session, state.settings, now)


async def _board_response(request: Request, template: str, q: str) -> HTMLResponse:
    who = await viewer(request)
    try:
        board, notion = await asyncio.to_thread(_board, request, q)
    except InvalidRequestError as exc:
        return _page(request, "error.html", who, status_code=400, message=str(exc))
    return _page(request, template, who, board=board, badges=views.badges, notion=notion)


@router.get("/", response_class=HTMLResponse)
async def board_page(request: Request, q: str = "") -> HTMLResponse:
    return await _board_response(request, "board.html", q)


@router.get("/fragments/board", response_class=HTMLResponse)
async def board_fragment(request: Request, q: str = "") -> HTMLResponse:
    return await _board_response(request, "_board.html", q)


@router.get("/events/board")
@router.get("/events/approvals")
async def board_events(request: Request) -> StreamingResponse:
    """Server-sent ``changed`` events from the change feed (the tier board and the approvals
    queue both follow it; each fetches its fragment again on an event)."""
    await viewer(request)
    feed: ChangeFeed = request.app.state.dashboard_feed

    async def events() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        async for version in feed.stream():
            if await request.is_disconnected():
                return
            yield f"event: changed\ndata: {version}\n\n".encode()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# -- a behavior ---------------------------------------------------------------------------


@router.get("/behaviors/{name}", response_class=HTMLResponse)
async def behavior_page(request: Request, name: str, runs: str = "") -> HTMLResponse:
    who = await viewer(request)
    state = _state(request)

    def load() -> views.BehaviorPage:
        ctx = build_policy_context(state.settings)
        with state.db.transaction() as session:
            return views.behavior_page(
                session, _clean(name, 63), _now(request), ctx, _clean(runs, 200) or None
            )

    try:
        page = await asyncio.to_thread(load)
    except NotFoundError as exc:
        return _page(request, "error.html", who, status_code=404, message=str(exc))
    except InvalidRequestError as exc:
        return _page(request, "error.html", who, status_code=400, message=str(exc))
    return _page(
        request,
        "behavior.html",
        who,
        page=page,
        d=page.detail,
        card=page.detail.card,
        badges=views.badges,
        chart=spend_chart(page.spend_points),
        tiers=list(Tier),
        verbs=VERBS,
    )


@router.post("/behaviors/{name}/action")
async def behavior_action(request: Request, name: str) -> Response:
    who = await viewer(request)
    here = f"/behaviors/{quote(name)}"
    try:
        form = await _checked_form(request, who)
        verb = form.get("verb")
        if verb not in (*VERBS, "decline"):
            raise _Refused(400, f"Unknown action {verb!r}.")
        reason = _reason(form)
        raw_to = form.get("to") or None
        to = Tier(raw_to) if isinstance(raw_to, str) and raw_to in ("A", "B", "C") else None
    except _Refused as refused:
        return _refused(request, who, refused, here)
    state = _state(request)

    def act() -> str:
        with state.db.transaction() as session:
            if verb == "decline":
                return decline_proposal(
                    session, name, reason=reason, actor=who.operator.name, now=_now(request)
                )
            return operator_action(
                session,
                name,
                str(verb),  # type: ignore[arg-type]  # checked against VERBS above
                reason=reason,
                actor=who.operator.name,
                now=_now(request),
                ctx=build_policy_context(state.settings),
                to=to,
            )

    try:
        message = await asyncio.to_thread(act)
    except LedgerError as exc:
        return _back(request, here, str(exc), ok=False)
    return _back(request, here, message, ok=True)


def _refused(request: Request, who: Viewer, refused: _Refused, back: str) -> Response:
    if refused.status == 400:
        return _back(request, back, refused.message, ok=False)
    return _page(request, "error.html", who, status_code=refused.status, message=refused.message)


# -- a run -------------------------------------------------------------------------------


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str) -> HTMLResponse:
    """One run: status, cost, duration, model, gate results, output; a roundtable's rounds side
    by side under its synthesis, a canvas's answers as a table under its summary."""
    who = await viewer(request)
    state = _state(request)
    wanted = _clean(run_id, 100)

    def load() -> views.RunPage:
        with state.db.transaction() as session:
            return views.run_page(session, wanted)

    try:
        page = await asyncio.to_thread(load)
    except NotFoundError as exc:
        return _page(request, "error.html", who, status_code=404, message=str(exc))
    return _page(request, "run.html", who, page=page, r=page.run, s=page.summary)


# -- approvals ----------------------------------------------------------------------------


async def _approvals_response(request: Request, template: str) -> HTMLResponse:
    who = await viewer(request)
    state = _state(request)

    def load() -> dict[str, Any]:
        with state.db.transaction() as session:
            return views.approvals(session)

    data = await asyncio.to_thread(load)
    return _page(request, template, who, **data)


@router.get("/approvals", response_class=HTMLResponse)
async def approvals_page(request: Request) -> HTMLResponse:
    return await _approvals_response(request, "approvals.html")


@router.get("/fragments/approvals", response_class=HTMLResponse)
async def approvals_fragment(request: Request) -> HTMLResponse:
    """The queue and the recently closed requests, for the page to swap in when the change
    feed says an approval arrived or was decided."""
    return await _approvals_response(request, "_approvals.html")


@router.post("/approvals/{run_id}/{decision}")
async def decide_approval(request: Request, run_id: str, decision: str) -> Response:
    who = await viewer(request)
    back = "/approvals"
    try:
        if decision not in ("approve", "reject"):
            raise _Refused(404, f"Unknown decision {decision!r}.")
        form = await _checked_form(request, who)
        reason = _reason(form) if decision == "reject" else str(form.get("reason") or "approved")
        digest = form.get("payload_sha256")
        payload_sha256 = digest if isinstance(digest, str) and len(digest) == 64 else None
    except _Refused as refused:
        return _refused(request, who, refused, back)
    state = _state(request)

    def decide() -> str:
        ctx = build_policy_context(state.settings)
        with state.db.transaction() as session:
            if decision == "approve":
                return approve(
                    session,
                    run_id,
                    actor=who.operator.name,
                    now=_now(request),
                    ctx=ctx,
                    payload_sha256=payload_sha256,
                    reason=reason.strip()[:MAX_REASON] or "approved",
                )
            return reject(
                session, run_id, actor=who.operator.name, reason=reason, now=_now(request), ctx=ctx
            )

    try:
        message = await asyncio.to_thread(decide)
    except LedgerError as exc:
        return _back(request, back, str(exc), ok=False)
    return _back(request, back, message, ok=True)


# -- ledger and events --------------------------------------------------------------------


MAX_ENTRY_ID = 2**31 - 1
VERIFY_ON_VIEW_MAX_ENTRIES = 50_000  # above: verified when asked (a walk of the whole chain)


@dataclass(frozen=True, slots=True)
class Verified:
    result: VerifyResult
    at: datetime
    head_id: int


@router.get("/ledger", response_class=HTMLResponse)
async def ledger_page(
    request: Request,
    behavior: str = "",
    kind: str = "",
    before_id: str = "",
    verify_now: str = "",
) -> HTMLResponse:
    """The ledger newest first (filters: behavior, kind; ``before_id`` pages back), the
    chain's verification (remembered until the chain grows; a long chain is walked when asked),
    signed webhook events and unattributed broadcast spans."""
    who = await viewer(request)
    state = _state(request)
    # Ids are 32-bit on PostgreSQL (INTEGER): a larger one would be an error there.
    before = int(before_id) if before_id.isdigit() and len(before_id) <= 10 else None
    before = before if before is not None and before <= MAX_ENTRY_ID else None
    behavior = _clean(behavior, 63)
    kind = kind if kind in views.LEDGER_KINDS else ""

    def load() -> dict[str, Any]:
        with state.db.transaction() as session:
            page = read.ledger_entries(
                session,
                behavior=behavior or None,
                kinds=[kind] if kind else [],
                before_id=before if before is not None else MAX_ENTRY_ID,
                limit=100,
            )
            head = session.execute(select(func.max(LedgerEntry.id))).scalar_one() or 0
            known: Verified | None = getattr(request.app.state, "ledger_verified", None)
            if known is None or known.head_id != head:
                known = None
                if verify_now or head <= VERIFY_ON_VIEW_MAX_ENTRIES:
                    known = Verified(verify(session), _now(request), head)
                    request.app.state.ledger_verified = known
            return {
                "entries": page.entries,
                "older": page.next_cursor,
                "kinds": views.LEDGER_KINDS,
                "webhooks": views.webhook_events(session, behavior),
                "unattributed": read.unattributed_spans(session, limit=50).spans,
                "verified": known,
                "head_id": head,
            }

    data = await asyncio.to_thread(load)
    return _page(request, "ledger.html", who, behavior=behavior, kind=kind, **data)
