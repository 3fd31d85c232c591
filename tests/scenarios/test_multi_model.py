"""Multi-model behaviors end to end against the OpenRouter simulator on loopback, through the
real client: a broad canvas with failing models, the skip list, resuming from recorded calls,
a roundtable at each tier, and a roundtable stopped by its budget before round 2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.models import BehaviorRow, BudgetWindow, OutboxRow
from ledger.db.session import Database
from ledger.runner.catalog import ModelCatalog
from ledger.runner.multi import MultiModelRunner, adopt_expired_runs, resume_plan
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.run import RunPlan, SlotClaim, begin_run, claim_slots
from ledger.runner.scheduler import RunnerService
from ledger.runs import run_calls, run_json
from ledger.sim.openrouter import Fault, ModelInfo, Preset, SimConfig, SimKey, run_in_background
from ledger.transitions import PolicyContext, lock_behavior
from tests.conftest import T0
from tests.servers import ledger

KEY = "sk-or-v1-multimodel" + "ab" * 20
CANVAS_MODELS = [f"vendor{i % 7}/model-{i:02d}" for i in range(50)]
# Ten models fail, each in its own way (model → fault, expected classification reason).
FAILING: dict[str, tuple[dict[str, Any] | None, str]] = {
    CANVAS_MODELS[3]: ({"kind": "model_not_found"}, "unknown_model"),
    CANVAS_MODELS[8]: ({"kind": "model_not_found"}, "unknown_model"),
    CANVAS_MODELS[13]: ({"kind": "model_forbidden"}, "forbidden"),
    CANVAS_MODELS[17]: ({"kind": "model_forbidden"}, "forbidden"),
    CANVAS_MODELS[21]: ({"kind": "rate_limit", "retry_after": 0}, "rate_limited"),
    CANVAS_MODELS[26]: ({"kind": "server_error", "status": 502}, "upstream_error"),
    CANVAS_MODELS[30]: ({"kind": "server_error", "status": 503}, "upstream_error"),
    CANVAS_MODELS[34]: ({"kind": "delay", "seconds": 3.0}, "deadline"),
    CANVAS_MODELS[41]: ({"kind": "key_limit_never"}, "unknown_model"),  # not listed at all
    CANVAS_MODELS[45]: ({"kind": "error_in_200"}, "upstream_error"),
}
SLOW = CANVAS_MODELS[34]


def canvas_sim() -> SimConfig:
    unlisted = CANVAS_MODELS[41]
    faults = [
        Fault.from_mapping({**spec, "for_model": model})
        for model, (spec, _reason) in FAILING.items()
        if spec is not None and model != unlisted
    ]
    models = {
        m: ModelInfo(
            input_price=0.000001 * (1 + i % 5),
            output_price=0.000002 * (1 + (i * 7) % 11),
            reasoning=i % 4 == 0,
        )
        for i, m in enumerate(CANVAS_MODELS)
        if m != unlisted
    }
    return SimConfig(keys=[SimKey(key=KEY, name="ledger/canvas")], faults=faults, models=models)


def canvas_behavior(models: list[str], extra: str = "") -> str:
    listed = "\n".join(f"    - {m}" for m in models)
    return f"""schedule: 1d
kind: broad_canvas
api_key: env:MULTI_TEST_KEY
key_name: ledger/canvas
prompt: "Name one risk of {{{{topic}}}}"
inputs:
  topic: queues
