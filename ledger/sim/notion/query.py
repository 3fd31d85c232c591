"""Querying as Notion does: property and timestamp filters with ``and``/``or`` compounds,
sorts, and cursor pagination (``start_cursor`` → ``has_more``/``next_cursor``). Pure: works on
page objects in their read shape and the data source's schema."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ledger.sim.notion.errors import JSON, validation_error
from ledger.sim.notion.values import ARRAY_LIMIT, find_property, plain_text

_TEXT_TYPES = frozenset({"title", "rich_text", "url", "email", "phone_number"})
_TIMESTAMPS = frozenset({"created_time", "last_edited_time"})

Predicate = Callable[[JSON], bool]


def compile_filter(raw: Any, schema: Mapping[str, JSON], where: str = "body.filter") -> Predicate:
    """A predicate over pages for a query ``filter``; refuses unknown properties, a filter
    type that is not the property's type and unknown conditions with ``validation_error``."""
    if not isinstance(raw, Mapping):
        raise validation_error(f"body failed validation: {where} should be an object.")
    for compound in ("and", "or"):
        if compound in raw:
            parts = raw[compound]
            if not isinstance(parts, list):
                raise validation_error(
                    f"body failed validation: {where}.{compound} should be an array."
                )
            tests = [
                compile_filter(p, schema, f"{where}.{compound}[{i}]") for i, p in enumerate(parts)
            ]
            if compound == "and":
                return lambda page: all(test(page) for test in tests)
            return lambda page: any(test(page) for test in tests)
    if "timestamp" in raw:
        stamp = raw["timestamp"]
        if stamp not in _TIMESTAMPS or not isinstance(raw.get(stamp), Mapping):
            raise validation_error(f"body failed validation: {where}.timestamp is not valid.")
        test = _date_test(raw[stamp], where)
        return lambda page: test(_parse_date(page[stamp]))
    key = raw.get("property")
    if not isinstance(key, str):
        raise validation_error(f"body failed validation: {where}.property should be defined.")
    prop = find_property(schema, key)
    if prop is None:
        raise validation_error(f"Could not find property with name or id: {key}")
    name, kind = prop["name"], prop["type"]
    condition = raw.get(kind)
    if not isinstance(condition, Mapping):
        raise validation_error(
            f"body failed validation: {where}.{kind} should be defined for property {name} "
            f"of type {kind}."
        )

    def value(page: JSON) -> Any:
        return page["properties"].get(name, {}).get(kind)

    test = _condition(kind, condition, f"{where}.{kind}")
    return lambda page: test(value(page))


def _one(condition: Mapping[str, Any], known: Sequence[str], where: str) -> tuple[str, Any]:
    if len(condition) != 1 or next(iter(condition)) not in known:
        raise validation_error(
            f"body failed validation: {where} should have one of {', '.join(known)}."
        )
    op, operand = next(iter(condition.items()))
    return op, operand


def _condition(kind: str, condition: Mapping[str, Any], where: str) -> Callable[[Any], bool]:
    if kind in _TEXT_TYPES:
        return _text_test(condition, where)
    if kind == "number":
        return _number_test(condition, where)
    if kind == "checkbox":
        op, operand = _one(condition, ("equals", "does_not_equal"), where)
        return lambda v: (v == operand) == (op == "equals")
    if kind == "select":
        op, operand = _one(
            condition, ("equals", "does_not_equal", "is_empty", "is_not_empty"), where
        )
        if op in ("is_empty", "is_not_empty"):
            return lambda v: (v is None) == (op == "is_empty")
        return lambda v: (v is not None and v["name"] == operand) == (op == "equals")
    if kind == "multi_select":
        op, operand = _one(condition, ("contains", "does_not_contain"), where)
        return lambda v: any(o["name"] == operand for o in v or ()) == (op == "contains")
    if kind == "relation":
        op, operand = _one(
            condition, ("contains", "does_not_contain", "is_empty", "is_not_empty"), where
        )
        if op in ("is_empty", "is_not_empty"):
            return lambda v: (not v) == (op == "is_empty")
        wanted = _id_key(str(operand))
        return lambda v: any(_id_key(r["id"]) == wanted for r in v or ()) == (op == "contains")
    # date
    test = _date_test(condition, where)
    return lambda v: test(None if v is None else _parse_date(v["start"]))


def _text_test(condition: Mapping[str, Any], where: str) -> Callable[[Any], bool]:
    ops = ("equals", "does_not_equal", "contains", "does_not_contain", "starts_with",
           "ends_with", "is_empty", "is_not_empty")  # fmt: skip
    op, operand = _one(condition, ops, where)

    def text(value: Any) -> str:
        return plain_text(value) if isinstance(value, list) else (value or "")

    needle = str(operand).lower() if isinstance(operand, str) else ""
    tests: dict[str, Callable[[str], bool]] = {
        "equals": lambda t: t == operand,
        "does_not_equal": lambda t: t != operand,
        "contains": lambda t: needle in t.lower(),
        "does_not_contain": lambda t: needle not in t.lower(),
        "starts_with": lambda t: t.lower().startswith(needle),
        "ends_with": lambda t: t.lower().endswith(needle),
        "is_empty": lambda t: t == "",
        "is_not_empty": lambda t: t != "",
    }
    chosen = tests[op]
    return lambda value: chosen(text(value))


