"""When a behavior's slots fall: the one engine behind validating a ``schedule``, the "next run"
that status shows, the catch-up after downtime and the scheduler's firing, so what an operator
is shown is what runs.

A schedule is an interval (``15m``: slots aligned on the UTC clock from 2000-01-01) or a
crontab(5) expression read in an IANA time zone: minute hour day-of-month month day-of-week;
numbers, names (``JAN``, ``MON-FRI``), ranges, lists and steps; 0 and 7 are Sunday; when both
day fields are restricted (neither is ``*``) a day matching either fires. Cron slots are
croniter's (``day_or=True``), with one exception for daylight-saving time:

- a local time that does not exist (clocks spring forward) runs once, when the clocks jump,
  for a schedule with a fixed hour; a schedule with ``*`` in its hour field just keeps its
  cadence on the new time;
- a local time that happens twice (clocks fall back) runs once, at its first occurrence, for a
  schedule whose minute and hour fields are both fixed (no ``*``: ``30 2 * * *``); with ``*`` in
  either (``0 * * * *``, ``*/15 2 * * *``) it runs at both, keeping its cadence in real time.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter

INTERVAL_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
MIN_INTERVAL = timedelta(seconds=10)
_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TICK = timedelta(microseconds=1)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names for lowest upwards)
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_ELEMENT_RE = re.compile(
    r"^(?:\*|(?P<lo>\d+|[a-z]+)(?:-(?P<hi>\d+|[a-z]+))?)(?:/(?P<step>\d+))?$", re.IGNORECASE
)
_SYNTAX_HELP = (
    "use numbers, names (JAN, MON-FRI), ranges (1-5), lists (1,15) and steps (*/15); "
    "0 and 7 are Sunday"
)


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says what is wrong and what to write."""


def parse_interval(text: str) -> timedelta | None:
    """``15m`` → 15 minutes; None when ``text`` is not an interval."""
    m = _INTERVAL_RE.match(text)
    if not m:
        return None
    return timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


class IntervalSchedule:
    """Slots every ``every``, aligned on ``INTERVAL_EPOCH`` (so on the UTC clock)."""

    __slots__ = ("every",)

    def __init__(self, every: timedelta) -> None:
        self.every = every

    def next_after(self, t: datetime) -> datetime:
        """The first slot strictly after ``t`` (aware in, aware UTC out)."""
        return INTERVAL_EPOCH + ((t - INTERVAL_EPOCH) // self.every + 1) * self.every

    def latest_at(self, t: datetime) -> datetime:
        """The latest slot at or before ``t``."""
        return INTERVAL_EPOCH + ((t - INTERVAL_EPOCH) // self.every) * self.every

    def __str__(self) -> str:
        return f"every {self.every.total_seconds():g}s"


class CronSchedule:
    """A crontab(5) expression in a time zone (see the module docstring for DST).

    Remembers the last pair of consecutive slots it computed, so the many jobs and catch-up
    checks that ask about the same instant (a wave of behaviors sharing a schedule) cost two
    comparisons instead of a croniter walk."""

    __slots__ = ("_fixed_time", "_span", "_zone", "expression", "timezone")

    def __init__(self, expression: str, timezone: str) -> None:
        self.expression = expression
        self.timezone = timezone
        self._zone = ZoneInfo(timezone)
        minute, hour = expression.split()[:2]
        self._fixed_time = "*" not in minute and "*" not in hour
        self._span: tuple[datetime, datetime] | None = None

    def next_after(self, t: datetime) -> datetime:
        """The first slot strictly after ``t`` (aware in, aware UTC out)."""
        return self._bracket(t)[1]

    def latest_at(self, t: datetime) -> datetime:
        """The latest slot at or before ``t``."""
        return self._bracket(t)[0]

    def _bracket(self, t: datetime) -> tuple[datetime, datetime]:
        span = self._span
        if span is not None and span[0] <= t < span[1]:
            return span
        if span is not None and t == span[1]:  # stepping from slot to slot: one walk
            span = (t, self._walk(t, backwards=False))
        else:
            span = (self._walk(t + _TICK, backwards=True), self._walk(t, backwards=False))
        self._span = span
        return span

    def _walk(self, t: datetime, *, backwards: bool) -> datetime:
        """croniter's slot strictly before (or after) ``t``, skipping the second occurrence of
        a repeated local time for a fixed-time schedule."""
        it = croniter(self.expression, t.astimezone(self._zone), day_or=True)
        while True:
            slot: datetime = it.get_prev(datetime) if backwards else it.get_next(datetime)
            instant = slot.astimezone(UTC)
            if not (self._fixed_time and self._repeated(instant)):
                return instant

    def _repeated(self, instant: datetime) -> bool:
        """Whether ``instant``'s local time is the second occurrence of a repeated one."""
        local = instant.astimezone(self._zone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def __str__(self) -> str:
        return f"cron {self.expression!r} ({self.timezone})"


Schedule = IntervalSchedule | CronSchedule


@lru_cache(maxsize=4096)
def compile_schedule(text: str, timezone: str = "UTC") -> Schedule:
    """The schedule ``text`` means in ``timezone`` (an IANA name, already checked).

    Raises ``ScheduleError`` saying what is wrong. Shared per (text, timezone): the result is
    cached, so every caller asks the same object."""
    interval = parse_interval(text)
    if interval is not None:
        if interval < MIN_INTERVAL:
            raise ScheduleError("an interval must be at least 10s")
        return IntervalSchedule(interval)
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(
            "must be a 5-field cron expression (minute hour day-of-month month day-of-week, "
            "e.g. '0 6 * * 1' for Mondays at 06:00) or an interval like 15m, 6h, 1d"
        )
    try:
        for value, spec in zip(fields, _FIELDS, strict=True):
            _check_field(value, *spec)
    except ScheduleError as exc:
        raise ScheduleError(f"invalid cron expression: {exc}") from None
    expression = " ".join(fields)
    schedule = CronSchedule(expression, timezone)
    try:
        schedule.next_after(datetime(2026, 1, 1, tzinfo=UTC))
    except CroniterBadDateError:
        raise ScheduleError("this cron expression never fires (e.g. 30 February)") from None
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise ScheduleError(f"invalid cron expression: {exc}; {_SYNTAX_HELP}") from None
    return schedule


def _check_field(value: str, name: str, lowest: int, highest: int, names: tuple[str, ...]) -> None:
    """Standard crontab(5) syntax only (no ``L``, ``#``, ``?`` or ``H`` extensions)."""
    for element in value.split(","):
        m = _ELEMENT_RE.match(element)
        if m is None:
            raise ScheduleError(f"{name} field: {element!r} is not valid; {_SYNTAX_HELP}")
        bounds = [_number(m[g], name, lowest, highest, names) for g in ("lo", "hi") if m[g]]
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise ScheduleError(
                f"{name} field: the range {element!r} runs backwards; write it low-high, or as "
                "two ranges in a list (e.g. 5-6,0-1)"
            )
        if m["step"] is not None and int(m["step"]) == 0:
            raise ScheduleError(f"{name} field: a step must be at least 1 (e.g. */15)")


def _number(token: str, name: str, lowest: int, highest: int, names: tuple[str, ...]) -> int:
    if token.isdigit():
        number = int(token)
        if not lowest <= number <= highest:
            raise ScheduleError(f"{name} field: {number} is outside {lowest}-{highest}")
        return number
    if token.lower() in names:
        return lowest + names.index(token.lower())
    hint = f"names are {names[0].upper()}-{names[-1].upper()}" if names else "it takes numbers"
    raise ScheduleError(f"{name} field: {token!r} is not a number or name ({hint})")
