"""Spend windows: calendar day / week (Monday) / month in UTC, like OpenRouter's key limits, or
never. Every behavior's spend is counted in one: its budget's ``reset``, else the calendar month.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The window a behavior without a budget counts its spend in.
DEFAULT_RESET = "month"


def window_start(reset: str | None, now: datetime) -> datetime:
    """Start (aware UTC) of the spend window that contains ``now``: calendar windows begin at
    midnight UTC whatever the behavior's schedule time zone; ``reset`` None is the month."""
    reset = reset or DEFAULT_RESET
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "day":
        return midnight
    if reset == "week":
        return midnight - timedelta(days=midnight.weekday())
    if reset == "month":
        return midnight.replace(day=1)
    if reset == "never":
        return EPOCH
    raise ValueError(f"unknown budget reset {reset!r}")
