"""The JSON API against the daemon's app in process (built from ``Settings``, its lifespan
running): auth, the error shape, behaviors, explanations, operator actions recorded with the
token's name, the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from ledger.config import Settings
from ledger.db.models import GateResultRow, IngestedSpan
from ledger.db.session import Database
from ledger.status import status_document
from ledger.transitions import lock_behavior
from tests.factories import VALID_BEHAVIOR, make_run, write_behavior
from tests.servers import app_client, free_port

TOKEN = "ops-token-" + "7" * 24


@pytest.fixture
async def api(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The daemon's app in process (its lifespan running), called with the ``ops`` token."""
    # A yearly schedule: the scheduler never runs it during the test.
    body = VALID_BEHAVIOR.format(key_env="API_TEST_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    monkeypatch.setenv("OPS_TOKEN", TOKEN)
    monkeypatch.delenv("API_TEST_KEY", raising=False)
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        api_tokens={"ops": "env:OPS_TOKEN"},
        # Nothing listens there: a run that fires fails fast as a provider error.
        openrouter_base_url=f"http://127.0.0.1:{free_port()}",
        watch=False,
    )
    async with app_client(settings, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


async def test_api_requires_a_token_and_answers_in_one_error_shape(api: httpx.AsyncClient) -> None:
    request = api.build_request("GET", "/api/behaviors")
    del request.headers["Authorization"]
    anonymous = await api.send(request)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    wrong = await api.get("/api/behaviors", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    missing = await api.get("/api/behaviors/nobody")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "code": "not_found",
            "message": "behavior 'nobody' is not registered",
            "details": [],
        }
    }
    invalid = await api.post("/api/behaviors/alpha/pin", json={})
    assert invalid.status_code == 422
    body = invalid.json()["error"]
    assert body["code"] == "invalid_request" and body["details"][0]["field"] == "reason"
    assert (await api.get("/openapi.json")).status_code == 200


