"""The one schedule engine: crontab(5) semantics, DST, and the trigger firing what status shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import assume, given, settings

from ledger.behaviors.schema import Behavior
from ledger.runner.scheduler import SlotTrigger, latest_slot, trigger_for
from ledger.schedule import CronSchedule, ScheduleError, compile_schedule
from tests.strategies import cron_expressions, instants, schedule_zones

MONDAY = datetime(2026, 11, 30, tzinfo=UTC)  # a Monday


def fires(expression: str, tz: str = "UTC", start: datetime = MONDAY, n: int = 7) -> list[str]:
    """The first ``n`` firings of the scheduler's trigger, as local 'Day HH:MM'."""
    trigger = SlotTrigger(compile_schedule(expression, tz))
    out, previous = [], None
    for _ in range(n):
        previous = trigger.get_next_fire_time(previous, start if previous is None else previous)
        out.append(previous.astimezone(ZoneInfo(tz)).strftime("%a %H:%M"))
    return out


def test_weekday_1_is_monday_and_0_and_7_are_sunday() -> None:
    assert fires("0 6 * * 1", "Europe/Paris", n=2) == ["Mon 06:00", "Mon 06:00"]
    assert fires("0 6 * * 1", "Europe/Paris", n=2)[0] == "Mon 06:00"
    assert set(fires("0 0 * * 0", n=3)) == set(fires("0 0 * * 7", n=3)) == {"Sun 00:00"}
    assert fires("0 12 * * 4", n=1) == ["Thu 12:00"]


def test_weekday_ranges_and_names_follow_crontab() -> None:
    weekdays = ["Tue 09:00", "Wed 09:00", "Thu 09:00", "Fri 09:00", "Mon 09:00", "Tue 09:00"]
    start = MONDAY + timedelta(hours=10)
    assert fires("0 9 * * 1-5", start=start, n=6) == weekdays
    assert fires("0 9 * * MON-FRI", start=start, n=6) == weekdays
    assert fires("0 9 * * sat,SUN", n=3) == ["Sat 09:00", "Sun 09:00", "Sat 09:00"]
    assert fires("0 9 * * 5-7", n=3) == ["Fri 09:00", "Sat 09:00", "Sun 09:00"]
    jan = compile_schedule("0 0 1 JAN *").next_after(MONDAY)
    assert jan == datetime(2027, 1, 1, tzinfo=UTC)


def test_when_both_day_fields_are_restricted_a_day_matching_either_fires() -> None:
    # The 1st of the month or any Monday (Vixie cron), from Tuesday 2026-12-01.
    slots = compile_schedule("0 0 1 * MON")
    got, t = [], datetime(2026, 11, 30, 12, tzinfo=UTC)
    for _ in range(4):
        t = slots.next_after(t)
        got.append(t.date().isoformat())
    assert got == ["2026-12-01", "2026-12-07", "2026-12-14", "2026-12-21"]
    # A restricted day of month alone is exactly that day.
    assert compile_schedule("0 0 13 * *").next_after(MONDAY).day == 13


def test_steps_and_lists() -> None:
    assert fires("*/20 9 * * *", n=4) == ["Mon 09:00", "Mon 09:20", "Mon 09:40", "Tue 09:00"]
    assert fires("0 8-18/5 * * *", n=4) == ["Mon 08:00", "Mon 13:00", "Mon 18:00", "Tue 08:00"]
    assert fires("15,45 0 * * *", n=3) == ["Mon 00:15", "Mon 00:45", "Tue 00:15"]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("61 * * * *", "invalid cron expression: minute field: 61 is outside 0-59"),
        ("0 6 * * 8", "invalid cron expression: day of week field: 8 is outside 0-7"),
        ("0 6 * * Monday", "day of week field: 'Monday' is not a number or name (names are SUN"),
        ("0 6 * * 5-1", "the range '5-1' runs backwards; write it low-high"),
        ("0 0 L * *", "day of month field: 'L' is not a number or name (it takes numbers)"),
        ("0 0 * * 5#3", "day of week field: '5#3' is not valid; use numbers, names"),
        ("H * * * *", "minute field: 'H' is not a number or name"),
        ("*/0 * * * *", "a step must be at least 1"),
        ("0 0 30 2 *", "this cron expression never fires (e.g. 30 February)"),
        ("@daily", "must be a 5-field cron expression"),
        ("0 0 * * * *", "must be a 5-field cron expression"),
        ("5s", "an interval must be at least 10s"),
    ],
)
def test_a_bad_schedule_says_what_is_wrong(schedule: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        compile_schedule(schedule)
    assert message in str(caught.value)


# -- daylight-saving time ----------------------------------------------------------------------


def utc_slots(expression: str, tz: str, start: datetime, end: datetime) -> list[str]:
    slots, t, out = compile_schedule(expression, tz), start, []
    while (t := slots.next_after(t)) < end:
        out.append(f"{t:%d %H:%M}Z")
    return out


def test_a_nonexistent_local_time_runs_once_when_the_clocks_jump() -> None:
    # Paris springs forward on 2026-03-29 at 02:00 → 03:00 (01:00Z).
    day = datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 3, 30, 12, tzinfo=UTC)
    assert utc_slots("30 2 * * *", "Europe/Paris", *day) == ["29 01:00Z", "30 00:30Z"]
    assert utc_slots("*/30 2 * * *", "Europe/Paris", *day) == [
        "29 01:00Z",
        "30 00:00Z",
        "30 00:30Z",
    ]
    # An hourly schedule keeps its cadence: 01:30+01, then 03:30+02, an hour later.
    hourly = utc_slots(
        "30 * * * *", "Europe/Paris", datetime(2026, 3, 28, 23, tzinfo=UTC), *day[1:]
    )
    assert hourly[:3] == ["28 23:30Z", "29 00:30Z", "29 01:30Z"]
    # New York springs forward on 2026-03-08 at 02:00 → 03:00 (07:00Z).
    ny = datetime(2026, 3, 7, 12, tzinfo=UTC), datetime(2026, 3, 9, 12, tzinfo=UTC)
    assert utc_slots("30 2 * * *", "America/New_York", *ny) == ["08 07:00Z", "09 06:30Z"]


