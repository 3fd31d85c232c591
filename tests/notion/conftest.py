"""The Notion simulator on a loopback port (its own thread, so its answers never wait on the
test's event loop), kept at hand to inspect what reached "Notion" and to play a person."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from ledger.clock import Clock
from ledger.db.session import Database
from ledger.notion.api import NotionApi
from ledger.notion.limiter import TokenBucket
from ledger.notion.mirror import Mirror
from ledger.notion.props import read_properties
from ledger.notion.schema import TABLES
from ledger.outbox.dispatcher import Handler, RetryPolicy, dispatch_one
from ledger.sim.hosting import run_asgi_in_thread
from ledger.sim.notion import NotionFault, NotionSimConfig, create_app
from ledger.transitions import PolicyContext

TOKEN = "secret_notion_planted_0123456789abcdefXYZ"
TOKEN_ENV = "LEDGER_TEST_NOTION_TOKEN"
ROOT = "7a0d9d2e-1c1b-4c55-9b3e-2f1e0c9d8a71"


@dataclass
class NotionSim:
    base_url: str
    workspace: Any  # the simulator's Workspace (app.state.sim)

    def requests(self) -> list[dict[str, Any]]:
        return list(self.workspace.requests)

    def fault(self, **kwargs: Any) -> None:
        self.workspace.add_fault(NotionFault(**kwargs))

    def rows(self, data_source_id: str) -> list[dict[str, Any]]:
        return [
            p
            for p in list(self.workspace.pages.values())
            if p["parent"].get("data_source_id") == data_source_id and not p["in_trash"]
        ]

    def rows_by_key(self, data_source_id: str, table: str) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for page in self.rows(data_source_id):
            values = read_properties(TABLES[table].properties, page)
            out.setdefault(str(values["Key"]), []).append(values)
        return out

    def person_sets(self, page_id: str, **values: str) -> None:
        """A person edits a row in Notion: select/rich-text values, last_edited_by = them."""
        page = self.workspace.pages[page_id]
        person = next(u for u in self.workspace.users.values() if u["type"] == "person")
        for name, value in values.items():
            prop = page["properties"][name]
            if prop["type"] == "select":
                prop["select"] = {"id": "x", "name": value, "color": "default"}
            else:
                prop[prop["type"]] = [
                    {"type": "text", "text": {"content": value, "link": None}, "plain_text": value}
                ]
        page["last_edited_by"] = {"object": "user", "id": person["id"]}


@pytest.fixture
def notion_sim() -> Iterator[NotionSim]:
    app = create_app(NotionSimConfig(token=TOKEN, root_page_id=ROOT))
    with run_asgi_in_thread(app, "the Notion simulator") as base_url:
        yield NotionSim(base_url, app.state.sim)


def make_mirror(
    db: Database,
    sim: NotionSim,
    clock: Clock,
    *,
    limiter: TokenBucket | None = None,
    **kwargs: Any,
) -> Mirror:
    api = NotionApi(TOKEN, base_url=sim.base_url, limiter=limiter or TokenBucket())
    return Mirror(db, api, clock, PolicyContext(mirror=True), **kwargs)


async def set_up_workspace(db: Database, sim: NotionSim, now: datetime) -> None:
    """What ``ledger notion init`` does: create the three databases under ROOT (through the
    real client), then store their ids."""
    from ledger.notion.schema import init_workspace
    from ledger.notion.store import save_workspace

    api = NotionApi(TOKEN, base_url=sim.base_url, limiter=TokenBucket())
    try:
        ids = await init_workspace(api, ROOT)
    finally:
        await api.aclose()
    with db.transaction() as session:
        save_workspace(session, ids, now)


FAST_RETRY = RetryPolicy(max_attempts=60, base_delay=0.05, max_delay=0.5)


async def drain(
    db: Database,
    handlers: dict[str, Handler],
    clock: Clock,
    *,
    policy: RetryPolicy = FAST_RETRY,
    timeout: float = 60.0,
    until: Callable[[], bool] | None = None,
) -> None:
    """Deliver outbox rows of the handled kinds until none is due or waiting for a retry."""
    from sqlmodel import col, select

    from ledger.db.models import OutboxRow

    def waiting() -> int:
        with db.transaction() as session:
            return len(
                session.exec(
                    select(OutboxRow.id).where(
                        col(OutboxRow.status).in_(("pending", "in_flight")),
                        # only the kinds this drain delivers: alerts (and their dedup
                        # follow-ups, due when their window ends) are not the mirror's work
                        col(OutboxRow.kind).in_(list(handlers)),
                    )
                ).all()
            )

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await dispatch_one(db, handlers, clock, policy=policy):
            if await asyncio.to_thread(waiting) == 0 and (until is None or until()):
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the outbox did not drain in time")