def _number_test(condition: Mapping[str, Any], where: str) -> Callable[[Any], bool]:
    ops = ("equals", "does_not_equal", "greater_than", "less_than", "greater_than_or_equal_to",
           "less_than_or_equal_to", "is_empty", "is_not_empty")  # fmt: skip
    op, operand = _one(condition, ops, where)
    if op == "is_empty":
        return lambda v: v is None
    if op == "is_not_empty":
        return lambda v: v is not None
    if isinstance(operand, bool) or not isinstance(operand, int | float):
        raise validation_error(f"body failed validation: {where}.{op} should be a number.")
    tests: dict[str, Callable[[float], bool]] = {
        "equals": lambda v: v == operand,
        "does_not_equal": lambda v: v != operand,
        "greater_than": lambda v: v > operand,
        "less_than": lambda v: v < operand,
        "greater_than_or_equal_to": lambda v: v >= operand,
        "less_than_or_equal_to": lambda v: v <= operand,
    }
    chosen = tests[op]
    return lambda v: v is not None and chosen(v)


def _date_test(condition: Mapping[str, Any], where: str) -> Callable[[datetime | None], bool]:
    """Date conditions; a date-only operand compares whole days (UTC), as Notion does."""
    ops = ("equals", "before", "after", "on_or_before", "on_or_after", "is_empty", "is_not_empty")
    op, operand = _one(condition, ops, where)
    if op == "is_empty":
        return lambda v: v is None
    if op == "is_not_empty":
        return lambda v: v is not None
    if not isinstance(operand, str):
        raise validation_error(f"body failed validation: {where}.{op} should be a date string.")
    try:
        point = _parse_date(operand)
    except ValueError as exc:
        raise validation_error(
            f"body failed validation: {where}.{op} is not an ISO 8601 date."
        ) from exc
    day_only = len(operand) == 10
    end = point + timedelta(days=1) if day_only else point
    tests: dict[str, Callable[[datetime], bool]] = {
        "equals": (lambda v: point <= v < end) if day_only else (lambda v: v == point),
        "before": lambda v: v < point,
        "after": lambda v: v >= end if day_only else v > point,
        "on_or_before": lambda v: v < end if day_only else v <= point,
        "on_or_after": lambda v: v >= point,
    }
    chosen = tests[op]
    return lambda v: v is not None and chosen(v)


def _parse_date(text: str) -> datetime:
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _id_key(object_id: str) -> str:
    return object_id.replace("-", "").lower()


def sort_pages(pages: list[JSON], sorts: Any, schema: Mapping[str, JSON]) -> list[JSON]:
    """Pages in ``sorts`` order (first sort wins; empty values last); created order without."""
    if sorts is None:
        return pages
    if not isinstance(sorts, list):
        raise validation_error("body failed validation: body.sorts should be an array.")
    ordered = list(pages)
    for index, sort in reversed(list(enumerate(sorts))):
        if not isinstance(sort, Mapping):
            raise validation_error(
                f"body failed validation: body.sorts[{index}] should be an object."
            )
        descending = sort.get("direction", "ascending") == "descending"
        key = _sort_key(sort, schema, index)
        present = [p for p in ordered if key(p) is not None]
        empty = [p for p in ordered if key(p) is None]
        ordered = sorted(present, key=key, reverse=descending) + empty
    return ordered


def _sort_key(
    sort: Mapping[str, Any], schema: Mapping[str, JSON], index: int
) -> Callable[[JSON], Any]:
    if sort.get("timestamp") in _TIMESTAMPS:
        stamp = str(sort["timestamp"])
        return lambda page: page[stamp]
    prop = find_property(schema, str(sort.get("property")))
    if prop is None:
        raise validation_error(
            f"Could not find sort property with name or id: {sort.get('property')}"
        )
    name, kind = prop["name"], prop["type"]

    def key(page: JSON) -> Any:
        value = page["properties"].get(name, {}).get(kind)
        if isinstance(value, list):
            text = plain_text(value) if kind in _TEXT_TYPES else str(len(value))
            return text.lower() or None
        if isinstance(value, Mapping):
            return value.get("name") or value.get("start")
        return value

    return key


def page_size(raw: Any) -> int:
    """The ``page_size`` of a list request: 1 to 100, 100 when absent."""
    if raw is None:
        return ARRAY_LIMIT
    try:
        size = int(raw)
    except (TypeError, ValueError) as exc:
        raise validation_error("body failed validation: page_size should be a number.") from exc
    if not 1 <= size <= ARRAY_LIMIT:
        raise validation_error(
            f"body failed validation: page_size should be ≤ `{ARRAY_LIMIT}`, instead was `{size}`."
        )
    return size


def paginate(items: Sequence[JSON], start_cursor: Any, size: int) -> tuple[list[JSON], str | None]:
    """(one page of ``items`` from ``start_cursor``, the next cursor or None). A cursor is the
    id of the first item of the next page."""
    start = 0
    if start_cursor is not None:
        ids = [_id_key(item["id"]) for item in items]
        if not isinstance(start_cursor, str) or _id_key(start_cursor) not in ids:
            raise validation_error("start_cursor provided is invalid.")
        start = ids.index(_id_key(start_cursor))
    chunk = list(items[start : start + size])
    following = items[start + size] if start + size < len(items) else None
    return chunk, None if following is None else following["id"]


def list_body(results: list[JSON], next_cursor: str | None, kind: str) -> JSON:
    """Notion's list shape (``type`` is e.g. ``page_or_data_source``, ``block``, ``comment``)."""
    return {
        "object": "list",
        "results": results,
        "next_cursor": next_cursor,
        "has_more": next_cursor is not None,
        "type": kind,
        kind: {},
    }
