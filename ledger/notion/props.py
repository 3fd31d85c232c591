"""Notion property values, both ways: a row is rendered as plain values per property name
(``str`` for title / rich text / select / url / date, ``float`` for numbers, ``bool`` for
checkboxes, a list of page ids for relations, ``None`` for empty); ``write_properties`` turns
them into Notion's write shapes (rich text split into 2,000-character pieces) and
``read_properties`` turns a page as Notion returns it back into the same plain values, so the
two can be compared property by property."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

__all__ = [
    "MAX_TEXT",
    "changed",
    "chunks",
    "format_date",
    "read_properties",
    "write_properties",
]

MAX_TEXT: Final = 2000  # characters per rich-text object
MAX_PIECES: Final = 100  # rich-text objects per property


def chunks(text: str, size: int = MAX_TEXT) -> list[str]:
    """``text`` in pieces of at most ``size`` characters (none for the empty string)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def format_date(value: datetime | None) -> str | None:
    """A moment as the mirror writes it: UTC, milliseconds, ``Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _normalize_date(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return raw
    if parsed.tzinfo is None:
        return raw  # a date without a time: kept as written
    return format_date(parsed)


def _page_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return raw


def _text(value: Any) -> list[dict[str, Any]]:
    pieces = chunks(str(value or ""))[:MAX_PIECES]
    return [{"type": "text", "text": {"content": piece}} for piece in pieces]


def write_value(kind: str, value: Any) -> dict[str, Any]:
    """One property's plain value in Notion's write shape."""
    if kind in ("title", "rich_text"):
        return {kind: _text(value)}
    if kind == "select":
        return {"select": None if value is None else {"name": str(value)[:100]}}
    if kind == "number":
        return {"number": None if value is None else _number(value)}
    if kind == "checkbox":
        return {"checkbox": bool(value)}
    if kind == "date":
        return {"date": None if value is None else {"start": str(value)}}
    if kind == "url":
        return {"url": None if not value else str(value)[:MAX_TEXT]}
    if kind == "relation":
        return {"relation": [{"id": page_id} for page_id in value or ()]}
    raise ValueError(f"unsupported property type {kind!r}")


def _number(value: Any) -> int | float:
    """A number as Notion shows it: a whole number as an integer (2, not 2.0)."""
    number = float(value)
    return int(number) if number.is_integer() else number


def write_properties(
    schema: Mapping[str, str], values: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """``values`` (name → plain value) in Notion's write shape, by ``schema`` (name → type)."""
    return {name: write_value(schema[name], value) for name, value in values.items()}


def read_value(kind: str, prop: Mapping[str, Any] | None) -> Any:
    """One property of a page as Notion returns it, as a plain value."""
    if prop is None:
        return None
    raw = prop.get(kind)
    if kind in ("title", "rich_text"):
        text = "".join(
            str(piece.get("plain_text") or (piece.get("text") or {}).get("content") or "")
            for piece in raw or ()
        )
        return text or None
    if kind == "select":
        return None if not raw else raw.get("name")
    if kind == "number":
        return None if raw is None else round(float(raw), 6)
    if kind == "checkbox":
        return bool(raw)
    if kind == "date":
        return None if not raw else _normalize_date(raw.get("start"))
    if kind == "url":
        return raw or None
    if kind == "relation":
        return sorted(_page_id(str(r.get("id"))) for r in raw or ())
    return raw


def read_properties(schema: Mapping[str, str], page: Mapping[str, Any]) -> dict[str, Any]:
    """A page's properties named in ``schema``, as plain values."""
    props = page.get("properties") or {}
    return {name: read_value(kind, props.get(name)) for name, kind in schema.items()}


def plain(schema: Mapping[str, str], values: Mapping[str, Any]) -> dict[str, Any]:
    """Rendered values as they read back from Notion (empty text is None, numbers rounded,
    text longer than a property holds is cut), so rendered and read values compare equal."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        kind = schema[name]
        if kind in ("title", "rich_text"):
            out[name] = str(value)[: MAX_TEXT * MAX_PIECES] if value else None
        elif kind == "number":
            out[name] = None if value is None else round(float(value), 6)
        elif kind == "checkbox":
            out[name] = bool(value)
        elif kind == "select":
            out[name] = None if value is None else str(value)[:100]
        elif kind == "relation":
            out[name] = sorted(_page_id(v) for v in value or ())
        elif kind == "date":
            out[name] = _normalize_date(value)
        else:
            out[name] = value or None
    return out


def changed(
    desired: Mapping[str, Any], current: Mapping[str, Any], skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The desired values that differ from ``current`` (names in ``skip`` are left alone)."""
    return {
        name: value
        for name, value in desired.items()
        if name not in skip and current.get(name) != value
    }