max_output_tokens: 60
canvas:
  max_concurrency: 12
  timeout_overrides:
    {SLOW}: 1.0
  models:
{listed}
{extra}"""


def register(db: Database, tmp_path: Path, name: str, body: str, tier: str = "A") -> None:
    folder = tmp_path / "behaviors"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(body)
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
        lock_behavior(session, name=name).tier = tier


def new_client(sim_url: str) -> OpenRouterClient:
    return OpenRouterClient(
        base_url=sim_url, base_backoff=0.01, max_backoff=0.02, rng=random.Random(1)
    )


async def run_now(
    db: Database,
    sim_url: str,
    name: str,
    catalog: ModelCatalog | None = None,
    *,
    mirror: bool = False,
) -> str:
    client = new_client(sim_url)
    try:
        multi = MultiModelRunner(
            db, SystemClock(), client, catalog, base_url=sim_url, mirror=mirror
        )
        service = RunnerService(db, SystemClock(), multi.run, PolicyContext())
        run_id = await service.run_now(name)
    finally:
        await client.aclose()
    assert run_id is not None
    return run_id


async def chat_calls(sim_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        calls = (await http.get(f"{sim_url}/_sim/calls")).json()["calls"]
    return [c for c in calls if c["path"] == "/api/v1/chat/completions"]


def snapshot(db: Database, run_id: str) -> dict[str, Any]:
    with db.transaction() as session:
        doc = run_json(session, run_id)
        row = session.exec(select(BehaviorRow)).one()
        doc["behavior_tier"] = row.tier
        doc["outbox"] = [o.kind for o in session.exec(select(OutboxRow))]
        return doc


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTI_TEST_KEY", KEY)


@pytest.fixture
async def canvas_url() -> AsyncIterator[str]:
    async with run_in_background(canvas_sim()) as url:
        yield url


# -- broad canvas ----------------------------------------------------------------------------


async def test_a_canvas_of_50_models_records_40_answers_and_10_classified_provider_failures(
    db: Database, tmp_path: Path, canvas_url: str
) -> None:
    register(db, tmp_path, "canvas", canvas_behavior(CANVAS_MODELS))
    run_id = await run_now(db, canvas_url, "canvas")
    run = snapshot(db, run_id)

    calls = {c["model"]: c for c in run["calls"]}
    assert len(calls) == 50
    answered = [m for m, c in calls.items() if c["status"] == "answered"]
    failed = {m: c["reason"] for m, c in calls.items() if c["status"] == "failed"}
    assert len(answered) == 40
    assert failed == {m: reason for m, (_spec, reason) in FAILING.items()}
    assert all(calls[m]["gate"] == "provider_error" for m in failed)
    for model in answered:
        call = calls[model]
        assert call["model_answered"] == model and call["output"]
        assert call["cost_usd"] > 0 and call["latency_seconds"] is not None
        assert call["prompt_tokens"] and call["completion_tokens"] and call["attempts"] == 1

    # Per-model failures are the provider's: the run succeeded, nothing counts against it.
    assert run["status"] == "succeeded" and run["disposition"] == "proposal"
    assert run["behavior_tier"] == "A"
    bad = [r for r in run["gate_results"] if r["outcome"] != "pass"]
    assert [(r["gate"], r["outcome"], r["attributable"]) for r in bad] == [
        ("provider_error", "fail", False)
    ]
    assert "10 of 50 canvas models failed" in bad[0]["reason"]

    summary = run["summary"]
    assert summary["answered"] == 40 and summary["failed"] == 10
    assert summary["failed_by_reason"] == dict(Counter(r for _s, r in FAILING.values()))
    assert summary["total_cost_usd"] == pytest.approx(run["cost_usd"])
    assert summary["total_cost_usd"] == pytest.approx(sum(summary["cost_by_model"].values()))
    heavy = summary["most_expensive"]
    assert len(heavy) == 5 and heavy[0]["cost_usd"] == max(summary["cost_by_model"].values())
    assert 1 < summary["peak_concurrency"] <= 12
    output = json.loads(run["output"])
    assert sorted(a["model"] for a in output["answers"]) == sorted(answered)

    # Every call: the behavior's own key and the run's trace (behavior, run, round, model).
    sent = await chat_calls(canvas_url)
    assert {c["headers"]["authorization"] for c in sent} == {f"Bearer {KEY}"}
    for c in sent:
        trace = c["body"]["trace"]
        assert trace["behavior"] == "canvas" and trace["run_id"] == run_id
        assert trace["round"] == 0 and trace["model"] == c["body"]["model"]
        assert c["body"]["session_id"] == run_id and c["body"]["user"] == "canvas"
    asked = Counter(c["body"]["model"] for c in sent)
    assert all(asked[m] == 1 for m in answered)  # an answer is asked for once
    # The slow model was given its own (overridden) timeout, the others their class's.
    assert calls[SLOW]["timeout_seconds"] == 1.0
    assert calls[CANVAS_MODELS[4]]["timeout_seconds"] == 60.0
    assert calls[CANVAS_MODELS[0]]["timeout_seconds"] == 60.0  # not in the catalog here


async def test_timeouts_come_from_the_catalog_and_a_catalog_filter_is_read_at_run_time(
    db: Database, tmp_path: Path, canvas_url: str
) -> None:
    body = canvas_behavior(CANVAS_MODELS[:2]) + (
        "  catalog:\n    vendors: [vendor0]\n    reasoning: true\n    limit: 3\n"
    )
    register(db, tmp_path, "canvas", body)
    catalog = ModelCatalog(canvas_url)
    run_id = await run_now(db, canvas_url, "canvas", catalog)
    calls = {c["model"]: c for c in snapshot(db, run_id)["calls"]}
    from_catalog = [m for m in calls if m not in CANVAS_MODELS[:2]]
    # vendor0 = models 0, 7, 14, …; reasoning = every fourth: 0 (listed), 28, 56 → 28 only
    # after the listed ones, then up to the limit.
    assert from_catalog and all(m.startswith("vendor0/") for m in from_catalog)
    assert len(calls) <= 2 + 3
    assert calls[CANVAS_MODELS[0]]["timeout_seconds"] == 300.0  # a reasoning model
    assert calls[CANVAS_MODELS[1]]["timeout_seconds"] == 60.0
    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{canvas_url}/_sim/calls")).json()["calls"]
    assert any(c["path"] == "/api/v1/models" for c in listed)


async def test_a_model_failing_persistently_is_skipped_and_listed_until_reenabled(
    db: Database, tmp_path: Path, canvas_url: str
) -> None:
    gone, fine = CANVAS_MODELS[3], CANVAS_MODELS[0]
    register(db, tmp_path, "canvas", canvas_behavior([gone, fine]) + "  skip_after_failures: 2\n")
    for _ in range(2):
        await run_now(db, canvas_url, "canvas")
    third = snapshot(db, await run_now(db, canvas_url, "canvas"))
    calls = {c["model"]: c for c in third["calls"]}
    assert calls[gone]["status"] == "skipped" and calls[gone]["reason"] == "persistent_failure"
    assert calls[fine]["status"] == "answered"
    assert third["summary"]["skipped"] == [
        {"model": gone, "status": "skipped", "reason": "persistent_failure"}
    ]
    assert Counter(c["body"]["model"] for c in (await chat_calls(canvas_url)))[gone] == 2

    from ledger.runner.multi import reenable, skip_list

    with db.transaction() as session:
        assert gone in skip_list(session, "canvas")
        assert "asked again" in reenable(session, "canvas", gone, T0)
        assert skip_list(session, "canvas") == {}
    fourth = snapshot(db, await run_now(db, canvas_url, "canvas"))
    assert {c["model"]: c["status"] for c in fourth["calls"]}[gone] == "failed"


async def test_with_notion_on_each_recorded_call_queues_the_behaviors_row_for_the_mirror(
    db: Database, tmp_path: Path, canvas_url: str
) -> None:
    models = [CANVAS_MODELS[0], CANVAS_MODELS[3]]  # one answers, one is unknown (404)
    register(db, tmp_path, "canvas", canvas_behavior(models))
    run_id = await run_now(db, canvas_url, "canvas", mirror=True)
    with db.transaction() as session:
        rows = session.exec(
            select(OutboxRow).where(
                OutboxRow.kind == "mirror", col(OutboxRow.dedup_key).like("mirror:run_call:%")
            )
        ).all()
        work = {(r.dedup_key, r.payload["key"]) for r in rows}
    # one row-shaped update per recorded call, the answer and the failure alike
    assert work == {
        (f"mirror:run_call:{run_id}:0:0", "behavior:canvas"),
        (f"mirror:run_call:{run_id}:0:1", "behavior:canvas"),
    }


async def test_an_adopted_run_keeps_its_answers_and_asks_only_what_is_left(
    db: Database, tmp_path: Path, canvas_url: str
) -> None:
    """A crash mid-canvas, played in the database: some calls answered, one in flight with
    its reservation held, the rest pending; the run's lease expired."""
    models = [m for m in CANVAS_MODELS if m not in FAILING][:6]
    register(
        db,
        tmp_path,
        "canvas",
        canvas_behavior(models) + "budget:\n  usd: 10\n  per_call_estimate_usd: 0.5\n",
    )
    with db.transaction() as session:
        bid = lock_behavior(session, name="canvas").id or 0
        (claimed,) = claim_slots(session, [SlotClaim(bid, T0, "A")], T0, timedelta(seconds=5))
        plan = begin_run(session, claimed.id, now=T0, ctx=PolicyContext())
    assert plan is not None and plan.reserved_usd == 0.0  # reserved call by call instead
    client = new_client(canvas_url)
    try:
        multi = MultiModelRunner(db, SystemClock(), client, base_url=canvas_url)
        # The first process asks two models, then "dies" with a third in flight.
        from ledger.runner.multi import SlotSpec, plan_calls, reserve_calls

        await multi.run(_only(plan, models[:2]))
        with db.transaction() as session:
            plan_calls(
                session,
                plan,
                [SlotSpec(0, i, "canvas", m, 60.0) for i, m in enumerate(models)],
                T0,
            )
            assert reserve_calls(session, plan, {(0, 2): 0.5}, T0)
        assert _reserved(db) == pytest.approx(0.5)
        answered_before = {
            c.model_asked: c.output for c in _load(db, plan.run_id) if c.status == "answered"
        }
        assert set(answered_before) == set(models[:2])

        later = T0 + timedelta(seconds=30)
        with db.transaction() as session:
            assert adopt_expired_runs(session, later, timedelta(seconds=60)) == [plan.run_id]
            resumed = resume_plan(session, plan.run_id, later)
            assert adopt_expired_runs(session, later, timedelta(seconds=60)) == []  # leased
        assert resumed is not None
        assert _reserved(db) == pytest.approx(0.0)  # the lost call's reservation came back
        outcome = await multi.run(resumed)
    finally:
        await client.aclose()
    calls = {c.model_asked: c for c in _load(db, plan.run_id)}
    assert all(c.status == "answered" for c in calls.values())
    assert {m: calls[m].output for m in models[:2]} == answered_before
    assert calls[models[2]].attempts == 2  # in flight when it died: asked again
    asked = Counter(c["body"]["model"] for c in (await chat_calls(canvas_url)))
    assert asked == Counter({m: 1 for m in models})  # (the lost call never reached it)
    assert outcome.summary is not None and outcome.summary["answered"] == 6
    assert _reserved(db) == pytest.approx(0.0)


