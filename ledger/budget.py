"""Budget windows: calendar day / week (Monday) / month in UTC like OpenRouter's, or never."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def window_start(reset: str, now: datetime, timezone: str = "UTC") -> datetime:
    """Start (aware UTC) of the budget window that contains ``now``."""
    local = now.astimezone(ZoneInfo(timezone))
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "day":
        start = midnight
    elif reset == "week":
        start = midnight - timedelta(days=midnight.weekday())
    elif reset == "month":
        start = midnight.replace(day=1)
    elif reset == "never":
        return EPOCH
    else:
        raise ValueError(f"unknown budget reset {reset!r}")
    return start.astimezone(UTC)
