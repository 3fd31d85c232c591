"""The demo's own little web app, next to the dashboard: an alert receiver (the signed webhook
the daemon's alert channel posts to, and a page listing what arrived) and a read-only view of
the Notion simulator's database rows, read through the Notion API as any client would.

Rendering is pure (``alerts_page``, ``notion_page``, ``property_text``); the app only stores
what it receives and fetches what it shows. Pages refresh themselves every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ledger.demo.stage import TRUSTED
from ledger.errors import IngestError
from ledger.signatures import GENERIC_HEADER, verify_generic

NOTION_VERSION: Final = "2025-09-03"
REFRESH_SECONDS: Final = 3
MAX_ALERTS: Final = 500  # kept in memory; older ones are dropped

_STYLE: Final = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#1d2430;background:#fff}
@media (prefers-color-scheme:dark){body{color:#e4e8ee;background:#14181f}
table th{background:#222a35}td,th{border-color:#334}a{color:#8ab4ff}}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d5dae1;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f6}.muted{color:#7a8494}.event{font-weight:600}
pre{white-space:pre-wrap;margin:0;font:inherit}
"""


@dataclass(frozen=True, slots=True)
class ReceivedAlert:
    """One alert as it arrived at the receiver."""

    received_at: datetime
    event: str
    behavior: str
    text: str
    delivery: str
    verified: bool


def parse_alert(body: bytes, received_at: datetime, *, verified: bool) -> ReceivedAlert:
    """A signed-webhook alert body (``{"event", "behavior", "text", "alert", "delivery"}``).
    Raises ValueError for a body that is not such an object."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return ReceivedAlert(
        received_at=received_at,
        event=str(doc.get("event") or ""),
        behavior=str(doc.get("behavior") or ""),
        text=str(doc.get("text") or ""),
        delivery=str(doc.get("delivery") or ""),
        verified=verified,
    )


def _page(title: str, body: str, *, refresh: bool = True) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def alerts_page(alerts: Sequence[ReceivedAlert], dashboard_url: str) -> str:
    """The received alerts, newest first."""
    rows = "".join(
        f'<tr id="alert-{escape(a.delivery)}"><td>{a.received_at:%H:%M:%S}</td>'
        f'<td class="event">{escape(a.event)}</td><td>{escape(a.behavior)}</td>'
        f"<td><pre>{escape(a.text)}</pre></td>"
        f"<td>{'verified' if a.verified else 'NOT verified'}</td></tr>"
        for a in reversed(alerts)
    )
    table = (
        "<table><thead><tr><th>received</th><th>event</th><th>behavior</th><th>alert</th>"
        f"<th>signature</th></tr></thead><tbody>{rows}</tbody></table>"
        if alerts
        else '<p class="muted" id="none">No alert yet. The demotion alert arrives once the '
        f"guardrail fault has demoted <b>{TRUSTED}</b> (within a minute of the start).</p>"
    )
    return _page(
        "Alerts received — ledger demo",
        "<h1>Alerts received by the demo's webhook receiver</h1>"
        '<p class="muted">The daemon\'s alert channel <code>demo-receiver</code> (a signed '
        f'webhook) posts here. <a href="{escape(dashboard_url)}">Dashboard</a> · '
        '<a href="/notion">Notion rows</a> · refreshes every few seconds.</p>' + table,
    )


def property_text(value: Mapping[str, Any]) -> str:
    """A Notion property value (as a page's ``properties`` hold it) as plain text."""
    kind = value.get("type")
    data = value.get(kind) if isinstance(kind, str) else None
    if data is None:
        return ""
    if kind in ("title", "rich_text"):
        return "".join(str(part.get("plain_text", "")) for part in data)
    if kind in ("select", "status"):
        return str(data.get("name", ""))
    if kind == "multi_select":
        return ", ".join(str(option.get("name", "")) for option in data)
    if kind == "date":
        start, end = data.get("start"), data.get("end")
        return f"{start} → {end}" if end else str(start or "")
    if kind == "checkbox":
        return "yes" if data else "no"
    if kind == "relation":
        return f"{len(data)} linked"
    if kind == "people":
        return ", ".join(str(person.get("name") or person.get("id", "")) for person in data)
    if isinstance(data, float) and data.is_integer():
        return str(int(data))  # Notion shows 2, not 2.0
    if isinstance(data, str | int | float):
        return str(data)
    return ""


@dataclass(frozen=True, slots=True)
class NotionTable:
    """One mirrored database as read from Notion: its title, columns and rows."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def notion_table(title: str, pages: Sequence[Mapping[str, Any]]) -> NotionTable:
    """A table from a data source query's ``results`` (columns in first-seen order, the title
    property first)."""
    columns: list[str] = []
    for page in pages:
        props = page.get("properties") or {}
        for name, value in props.items():
            if name not in columns:
                if value.get("type") == "title":
                    columns.insert(0, name)
                else:
                    columns.append(name)
    rows = tuple(
        tuple(property_text((page.get("properties") or {}).get(c) or {}) for c in columns)
        for page in pages
    )
    return NotionTable(title, tuple(columns), rows)


def notion_page(tables: Sequence[NotionTable], problem: str | None = None) -> str:
    """The Notion simulator's mirrored databases as HTML tables."""
    parts = [
        "<h1>Notion (the simulator's databases, read-only)</h1>",
        '<p class="muted">What the daemon mirrored into the Notion simulator, read back through '
        'the Notion API. <a href="/alerts">Alerts</a> · refreshes every few seconds.</p>',
    ]
    if problem:
        parts.append(f'<p id="problem">{escape(problem)}</p>')
    for table in tables:
        head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>"
            for row in table.rows
        )
        slug = escape(table.title.lower())
        parts.append(
            f'<h2>{escape(table.title)} <span class="muted">({len(table.rows)} rows)</span></h2>'
            f'<table id="notion-{slug}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table>"
        )
    return _page("Notion rows — ledger demo", "".join(parts))


