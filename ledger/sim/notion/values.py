"""Notion's write shapes turned into its read shapes, with the validation Notion applies: rich
text (2,000 characters per text, 100 items per array), data source property schemas, page
property values checked against a schema, and blocks. Pure: ids come from the caller's
``new_id``; every refusal is a ``NotionError`` with the message Notion would send."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ledger.sim.notion.errors import JSON, NotionError, validation_error

TEXT_LIMIT = 2000
ARRAY_LIMIT = 100
URL_LIMIT = 2000
# The property types the simulator keeps in a schema (the ones the daemon mirrors, and kin).
PROPERTY_TYPES = frozenset(
    {
        "title",
        "rich_text",
        "number",
        "select",
        "multi_select",
        "checkbox",
        "date",
        "url",
        "email",
        "phone_number",
        "relation",
    }
)
TEXT_BLOCKS = frozenset(
    {
        "paragraph",
        "heading_1",
        "heading_2",
        "heading_3",
        "bulleted_list_item",
        "numbered_list_item",
        "to_do",
        "toggle",
        "quote",
        "callout",
        "code",
    }
)
_ANNOTATIONS: JSON = {
    "bold": False,
    "italic": False,
    "strikethrough": False,
    "underline": False,
    "code": False,
    "color": "default",
}
_META_KEYS = frozenset({"type", "object", "id", "name", "description"})

NewId = Callable[[], str]


def _too_long(where: str, limit: int, length: int) -> NotionError:
    return validation_error(
        f"body failed validation: {where}.length should be ≤ `{limit}`, instead was `{length}`."
    )


def _kind(raw: Mapping[str, Any], known: frozenset[str] | None, where: str) -> str:
    """The type of a write-shaped object: its ``type`` key, else its one type-named key."""
    if isinstance(raw.get("type"), str):
        kind = str(raw["type"])
    else:
        keys = [k for k in raw if k not in _META_KEYS and k != "children"]
        if len(keys) != 1:
            raise validation_error(f"body failed validation: {where} should have one type key.")
        kind = keys[0]
    if known is not None and kind not in known:
        raise validation_error(
            f"body failed validation: {where}.type should be one of {sorted(known)}, "
            f"instead was `{kind}`."
        )
    return kind


# --------------------------------------------------------------------------------------------
# Rich text
# --------------------------------------------------------------------------------------------


def rich_text(raw: Any, where: str, users: Mapping[str, JSON]) -> list[JSON]:
    """Rich text items as Notion returns them; refuses texts over 2,000 characters, arrays over
    100 items and mentions of unknown users."""
    if not isinstance(raw, list):
        raise validation_error(f"body failed validation: {where} should be an array.")
    if len(raw) > ARRAY_LIMIT:
        raise _too_long(where, ARRAY_LIMIT, len(raw))
    return [_rich_text_item(item, f"{where}[{i}]", users) for i, item in enumerate(raw)]


def _rich_text_item(item: Any, where: str, users: Mapping[str, JSON]) -> JSON:
    if not isinstance(item, Mapping):
        raise validation_error(f"body failed validation: {where} should be an object.")
    annotations = {**_ANNOTATIONS, **(item.get("annotations") or {})}
    kind = item.get("type") or ("mention" if "mention" in item else "text")
    if kind == "mention":
        mention = item.get("mention") or {}
        user_id = (mention.get("user") or {}).get("id")
        if (
            mention.get("type", "user") != "user"
            or not isinstance(user_id, str)
            or user_id not in users
        ):
            raise validation_error(
                f"body failed validation: {where}.mention should name a user of the workspace."
            )
        user = users[user_id]
        return {
            "type": "mention",
            "mention": {"type": "user", "user": user},
            "annotations": annotations,
            "plain_text": f"@{user.get('name') or 'user'}",
            "href": None,
        }
    text = item.get("text")
    if kind != "text" or not isinstance(text, Mapping) or not isinstance(text.get("content"), str):
        raise validation_error(
            f"body failed validation: {where}.text.content should be a string, instead was "
            "undefined."
        )
    content = text["content"]
    if len(content) > TEXT_LIMIT:
        raise _too_long(f"{where}.text.content", TEXT_LIMIT, len(content))
    link = text.get("link")
    url = link.get("url") if isinstance(link, Mapping) else None
    if url is not None and (not isinstance(url, str) or len(url) > URL_LIMIT):
        raise _too_long(f"{where}.text.link.url", URL_LIMIT, len(str(url)))
    return {
        "type": "text",
        "text": {"content": content, "link": {"url": url} if url else None},
        "annotations": annotations,
        "plain_text": content,
        "href": url,
    }


def plain_text(items: list[JSON]) -> str:
    return "".join(str(item.get("plain_text", "")) for item in items)


# --------------------------------------------------------------------------------------------
# Data source schemas
# --------------------------------------------------------------------------------------------


def schema_property(name: str, raw: Any, new_id: NewId, short_id: NewId) -> JSON:
    """One property of a data source schema in its read shape (``{id, name, description, type,
    <type>: {...}}``); select options get ids and a colour."""
    where = f"body.properties.{name}"
    if not isinstance(raw, Mapping):
        raise validation_error(f"body failed validation: {where} should be an object.")
    kind = _kind(raw, PROPERTY_TYPES, where)
    config = raw.get(kind) or {}
    if not isinstance(config, Mapping):
        raise validation_error(f"body failed validation: {where}.{kind} should be an object.")
    shape: JSON = {}
    if kind in ("select", "multi_select"):
        shape["options"] = [
            _option(option, new_id) for option in config.get("options") or () if option
        ]
    elif kind == "number":
        shape["format"] = config.get("format", "number")
    elif kind == "relation":
        relation_type = config.get("type", "single_property")
        shape = {
            "database_id": config.get("database_id"),
            "data_source_id": config.get("data_source_id"),
            "type": relation_type,
            relation_type: dict(config.get(relation_type) or {}),
        }
    return {
        "id": "title" if kind == "title" else short_id(),
        "name": name,
        "description": raw.get("description"),
        "type": kind,
        kind: shape,
    }


def _option(raw: Mapping[str, Any], new_id: NewId) -> JSON:
    return {
        "id": raw.get("id") or new_id(),
        "name": str(raw.get("name", "")),
        "color": raw.get("color", "default"),
        "description": raw.get("description"),
    }


def find_property(schema: Mapping[str, JSON], key: str) -> JSON | None:
    """A schema property by name or by id."""
    if key in schema:
        return schema[key]
    return next((p for p in schema.values() if p["id"] == key), None)


def update_schema(
    schema: dict[str, JSON], changes: Mapping[str, Any], new_id: NewId, short_id: NewId
) -> None:
    """Apply ``PATCH /v1/data_sources/{id}`` properties: ``null`` removes, ``{"name": ...}``
    renames, a type key adds or redefines. Keys are property names or ids."""
    for key, change in changes.items():
        current = find_property(schema, key)
        if change is None:
            if current is None:
                raise validation_error(f"{key} is not a property that exists.")
            if current["type"] == "title":
                raise validation_error("The title property of a data source cannot be removed.")
            del schema[current["name"]]
            continue
        if not isinstance(change, Mapping):
            raise validation_error(
                f"body failed validation: body.properties.{key} should be an object."
            )
        new_name = str(change.get("name") or (current["name"] if current else key))
        has_type = any(k in PROPERTY_TYPES for k in change) or "type" in change
        if current is not None and not has_type:
            del schema[current["name"]]
            schema[new_name] = {**current, "name": new_name}
            continue
        prop = schema_property(new_name, change, new_id, short_id)
        if current is not None:
            del schema[current["name"]]
            prop["id"] = current["id"] if current["type"] == prop["type"] else prop["id"]
        schema[new_name] = prop


# --------------------------------------------------------------------------------------------
# Page property values
# --------------------------------------------------------------------------------------------


def property_values(
    raw: Any,
    schema: dict[str, JSON],
    users: Mapping[str, JSON],
    new_id: NewId,
) -> dict[str, JSON]:
    """Page property values in their read shape, keyed by property name; every key must be a
    property of ``schema`` (by name or id) and every value of that property's type. New select
    options are added to ``schema``."""
    if not isinstance(raw, Mapping):
        raise validation_error("body failed validation: body.properties should be an object.")
    values: dict[str, JSON] = {}
    for key, value in raw.items():
        prop = find_property(schema, key)
        if prop is None:
            raise validation_error(f"{key} is not a property that exists.")
        values[prop["name"]] = _property_value(prop, value, users, new_id)
    return values


def _property_value(prop: JSON, raw: Any, users: Mapping[str, JSON], new_id: NewId) -> JSON:
    name, kind = prop["name"], prop["type"]
    where = f"body.properties.{name}"
    if not isinstance(raw, Mapping) or kind not in raw:
        raise validation_error(f"{name} is expected to be {kind}.")
    if raw.get("type", kind) != kind:
        raise validation_error(f"{name} is expected to be {kind}.")
    value = raw[kind]
    read: Any
    if kind in ("title", "rich_text"):
        read = rich_text(value if value is not None else [], f"{where}.{kind}", users)
    elif kind == "number":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise validation_error(f"{name} is expected to be number.")
        # Notion's numbers are JavaScript's: 2.0 is stored, and answered, as 2.
        read = int(value) if isinstance(value, float) and value.is_integer() else value
    elif kind == "checkbox":
        if not isinstance(value, bool):
            raise validation_error(f"{name} is expected to be checkbox.")
        read = value
    elif kind in ("url", "email", "phone_number"):
        limit = URL_LIMIT if kind == "url" else 200
        if value is not None and not isinstance(value, str):
            raise validation_error(f"{name} is expected to be {kind}.")
        if value is not None and len(value) > limit:
            raise _too_long(f"{where}.{kind}", limit, len(value))
        read = value
    elif kind == "select":
        read = None if value is None else _select(prop, value, where, new_id)
    elif kind == "multi_select":
        if not isinstance(value, list):
            raise validation_error(f"{name} is expected to be multi_select.")
        read = [_select(prop, v, where, new_id) for v in value]
    elif kind == "date":
        read = None if value is None else _date(value, name)
    else:  # relation
        if not isinstance(value, list) or not all(
            isinstance(v, Mapping) and isinstance(v.get("id"), str) for v in value
        ):
            raise validation_error(f"{name} is expected to be relation.")
        if len(value) > ARRAY_LIMIT:
            raise _too_long(f"{where}.relation", ARRAY_LIMIT, len(value))
        read = [{"id": v["id"]} for v in value]
    shape: JSON = {"id": prop["id"], "type": kind, kind: read}
    if kind == "relation":
        shape["has_more"] = False
    return shape


def _select(prop: JSON, value: Any, where: str, new_id: NewId) -> JSON:
    """The option a select value names (by id or name); a new name becomes a new option."""
    if not isinstance(value, Mapping) or not (value.get("name") or value.get("id")):
        raise validation_error(f"{prop['name']} is expected to be {prop['type']}.")
    options: list[JSON] = prop[prop["type"]]["options"]
    for option in options:
        if option["id"] == value.get("id") or option["name"] == value.get("name"):
            return {"id": option["id"], "name": option["name"], "color": option["color"]}
    if value.get("name") is None:
        raise validation_error(f"body failed validation: {where}: no option with that id.")
    option = _option(value, new_id)
    options.append(option)
    return {"id": option["id"], "name": option["name"], "color": option["color"]}


def _date(value: Any, name: str) -> JSON:
    if not isinstance(value, Mapping) or not isinstance(value.get("start"), str):
        raise validation_error(f"{name} is expected to be date.")
    return {"start": value["start"], "end": value.get("end"), "time_zone": value.get("time_zone")}


def title_property(text: list[JSON]) -> JSON:
    """The ``properties`` of a page outside a data source: just its title."""
    return {"title": {"id": "title", "type": "title", "title": text}}


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def block_content(raw: Any, where: str, users: Mapping[str, JSON]) -> tuple[str, JSON, list[Any]]:
    """(type, the block's type object in read shape, its nested children) for one block of an
    append or create request."""
    if not isinstance(raw, Mapping):
        raise validation_error(f"body failed validation: {where} should be an object.")
    kind = _kind(raw, None, where)
    body = raw.get(kind)
    if not isinstance(body, Mapping):
        raise validation_error(f"body failed validation: {where}.{kind} should be an object.")
    content = {k: v for k, v in body.items() if k != "children"}
    children = body.get("children") or []
    if not isinstance(children, list):
        raise validation_error(
            f"body failed validation: {where}.{kind}.children should be an array."
        )
    if kind in TEXT_BLOCKS:
        content["rich_text"] = rich_text(
            body.get("rich_text", []), f"{where}.{kind}.rich_text", users
        )
        content.setdefault("color", "default")
        if kind == "paragraph":
            content.setdefault("icon", None)
        if kind == "to_do":
            content.setdefault("checked", False)
    return kind, content, children


def check_children(children: Any, where: str = "body.children") -> list[Any]:
    """The children of an append/create request: an array of at most 100 blocks."""
    if not isinstance(children, list):
        raise validation_error(f"body failed validation: {where} should be an array.")
    if len(children) > ARRAY_LIMIT:
        raise _too_long(where, ARRAY_LIMIT, len(children))
    return children


def require(body: Mapping[str, Any], key: str) -> Any:
    if body.get(key) is None:
        raise validation_error(
            f"body failed validation: body.{key} should be defined, instead was `undefined`."
        )
    return body[key]
