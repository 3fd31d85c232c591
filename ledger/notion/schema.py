"""The three databases of the mirror — Behaviors, Ledger, Approvals — their properties, and
``init_workspace``: create them under a page, or adopt the ones already there (adding any
property they lack), returning their database and data-source ids."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledger.errors import NotionError
from ledger.gates import Tier
from ledger.notion.api import NotionApi

__all__ = [
    "APPROVALS",
    "BEHAVIORS",
    "DECISIONS",
    "LEDGER",
    "TABLES",
    "Table",
    "WorkspaceIds",
    "init_workspace",
]

TIER_OPTIONS: Final = tuple(t.label for t in Tier)
STATUSES: Final = ("active", "paused", "retired", "invalid file")
DECISIONS: Final = ("pending", "approve", "reject")
APPROVAL_STATUSES: Final = ("pending", "approved", "rejected", "withdrawn", "expired")
_DOLLARS: Final = frozenset({"Spend this period", "Budget"})
_COLOURS: Final = ("gray", "blue", "green", "yellow", "red", "purple", "orange", "pink")


@dataclass(frozen=True, slots=True)
class Table:
    """One mirrored database: its title and its properties (name → Notion type), with the
    select options to create up front."""

    name: str
    title: str
    properties: Mapping[str, str]
    options: Mapping[str, tuple[str, ...]]
    relation: str | None = None  # the property relating a row to its behavior

    def property_schema(self, behaviors_data_source: str | None) -> dict[str, Any]:
        """The ``properties`` of a create or update request."""
        out: dict[str, Any] = {}
        for name, kind in self.properties.items():
            if kind == "select":
                options = [
                    {"name": option, "color": _COLOURS[i % len(_COLOURS)]}
                    for i, option in enumerate(self.options.get(name, ()))
                ]
                out[name] = {"select": {"options": options}}
            elif kind == "number":
                out[name] = {"number": {"format": "dollar" if name in _DOLLARS else "number"}}
            elif kind == "relation":
                out[name] = {
                    "relation": {
                        "data_source_id": behaviors_data_source,
                        "type": "single_property",
                        "single_property": {},
                    }
                }
            else:
                out[name] = {kind: {}}
        return out


BEHAVIORS: Final = Table(
    "behaviors",
    "Behaviors",
    {
        "Name": "title",
        "Tier": "select",
        "Status": "select",
        "Pinned": "checkbox",
        "Last run": "date",
        "Last result": "select",
        "Failures in window": "number",
        "Spend this period": "number",
        "Budget": "number",
        "Next promotion": "rich_text",
        "Dashboard": "url",
        "Problem": "rich_text",
        "Key": "rich_text",
    },
    {"Tier": TIER_OPTIONS, "Status": STATUSES},
)
LEDGER: Final = Table(
    "ledger",
    "Ledger",
    {
        "Name": "title",
        "Behavior": "relation",
        "Kind": "select",
        "From tier": "select",
        "To tier": "select",
        "Reason": "rich_text",
        "Actor": "rich_text",
        "At": "date",
        "Entry hash": "rich_text",
        "Key": "rich_text",
    },
    {"From tier": TIER_OPTIONS, "To tier": TIER_OPTIONS},
    relation="Behavior",
)
APPROVALS: Final = Table(
    "approvals",
    "Approvals",
    {
        "Name": "title",
        "Behavior": "relation",
        "Status": "select",
        "Output": "rich_text",
        "Payload hash": "rich_text",
        "Decision": "select",
        "Reason": "rich_text",
        "Result": "rich_text",
        "Decided by": "rich_text",
        "Expires": "date",
        "Key": "rich_text",
    },
    {"Decision": DECISIONS, "Status": APPROVAL_STATUSES},
    relation="Behavior",
)
TABLES: Final = {t.name: t for t in (BEHAVIORS, LEDGER, APPROVALS)}


@dataclass(frozen=True, slots=True)
class WorkspaceIds:
    """Where the mirror writes: each table's database and data source."""

    parent_page_id: str
    databases: Mapping[str, str]
    data_sources: Mapping[str, str]
    adopted: tuple[str, ...] = ()


def _same_id(a: Any, b: Any) -> bool:
    try:
        return uuid.UUID(str(a)) == uuid.UUID(str(b))
    except ValueError:
        return False


def _title(obj: Mapping[str, Any]) -> str:
    return "".join(str(t.get("plain_text", "")) for t in obj.get("title") or ())


async def _find(api: NotionApi, parent_page_id: str, table: Table) -> dict[str, Any] | None:
    """The data source titled like ``table`` whose database sits under the parent page."""
    for source in await api.search_data_sources(table.title):
        if _title(source) != table.title or source.get("in_trash"):
            continue
        parent = source.get("database_parent") or {}
        if _same_id(parent.get("page_id"), parent_page_id):
            return source
    return None


async def init_workspace(api: NotionApi, parent_page_id: str) -> WorkspaceIds:
    """Create the three databases under ``parent_page_id``, or adopt those already there.
    Raises ``NotionError`` (a 404 means the page is not shared with the integration)."""
    try:
        parent_page_id = str(uuid.UUID(parent_page_id))
    except ValueError:
        raise NotionError(
            f"{parent_page_id!r} is not a Notion page id (32 hex digits, from the page's link)",
            permanent=True,
        ) from None
    databases: dict[str, str] = {}
    sources: dict[str, str] = {}
    adopted: list[str] = []
    for table in (BEHAVIORS, LEDGER, APPROVALS):
        schema = table.property_schema(sources.get("behaviors"))
        found = await _find(api, parent_page_id, table)
        if found is not None:
            existing = found.get("properties") or {}
            missing = {k: v for k, v in schema.items() if k not in existing}
            if missing:
                await api.update_data_source(found["id"], properties=missing)
            databases[table.name] = str((found.get("parent") or {}).get("database_id"))
            sources[table.name] = str(found["id"])
            adopted.append(table.title)
            continue
        created = await api.create_database(
            parent={"type": "page_id", "page_id": parent_page_id},
            title=[{"type": "text", "text": {"content": table.title}}],
            is_inline=False,
            initial_data_source={"properties": schema},
        )
        databases[table.name] = str(created["id"])
        sources[table.name] = str(created["data_sources"][0]["id"])
    return WorkspaceIds(parent_page_id, databases, sources, tuple(adopted))
