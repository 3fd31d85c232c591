"""A full resync of 1,000 behaviors where 10 changed sends at most 10 write requests (reads:
one query per 100 rows), within the rate limit."""

from __future__ import annotations

import time

from sqlalchemy import insert, update
from sqlmodel import col

from ledger.clock import FakeClock
from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from ledger.notion.limiter import TokenBucket
from ledger.notion.schema import init_workspace
from ledger.notion.store import save_workspace
from tests.conftest import T0
from tests.notion.checks import max_in_window
from tests.notion.conftest import ROOT, NotionSim, make_mirror

COUNT = 1000


def _behaviors(db: Database) -> None:
    rows = [
        {
            "name": f"b{i:04d}",
            "tier": "A",
            "max_tier": "C",
            "paused": False,
            "pinned": False,
            "retired": False,
            "enabled": True,
            "definition_hash": f"{i:064x}",
            "definition": {"budget": {"usd": 1.0, "reset": "day"}},
            "prompt_text": "",
            "source_path": f"/behaviors/b{i:04d}.yaml",
            "policy_window": {},
            "created_at": T0,
            "updated_at": T0,
        }
        for i in range(COUNT)
    ]
    with db.transaction() as session:
        session.execute(insert(BehaviorRow), rows)


async def test_a_resync_of_1000_behaviors_with_10_changed_sends_at_most_10_writes(
    db: Database, notion_sim: NotionSim
) -> None:
    clock = FakeClock(T0)
    _behaviors(db)
    fast = make_mirror(db, notion_sim, clock, limiter=TokenBucket(rate=10_000, burst=100))
    try:
        ids = await init_workspace(fast.api, ROOT)
        with db.transaction() as session:
            save_workspace(session, ids, T0)
        first = await fast.sync()
        assert first.created == COUNT
    finally:
        await fast.api.aclose()
    with db.transaction() as session:
        changed = [f"b{i:04d}" for i in range(0, COUNT, COUNT // 10)]
        session.execute(
            update(BehaviorRow).where(col(BehaviorRow.name).in_(changed)).values(pinned=True)
        )

    notion_sim.workspace.requests.clear()
    mirror = make_mirror(db, notion_sim, clock)  # the real limiter
    started = time.monotonic()
    try:
        report = await mirror.sync()
    finally:
        await mirror.api.aclose()
    elapsed = time.monotonic() - started
    requests = notion_sim.requests()
    writes = [r for r in requests if r["method"] in ("POST", "PATCH") and "/query" not in r["path"]]
    print(
        f"\nresync of {COUNT} behaviors, {len(changed)} changed: {len(requests)} requests "
        f"({len(writes)} writes) in {elapsed:.1f} s; busiest 10 s: "
        f"{max_in_window([r['time'] for r in requests], 10.0)}"
    )
    assert (report.updated, report.created) == (10, 0)
    assert len(writes) <= 10
    assert max_in_window([r["time"] for r in requests], 10.0) <= 30
