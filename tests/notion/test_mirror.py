"""The Notion mirror against the simulator, through the real notion-client: init creates or
adopts, rows equal the ledger, updates send only what changed, no duplicates after a crash
between create and record, and Notion's refusals become dead letters with its message."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import FakeClock
from ledger.db.models import NotionPage, OutboxRow
from ledger.db.session import Database
from ledger.notion.mirror import FIRST_SYNC_MIN_SECONDS, Mirror
from ledger.notion.render import behavior_key, entry_key
from ledger.notion.schema import init_workspace
from ledger.notion.store import load_workspace, save_workspace
from ledger.outbox.enqueue import KIND_MIRROR
from ledger.transitions import PolicyContext, operator_action
from tests.conftest import T0, write_behavior
from tests.notion.checks import compare_with_ledger
from tests.notion.conftest import ROOT, NotionSim, drain, make_mirror, set_up_workspace


async def _setup(db: Database, sim: NotionSim, clock: FakeClock) -> Mirror:
    mirror = make_mirror(db, sim, clock)
    ids = await init_workspace(mirror.api, ROOT)
    with db.transaction() as session:
        save_workspace(session, ids, clock.now())
    return mirror


def _register(db: Database, folder: Path, names: list[str], now: Any) -> None:
    for name in names:
        write_behavior(folder, name)
    with db.transaction() as session:
        reconcile_directory(session, folder, now)


async def test_init_creates_the_three_databases_then_adopts_them(
    db: Database, notion_sim: NotionSim
) -> None:
    mirror = make_mirror(db, notion_sim, FakeClock(T0))
    try:
        first = await init_workspace(mirror.api, ROOT)
        again = await init_workspace(mirror.api, ROOT)
    finally:
        await mirror.api.aclose()
    assert first.adopted == ()
    assert again.adopted == ("Behaviors", "Ledger", "Approvals")
    assert again.data_sources == first.data_sources
    assert len(notion_sim.workspace.databases) == 3
    schema = notion_sim.workspace.data_sources[first.data_sources["behaviors"]]["properties"]
    assert {"Name", "Tier", "Status", "Pinned", "Last run", "Last result", "Key"} <= set(schema)
    assert schema["Tier"]["select"]["options"][1]["name"] == "B · human-in-the-loop"


async def test_rows_equal_the_ledger_and_updates_send_only_what_changed(
    db: Database, notion_sim: NotionSim, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    _register(db, tmp_path / "behaviors", ["alpha", "beta"], T0)
    mirror = await _setup(db, notion_sim, clock)
    handlers = {KIND_MIRROR: mirror.handle}
    try:
        assert await asyncio.to_thread(mirror.feed) == 4  # 2 entries, 2 behaviors
        await drain(db, handlers, clock)
        compare_with_ledger(db, notion_sim)

        clock.advance(timedelta(minutes=5))
        with db.transaction() as session:
            operator_action(
                session,
                "alpha",
                "pin",
                reason="hold",
                actor="cli:ann",
                now=clock.now(),
                ctx=PolicyContext(mirror=True),
            )
        notion_sim.workspace.requests.clear()
        await asyncio.to_thread(mirror.feed)
        await drain(db, handlers, clock)
        compare_with_ledger(db, notion_sim)
        writes = [r for r in notion_sim.requests() if r["method"] in ("POST", "PATCH")]
        # One new ledger row, one update of alpha's row (Pinned only); queries are reads.
        assert [
            (r["method"], r["path"].split("/")[2]) for r in writes if "query" not in r["path"]
        ] == [
            ("POST", "pages"),
            ("PATCH", "pages"),
        ]

        report = await mirror.sync()
        assert (report.created, report.updated) == (0, 0)
    finally:
        await mirror.api.aclose()


async def test_a_crash_between_create_and_record_makes_no_duplicate(
    db: Database, notion_sim: NotionSim, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    _register(db, tmp_path / "behaviors", ["alpha"], T0)
    mirror = await _setup(db, notion_sim, clock)
    try:
        await mirror.apply(behavior_key("alpha"))
        with db.transaction() as session:  # "created in Notion", never recorded here
            session.delete(session.get(NotionPage, behavior_key("alpha")))
        assert await mirror.apply(behavior_key("alpha")) == 0
        with db.transaction() as session:
            ws = load_workspace(session)
            assert ws is not None
        rows = notion_sim.rows_by_key(ws.behaviors_data_source_id, "behaviors")
        assert len(rows[behavior_key("alpha")]) == 1
    finally:
        await mirror.api.aclose()


async def test_a_row_deleted_in_notion_is_written_anew(
    db: Database, notion_sim: NotionSim, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    _register(db, tmp_path / "behaviors", ["alpha"], T0)
    mirror = await _setup(db, notion_sim, clock)
    try:
        await mirror.apply(behavior_key("alpha"))
        with db.transaction() as session:
            page = session.get(NotionPage, behavior_key("alpha"))
            assert page is not None
            gone = page.page_id
        del notion_sim.workspace.pages[gone]
        with db.transaction() as session:
            operator_action(
                session, "alpha", "pin", reason="hold", actor="cli:ann", now=T0, ctx=PolicyContext()
            )
        assert await mirror.apply(behavior_key("alpha")) >= 1
        with db.transaction() as session:
            ws = load_workspace(session)
            assert ws is not None
        (row,) = notion_sim.rows_by_key(ws.behaviors_data_source_id, "behaviors")[
            behavior_key("alpha")
        ]
        assert row["Pinned"] is True
    finally:
        await mirror.api.aclose()


async def test_a_refusal_by_notion_is_a_dead_letter_with_its_message(
    db: Database, notion_sim: NotionSim, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    _register(db, tmp_path / "behaviors", ["alpha"], T0)
    mirror = await _setup(db, notion_sim, clock)
    with db.transaction() as session:  # the database was deleted in Notion
        ws = load_workspace(session)
        assert ws is not None
        ws.behaviors_data_source_id = "0d1e0000-0000-4000-8000-00000000dead"
        session.add(ws)
    try:
        await asyncio.to_thread(mirror.feed)
        await drain(db, {KIND_MIRROR: mirror.handle}, clock)
    finally:
        await mirror.api.aclose()
    with db.transaction() as session:
        dead = list(session.exec(select(OutboxRow).where(col(OutboxRow.status) == "dead")))
    assert dead
    assert all(r.attempts == 1 for r in dead)  # not retried blindly
    assert "404 object_not_found" in (dead[0].last_error or "")
    assert "Could not find" in (dead[0].last_error or "")


@pytest.mark.parametrize("size", [1999, 2000, 4500])
def test_rich_text_over_2000_characters_is_split(size: int) -> None:
    from ledger.notion.props import read_value, write_value

    written = write_value("rich_text", "x" * size)
    assert all(len(p["text"]["content"]) <= 2000 for p in written["rich_text"])
    assert read_value("rich_text", written) == "x" * size


def test_a_whole_number_is_written_as_an_integer_so_a_count_shows_as_one() -> None:
    from ledger.notion.props import write_value

    count = write_value("number", 2.0)["number"]  # "Failures in window", say
    assert (type(count), count) == (int, 2)
    assert write_value("number", 0.000031) == {"number": 0.000031}  # spend stays a fraction
    assert write_value("number", None) == {"number": None}


async def test_two_replicas_writing_the_same_new_row_create_it_once(
    db: Database, notion_sim: NotionSim, tmp_path: Path
) -> None:
    clock = FakeClock(T0)
    _register(db, tmp_path / "behaviors", ["alpha"], T0)
    first = await _setup(db, notion_sim, clock)
    second = make_mirror(db, notion_sim, clock)  # its own client, limiter and locks
    # Slow creates: while one replica creates a row, the other looks it up (and finds none).
    notion_sim.fault(kind="slow", method="POST", path="/pages", seconds=0.5, times=4)
    try:
        await asyncio.gather(
            first.apply(entry_key(1)),
            second.apply(behavior_key("alpha")),
            second.apply(entry_key(1)),
            first.apply(behavior_key("alpha")),
        )
        with db.transaction() as session:
            ws = load_workspace(session)
            assert ws is not None
        behaviors = notion_sim.rows_by_key(ws.behaviors_data_source_id, "behaviors")
        ledger_rows = notion_sim.rows_by_key(ws.ledger_data_source_id, "ledger")
        assert len(behaviors[behavior_key("alpha")]) == 1
        assert len(ledger_rows[entry_key(1)]) == 1
    finally:
        await first.api.aclose()
        await second.api.aclose()


async def test_the_first_full_sync_is_due_from_the_last_one_recorded_not_from_start(
    db: Database, notion_sim: NotionSim
) -> None:
    """A daemon restarted more often than the sync interval still compares: the first full
    sync after a start is due ``sync_every`` after the last recorded one (at least a minute
    after start), so ``ledger notion status`` never judges a healthy mirror ``behind``."""
    every = 6 * 3600.0
    clock = FakeClock(T0)
    mirror = make_mirror(db, notion_sim, clock)
    try:
        await set_up_workspace(db, notion_sim, T0)
        assert mirror._first_sync_in(every) == every  # never synced: as before
        for ago, expected in (
            (timedelta(hours=7), FIRST_SYNC_MIN_SECONDS),  # overdue: soon after start
            (timedelta(hours=1), 5 * 3600.0),
            (timedelta(hours=6, seconds=-30), FIRST_SYNC_MIN_SECONDS),
        ):
            with db.transaction() as session:
                ws = load_workspace(session)
                assert ws is not None
                ws.last_sync_at = T0 - ago
            assert mirror._first_sync_in(every) == pytest.approx(expected)
    finally:
        await mirror.api.aclose()
