"""Every time in every JSON answer is written one way (docs/api.md, "Times"): ISO 8601 in UTC
ending in ``Z``, microseconds only when there are some — the typed models' pydantic format,
also used by the answers built as dictionaries (status, behaviors, explain, outbox, silences)
and by ``ledger status --json``."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock, json_time, json_times
from ledger.config import Settings
from ledger.db.models import GateResultRow, LedgerEntry, OutboxRow, PromotionProposal
from ledger.db.session import Database
from ledger.gates import Gate, GateResult, Outcome
from ledger.journal import append_entry, verify
from ledger.outbox.manage import silence
from ledger.runner.run import CallOutcome, SlotClaim, begin_run, claim_slots, finish_run
from ledger.tokens import create_token
from ledger.transitions import PolicyContext, lock_behavior, record_results
from ledger.web.app import create_app
from tests.board_rows import behavior_row, span_row
from tests.daemon import ledger
from tests.factories import VALID_BEHAVIOR, write_behavior

# A string that is a time, in any ISO 8601 spelling (with or without seconds, fraction, offset).
LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?$")
THE_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
# Stored blobs shown as they were recorded (evidence, payloads, a ledger entry's data) are not
# the API's own fields.
BLOBS = frozenset({"data", "evidence", "payload", "definition", "output", "request"})


def times(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, text) of every time-like string in a JSON value, outside stored blobs."""
    if isinstance(value, dict):
        return [
            found
            for key, item in value.items()
            if key not in BLOBS
            for found in times(item, f"{path}.{key}")
        ]
    if isinstance(value, list):
        return [found for item in value for found in times(item, f"{path}[]")]
    if isinstance(value, str) and LOOKS_LIKE_TIME.match(value):
        return [(path, value)]
    return []


def test_json_times_writes_datetimes_and_old_plus_00_00_times_in_the_z_form() -> None:
    at = datetime(2026, 12, 5, 22, 18, 37, 250000, tzinfo=UTC)
    blob = {
        "at": at,
        "old_at": "2026-12-05T22:18:37+00:00",
        "window_start": ["2026-12-05T22:18:37+00:00"],
        "nested": [{"first_at": "2026-12-05T22:18:37.250000+00:00"}],
        "output": "2026-12-05T22:18:37+00:00",  # a model's answer: text, its digest stays true
        "other_zone": "2026-12-05T22:18:37+01:00",  # not UTC: left as it is
        "date": "2026-12-05",
        "text": "at 2026-12-05T22:18:37+00:00 it failed",  # a sentence, not a time
        "n": 3,
    }
    assert json_times("2026-12-05T22:18:37+00:00") == "2026-12-05T22:18:37Z"  # said to be a time
    assert json_times(blob) == {
        "at": "2026-12-05T22:18:37.250000Z",
        "old_at": "2026-12-05T22:18:37Z",
        "window_start": ["2026-12-05T22:18:37Z"],
        "nested": [{"first_at": "2026-12-05T22:18:37.250000Z"}],
        "output": "2026-12-05T22:18:37+00:00",
        "other_zone": "2026-12-05T22:18:37+01:00",
        "date": "2026-12-05",
        "text": "at 2026-12-05T22:18:37+00:00 it failed",
        "n": 3,
    }


def test_stored_evidence_and_ledger_data_write_times_in_the_z_form(db: Database) -> None:
    """Gate evidence and a ledger entry's data are stored with "Z" times, whatever the caller
    wrote; the hash chain still verifies."""
    now = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)
    with db.transaction() as session:
        row = behavior_row(session, "times", now=now)
        (stored,) = record_results(
            session,
            row,
            [GateResult(Gate.SPEND_CAP, Outcome.FAIL, True, {"window_start": now.isoformat()})],
            now=now,
            source="runner",
        )
        append_entry(session, kind="note", actor="t", reason="r", now=now, data={"at": now})
    with db.transaction() as session:
        evidence = session.get(GateResultRow, stored.result_id).evidence  # type: ignore[union-attr]
        entry = session.exec(select(LedgerEntry)).one()
        assert evidence["window_start"] == "2026-12-05T22:00:00Z"
        assert entry.data == {"at": "2026-12-05T22:00:00Z"}
        assert verify(session).ok


