"""Time is injected: services take a ``Clock`` (or a ``now`` argument), tests pass a fake."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol


def json_time(at: datetime) -> str:
    """``at`` as every JSON answer writes a time (the API, ``--json`` output): ISO 8601 in UTC
    ending in ``Z``, with microseconds only when it has some, as pydantic writes the API's
    typed models. A naive ``at`` is taken to be UTC (what the database stores)."""
    if at.tzinfo is not UTC:  # what the database gives back: no conversion (status: 30,000)
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat()[:-6] + "Z"  # without its "+00:00"


# A UTC time as ``datetime.isoformat()`` writes it (what JSON blobs stored before the "Z" form
# hold): seconds always, a fraction of 1-6 digits, and the offset of UTC.
_OLD_UTC_TEXT: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00")


# The keys whose strings are times: ``at``, ``…_at``, ``window_start``, ``until``… Only these
# are rewritten: a model's output, a reason or a title that happens to be a whole "+00:00" time
# is text, and its digest must stay true.
_TIME_KEY: Final = re.compile(r"(^|_)(at|start|end|ends|until|since|time)$")


def json_times(value: Any, key: str | None = None) -> Any:
    """``value`` (a JSON-shaped blob: an alert, a payload, evidence, a ledger entry's data) with
    every time in the ``json_time`` form: ``datetime`` values, and whole strings that are a UTC
    time written with ``+00:00`` (stored before the "Z" form, or built with ``isoformat()``)
    under a time's key (``_TIME_KEY``), or given alone (``key`` None: the caller says it is a
    time). Anything else — other strings, other offsets, keys — is returned as it is."""
    if isinstance(value, datetime):
        return json_time(value)
    if isinstance(value, str):
        is_time = key is None or _TIME_KEY.search(key) is not None
        return value[:-6] + "Z" if is_time and _OLD_UTC_TEXT.fullmatch(value) else value
    if isinstance(value, Mapping):
        return {k: json_times(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_times(v, key if key is not None else "") for v in value]
    return value


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when