def _only(plan: RunPlan, models: list[str]) -> RunPlan:
    from dataclasses import replace

    assert plan.behavior.canvas is not None
    canvas = plan.behavior.canvas.model_copy(update={"models": models})
    return replace(plan, behavior=plan.behavior.model_copy(update={"canvas": canvas}))


def _load(db: Database, run_id: str) -> list[Any]:
    from ledger.runner.multi import load_calls

    with db.transaction() as session:
        return load_calls(session, run_id)


def _reserved(db: Database) -> float:
    with db.transaction() as session:
        return sum(w.reserved_usd for w in session.exec(select(BudgetWindow)))


# -- roundtable ------------------------------------------------------------------------------

PANEL = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4.5", "google/gemini-2.5-flash"]


def synthesis(confidence: str) -> str:
    return json.dumps(
        {
            "consensus": ["migrate in two steps"],
            "disagreements": ["whether to keep the old queue as a fallback"],
            "confidence": confidence,
            "next_steps": ["dry-run the migration on staging"],
        }
    )


def roundtable_sim(confidence: str, *, input_price: float = 0.000001) -> SimConfig:
    return SimConfig(
        presets={"synth": Preset(model="openai/gpt-4o", output=synthesis(confidence))},
        keys=[SimKey(key=KEY, name="ledger/table")],
        models={m: ModelInfo(input_price=input_price, output_price=0.0) for m in PANEL},
    )