@dataclass(slots=True)
class Receiver:
    """The receiver's state: the alerts received (``on_alert`` is told of each new one), and
    where to read the Notion rows from (``data_sources``: table title → data source id, set
    once the databases exist)."""

    alert_secret: str
    dashboard_url: str
    notion_url: str
    notion_token: str
    data_sources: dict[str, str] = field(default_factory=dict)
    alerts: list[ReceivedAlert] = field(default_factory=list)
    on_alert: Callable[[ReceivedAlert], None] | None = None

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            verify_generic(
                request.headers.get(GENERIC_HEADER), body, [self.alert_secret], now=time.time()
            )
        except IngestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status_code)
        try:
            alert = parse_alert(body, datetime.now(UTC), verified=True)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not any(a.delivery == alert.delivery for a in self.alerts):  # retried: same id
            self.alerts.append(alert)
            del self.alerts[:-MAX_ALERTS]
            if self.on_alert is not None:
                self.on_alert(alert)
        return JSONResponse({"received": True})

    async def alerts_html(self, request: Request) -> Response:
        return HTMLResponse(alerts_page(self.alerts, self.dashboard_url))

    async def alerts_json(self, request: Request) -> Response:
        return JSONResponse(
            {
                "alerts": [
                    {
                        "received_at": a.received_at.isoformat(),
                        "event": a.event,
                        "behavior": a.behavior,
                        "text": a.text,
                        "delivery": a.delivery,
                        "verified": a.verified,
                    }
                    for a in self.alerts
                ]
            }
        )

    async def notion_html(self, request: Request) -> Response:
        tables: list[NotionTable] = []
        problem = None if self.data_sources else "The Notion databases are not created yet."
        headers = {
            "Authorization": f"Bearer {self.notion_token}",
            "Notion-Version": NOTION_VERSION,
        }
        async with httpx.AsyncClient(base_url=self.notion_url, headers=headers, timeout=5) as http:
            for title, source in self.data_sources.items():
                try:
                    pages = await _query_all(http, source)
                except (httpx.HTTPError, ValueError) as exc:
                    problem = f"reading {title} from the Notion simulator failed: {exc}"
                    continue
                tables.append(notion_table(title, pages))
        return HTMLResponse(notion_page(tables, problem))

    async def index(self, request: Request) -> Response:
        return HTMLResponse(
            _page(
                "ledger demo",
                "<h1>ledger demo</h1><ul>"
                f'<li><a href="{escape(self.dashboard_url)}">Dashboard</a></li>'
                '<li><a href="/alerts">Alerts received</a></li>'
                '<li><a href="/notion">Notion rows</a></li></ul>',
                refresh=False,
            )
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.index),
                Route("/alerts", self.alerts_html),
                Route("/alerts.json", self.alerts_json),
                Route("/alerts/hook", self.receive, methods=["POST"]),
                Route("/notion", self.notion_html),
            ]
        )


async def _query_all(http: httpx.AsyncClient, data_source: str) -> list[dict[str, Any]]:
    """Every page of a data source (following ``next_cursor``). Raises httpx.HTTPError or
    ValueError (an answer that is not a query result)."""
    pages: list[dict[str, Any]] = []
    body: dict[str, Any] = {"page_size": 100}
    while True:
        response = await http.post(f"/v1/data_sources/{data_source}/query", json=body)
        response.raise_for_status()
        doc = response.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise ValueError("the answer is not a query result")
        pages.extend(doc["results"])
        if not doc.get("has_more") or not doc.get("next_cursor"):
            return pages
        body = {"page_size": 100, "start_cursor": doc["next_cursor"]}
