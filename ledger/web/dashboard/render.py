"""The dashboard's Jinja2 environment: autoescaping on, and the filters templates use —
Markdown rendered with raw HTML disabled (so model output can never inject markup), times,
money."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

from ledger.gates import Tier
from ledger.spend import format_usd

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

# "commonmark" with html off: a <script> in the text is shown as text; links with
# javascript:/vbscript:/data: targets are refused by markdown-it's validateLink.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def markdown(text: str | None) -> Markup:
    return Markup(_markdown.render(text or ""))  # noqa: S704 — markdown-it escapes, html off


def when(value: datetime | None) -> str:
    if value is None:
        return "never"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 0:
        return "in " + ago(now or datetime.now(UTC), value)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


usd = format_usd  # the template filter


def tier_label(letter: str) -> str:
    return Tier(letter).label


templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.autoescape = True
templates.env.filters.update(markdown=markdown, when=when, ago=ago, usd=usd, tier_label=tier_label)
