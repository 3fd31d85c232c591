"""Actions, the event log and the comment channel, delivered to the simulator through the
mirror's client — and a planted Notion token and a planted key in a model output that reach
no log and no Notion payload."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from sqlmodel import select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.logging import configure_logging
from ledger.notion.deliver import NotionCommentChannel, NotionDeliverer
from ledger.notion.eventlog import event_line
from ledger.notion.mirror import Mirror
from ledger.notion.schema import init_workspace
from ledger.notion.setup import open_api
from ledger.notion.store import save_workspace
from ledger.outbox.dispatcher import OutboxItem, RetryPolicy, dispatch_one
from ledger.outbox.enqueue import KIND_MIRROR, enqueue_action
from ledger.runner.run import CallOutcome, SlotClaim, begin_run, claim_slots, finish_run
from ledger.transitions import PolicyContext, lock_behavior, operator_action
from tests.conftest import T0, write_behavior
from tests.notion.conftest import ROOT, TOKEN, TOKEN_ENV, NotionSim, drain

PLANTED = "sk-or-v1-" + "5eed" * 16
CTX = PolicyContext(mirror=True)


def test_an_event_line_is_compact_masked_and_cut_to_fit() -> None:
    line = event_line(
        T0,
        "github",
        "push",
        {"ref": "refs/heads/main", "token": "abc", "note": "x" * 5000},
    )
    assert line.startswith('🔔 2026-11-02T09:00:00.000Z [github:push] {"ref":"refs/heads/main",')
    assert '"token":"********"' in line
    assert len(line) == 2000 and line.endswith("…")


def _user_database(sim: NotionSim, title: str) -> str:
    import httpx

    with httpx.Client(base_url=sim.base_url) as client:
        created = client.post(
            "/v1/databases",
            headers={"Authorization": f"Bearer {TOKEN}", "Notion-Version": "2025-09-03"},
            json={
                "parent": {"page_id": ROOT},
                "title": [{"text": {"content": title}}],
                "initial_data_source": {"properties": {"Title": {"title": {}}}},
            },
        )
    created.raise_for_status()
    return str(created.json()["id"])


@pytest.fixture
def settings(
    notion_sim: NotionSim, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        notion_token=SecretStr(f"env:{TOKEN_ENV}"),
        notion_base_url=notion_sim.base_url,
        notion_event_log_page=ROOT,
    )


async def test_secrets_reach_no_log_and_no_notion_payload(
    settings: Settings, notion_sim: NotionSim, tmp_path: Path
) -> None:
    logs = io.StringIO()
    configure_logging("json", "debug", stream=logs)
    clock = FakeClock(T0)
    write_behavior(tmp_path / "behaviors", "alpha")
    db = Database.open(settings.database_url, migrate=True)
    api = open_api(settings)
    mirror = Mirror(db, api, clock, CTX, event_log_page=ROOT)
    deliverer = NotionDeliverer(mirror, ROOT)
    handlers = {KIND_MIRROR: mirror.handle, **deliverer.handlers()}
    try:
        with db.transaction() as session:
            reconcile_directory(session, tmp_path / "behaviors", T0)
            row = lock_behavior(session, name="alpha")
            row.tier = "B"
            (run,) = claim_slots(session, [SlotClaim(row.id or 0, T0, "B")], T0)
            plan = begin_run(session, run.id, now=T0, ctx=CTX)
        assert plan is not None
        output = f"Done. The key is {PLANTED}; the token {TOKEN}. " + "All good. " * 400
        with db.transaction() as session:
            finish_run(session, plan, CallOutcome(output=output, model="m"), now=T0, ctx=CTX)
        with db.transaction() as session:  # an operator pastes secrets into a reason
            operator_action(
                session,
                "alpha",
                "demote",
                reason=f"leaked {PLANTED} and {TOKEN}",
                actor="cli:ann",
                now=T0,
                ctx=CTX,
            )
        ids = await init_workspace(api, ROOT)
        with db.transaction() as session:
            save_workspace(session, ids, T0)
        await asyncio.to_thread(mirror.feed)
        await drain(db, handlers, clock)
        person = next(u for u in notion_sim.workspace.users.values() if u["type"] == "person")
        channel = NotionCommentChannel("notion", mirror, mentions=(person["id"],))
        alert = {"event": "demotion", "behavior": "alpha", "reason": f"because {PLANTED}"}
        item = OutboxItem(1, "alert.demotion", {"alert": alert}, 1, None, T0)
        await channel.send(alert, item)
    finally:
        await api.aclose()
        db.close()
    workspace = notion_sim.workspace
    stored = orjson.dumps(
        [workspace.pages, workspace.blocks, workspace.comments, workspace.requests]
    ).decode()
    assert "The key is" in stored  # the output did reach Notion…
    assert "🔔 2026-11-02T09:00:00.000Z [ledger:demoted]" in stored  # …and the event log
    assert any(
        c["rich_text"][0].get("mention", {}).get("user", {}).get("id") == person["id"]
        for c in workspace.comments
    )
    for secret in (PLANTED, TOKEN):
        assert secret not in stored
        assert secret not in logs.getvalue()
    assert json.loads(logs.getvalue().splitlines()[-1])  # the logs are JSON lines


async def test_notion_actions_resolve_the_database_and_batch_appends(
    settings: Settings, notion_sim: NotionSim, db: Database
) -> None:
    clock = FakeClock(T0)
    database_id = _user_database(notion_sim, "Published")
    api = open_api(settings)
    mirror = Mirror(db, api, clock, CTX)
    deliverer = NotionDeliverer(mirror)
    output = "paragraph " * 200 * 250  # 250 pieces of 2,000 characters
    try:
        with db.transaction() as session:
            enqueue_action(
                session,
                action="notion_page",
                behavior="alpha",
                run_id="run-1",
                tier="C",
                output=output[:5000],
                now=T0,
                options={"database_id": database_id, "title": "SEO {date}"},
            )
            enqueue_action(
                session,
                action="notion_append",
                behavior="alpha",
                run_id="run-2",
                tier="C",
                output=output,
                now=T0,
                options={"page_id": ROOT},
            )
        await drain(db, deliverer.handlers(), clock)
    finally:
        await api.aclose()
    workspace = notion_sim.workspace
    source = workspace.databases[database_id]["_data_source_ids"][0]
    (page,) = [p for p in notion_sim.rows(source)]
    assert page["properties"]["Title"]["title"][0]["plain_text"] == "SEO 2026-11-02"
    assert len(workspace.children[page["id"]]) == 3  # 5,000 characters in 3 paragraphs
    appends = [
        r
        for r in notion_sim.requests()
        if r["method"] == "PATCH" and r["path"].endswith(ROOT + "/children")
    ]
    assert len(appends) == 3  # 251 blocks, 100 at a time


class Crash(BaseException):
    """The daemon dies: nothing after this point runs (the dispatcher records no outcome)."""


def crash_after(api: Any, method: str, calls: int = 1) -> None:
    """The ``calls``-th request of ``method`` reaches Notion, then the process dies before
    the answer is recorded."""
    real = getattr(api, method)
    seen = [0]

    async def reach_notion_then_die(*args: Any, **kwargs: Any) -> Any:
        answer = await real(*args, **kwargs)
        seen[0] += 1
        if seen[0] == calls:
            setattr(api, method, real)
            raise Crash
        return answer

    setattr(api, method, reach_notion_then_die)


async def deliver_through_a_crash(db: Database, deliverer: NotionDeliverer) -> None:
    """One attempt dies mid-delivery (row left in flight); after its lease, the retry."""
    clock = FakeClock(T0)
    with pytest.raises(Crash):
        await dispatch_one(db, deliverer.handlers(), clock)
    clock.advance(RetryPolicy().lease + timedelta(seconds=1))
    assert await dispatch_one(db, deliverer.handlers(), clock)
    with db.transaction() as session:
        (row,) = session.exec(select(OutboxRow)).all()
        assert (row.status, row.attempts) == ("delivered", 2)


def queue_action(db: Database, action: str, output: str, **options: str) -> None:
    with db.transaction() as session:
        enqueue_action(
            session,
            action=action,
            behavior="alpha",
            run_id="run-9",
            tier="C",
            output=output,
            now=T0,
            options=options,
        )


def texts(workspace: Any, parent: str) -> list[str]:
    return [
        workspace.blocks[b]["paragraph"]["rich_text"][0]["plain_text"]
        for b in workspace.children.get(parent, [])
    ]


@pytest.mark.parametrize(
    ("dies_in", "pieces"),
    [("create_page", 3), ("create_page", 150), ("append", 150)],
    ids=["creating", "creating-a-long-page", "appending-the-rest"],
)
async def test_a_page_created_before_the_daemon_died_is_found_on_retry_not_made_twice(
    settings: Settings, notion_sim: NotionSim, db: Database, dies_in: str, pieces: int
) -> None:
    database_id = _user_database(notion_sim, "Published")
    api = open_api(settings)
    deliverer = NotionDeliverer(Mirror(db, api, FakeClock(T0), CTX))
    output = "".join(f"{n:<2000}" for n in range(pieces))  # one paragraph per 2,000 characters
    queue_action(db, "notion_page", output, database_id=database_id, title="{run_id}")
    crash_after(api, dies_in)
    try:
        await deliver_through_a_crash(db, deliverer)
    finally:
        await api.aclose()
    source = notion_sim.workspace.databases[database_id]["_data_source_ids"][0]
    (page,) = notion_sim.rows(source)
    assert page["properties"]["Ledger run"]["rich_text"][0]["plain_text"] == "run-9"
    assert [t.strip() for t in texts(notion_sim.workspace, page["id"])] == [
        str(n) for n in range(pieces)
    ]
    creates = [
        r for r in notion_sim.requests() if r["method"] == "POST" and r["path"] == "/v1/pages"
    ]
    assert len(creates) == 1


@pytest.mark.parametrize("dies_after", [1, 2], ids=["first-batch", "second-batch"])
async def test_blocks_appended_before_the_daemon_died_are_not_appended_again(
    settings: Settings, notion_sim: NotionSim, db: Database, dies_after: int
) -> None:
    api = open_api(settings)
    deliverer = NotionDeliverer(Mirror(db, api, FakeClock(T0), CTX))
    output = "".join(f"{n:<2000}" for n in range(250))  # 251 blocks with the head: 3 requests
    queue_action(db, "notion_append", output, page_id=ROOT)
    crash_after(api, "append", calls=dies_after)
    try:
        await deliver_through_a_crash(db, deliverer)
    finally:
        await api.aclose()
    lines = texts(notion_sim.workspace, ROOT)
    assert lines[0] == "alpha · run run-9 · 2026-11-02T09:00:00Z"
    assert [t.strip() for t in lines[1:]] == [str(n) for n in range(250)]
    appends = [r for r in notion_sim.requests() if r["method"] == "PATCH"]
    assert len(appends) == 3


async def test_a_deleted_ledger_run_column_is_added_again(
    settings: Settings, notion_sim: NotionSim, db: Database
) -> None:
    """An operator deletes the unfamiliar "Ledger run" column from their database while the
    daemon runs: the next page is still created (the column is added back), not a dead
    letter until the daemon restarts."""
    import httpx

    clock = FakeClock(T0)
    database_id = _user_database(notion_sim, "Published")
    api = open_api(settings)
    deliverer = NotionDeliverer(Mirror(db, api, clock, CTX))
    try:
        for run_id in ("run-1", "run-2"):
            with db.transaction() as session:
                enqueue_action(
                    session,
                    action="notion_page",
                    behavior="alpha",
                    run_id=run_id,
                    tier="C",
                    output="hello",
                    now=T0,
                    options={"database_id": database_id},
                )
            assert await dispatch_one(db, deliverer.handlers(), clock)
            if run_id == "run-1":
                source = notion_sim.workspace.databases[database_id]["_data_source_ids"][0]
                async with httpx.AsyncClient(base_url=notion_sim.base_url) as client:
                    removed = await client.patch(
                        f"/v1/data_sources/{source}",
                        headers={
                            "Authorization": f"Bearer {TOKEN}",
                            "Notion-Version": "2025-09-03",
                        },
                        json={"properties": {"Ledger run": None}},
                    )
                    assert removed.status_code == 200, removed.text
    finally:
        await api.aclose()
    with db.transaction() as session:
        rows = {r.dedup_key: (r.status, r.last_error) for r in session.exec(select(OutboxRow))}
    assert rows["action.notion_page:run-2"] == ("delivered", None), rows
    runs = [
        (page["properties"].get("Ledger run") or {}).get("rich_text") or []
        for page in notion_sim.rows(source)
    ]
    assert "run-2" in [t[0]["plain_text"] for t in runs if t]


async def test_each_verified_webhook_event_appends_one_line_to_the_event_log(
    settings: Settings, notion_sim: NotionSim, db: Database
) -> None:
    from ledger.db.models import WebhookEvent

    clock = FakeClock(T0)
    with db.transaction() as session:
        session.add(
            WebhookEvent(
                source="github",
                event="push",
                replay_key="delivery-1",
                payload={"ref": "refs/heads/main", "hook": {"secret": "abc"}},
                received_at=T0,
            )
        )
    api = open_api(settings)
    mirror = Mirror(db, api, clock, CTX, event_log_page=ROOT)
    handlers = {KIND_MIRROR: mirror.handle, **NotionDeliverer(mirror, ROOT).handlers()}
    try:
        ids = await init_workspace(api, ROOT)
        with db.transaction() as session:
            save_workspace(session, ids, T0)
        await asyncio.to_thread(mirror.feed)
        await asyncio.to_thread(mirror.feed)  # read again: nothing new, nothing twice
        await drain(db, handlers, clock)
    finally:
        await api.aclose()
    workspace = notion_sim.workspace
    lines = [
        workspace.blocks[b]["paragraph"]["rich_text"][0]["plain_text"]
        for b in workspace.children[ROOT]
        if workspace.blocks[b]["type"] == "paragraph"
    ]
    assert lines == [
        '🔔 2026-11-02T09:00:00.000Z [github:push] {"ref":"refs/heads/main",'
        '"hook":{"secret":"********"}}'
    ]
