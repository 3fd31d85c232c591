"""A compressed Notion outage during steady activity: an outage, 429s with Retry-After, 5xx
and answers past the client's timeout, while operators keep acting. Nothing is lost: afterwards
the Notion side equals the ledger row by row, and the whole time the process stayed within
3 requests/s averaged over any 10 s window (measured from the simulator's request log)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.session import Database
from ledger.errors import ConflictError
from ledger.notion.api import NotionApi
from ledger.notion.limiter import TokenBucket
from ledger.notion.mirror import Mirror
from ledger.notion.schema import init_workspace
from ledger.notion.store import save_workspace
from ledger.outbox.dispatcher import Dispatcher
from ledger.outbox.enqueue import KIND_MIRROR
from ledger.transitions import PolicyContext, operator_action
from tests.conftest import write_behavior
from tests.notion.checks import compare_with_ledger, max_in_window
from tests.notion.conftest import FAST_RETRY, ROOT, TOKEN, NotionSim, drain

NAMES = ["alpha", "beta", "gamma", "delta", "eps"]


async def _activity(db: Database, clock: SystemClock, seconds: float) -> int:
    """Operators pin/unpin and pause/resume behaviors, every 0.2 s."""
    rng = random.Random(7)
    verbs = ["pin", "unpin", "pause", "resume"]
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name, verb = rng.choice(NAMES), rng.choice(verbs)

        def act(name: str = name, verb: str = verb) -> None:
            with db.transaction() as session:
                operator_action(
                    session,
                    name,
                    verb,  # type: ignore[arg-type]  # one of the verbs above
                    reason="steady activity",
                    actor="cli:test",
                    now=clock.now(),
                    ctx=PolicyContext(mirror=True),
                )

        try:
            await asyncio.to_thread(act)
            done += 1
        except ConflictError:
            pass  # already pinned / not paused…
        await asyncio.sleep(0.2)
    return done


async def test_a_compressed_outage_loses_nothing_and_stays_within_the_rate(
    db: Database, notion_sim: NotionSim, tmp_path: Path
) -> None:
    clock = SystemClock()
    for name in NAMES:
        write_behavior(tmp_path / "behaviors", name)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path / "behaviors", clock.now())
    api = NotionApi(TOKEN, base_url=notion_sim.base_url, limiter=TokenBucket(), timeout_ms=700)
    mirror = Mirror(db, api, clock, PolicyContext(mirror=True))
    stop = asyncio.Event()
    try:
        ids = await init_workspace(api, ROOT)
        with db.transaction() as session:
            save_workspace(session, ids, clock.now())
        dispatcher = Dispatcher(
            db, {KIND_MIRROR: mirror.handle}, clock, policy=FAST_RETRY, idle_wait=0.1
        )
        dispatcher.start()
        feeder = asyncio.create_task(mirror.run(stop, dispatcher.wake, every=0.2))
        activity = asyncio.create_task(_activity(db, clock, 9.0))
        # The same sequence of failures as a long outage, compressed.
        await asyncio.sleep(1.0)
        notion_sim.fault(kind="outage", seconds=2.5)
        await asyncio.sleep(3.0)
        notion_sim.fault(kind="rate_limited", retry_after=1, times=3)
        notion_sim.fault(kind="server_error", status=502, times=2)
        notion_sim.fault(kind="server_error", status=503, times=2)
        notion_sim.fault(kind="slow", seconds=1.5, times=2)
        notion_sim.fault(kind="server_error", status=529, times=1)
        acted = await activity
        assert acted >= 10
        await dispatcher.stop()
        await asyncio.to_thread(mirror.feed)
        await drain(db, {KIND_MIRROR: mirror.handle}, clock, timeout=120)
        statuses = [r["status"] for r in notion_sim.requests()]
        assert {429, 502, 503, 529} <= set(statuses)  # the faults did happen
        compare_with_ledger(db, notion_sim)
        report = await mirror.sync()
        assert (report.created, report.updated, report.duplicates) == (0, 0, 0)
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await api.aclose()
    times = [r["time"] for r in notion_sim.requests()]
    print(
        f"\noutage run: {len(times)} Notion requests over {max(times) - min(times):.1f} s, "
        f"statuses {sorted(set(statuses))}, busiest 10 s window: {max_in_window(times, 10.0)}"
    )
    assert max_in_window(times, 10.0) <= 30