async def test_a_request_without_its_json_body_is_told_so_with_the_body_expected(
    api: httpx.AsyncClient,
) -> None:
    none = await api.post("/api/behaviors/alpha/pause")
    assert none.status_code == 422
    error = none.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == (
        'this request needs a JSON body, e.g. {"reason": "..."}: '
        "send it with Content-Type: application/json"
    )
    assert error["details"] == [{"field": "body", "message": error["message"]}]

    form = await api.post(
        "/api/behaviors/alpha/pause",
        content=b"reason=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 422
    assert form.json()["error"]["message"].startswith("the body is not JSON: send it with ")

    broken = await api.post(
        "/api/approvals/run-x/reject",
        content=b'{"reason": ',
        headers={"Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    assert broken.json()["error"]["message"].startswith("the body is not valid JSON (")

    listed = await api.post("/api/behaviors/alpha/pause", json=["stop"])
    assert listed.json()["error"]["message"] == (
        'the body must be a JSON object, e.g. {"reason": "..."}'
    )


async def test_behaviors_explain_actions_and_ledger(api: httpx.AsyncClient) -> None:
    listing = (await api.get("/api/behaviors")).json()["behaviors"]
    assert [(b["name"], b["tier_label"]) for b in listing] == [("alpha", "A · proposal-only")]
    one = (await api.get("/api/behaviors/alpha")).json()
    assert one["tier"] == "A" and one["spend"]["budget_usd"] == 1
    assert isinstance(one["spend"]["usd"], float)

    pinned = await api.post("/api/behaviors/alpha/pin", json={"reason": "launch week"})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] is True
    again = await api.post("/api/behaviors/alpha/pin", json={"reason": "twice"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    promoted = await api.post("/api/behaviors/alpha/promote", json={"reason": "trusted", "to": "B"})
    assert promoted.json()["tier"] == "B"
    assert "override" in promoted.json()["message"]

    story = (await api.get("/api/behaviors/alpha/explain")).json()
    assert story["tier_label"] == "B · human-in-the-loop"
    assert [s["kind"] for s in story["story"]][:3] == ["registered", "pinned", "promoted"]
    entries = (await api.get("/api/ledger", params={"behavior": "alpha"})).json()["entries"]
    actions = [(e["kind"], e["actor"], e["reason"]) for e in entries if e["actor"] != "registry"]
    assert ("pinned", "api:ops", "launch week") in actions
    assert any(kind == "promoted" and actor == "api:ops" for kind, actor, _ in actions)
    assert all(len(e["hash"]) == 64 for e in entries)


async def test_a_run_shows_both_cost_figures_and_their_disagreement(
    api: httpx.AsyncClient, database_url: str
) -> None:
    """The runner said $0.10, broadcast $0.25 (tokens 1,200 + 300): the run's page shows both,
    the larger as counted, and the difference; the listing counts the disagreement."""
    now = datetime.now(UTC)
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            alpha = lock_behavior(session, name="alpha").id or 0
            make_run(
                session,
                alpha,
                "run-01DISAGREE",
                now,
                finished_at=now,
                status="succeeded",
                cost_usd=0.1,
                broadcast_cost_usd=0.25,
                prompt_tokens=1000,
                completion_tokens=250,
            )
            session.add(
                IngestedSpan(
                    trace_id="a" * 32,
                    span_id="b" * 16,
                    name="LLM Generation",
                    data={},
                    received_at=now,
                    processed_at=now,
                    behavior_id=alpha,
                    run_id="run-01DISAGREE",
                    attribution="trace.metadata.run_id",
                    cost_usd=0.25,
                    prompt_tokens=1200,
                    completion_tokens=300,
                )
            )
    finally:
        db.close()
    run = (await api.get("/api/runs/run-01DISAGREE")).json()
    assert (run["cost_usd"], run["broadcast_cost_usd"], run["counted_cost_usd"]) == (
        0.1,
        0.25,
        0.25,
    )
    assert run["cost_disagreement_usd"] == pytest.approx(0.15)
    assert (run["prompt_tokens"], run["completion_tokens"]) == (1000, 250)
    assert (run["broadcast_prompt_tokens"], run["broadcast_completion_tokens"]) == (1200, 300)
    (listed,) = (await api.get("/api/behaviors")).json()["behaviors"]
    assert listed["cost_disagreements_24h"] == 1
    one = (await api.get("/api/behaviors/alpha")).json()
    assert one["spend"]["broadcast"] == {
        "generations": 1,
        "cost_usd": 0.25,
        "prompt_tokens": 1200,
        "completion_tokens": 300,
    }
    (span,) = one["last_deliveries"]
    assert (span["cost_usd"], span["prompt_tokens"], span["completion_tokens"]) == (0.25, 1200, 300)


async def test_status_is_the_summary_ledger_status_prints_and_names_a_key_the_daemon_lacks(
    api: httpx.AsyncClient, database_url: str
) -> None:
    """alpha's key (env:API_TEST_KEY) is not in the daemon's environment: its state is not
    ``active``. The answer is the one document ``ledger status --json`` prints."""
    doc = await api.get("/api/status")
    assert doc.status_code == 200, doc.text
    body = doc.json()
    (alpha,) = body["behaviors"]
    assert alpha["state"] == "key missing: not scheduled"
    assert alpha["next_run_at"] is None
    assert "API_TEST_KEY" in alpha["key_problem"]
    assert (alpha["tier_label"], alpha["pending_approvals"]) == ("A · proposal-only", 0)
    assert body["outbox"] == {"queued": 0, "dead": 0}
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            expected = status_document(
                session,
                datetime.fromisoformat(body["generated_at"]),
                body["storage"]["prune_interval_seconds"],
            )
    finally:
        db.close()
    # The storage section may change under a retention prune running beside the request.
    assert {k: v for k, v in body.items() if k != "storage"} == {
        k: v for k, v in expected.items() if k != "storage"
    }


async def test_a_runs_gate_results_carry_their_reason(
    api: httpx.AsyncClient, database_url: str
) -> None:
    now = datetime.now(UTC)
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            alpha = lock_behavior(session, name="alpha").id or 0
            make_run(session, alpha, "run-01REASONS", now, status="succeeded")
            session.add(
                GateResultRow(
                    behavior_id=alpha,
                    run_id="run-01REASONS",
                    gate="output_check",
                    outcome="warn",
                    attributable=True,
                    evidence={
                        "check": "max_chars",
                        "reason": "output is 900 characters, over the limit of 500",
                    },
                    created_at=now,
                )
            )
    finally:
        db.close()
    (result,) = (await api.get("/api/runs/run-01REASONS")).json()["gate_results"]
    assert (result["gate"], result["outcome"]) == ("output_check", "warn")
    assert result["reason"] == "output is 900 characters, over the limit of 500"