def test_a_repeated_local_time_runs_once_unless_the_schedule_has_a_wildcard_time() -> None:
    # Paris falls back on 2026-10-25 at 03:00 → 02:00: 02:30 happens at 00:30Z and 01:30Z.
    day = datetime(2026, 10, 24, 12, tzinfo=UTC), datetime(2026, 10, 26, 12, tzinfo=UTC)
    assert utc_slots("30 2 * * *", "Europe/Paris", *day) == ["25 00:30Z", "26 01:30Z"]
    assert utc_slots("0 1-3 * * 0", "Europe/Paris", *day) == ["24 23:00Z", "25 00:00Z", "25 02:00Z"]
    # A wildcard in the minute or hour keeps its cadence in real time: both 02:00s run.
    hourly = utc_slots("0 * * * *", "Europe/Paris", *day)
    at = hourly.index("25 00:00Z")  # 02:00 summer time
    assert hourly[at : at + 3] == ["25 00:00Z", "25 01:00Z", "25 02:00Z"]
    assert len(utc_slots("*/30 2 * * *", "Europe/Paris", *day)) == 4 + 2
    # New York falls back on 2026-11-01 at 02:00 → 01:00: 01:30 happens at 05:30Z and 06:30Z.
    ny = datetime(2026, 10, 31, 12, tzinfo=UTC), datetime(2026, 11, 2, 12, tzinfo=UTC)
    assert utc_slots("30 1 * * *", "America/New_York", *ny) == ["01 05:30Z", "02 06:30Z"]


# -- one engine ----------------------------------------------------------------------------------


def croniter_slots(expression: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """croniter's own slots (``day_or=True``), less the documented exception: the second
    occurrence of a repeated local time for a schedule with a fixed minute and hour."""
    fixed = "*" not in "".join(expression.split()[:2])
    zone, out = ZoneInfo(tz), []
    it = croniter(expression, start.astimezone(zone), day_or=True)
    while (slot := it.get_next(datetime).astimezone(UTC)) < end and len(out) < 150:
        local = slot.astimezone(zone)
        repeated = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
        if not (fixed and repeated):
            out.append(slot)
    return out


@settings(max_examples=60)
@given(expression=cron_expressions(), tz=schedule_zones(), start=instants())
def test_the_trigger_fires_croniters_slots_over_a_year(
    expression: str, tz: str, start: datetime
) -> None:
    try:
        schedule = compile_schedule(expression, tz)
    except ScheduleError:
        assume(False)
        raise
    expected = croniter_slots(expression, tz, start, start + timedelta(days=366))
    lead = timedelta(seconds=5)
    trigger, fired, previous = SlotTrigger(schedule, lead), [], None
    for _ in expected:
        previous = trigger.get_next_fire_time(previous, start if previous is None else previous)
        fired.append(previous + lead)
    assert fired == expected
    # Status's "next run" and the catch-up's slot are the same engine's.
    assert isinstance(schedule, CronSchedule)
    if expected:
        assert schedule.next_after(start) == expected[0]
        assert schedule.latest_at(expected[-1] + timedelta(seconds=59)) == expected[-1]


def test_status_next_run_catch_up_and_firing_agree_for_the_shipped_weekly_audit() -> None:
    audit = Behavior.model_validate(
        {
            "name": "seo-audit-weekly",
            "schedule": "0 6 * * 1",
            "timezone": "Europe/Paris",
            "preset": "p",
            "api_key": "env:K",
            "prompt": "hi",
        }
    )
    wednesday = datetime(2026, 11, 25, 12, tzinfo=UTC)
    shown = audit.next_fire_after(wednesday)
    assert shown == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # Monday 06:00 in Paris
    assert trigger_for(audit).get_next_fire_time(None, wednesday) == shown
    # After a restart on Monday 06:10, catch-up claims that same Monday slot, not Tuesday's.
    assert latest_slot(audit, shown + timedelta(minutes=10)) == shown
