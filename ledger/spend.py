"""Spend: the windows it is counted in, budget reservations, and what was spent.

Windows are calendar day / week (Monday) / month in UTC, like OpenRouter's key limits, or never;
every behavior's spend is counted in one: its budget's ``reset``, else the calendar month.
A call reserves its worst case before calling and settles to its real cost: each reservation is
one compare-and-set ``UPDATE … WHERE reserved + spent + x <= budget``, checked by row count:
concurrent runs (and fan-out calls) can never overshoot a budget together, on SQLite and
PostgreSQL alike, without a read-then-write race. Broadcast spend the receiver acknowledged
but the processor has not applied yet counts too (``pending_broadcast``), so a processing
backlog cannot let a behavior spend past its budget. Runs inside the caller's transaction (adds
and executes, never commits).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import ScalarSelect, Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from ledger.db.models import BudgetWindow, IngestDelivery

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


def _ensure_window(session: Session, behavior_id: int, start: datetime, now: datetime) -> None:
    values = {
        "behavior_id": behavior_id,
        "window_start": start,
        "reserved_usd": 0.0,
        "spent_usd": 0.0,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(BudgetWindow).values(**values).on_conflict_do_nothing()
    session.execute(stmt)


_DELIVERY: Table = IngestDelivery.__table__  # type: ignore[attr-defined]  # SQLModel table


def _pending_broadcast_sum(behavior_id: int) -> ScalarSelect[float]:
    return (
        select(func.coalesce(func.sum(_DELIVERY.c.pending_usd), 0.0))
        .where(_DELIVERY.c.pending_behavior_id == behavior_id, _DELIVERY.c.set_aside.is_(None))
        .scalar_subquery()
    )


def pending_broadcast(session: Session, behavior_id: int) -> float:
    """Dollars of broadcast spend acknowledged for the behavior but not applied yet (deliveries
    waiting for the processor; a set-aside delivery is never applied, so not counted)."""
    return float(session.execute(select(_pending_broadcast_sum(behavior_id))).scalar_one())


def reserve(
    session: Session,
    *,
    behavior_id: int,
    window_start: datetime,
    amount: float,
    budget: float,
    now: datetime,
) -> bool:
    """Reserve ``amount`` dollars if it fits the budget with what is reserved, spent, and
    reported by broadcast deliveries still waiting to be processed (``pending_broadcast``)."""
    _ensure_window(session, behavior_id, window_start, now)
    result = session.execute(
        update(BudgetWindow)
        .where(
            col(BudgetWindow.behavior_id) == behavior_id,
            col(BudgetWindow.window_start) == window_start,
            col(BudgetWindow.reserved_usd)
            + col(BudgetWindow.spent_usd)
            + _pending_broadcast_sum(behavior_id)
            + amount
            <= budget,
        )
        .values(reserved_usd=col(BudgetWindow.reserved_usd) + amount, updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]  # CursorResult


def settle(
    session: Session,
    *,
    behavior_id: int,
    window_start: datetime,
    reserved: float,
    spent: float,
    now: datetime,
) -> None:
    """Turn a reservation into actual spend (``spent`` 0 releases it)."""
    _ensure_window(session, behavior_id, window_start, now)
    session.execute(
        update(BudgetWindow)
        .where(
            col(BudgetWindow.behavior_id) == behavior_id,
            col(BudgetWindow.window_start) == window_start,
        )
        .values(
            reserved_usd=col(BudgetWindow.reserved_usd) - reserved,
            spent_usd=col(BudgetWindow.spent_usd) + spent,
            updated_at=now,
        )
    )


def spent_in_window(
    session: Session, behavior_id: int, window_start: datetime
) -> tuple[float, float]:
    """(spent, reserved) dollars in the window."""
    row = session.get(BudgetWindow, (behavior_id, window_start))
    return (row.spent_usd, row.reserved_usd) if row else (0.0, 0.0)


def spent_in_windows(
    session: Session, windows: Iterable[tuple[int, datetime]]
) -> dict[tuple[int, datetime], float]:
    """Dollars spent in each ``(behavior id, window start)`` (0 where none is recorded), read
    in one query."""
    wanted = set(windows)
    spent = dict.fromkeys(wanted, 0.0)
    if not wanted:
        return spent
    rows = session.execute(
        select(
            col(BudgetWindow.behavior_id),
            col(BudgetWindow.window_start),
            col(BudgetWindow.spent_usd),
        ).where(
            col(BudgetWindow.behavior_id).in_({b for b, _ in wanted}),
            col(BudgetWindow.window_start).in_({w for _, w in wanted}),
        )
    )
    for behavior_id, start, usd in rows:
        if (behavior_id, start) in spent:
            spent[behavior_id, start] = usd
    return spent


def add_spent(
    session: Session, amounts: Mapping[tuple[int, datetime], float], now: datetime
) -> None:
    """Add dollars spent to many ``(behavior id, window start)`` windows: one upsert statement
    (``spent_usd = spent_usd + x``, so concurrent writers never lose each other's spend)."""
    if not amounts:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = BudgetWindow.__table__  # type: ignore[attr-defined]  # SQLModel table
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["behavior_id", "window_start"],
        set_={"spent_usd": table.c.spent_usd + stmt.excluded.spent_usd, "updated_at": now},
    )
    session.execute(
        stmt,
        [
            {
                "behavior_id": behavior_id,
                "window_start": start,
                "reserved_usd": 0.0,
                "spent_usd": usd,
                "updated_at": now,
            }
            for (behavior_id, start), usd in sorted(amounts.items())
        ],
    )


# Two cost figures for one run that differ by less than this are the same figure, rounded.
SAME_ABS_USD = 0.000001
SAME_RELATIVE = 0.01


def cost_disagreement(runner_usd: float | None, broadcast_usd: float | None) -> float | None:
    """``broadcast - runner`` dollars when a run has both figures and they differ by more than
    rounding (a millionth of a dollar and 1 %), else None. The budget counts the larger."""
    if runner_usd is None or broadcast_usd is None:
        return None
    difference = broadcast_usd - runner_usd
    if abs(difference) <= max(SAME_ABS_USD, SAME_RELATIVE * max(runner_usd, broadcast_usd)):
        return None
    return difference


SMALLEST_SHOWN = 0.000001  # below this, an amount shows as "<$0.000001"


def format_usd(value: float | None) -> str:
    """An amount of dollars as operators read it: cents from $1 up (``$1,234.50``), below that
    up to four decimals (``$0.50``, ``$0.0123``), and under $0.0001 two significant digits
    (``$0.000031``, not ``$0.0000``: a cheap run is counted, and the text shows it). None is
    ``—``."""
    if value is None:
        return "—"
    size = abs(value)
    sign = "-" if value < 0 else ""
    if size >= 1 or size == 0:
        return f"{sign}${size:,.2f}"
    if size < SMALLEST_SHOWN:
        return f"{sign}<${SMALLEST_SHOWN:.6f}"
    decimals = 4 if size >= 0.0001 else 1 - math.floor(math.log10(size))  # 2 significant
    digits = f"{size:.{decimals}f}".rstrip("0")
    if len(digits.split(".")[1]) < 2:
        digits = f"{size:.2f}"
    return f"{sign}${digits}"
