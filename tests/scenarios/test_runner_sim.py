"""Runs end to end against the OpenRouter simulator on loopback, through the real client:
each tier's disposition, and every fault's gate result and attributable flag."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.models import Approval, BehaviorRow, GateResultRow, OutboxRow, Run
from ledger.db.session import Database
from ledger.runner.call import call_model
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.scheduler import RunnerService
from ledger.sim.openrouter import Fault, ModelInfo, Preset, SimConfig, SimKey, run_in_background
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import T0, write_behavior

KEY = "sk-or-v1-simtest" + "ab" * 20
OTHER_KEY = "sk-or-v1-simfallback" + "cd" * 18
BEHAVIOR = """schedule: 1h
preset: writer
api_key: env:SIM_TEST_KEY
key_name: ledger/alpha
prompt: "Write one line about {{topic}}"
inputs:
  topic: tests
timeout: {timeout}
primary_model: openai/gpt-4o-mini
{extra}
"""


def sim_config(*faults: Fault, output: str | None = None) -> SimConfig:
    return SimConfig(
        presets={
            "writer": Preset(
                model="openai/gpt-4o-mini",
                fallback_models=("meta-llama/llama-3.3-70b-instruct",),
                output=output,
            )
        },
        keys=[SimKey(key=KEY, name="ledger/alpha"), SimKey(key=OTHER_KEY, name="fallback")],
        faults=list(faults),
        models={"fallback/model": ModelInfo()},
    )


async def run_one(
    db: Database,
    tmp_path: Path,
    sim_url: str,
    *,
    tier: str = "A",
    extra: str = "",
    timeout: str = "fast",
) -> dict[str, Any]:
    folder = tmp_path / "behaviors"
    folder.mkdir(exist_ok=True)
    write_behavior(folder, "alpha", BEHAVIOR.format(timeout=timeout, extra=extra))
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
        lock_behavior(session, name="alpha").tier = tier
    client = OpenRouterClient(
        base_url=sim_url, base_backoff=0.01, max_backoff=0.05, rng=random.Random(1)
    )
    try:
        service = RunnerService(
            db, SystemClock(), lambda plan: call_model(client, plan), PolicyContext()
        )
        run_id = await service.run_now("alpha")
    finally:
        await client.aclose()
    with db.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None
        results = list(
            session.exec(select(GateResultRow).where(col(GateResultRow.run_id) == run_id))
        )
        row = session.exec(select(BehaviorRow)).one()
        return {
            "run": run.model_dump(),
            "results": {
                (r.gate, r.outcome, r.attributable) for r in results if r.outcome != "pass"
            },
            "tier": row.tier,
            "paused": row.paused,
            "outbox": [o.kind for o in session.exec(select(OutboxRow))],
            "approvals": [a.status for a in session.exec(select(Approval))],
        }


@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("SIM_TEST_KEY", KEY)
    monkeypatch.setenv("SIM_FALLBACK_KEY", OTHER_KEY)

    def start(*faults: Fault, output: str | None = None) -> Any:
        return run_in_background(sim_config(*faults, output=output))

    yield start


@pytest.mark.parametrize(
    ("tier", "disposition", "outbox", "approvals"),
    [
        ("A", "proposal", [], []),
        ("B", "approval", [], ["pending"]),
        ("C", "action", ["action.log"], []),
    ],
)
async def test_each_tier_ends_in_its_disposition(
    db: Database,
    tmp_path: Path,
    sim: Any,
    tier: str,
    disposition: str,
    outbox: list[str],
    approvals: list[str],
) -> None:
    async with sim() as url:
        out = await run_one(db, tmp_path, url, tier=tier)
    assert out["run"]["status"] == "succeeded"
    assert out["run"]["disposition"] == disposition
    assert out["run"]["model"] == "openai/gpt-4o-mini"
    assert out["run"]["cost_usd"] > 0 and out["run"]["generation_id"].startswith("gen-")
    assert out["results"] == set()
    assert out["outbox"] == outbox and out["approvals"] == approvals


FAULTS = [
    # (fault, tier, expected non-pass results, tier after, paused)
    (Fault("rate_limit", times=1, retry_after=0), "C", set(), "C", False),
    (Fault("payment_required"), "C", {("provider_error", "fail", False)}, "C", False),
    (Fault("key_limit"), "C", {("spend_cap", "fail", True)}, "B", False),
    (Fault("workspace_budget"), "C", {("provider_error", "fail", False)}, "C", False),
    (Fault("prompt_injection"), "C", {("prompt_injection", "fail", True)}, "B", False),
    (Fault("content_filter", label="EMAIL"), "C", {("sensitive_info", "fail", True)}, "B", False),
    (Fault("server_error", status=502), "C", {("provider_error", "fail", False)}, "C", False),
    (Fault("error_in_200"), "C", {("provider_error", "fail", False)}, "C", False),
    (
        Fault("sensitive_output", text="call me at +1 415 555 0134"),
        "C",
        {("sensitive_info", "warn", True)},
        "C",
        False,
    ),
]


@pytest.mark.parametrize(
    ("fault", "tier", "expected", "tier_after", "paused"), FAULTS, ids=[f[0].kind for f in FAULTS]
)
async def test_every_fault_gives_the_right_gate_and_attribution(
    db: Database,
    tmp_path: Path,
    sim: Any,
    fault: Fault,
    tier: str,
    expected: set[tuple[str, str, bool]],
    tier_after: str,
    paused: bool,
) -> None:
    async with sim(fault) as url:
        out = await run_one(db, tmp_path, url, tier=tier)
    assert out["results"] == expected
    assert (out["tier"], out["paused"]) == (tier_after, paused)
    if any(attributable and outcome == "fail" for _, outcome, attributable in expected):
        assert "action.log" not in out["outbox"]


async def test_slow_answer_past_the_deadline_is_a_timeout_warn(
    db: Database, tmp_path: Path, sim: Any
) -> None:
    async with sim(Fault("delay", seconds=3)) as url:
        out = await run_one(db, tmp_path, url, tier="B", timeout="1")
    assert out["results"] == {("timeout", "warn", True)}
    assert out["run"]["status"] == "failed"


async def test_unknown_key_is_an_auth_error_that_pauses(
    db: Database, tmp_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_TEST_KEY", "sk-or-v1-" + "9" * 64)
    async with sim() as url:
        out = await run_one(db, tmp_path, url, tier="B")
    assert out["results"] == {("auth_error", "fail", False)}
    assert (out["tier"], out["paused"]) == ("B", True)
    assert out["outbox"] == ["alert"]


async def test_wrong_model_with_require_primary_model_is_not_acted_on(
    db: Database, tmp_path: Path, sim: Any
) -> None:
    async with sim(Fault("wrong_model")) as url:
        out = await run_one(db, tmp_path, url, tier="C", extra="require_primary_model: true")
    assert ("output_check", "warn", True) in out["results"]
    assert out["run"]["model"] == "meta-llama/llama-3.3-70b-instruct"
    assert out["run"]["disposition"] == "blocked"
    assert "action.log" not in out["outbox"]


async def test_fallback_answers_after_a_non_attributable_failure(
    db: Database, tmp_path: Path, sim: Any
) -> None:
    async with sim(Fault("server_error", status=503)) as url, sim() as fallback_url:
        extra = (
            f"fallback:\n  base_url: {fallback_url}/api/v1\n  model: fallback/model\n"
            "  api_key: env:SIM_FALLBACK_KEY"
        )
        out = await run_one(db, tmp_path, url, tier="C", extra=extra)
    assert out["run"]["via_fallback"] is True
    assert out["run"]["status"] == "succeeded"
    assert out["results"] == {("provider_error", "fail", False)}
    assert out["outbox"] == ["action.log"]


async def test_no_fallback_around_a_spend_cap(db: Database, tmp_path: Path, sim: Any) -> None:
    async with sim(Fault("key_limit")) as url, sim() as fallback_url:
        extra = (
            f"fallback:\n  base_url: {fallback_url}/api/v1\n  model: fallback/model\n"
            "  api_key: env:SIM_FALLBACK_KEY"
        )
        out = await run_one(db, tmp_path, url, tier="C", extra=extra)
    assert out["run"]["via_fallback"] is False
    assert out["results"] == {("spend_cap", "fail", True)}
