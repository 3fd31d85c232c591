"""Approve from Notion: a Decision a person sets in the Approvals row is applied exactly once,
through the same code as the CLI and the API, with the Notion user as the actor and the result
written back; a decision on a withdrawn request is refused, saying why, in the row."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from ledger.clock import FakeClock
from ledger.daemon import notion_decide
from ledger.db.models import Approval, LedgerEntry, OutboxRow
from ledger.db.session import Database
from ledger.notion.approvals import ApprovalPoller
from ledger.notion.mirror import Mirror
from ledger.notion.render import approval_key
from ledger.notion.schema import init_workspace
from ledger.notion.store import load_workspace, save_workspace
from ledger.outbox.enqueue import KIND_MIRROR
from ledger.transitions import PolicyContext, operator_action
from tests.conftest import T0, registered_at_b_with_a_pending_approval
from tests.notion.conftest import ROOT, NotionSim, drain, make_mirror

CTX = PolicyContext(mirror=True)


@pytest.fixture
def pending(tmp_path: Path, database_url: str) -> Iterator[tuple[Database, str]]:
    run_id = registered_at_b_with_a_pending_approval(tmp_path, database_url)
    db = Database.open(database_url)
    try:
        yield db, run_id
    finally:
        db.close()


async def _mirrored(db: Database, sim: NotionSim, clock: FakeClock) -> Mirror:
    mirror = make_mirror(db, sim, clock)
    ids = await init_workspace(mirror.api, ROOT)
    with db.transaction() as session:
        save_workspace(session, ids, clock.now())
    await _catch_up(db, mirror, clock)
    return mirror


async def _catch_up(db: Database, mirror: Mirror, clock: FakeClock) -> None:
    await asyncio.to_thread(mirror.feed)
    await drain(db, {KIND_MIRROR: mirror.handle}, clock)


def _row(db: Database, sim: NotionSim, run_id: str) -> tuple[str, dict[str, object]]:
    with db.transaction() as session:
        ws = load_workspace(session)
        assert ws is not None
    pages = [
        p
        for p in sim.rows(ws.approvals_data_source_id)
        if approval_key(run_id) in str(p["properties"]["Key"])
    ]
    assert len(pages) == 1
    from ledger.notion.props import read_properties
    from ledger.notion.schema import APPROVALS

    return pages[0]["id"], read_properties(APPROVALS.properties, pages[0])


def _entries(db: Database, kind: str) -> list[LedgerEntry]:
    with db.transaction() as session:
        return list(session.exec(select(LedgerEntry).where(col(LedgerEntry.kind) == kind)))


async def test_a_decision_set_in_notion_is_applied_exactly_once_with_the_actor(
    pending: tuple[Database, str], notion_sim: NotionSim
) -> None:
    db, run_id = pending
    clock = FakeClock(T0)
    mirror = await _mirrored(db, notion_sim, clock)
    poller = ApprovalPoller(db, mirror.api, clock, notion_decide(CTX), mirror)
    try:
        page_id, row = _row(db, notion_sim, run_id)
        assert (row["Status"], row["Decision"]) == ("pending", "pending")
        assert await poller.poll_once() == 0

        notion_sim.person_sets(page_id, Decision="approve", Reason="looks right")
        assert await poller.poll_once() == 1
        assert await poller.poll_once() == 0  # answered: never picked again

        # The write-back was lost (say the daemon died first): the row asks again.
        notion_sim.person_sets(page_id, Decision="approve", Status="pending")
        assert await poller.poll_once() == 1
        await _catch_up(db, mirror, clock)
    finally:
        await mirror.api.aclose()
    with db.transaction() as session:
        approval = session.exec(select(Approval).where(col(Approval.run_id) == run_id)).one()
        actions = session.exec(
            select(OutboxRow).where(col(OutboxRow.kind).startswith("action."))
        ).all()
    assert approval.status == "approved"
    assert approval.decided_by == "notion:Ada Operator"
    approved = _entries(db, "approved")
    assert [(e.actor, e.reason) for e in approved] == [("notion:Ada Operator", "looks right")]
    assert len(actions) == 1
    _page, row = _row(db, notion_sim, run_id)
    assert row["Status"] == "approved"
    assert row["Decision"] == "approve"
    assert row["Decided by"] == "notion:Ada Operator"
    assert str(row["Result"]).startswith("approved by notion:Ada Operator")


async def test_a_decision_on_a_withdrawn_request_is_refused_with_the_reason(
    pending: tuple[Database, str], notion_sim: NotionSim
) -> None:
    db, run_id = pending
    clock = FakeClock(T0)
    mirror = await _mirrored(db, notion_sim, clock)
    poller = ApprovalPoller(db, mirror.api, clock, notion_decide(CTX), mirror)
    try:
        with db.transaction() as session:
            operator_action(
                session, "alpha", "pause", reason="maintenance", actor="cli:ann", now=T0, ctx=CTX
            )
        await _catch_up(db, mirror, clock)
        page_id, row = _row(db, notion_sim, run_id)
        assert row["Status"] == "withdrawn"
        notion_sim.person_sets(page_id, Decision="approve")
        assert await poller.poll_once() == 1
        assert await poller.poll_once() == 0
    finally:
        await mirror.api.aclose()
    _page, row = _row(db, notion_sim, run_id)
    assert row["Decision"] == "pending"
    assert "refused" in str(row["Result"]) and "withdrawn" in str(row["Result"])
    assert "paused by cli:ann: maintenance" in str(row["Result"])
    assert _entries(db, "approved") == []


async def test_a_rejection_without_a_reason_is_refused_and_can_be_made_again(
    pending: tuple[Database, str], notion_sim: NotionSim
) -> None:
    db, run_id = pending
    clock = FakeClock(T0)
    mirror = await _mirrored(db, notion_sim, clock)
    poller = ApprovalPoller(db, mirror.api, clock, notion_decide(CTX), mirror)
    try:
        page_id, _row_values = _row(db, notion_sim, run_id)
        notion_sim.person_sets(page_id, Decision="reject")
        assert await poller.poll_once() == 1
        _page, row = _row(db, notion_sim, run_id)
        assert row["Decision"] == "pending" and "reason is required" in str(row["Result"])
        notion_sim.person_sets(page_id, Decision="reject", Reason="off-topic")
        assert await poller.poll_once() == 1
    finally:
        await mirror.api.aclose()
    assert [e.reason for e in _entries(db, "rejected")] == ["off-topic"]
