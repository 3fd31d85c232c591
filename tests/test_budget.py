"""Spend windows are calendar windows in UTC, whatever the behavior's schedule time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from ledger.budget import EPOCH, window_start

NOON = datetime(2026, 3, 4, 12, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("reset", "start"),
    [
        ("day", datetime(2026, 3, 4, tzinfo=UTC)),
        ("week", datetime(2026, 3, 2, tzinfo=UTC)),  # Monday
        ("month", datetime(2026, 3, 1, tzinfo=UTC)),
        (None, datetime(2026, 3, 1, tzinfo=UTC)),  # no budget: the calendar month
        ("never", EPOCH),
    ],
)
def test_each_reset_has_its_calendar_window(reset: str | None, start: datetime) -> None:
    assert window_start(reset, NOON) == start


def test_paris_midnight_on_the_first_is_still_last_month_in_utc() -> None:
    paris = datetime(2026, 3, 1, 0, 30, tzinfo=ZoneInfo("Europe/Paris"))  # 23:30 UTC, 28 Feb
    assert window_start("month", paris) == datetime(2026, 2, 1, tzinfo=UTC)
    assert window_start("day", paris) == datetime(2026, 2, 28, tzinfo=UTC)


def test_an_unknown_reset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown budget reset 'hourly'"):
        window_start("hourly", NOON)