def test_json_time_is_utc_with_a_z_and_microseconds_only_when_there_are_some() -> None:
    at = datetime(2026, 12, 5, 22, 18, 37, tzinfo=UTC)
    assert json_time(at) == "2026-12-05T22:18:37Z"
    assert json_time(at.replace(microsecond=120)) == "2026-12-05T22:18:37.000120Z"
    assert json_time(at.replace(tzinfo=None)) == "2026-12-05T22:18:37Z"  # stored naive: UTC
    paris = at.astimezone(datetime.fromisoformat("2026-01-01T00:00:00+01:00").tzinfo)
    assert json_time(paris) == "2026-12-05T22:18:37Z"


def seed(tmp_path: Path, database_url: str, now: datetime) -> str:
    """Behaviors ``alpha`` (B, a run awaiting approval, a pending proposal) and ``beta``; a
    named token, a silence, an outbox row, an unattributed span. The run's id."""
    folder = tmp_path / "behaviors"
    for name in ("alpha", "beta"):
        write_behavior(folder, name, VALID_BEHAVIOR.format(key_env=f"T_{name.upper()}", name=name))
    ctx = PolicyContext()
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as session:
            reconcile_directory(session, folder, now)
            alpha = lock_behavior(session, name="alpha")
            alpha.tier = "B"
            (run,) = claim_slots(session, [SlotClaim(alpha.id or 0, now, "B")], now)
            plan = begin_run(session, run.id, now=now, ctx=ctx)
            assert plan is not None
        with db.transaction() as session:
            finish_run(session, plan, CallOutcome(output="draft", model="m"), now=now, ctx=ctx)
            beta = lock_behavior(session, name="beta")
            session.add(
                PromotionProposal(
                    behavior_id=beta.id or 0,
                    from_tier="A",
                    to_tier="B",
                    reason="10 clean runs",
                    evidence={},
                    created_at=now,
                )
            )
            create_token(session, "reader", "viewer", actor="test", now=now)
            silence(
                session,
                behavior="beta",
                duration=timedelta(hours=1),
                reason="maintenance",
                actor="test",
                now=now,
            )
            session.add(OutboxRow(kind="alert", payload={}, next_attempt_at=now, created_at=now))
            span_row(session, 1, at=now)
        return run.id
    finally:
        db.close()


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    for name in ("ALPHA", "BETA"):  # resolvable keys: a run is not an auth_error that pauses
        monkeypatch.setenv(f"T_{name}", f"sk-or-v1-times{name.lower()}" + "0" * 40)
    run_id = seed(tmp_path, database_url, datetime.now(UTC).replace(microsecond=250_000))
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        auth="off",
        watch=False,
    )
    app = create_app(settings, clock=SystemClock())
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ledger.test"
        ) as client,
    ):
        yield client, run_id


async def test_every_answer_writes_its_times_in_one_format(
    api: tuple[httpx.AsyncClient, str], tmp_path: Path, database_url: str
) -> None:
    client, run_id = api
    paths = (
        "/api/status",
        "/api/behaviors",
        "/api/board",
        "/api/behaviors/alpha",
        "/api/behaviors/alpha/runs",
        "/api/behaviors/alpha/explain",
        "/api/proposals",
        f"/api/runs/{run_id}",
        "/api/approvals",
        "/api/ledger",
        "/api/broadcast/unattributed",
        "/api/tokens",
        "/api/outbox",
        "/api/silences",
        "/api/notion",
    )
    found: dict[str, list[tuple[str, str]]] = {}
    for path in paths:
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        found[path] = times(answer.json())
    ran = await client.post("/api/behaviors/beta/run", params={"wait": 30})
    assert ran.status_code == 200, ran.text
    found["POST /api/behaviors/beta/run"] = times(ran.json())
    # Every answer has times to check (the seed gave each something dated) ...
    assert [path for path, seen in found.items() if not seen] == []
    # ... and each is in the one format.
    wrong = [(path, *t) for path, seen in found.items() for t in seen if not THE_FORMAT.match(t[1])]
    assert wrong == []

    status = ledger("status", "--json", cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    assert status.returncode == 0, status.stderr
    cli_times = times(json.loads(status.stdout))
    assert cli_times and all(THE_FORMAT.match(text) for _, text in cli_times), cli_times