ROUNDTABLE = """schedule: 1d
kind: roundtable
api_key: env:MULTI_TEST_KEY
key_name: ledger/table
prompt: Should we migrate billing to the new queue this quarter?
max_output_tokens: 80
roundtable:
  panel: [openai/gpt-4o-mini, anthropic/claude-haiku-4.5, google/gemini-2.5-flash]
  synthesis: "@preset/synth"
"""


@pytest.mark.parametrize(
    ("tier", "confidence", "disposition", "outbox", "approval", "downgraded"),
    [
        ("A", "high", "proposal", [], None, False),
        ("B", "high", "approval", [], "pending", False),
        ("C", "high", "action", ["action.log"], None, False),
        ("C", "medium", "action", ["action.log"], None, False),
        ("A", "low", "proposal", [], None, False),
        ("B", "low", "approval", [], "pending", False),
        ("C", "low", "approval", [], "pending", True),
    ],
)
async def test_a_roundtable_at_each_tier_ends_in_its_disposition(
    db: Database,
    database_url: str,
    tmp_path: Path,
    tier: str,
    confidence: str,
    disposition: str,
    outbox: list[str],
    approval: str | None,
    downgraded: bool,
) -> None:
    register(db, tmp_path, "table", ROUNDTABLE, tier=tier)
    async with run_in_background(roundtable_sim(confidence)) as url:
        run_id = await run_now(db, url, "table")
        sent = await chat_calls(url)
    run = snapshot(db, run_id)
    assert run["status"] == "succeeded" and run["disposition"] == disposition
    assert run["outbox"] == outbox
    assert (run["approval"] or {}).get("status") == approval
    summary = run["summary"]
    assert summary["confidence"] == confidence
    assert summary["synthesis"]["consensus"] == ["migrate in two steps"]
    assert summary["rounds"] == {
        "1": {"answered": 3, "failed": 0},
        "2": {"answered": 3, "failed": 0},
        "3": {"answered": 1, "failed": 0},
    }
    assert [m["model"] for m in summary["deference"]] == PANEL
    moves = summary["deference"]
    assert all(isinstance(m["changed"], bool) and 0 <= m["shift"] <= 1 for m in moves)
    if downgraded:
        assert summary["downgraded"]["from_tier"] == "C"
        assert "confidence is low" in summary["downgraded"]["reason"]
        assert run["approval"]["payload"]["downgraded"]["from_tier"] == "C"
        assert run["behavior_tier"] == "C"  # a downgrade is this run's handling, not a demotion
        result = ledger("show", run_id, cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
        result.check_returncode()
        shown = result.stdout
        assert "roundtable · confidence low" in shown
        assert "downgraded to an approval request at tier C" in shown
        assert "- migrate in two steps" in shown
        assert all(m in shown for m in PANEL) and "synthesis by @preset/synth" in shown
    else:
        assert "downgraded" not in summary
    # Three rounds: three panel calls, three with the others' answers, one synthesis.
    assert [(c["round"], c["role"], c["status"]) for c in run["calls"]] == [
        *[(1, "panel", "answered")] * 3,
        *[(2, "panel", "answered")] * 3,
        (3, "synthesis", "answered"),
    ]
    rounds = Counter((c["body"]["trace"]["round"], c["body"]["model"]) for c in sent)
    assert rounds == Counter(
        [*((1, m) for m in PANEL), *((2, m) for m in PANEL), (3, "@preset/synth")]
    )
    assert {c["body"]["trace"]["run_id"] for c in sent} == {run_id}
    round2 = next(c for c in sent if c["body"]["trace"]["round"] == 2)
    prompt = round2["body"]["messages"][0]["content"]
    others = [m for m in PANEL if m != round2["body"]["model"]]
    assert all(f"--- {m} ---" in prompt for m in others)
    synth = next(c for c in sent if c["body"]["trace"]["round"] == 3)
    assert synth["body"]["response_format"]["type"] == "json_schema"


async def test_a_roundtable_whose_round_2_could_break_the_budget_stops_before_calling(
    db: Database, tmp_path: Path
) -> None:
    body = ROUNDTABLE + "budget:\n  usd: 1.0\n  per_call_estimate_usd: 0.3\n"
    register(db, tmp_path, "table", body, tier="B")
    # Round 1 reserves 3 x $0.30 (fits $1) and costs more than $0.10: round 2's 3 x $0.30 no
    # longer fits.
    async with run_in_background(roundtable_sim("high", input_price=0.002)) as url:
        run_id = await run_now(db, url, "table")
        sent = await chat_calls(url)
    run = snapshot(db, run_id)
    assert [c["body"]["trace"]["round"] for c in sent] == [1, 1, 1]  # round 2 never called
    assert [(c["round"], c["status"]) for c in run["calls"]] == [
        *[(1, "answered")] * 3,
        *[(2, "refused")] * 3,
        (3, "refused"),
    ]
    assert run["status"] == "failed" and run["disposition"] == "none"
    (cap,) = [r for r in run["gate_results"] if r["gate"] == "spend_cap"]
    assert cap["outcome"] == "fail" and cap["attributable"]
    assert "round 2 was not started" in cap["reason"]
    assert run["behavior_tier"] == "A"  # an attributable fail demotes at once
    assert _reserved(db) == pytest.approx(0.0)
    with db.transaction() as session:
        spent = sum(w.spent_usd for w in session.exec(select(BudgetWindow)))
    assert spent == pytest.approx(run["cost_usd"]) and spent > 0.1


def test_run_calls_is_empty_for_a_single_run(db: Database) -> None:
    with db.transaction() as session:
        assert run_calls(session, "run-NONE") == []


async def test_a_roundtable_cut_off_in_round_2_resumes_without_asking_round_1_again(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path, "table", ROUNDTABLE, tier="B")
    config = roundtable_sim("high")
    config.models = {m: ModelInfo(output_price=0.0, latency=(0.4, 0.4)) for m in PANEL}
    with db.transaction() as session:
        bid = lock_behavior(session, name="table").id or 0
        (claimed,) = claim_slots(session, [SlotClaim(bid, T0, "B")], T0, timedelta(seconds=5))
        plan = begin_run(session, claimed.id, now=T0, ctx=PolicyContext())
    assert plan is not None
    async with run_in_background(config) as url:
        client = new_client(url)
        try:
            multi = MultiModelRunner(db, SystemClock(), client, base_url=url)
            first = asyncio.create_task(multi.run(plan))

            def round_2_in_flight() -> bool:
                calls = {c.key: c.status for c in _load(db, plan.run_id)}
                return all(calls.get((1, i)) == "answered" for i in range(3)) and any(
                    calls.get((2, i)) == "calling" for i in range(3)
                )

            while not round_2_in_flight():
                assert not first.done()
                await asyncio.sleep(0.02)
            first.cancel()  # the process dies with round 2 in flight
            with contextlib.suppress(asyncio.CancelledError):
                await first
            round1 = {c.model_asked: c.output for c in _load(db, plan.run_id) if c.round == 1}
            later = T0 + timedelta(minutes=1)
            with db.transaction() as session:
                assert adopt_expired_runs(session, later, timedelta(seconds=60)) == [plan.run_id]
                resumed = resume_plan(session, plan.run_id, later)
            assert resumed is not None
            outcome = await multi.run(resumed)
        finally:
            await client.aclose()
        sent = await chat_calls(url)
    calls = _load(db, plan.run_id)
    assert [(c.round, c.status) for c in calls] == [
        *[(1, "answered")] * 3,
        *[(2, "answered")] * 3,
        (3, "answered"),
    ]
    assert {c.model_asked: c.output for c in calls if c.round == 1} == round1
    asked = Counter((c["body"]["trace"]["round"], c["body"]["model"]) for c in sent)
    assert all(asked[(1, m)] == 1 for m in PANEL)  # round 1 kept, never asked again
    # a round-2 call in flight at the cut is asked again (its attempts say so); it reached the
    # simulator the first time only if the cut came after its request was sent
    attempts = {c.model_asked: c.attempts for c in calls if c.round == 2}
    assert all(1 <= asked[(2, m)] <= attempts[m] for m in PANEL), (asked, attempts)
    assert any(attempts[m] == 2 for m in PANEL)
    assert asked[(3, "@preset/synth")] == 1
    assert outcome.summary is not None and outcome.summary["confidence"] == "high"
    assert _reserved(db) == pytest.approx(0.0)


async def test_a_roundtable_with_fewer_than_two_first_answers_stops_as_a_provider_failure(
    db: Database, tmp_path: Path
) -> None:
    body = ROUNDTABLE.replace("anthropic/claude-haiku-4.5", "gone/model-a").replace(
        "google/gemini-2.5-flash", "gone/model-b"
    )
    register(db, tmp_path, "table", body, tier="C")
    async with run_in_background(roundtable_sim("high")) as url:
        run_id = await run_now(db, url, "table")
        sent = await chat_calls(url)
    run = snapshot(db, run_id)
    assert [c["body"]["trace"]["round"] for c in sent] == [1, 1, 1]
    assert [(c["round"], c["status"], c["reason"]) for c in run["calls"]] == [
        (1, "answered", None),
        (1, "failed", "unknown_model"),
        (1, "failed", "unknown_model"),
        *[(2, "skipped", "not_reached")] * 3,
        (3, "skipped", "not_reached"),
    ]
    assert run["status"] == "failed" and run["disposition"] == "none"
    assert "did not reach a synthesis" in run["error"]
    bad = [(r["gate"], r["attributable"]) for r in run["gate_results"] if r["outcome"] != "pass"]
    assert bad == [("provider_error", False)]
    assert run["behavior_tier"] == "C"  # the provider's failure, not the behavior's


async def test_a_guardrail_blocking_the_canvas_prompt_is_the_behaviors_own_conduct(
    db: Database, tmp_path: Path
) -> None:
    config = canvas_sim()
    config.faults = [
        Fault.from_mapping({"kind": "prompt_injection", "for_model": CANVAS_MODELS[1]})
    ]
    register(db, tmp_path, "canvas", canvas_behavior(CANVAS_MODELS[:3]))
    async with run_in_background(config) as url:
        run = snapshot(db, await run_now(db, url, "canvas"))
    assert [c["status"] for c in run["calls"]] == ["answered", "failed", "answered"]
    bad = [(r["gate"], r["outcome"], r["attributable"]) for r in run["gate_results"]]
    assert ("prompt_injection", "fail", True) in bad
    assert ("provider_error", "fail", False) not in bad
    assert run["disposition"] == "blocked"  # an attributable fail: never acted on
