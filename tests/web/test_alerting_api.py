"""The outbox and silences over HTTP (a real ``ledger serve``) and from the CLI: list dead
letters, retry, discard with a reason (recorded with the actor), silence a behavior, list and
end silences; bad input answers in the one error shape."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from ledger.db.models import LedgerEntry, OutboxRow
from ledger.db.session import Database
from ledger.outbox.enqueue import enqueue
from tests.conftest import T0, VALID_BEHAVIOR, write_behavior
from tests.daemon import Daemon, ledger
from tests.servers import operator_api

TOKEN = "ops-token-" + "5" * 24


@pytest.fixture
def api(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> Iterator[httpx.Client]:
    body = VALID_BEHAVIOR.format(key_env="ALERTS_API_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    with operator_api(start_daemon, database_url, TOKEN) as client:
        yield client


def dead_row(database_url: str, kind: str = "action.webhook") -> int:
    """A dead letter, as the dispatcher leaves one (the daemon has no handler we could break)."""
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            row = enqueue(
                session,
                kind=kind,
                payload={"behavior": "alpha", "run_id": "r-1", "output": "the output"},
                now=T0,
                dedup_key=f"test:{kind}:{T0.isoformat()}",
            )
            assert row is not None and row.id is not None
            row.status, row.attempts, row.last_error = "dead", 10, "HTTP 404 from the target"
            session.add(row)
            return row.id
    finally:
        db.close()


def row_and_last_entry(database_url: str, row_id: int) -> tuple[OutboxRow, LedgerEntry]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            row = session.get(OutboxRow, row_id)
            entry = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.id).desc())).first()
            assert row is not None and entry is not None
            session.expunge_all()
            return row, entry
    finally:
        db.close()


def test_dead_letters_are_listed_retried_and_discarded_with_who_and_why(
    api: httpx.Client, database_url: str
) -> None:
    first, second = dead_row(database_url), dead_row(database_url, "action.log")
    dead = api.get("/api/outbox", params={"status": "dead"})
    assert dead.status_code == 200
    rows = dead.json()["rows"]
    assert [r["id"] for r in rows] == [second, first]
    assert rows[1]["summary"] == "webhook action for run r-1"
    assert rows[1]["last_error"] == "HTTP 404 from the target"
    assert "the output" not in dead.text  # payloads are never shown

    discarded = api.post(f"/api/outbox/{first}/discard", json={"reason": "target retired"})
    assert discarded.status_code == 200, discarded.text
    assert discarded.json()["message"] == (
        f"outbox row {first} (action.webhook) discarded by api:ops: target retired"
    )
    row, entry = row_and_last_entry(database_url, first)
    assert (row.status, row.last_error) == ("discarded", "discarded by api:ops: target retired")
    assert (entry.kind, entry.actor) == ("outbox_discarded", "api:ops")
    assert entry.reason == f"outbox row {first} (action.webhook, dead) discarded: target retired"

    retried = api.post(f"/api/outbox/{second}/retry")
    assert retried.status_code == 200
    row, entry = row_and_last_entry(database_url, second)
    assert (entry.kind, entry.actor, entry.data["outbox_id"]) == (
        "outbox_retried",
        "api:ops",
        second,
    )
    assert row.attempts <= 1  # reset (the daemon may have tried it once already)
    # The daemon may deliver the retried row at any moment: a pending row may be discarded,
    # one that has moved on (delivered, or dead again) may not.
    again = api.post(f"/api/outbox/{second}/discard", json={"reason": "x"})
    row, _ = row_and_last_entry(database_url, second)
    if again.status_code == 200:
        assert row.status == "discarded"
    else:
        assert again.status_code == 409 and row.status not in ("pending", "discarded")
        assert "only dead or pending rows can be discarded" in again.text
    assert api.post(f"/api/outbox/{first}/discard", json={"reason": "x"}).status_code == 409
    missing = api.post("/api/outbox/999999/retry")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("outbox row 999999 does not exist")
    no_reason = api.post(f"/api/outbox/{first}/discard", json={})
    assert no_reason.status_code == 422
    assert no_reason.json()["error"]["details"][0]["field"] == "reason"
    bad_status = api.get("/api/outbox", params={"status": "lost"})
    assert bad_status.status_code == 422
    assert httpx.get(f"{api.base_url}/api/outbox").status_code == 401


def test_a_silence_is_started_listed_and_ended_over_the_api(
    api: httpx.Client, database_url: str
) -> None:
    created = api.post(
        "/api/silences", json={"behavior": "alpha", "for": "2h", "reason": "rotating the key"}
    )
    assert created.status_code == 201, created.text
    silence = created.json()["silence"]
    assert (silence["behavior"], silence["active"], silence["created_by"]) == (
        "alpha",
        True,
        "api:ops",
    )
    listed = api.get("/api/silences").json()["silences"]
    assert [s["id"] for s in listed] == [silence["id"]]
    paused = api.post("/api/behaviors/alpha/pause", json={"reason": "maintenance"})
    assert paused.status_code == 200  # the tier machinery carries on; the alert is muted
    listed = api.get("/api/silences").json()["silences"]
    assert listed[0]["muted"] == {"pause": 1}
    ended = api.post(f"/api/silences/{silence['id']}/end")
    assert ended.status_code == 200
    assert ended.json()["message"] == (
        f"silence {silence['id']} ended; muted while it lasted: 1 pause alert"
    )
    assert api.get("/api/silences").json()["silences"] == []
    history = api.get("/api/silences", params={"ended": "true"}).json()["silences"]
    assert history[0]["ended_by"] == "api:ops"
    assert api.post(f"/api/silences/{silence['id']}/end").status_code == 409
    entries = api.get("/api/ledger", params={"behavior": "alpha"}).json()["entries"]
    assert [e["kind"] for e in entries][-3:] == ["silenced", "paused", "silence_ended"]

    both = api.post(
        "/api/silences", json={"behavior": "alpha", "all": True, "for": "1h", "reason": "x"}
    )
    assert both.status_code == 400
    assert both.json()["error"]["message"] == (
        'name one behavior ("behavior": NAME) or set "all": true, not both'
    )
    bad = api.post("/api/silences", json={"all": True, "for": "2 weeks", "reason": "x"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("invalid duration '2 weeks'")
    unknown = api.post("/api/silences", json={"behavior": "nobody", "for": "1h", "reason": "x"})
    assert unknown.status_code == 404


def test_the_cli_lists_retries_and_discards_and_silences(tmp_path: Path, database_url: str) -> None:
    write_behavior(tmp_path / "behaviors", "alpha")
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_BEHAVIORS_DIR": str(tmp_path / "behaviors")}
    db = Database.open(database_url, migrate=True)
    db.close()
    row_id = dead_row(database_url)
    listed = ledger("outbox", "list", "--status", "dead", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    assert f"#{row_id}  dead" in listed.stdout
    assert "last error: HTTP 404 from the target" in listed.stdout
    assert "`ledger outbox retry ID`" in listed.stdout
    no_reason = ledger("outbox", "discard", str(row_id), cwd=tmp_path, env=env)
    assert no_reason.returncode != 0 and "--reason" in no_reason.stderr
    retried = ledger("outbox", "retry", str(row_id), cwd=tmp_path, env=env)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(f"outbox row {row_id} (action.webhook) queued again")
    discarded = ledger(
        "outbox", "discard", str(row_id), "--reason", "not needed", cwd=tmp_path, env=env
    )
    assert discarded.returncode == 0, discarded.stderr
    row, entry = row_and_last_entry(database_url, row_id)
    assert row.status == "discarded"
    assert entry.kind == "outbox_discarded" and entry.actor.startswith("cli:")
    bogus = ledger("outbox", "list", "--status", "lost", cwd=tmp_path, env=env)
    assert bogus.returncode == 2
    assert bogus.stderr.strip() == (
        "error: unknown outbox status 'lost': use one of pending, in_flight, delivered, dead, "
        "discarded"
    )
    everyone = ledger(
        "silence", "--all", "--for", "30m", "--reason", "upgrade", cwd=tmp_path, env=env
    )
    assert everyone.returncode == 0, everyone.stderr
    assert everyone.stdout.startswith("silence 1: alerts of all behaviors muted until ")
    listed = ledger("silence", "list", cwd=tmp_path, env=env)
    assert "#1  all behaviors  active until" in listed.stdout
    assert "by cli:" in listed.stdout and ": upgrade  (nothing muted)" in listed.stdout
    ended = ledger("silence", "end", "1", cwd=tmp_path, env=env)
    assert ended.stdout.strip() == "silence 1 ended; muted while it lasted: nothing"
    neither = ledger("silence", "--for", "1h", "--reason", "x", cwd=tmp_path, env=env)
    assert neither.returncode == 2
    assert neither.stderr.strip() == "error: name one behavior or give --all (not both)"
