"""Time is injected: services take a ``Clock`` (or a ``now`` argument), tests pass a fake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


def json_time(at: datetime) -> str:
    """``at`` as every JSON answer writes a time (the API, ``--json`` output): ISO 8601 in UTC
    ending in ``Z``, with microseconds only when it has some, as pydantic writes the API's
    typed models. A naive ``at`` is taken to be UTC (what the database stores)."""
    if at.tzinfo is not UTC:  # what the database gives back: no conversion (status: 30,000)
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat()[:-6] + "Z"  # without its "+00:00"


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
