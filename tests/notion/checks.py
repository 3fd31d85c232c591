"""Checks the Notion tests share: the row-by-row comparison with the ledger, and the most
requests the simulator saw in any window."""

from __future__ import annotations

from sqlmodel import col, select

from ledger.db.models import Approval, BehaviorRow, LedgerEntry
from ledger.db.session import Database
from ledger.gates import Tier
from ledger.notion.props import format_date
from ledger.notion.render import behavior_key, entry_key
from ledger.notion.store import load_workspace
from tests.notion.conftest import NotionSim


def compare_with_ledger(db: Database, sim: NotionSim) -> None:
    """Row by row: every behavior and ledger entry has exactly one Notion row saying what
    the database says."""
    with db.transaction() as session:
        ws = load_workspace(session)
        assert ws is not None
        behaviors = list(session.exec(select(BehaviorRow)))
        entries = list(session.exec(select(LedgerEntry).order_by(col(LedgerEntry.id))))
        approvals = list(session.exec(select(Approval)))
    by_key = sim.rows_by_key(ws.behaviors_data_source_id, "behaviors")
    assert sorted(by_key) == sorted(behavior_key(b.name) for b in behaviors)
    for b in behaviors:
        (row,) = by_key[behavior_key(b.name)]
        assert row["Tier"] == Tier(b.tier).label
        assert row["Pinned"] is b.pinned
        assert row["Status"] == ("paused" if b.paused else "active")
        assert row["Last run"] == format_date(b.last_run_at)
        assert row["Last result"] == b.last_run_status
    ledger_rows = sim.rows_by_key(ws.ledger_data_source_id, "ledger")
    assert sorted(ledger_rows) == sorted(entry_key(e.id or 0) for e in entries)
    for e in entries:
        (row,) = ledger_rows[entry_key(e.id or 0)]
        assert row["Entry hash"] == e.hash
        assert row["Kind"] == e.kind
        assert row["Reason"] == e.reason
        assert row["Actor"] == e.actor
        assert row["At"] == format_date(e.created_at)
        assert len(row["Behavior"]) == 1
    approval_rows = sim.rows_by_key(ws.approvals_data_source_id, "approvals")
    assert sorted(approval_rows) == sorted(f"approval:{a.run_id}" for a in approvals)
    for a in approvals:
        (row,) = approval_rows[f"approval:{a.run_id}"]
        assert (row["Status"], row["Payload hash"]) == (a.status, a.payload_sha256)


def max_in_window(times: list[float], window: float) -> int:
    """The most request start times falling in any ``window``-second interval."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
