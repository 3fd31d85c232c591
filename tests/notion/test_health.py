"""Is the Notion mirror healthy? ``judge``'s rules one by one, then ``GET /api/notion`` over
HTTP against the daemon's app (on a loopback port, the Notion simulator through the real
client) walking through every state: off, not set up, ok, behind (Notion unreachable for
longer than the poll allows), failing (a revoked token: writes refused for good), and ok again
once the token is fixed and the dead letters retried."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from ledger.clock import FakeClock
from ledger.config import Settings
from ledger.db.session import Database
from ledger.notion.health import MirrorFacts, judge
from ledger.transitions import PolicyContext, operator_action
from ledger.web.app import create_app
from ledger.web.status_models import NotionStatus
from tests.conftest import T0, write_behavior
from tests.daemon import wait_until
from tests.notion.conftest import TOKEN, TOKEN_ENV, NotionSim, set_up_workspace
from tests.servers import app_client, serve_app

API_TOKEN = "notion-health-" + "7" * 24
FRESH = MirrorFacts(
    token_set=True,
    configured=True,
    set_up_at=T0,
    queued=0,
    oldest_queued_at=None,
    dead=0,
    newest_dead_error=None,
    last_sync_at=None,
    last_poll_at=T0,
)


def test_no_token_is_off_and_says_what_waits() -> None:
    verdict = judge(replace(FRESH, token_set=False, configured=False, queued=3), T0, 15)
    assert verdict.state == "off"
    assert "LEDGER_NOTION_TOKEN" in verdict.advice and "3 Notion writes wait" in verdict.advice


def test_a_token_without_init_is_not_set_up() -> None:
    verdict = judge(replace(FRESH, configured=False, set_up_at=None, last_poll_at=None), T0, 15)
    assert verdict.state == "not_set_up"
    assert "`ledger notion init --parent PAGE_ID`" in verdict.advice


def test_a_fresh_mirror_is_ok() -> None:
    assert judge(FRESH, T0 + timedelta(minutes=9), 15).state == "ok"
    assert judge(replace(FRESH, queued=4, oldest_queued_at=T0), T0 + timedelta(minutes=9), 15) == (
        judge(FRESH, T0, 15)
    )


def test_dead_letters_are_failing_with_notions_message_and_the_commands() -> None:
    facts = replace(FRESH, dead=2, newest_dead_error="401 unauthorized: API token is invalid.")
    verdict = judge(facts, T0, 15)
    assert verdict.state == "failing"
    assert "2 Notion writes failed for good (newest: 401 unauthorized" in verdict.advice
    assert "`ledger outbox retry ID`" in verdict.advice and "\n" not in verdict.advice


def test_failing_wins_over_behind() -> None:
    facts = replace(FRESH, dead=1, queued=5, oldest_queued_at=T0, newest_dead_error="x")
    assert judge(facts, T0 + timedelta(days=3), 15).state == "failing"


def test_work_waiting_over_ten_minutes_is_behind() -> None:
    facts = replace(FRESH, queued=7, oldest_queued_at=T0)
    now = T0 + timedelta(minutes=10, seconds=1)
    verdict = judge(replace(facts, last_poll_at=now), now, 15)
    assert verdict.state == "behind"
    assert verdict.advice.startswith("7 Notion writes waiting, the oldest for 10 min")


def test_notion_not_read_for_ten_minutes_or_four_polls_is_behind() -> None:
    assert judge(FRESH, T0 + timedelta(minutes=10), 15).state == "ok"
    late = judge(FRESH, T0 + timedelta(minutes=11), 15)
    assert late.state == "behind" and "Notion not read for 11 min" in late.advice
    slow_poll = 600.0  # reading every 10 minutes: late after four of them
    assert judge(FRESH, T0 + timedelta(minutes=39), slow_poll).state == "ok"
    assert judge(FRESH, T0 + timedelta(minutes=41), slow_poll).state == "behind"
    never_polled = replace(FRESH, last_poll_at=None)  # counted from `ledger notion init`
    assert judge(never_polled, T0 + timedelta(minutes=11), 15).state == "behind"


def test_no_full_sync_for_a_day_is_behind_and_says_to_sync() -> None:
    now = T0 + timedelta(hours=25)
    verdict = judge(replace(FRESH, last_poll_at=now), now, 15)
    assert verdict.state == "behind" and "`ledger notion sync`" in verdict.advice
    synced = replace(FRESH, last_poll_at=now, last_sync_at=now - timedelta(hours=6))
    assert judge(synced, now, 15).state == "ok"


# -- over HTTP --------------------------------------------------------------------------


def _settings(database_url: str, tmp_path: Path, sim: NotionSim, notion: bool) -> Settings:
    extra: dict[str, Any] = {}
    if notion:
        extra = {
            "notion_token": SecretStr(f"env:{TOKEN_ENV}"),
            "notion_base_url": sim.base_url,
            "notion_poll_seconds": 1.0,
        }
    return Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        watch=False,
        api_tokens={"ops": SecretStr("env:NOTION_HEALTH_API_TOKEN")},
        **extra,
    )


@contextlib.contextmanager
def _daemon(settings: Settings, clock: FakeClock) -> Iterator[httpx.Client]:
    with (
        serve_app(create_app(settings, clock=clock)) as base_url,
        httpx.Client(
            base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as client,
    ):
        yield client


def _notion(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/api/notion")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    NotionStatus.model_validate(doc)
    return doc


def _pin(database_url: str, name: str, now: Any) -> None:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            operator_action(
                session,
                name,
                "pin",
                reason="hold while we look",
                actor="cli:ann",
                now=now,
                ctx=PolicyContext(mirror=True),
            )
    finally:
        db.close()


async def test_api_notion_walks_through_every_state(
    database_url: str, tmp_path: Path, notion_sim: NotionSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv("NOTION_HEALTH_API_TOKEN", API_TOKEN)
    write_behavior(tmp_path / "behaviors", "alpha")
    clock = FakeClock(T0)
    off = _settings(database_url, tmp_path, notion_sim, notion=False)
    on = _settings(database_url, tmp_path, notion_sim, notion=True)

    with _daemon(off, clock) as client:
        assert client.get("/api/notion", headers={"Authorization": ""}).status_code == 401
        doc = _notion(client)
        assert (doc["state"], doc["token"], doc["configured"]) == ("off", "not set", False)
        assert "LEDGER_NOTION_TOKEN" in doc["advice"]
        assert doc["checked_at"] == "2026-11-02T09:00:00Z"

    with _daemon(on, clock) as client:
        doc = _notion(client)
        assert (doc["state"], doc["token"], doc["configured"]) == ("not_set_up", "set", False)
        assert "ledger notion init --parent PAGE_ID" in doc["advice"]

    db = Database.open(database_url)
    try:
        await set_up_workspace(db, notion_sim, clock.now())
    finally:
        db.close()
    with _daemon(on, clock) as client:
        # The feeder mirrors alpha, the dispatcher writes it, the poller reads Approvals.
        wait_until(
            lambda: (
                (d := _notion(client))["state"] == "ok"
                and d["queued"] == 0
                and d["ledger_entries_fed"] >= 1
                and d["last_poll_at"] == "2026-11-02T09:00:00Z"
            ),
            timeout=30,
            what="the mirror in sync",
        )
        doc = _notion(client)
        assert set(doc["databases"]) == {"behaviors", "ledger", "approvals"}
        assert doc["dead"] == 0 and doc["dead_letters"] == [] and doc["oldest_queued_at"] is None

        # Notion unreachable: the daemon's reads fail; 15 minutes on, the mirror is behind.
        seen = len(notion_sim.requests())
        notion_sim.fault(kind="outage", seconds=600)
        wait_until(
            lambda: any(r.get("status") == 503 for r in notion_sim.requests()[seen:]),
            timeout=30,
            what="a read refused by the outage",
        )
        clock.advance(timedelta(minutes=15))
        doc = _notion(client)
        assert doc["state"] == "behind", doc
        assert doc["advice"].startswith("Notion not read for 15 min")
        assert doc["last_poll_at"] == "2026-11-02T09:00:00Z"
    notion_sim.workspace.faults.clear()

    # The token is revoked: every write is refused for good (a dead letter) and says why.
    monkeypatch.setenv(TOKEN_ENV, "secret_revoked_" + "0" * 30)
    with _daemon(on, clock) as client:
        _pin(database_url, "alpha", clock.now())
        # Every write the pin queued is tried (and refused) before we count the dead letters.
        wait_until(
            lambda: (d := _notion(client))["state"] == "failing" and d["queued"] == 0,
            timeout=30,
            what="the pin's writes refused for good",
        )
        doc = _notion(client)
        assert doc["dead"] >= 1 and doc["dead"] == len(doc["dead_letters"])
        assert "401" in (doc["dead_letters"][0]["error"] or "")
        assert "401 unauthorized" in doc["advice"] and "ledger outbox retry ID" in doc["advice"]
        dead_ids = [d["id"] for d in doc["dead_letters"]]

    # Fixed, then retried as the advice says: in sync again.
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with _daemon(on, clock) as client:
        dead = client.get("/api/outbox", params={"status": "dead"}).json()["rows"]
        assert {r["id"] for r in dead} >= set(dead_ids)
        for row in dead:
            assert client.post(f"/api/outbox/{row['id']}/retry").status_code == 200
        wait_until(
            lambda: (d := _notion(client))["state"] == "ok" and d["queued"] == 0,
            timeout=30,
            what="the mirror in sync again",
        )
        assert _notion(client)["last_poll_at"] == "2026-11-02T09:15:00Z"


async def test_the_board_shows_no_notion_indicator_when_notion_is_off(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=database_url, behaviors_dir=tmp_path / "behaviors", watch=False, auth="off"
    )
    async with app_client(settings, clock=FakeClock(T0)) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert "Tier board" in page.text and "notion-mirror" not in page.text


def test_the_health_read_counts_notion_work_from_the_open_rows_index(
    db: Database, tmp_path: Path
) -> None:
    """Delivered rows (the bulk of the outbox) are not read: the count of Notion work waiting
    or dead comes from the partial index ``ix_outbox_open_kind``, with the right numbers."""
    import sqlalchemy as sa

    from ledger.db.models import OutboxRow
    from ledger.notion.health import mirror_status
    from ledger.outbox.enqueue import KIND_MIRROR

    with db.transaction() as session:
        for i, status in enumerate(["delivered"] * 50 + ["pending", "in_flight", "dead"]):
            session.add(
                OutboxRow(
                    kind=KIND_MIRROR,
                    dedup_key=f"health-{i}",
                    payload={},
                    status=status,
                    attempts=1,
                    next_attempt_at=T0,
                    created_at=T0 + timedelta(seconds=i),
                    last_error="401 unauthorized" if status == "dead" else None,
                )
            )
    settings = Settings(behaviors_dir=tmp_path, notion_token=SecretStr("secret_x"))
    with db.transaction() as session:
        report = mirror_status(session, settings, T0 + timedelta(minutes=1))
    assert (report.queued, report.dead) == (2, 1)
    assert report.oldest_queued_at == T0 + timedelta(seconds=50)
    sql = (
        "SELECT status, count(*), min(created_at) FROM outbox WHERE kind IN ('mirror')"
        " AND status IN ('pending', 'in_flight', 'dead') GROUP BY status"
    )
    with db.engine.connect() as conn:
        if db.engine.dialect.name == "sqlite":
            plan = " ".join(
                str(row[-1]) for row in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}"))
            )
        else:
            conn.execute(sa.text("SET enable_seqscan = off"))  # a tiny table: ask for the index
            plan = " ".join(str(row[0]) for row in conn.execute(sa.text(f"EXPLAIN {sql}")))
    assert "ix_outbox_open_kind" in plan, plan


def test_the_board_feed_changes_when_notion_work_drains(db: Database, tmp_path: Path) -> None:
    """The board's change feed fingerprint covers the mirror's queue, so an indicator saying
    "1 write queued" turns into "in sync" once the write is delivered (the state is "ok" both
    times, and nothing else in the ledger changed)."""
    from types import SimpleNamespace

    import sqlalchemy as sa

    from ledger.db.models import OutboxRow
    from ledger.outbox.enqueue import KIND_MIRROR
    from ledger.web.dashboard.feed import database_fingerprint

    settings = Settings(behaviors_dir=tmp_path, notion_token=SecretStr("secret_x"))
    state = SimpleNamespace(db=db, settings=settings, clock=FakeClock(T0))
    with db.transaction() as session:
        session.add(
            OutboxRow(
                kind=KIND_MIRROR,
                dedup_key="feed-1",
                payload={},
                status="pending",
                attempts=0,
                next_attempt_at=T0,
                created_at=T0,
            )
        )
    read = database_fingerprint(state, notion_seconds=0.0)
    queued = read()
    assert read() == queued  # nothing changed: the same fingerprint
    with db.transaction() as session:
        session.execute(sa.update(OutboxRow).values(status="delivered"))
    assert read() != queued
