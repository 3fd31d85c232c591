"""Actions, the event log and the comment channel, delivered to the simulator through the
mirror's client — and a planted Notion token and a planted key in a model output that reach
no log and no Notion payload."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.db.session import Database
from ledger.logging import configure_logging
from ledger.notion.deliver import NotionCommentChannel, NotionDeliverer
from ledger.notion.eventlog import event_line
from ledger.notion.mirror import Mirror
from ledger.notion.schema import init_workspace
from ledger.notion.setup import open_api
from ledger.notion.store import save_workspace
from ledger.outbox.dispatcher import OutboxItem
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
