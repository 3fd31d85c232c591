"""Spend windows are calendar windows in UTC, whatever the behavior's schedule time zone;
budget reservations never overshoot, however many calls race for them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ledger.behaviors.registry import reconcile_directory
from ledger.db.session import Database
from ledger.spend import EPOCH, format_usd, reserve, settle, spent_in_window, window_start
from ledger.transitions import lock_behavior
from tests.factories import T0, write_behavior

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


def test_fifty_concurrent_reservations_at_a_budget_that_fits_ten(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha")
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        behavior_id = lock_behavior(session, name="alpha").id or 0
    granted: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def call() -> None:
        barrier.wait()
        with db.transaction() as session:
            ok = reserve(
                session,
                behavior_id=behavior_id,
                window_start=T0,
                amount=0.1,
                budget=1.0 + 1e-9,
                now=T0,
            )
        with lock:
            granted.append(ok)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 10
    with db.transaction() as session:
        spent, reserved = spent_in_window(session, behavior_id, T0)
    assert spent == 0.0 and abs(reserved - 1.0) < 1e-9


def test_settling_turns_reservations_into_spend_and_frees_the_rest(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha")
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        bid = lock_behavior(session, name="alpha").id or 0
        assert reserve(session, behavior_id=bid, window_start=T0, amount=0.6, budget=1.0, now=T0)
        assert not reserve(
            session, behavior_id=bid, window_start=T0, amount=0.6, budget=1.0, now=T0
        )
        settle(session, behavior_id=bid, window_start=T0, reserved=0.6, spent=0.2, now=T0)
        assert reserve(session, behavior_id=bid, window_start=T0, amount=0.6, budget=1.0, now=T0)
        spent, reserved = spent_in_window(session, bid, T0)
    assert (round(spent, 9), round(reserved, 9)) == (0.2, 0.6)


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (None, "—"),
        (0.0, "$0.00"),
        (0.000031, "$0.000031"),  # a cheap run is counted, and the text shows it
        (0.00003, "$0.00003"),
        (0.0000123, "$0.000012"),
        (0.0001, "$0.0001"),
        (0.01234, "$0.0123"),
        (0.013, "$0.013"),
        (0.5, "$0.50"),
        (0.25, "$0.25"),
        (1.0, "$1.00"),
        (1234.5, "$1,234.50"),
        (0.0000004, "<$0.000001"),
    ],
)
def test_amounts_are_shown_so_that_a_small_spend_is_not_zero(usd: float | None, shown: str) -> None:
    assert format_usd(usd) == shown
