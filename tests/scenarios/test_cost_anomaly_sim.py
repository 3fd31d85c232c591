"""A behavior whose runs suddenly cost ten times more, end to end against the OpenRouter
simulator through the real client: its preset was switched (on OpenRouter's side, not in its
file) to a model ten times dearer. Each such run records a ``cost_anomaly`` warn; with the
default policy the third warn among ten runs demotes it, and ``ledger explain`` / ``ledger show``
name the gate."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.clock import SystemClock
from ledger.db.models import BehaviorRow, GateResultRow, Run
from ledger.db.session import Database
from ledger.explain import explain
from ledger.runner.call import call_model
from ledger.runner.openrouter import OpenRouterClient
from ledger.runner.scheduler import RunnerService
from ledger.runs import run_json
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_background
from ledger.sim.openrouter.config import Fault, ModelInfo
from ledger.transitions import PolicyContext, lock_behavior
from tests.factories import T0, write_behavior

KEY = "sk-or-v1-simcost" + "ef" * 20
BEHAVIOR = """schedule: 1h
preset: writer
api_key: env:SIM_COST_KEY
key_name: ledger/alpha
prompt: "Write one line about tests"
primary_model: openai/gpt-4o-mini
"""
PRICE = 0.000001  # per token, input and output


def sim_config(price: float) -> SimConfig:
    return SimConfig(
        presets={
            "writer": Preset(model="openai/gpt-4o-mini", input_price=price, output_price=2 * price)
        },
        keys=[SimKey(key=KEY, name="ledger/alpha")],
    )


@pytest.fixture
def behavior(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setenv("SIM_COST_KEY", KEY)
    write_behavior(tmp_path, "alpha", BEHAVIOR)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        lock_behavior(session, name="alpha").tier = "C"
    return db


async def run_against(db: Database, url: str, times: int) -> list[str]:
    """Run the behavior ``times`` times now through the runner against the simulator at url."""
    client = OpenRouterClient(
        base_url=url, base_backoff=0.01, max_backoff=0.05, rng=random.Random(1)
    )
    ids: list[str] = []
    try:
        service = RunnerService(
            db, SystemClock(), lambda plan: call_model(client, plan), PolicyContext()
        )
        for _ in range(times):
            run_id = await service.run_now("alpha")
            assert run_id is not None
            ids.append(run_id)
    finally:
        await client.aclose()
    return ids


@pytest.fixture
async def sims() -> AsyncIterator[tuple[str, str]]:
    async with (
        run_in_background(sim_config(PRICE)) as cheap,
        run_in_background(sim_config(10 * PRICE)) as dear,
    ):
        yield cheap, dear


def anomalies(db: Database) -> list[tuple[str, str, dict[str, Any]]]:
    with db.transaction() as session:
        rows = session.exec(
            select(GateResultRow)
            .where(col(GateResultRow.gate) == "cost_anomaly")
            .order_by(col(GateResultRow.id))
        )
        return [(r.run_id or "", r.outcome, r.evidence) for r in rows]


async def test_runs_ten_times_dearer_warn_and_the_third_demotes(
    behavior: Database, sims: tuple[str, str]
) -> None:
    db = behavior
    cheap, dear = sims
    baseline = await run_against(db, cheap, 5)
    assert anomalies(db) == []  # five runs build the median; none is judged yet
    normal = await run_against(db, cheap, 1)
    first = await run_against(db, dear, 1)

    with db.transaction() as session:
        costs = {r.id: r.cost_usd for r in session.exec(select(Run))}
        row = session.exec(select(BehaviorRow)).one()
        assert row.tier == "C"  # one warn is not a demotion
        assert row.last_run_status == "succeeded: cost_anomaly warn"
    cheap_cost = costs[baseline[0]]
    assert cheap_cost is not None and cheap_cost > 0
    assert costs[first[0]] == pytest.approx(10 * cheap_cost)
    (passed, warned) = anomalies(db)
    assert passed[:2] == (normal[0], "pass")
    assert warned[:2] == (first[0], "warn")
    assert warned[2]["median_usd"] == pytest.approx(cheap_cost)
    assert warned[2]["factor"] == 5 and warned[2]["runs"] == 6
    assert warned[2]["ratio"] == pytest.approx(10.0)

    more = await run_against(db, dear, 2)
    assert [(r, o) for r, o, _e in anomalies(db)][2:] == [(more[0], "warn"), (more[1], "warn")]
    with db.transaction() as session:
        row = session.exec(select(BehaviorRow)).one()
        assert row.tier == "B"
        story = explain(session, "alpha", row.last_run_at or T0, PolicyContext()).render()
        shown = run_json(session, more[1])
    assert "demoted from C · autonomous to B · human-in-the-loop" in story
    assert "cost_anomaly (run " + first[0] in story
    (gate,) = [g for g in shown["gate_results"] if g["gate"] == "cost_anomaly"]
    assert gate["outcome"] == "warn" and "10.0 times the median" in gate["reason"]


async def test_a_dear_fallback_model_answering_is_not_the_behaviors_anomaly(
    behavior: Database,
) -> None:
    """OpenRouter routes around the preset's model (an outage) to a fallback fifty times
    dearer per token: the run costs well over five times the median, but no ``cost_anomaly``
    is recorded and its cost does not move the median — a provider's routing must never move
    a tier."""
    db = behavior
    dear_fallback = SimConfig(
        presets={
            "writer": Preset(
                model="openai/gpt-4o-mini",
                fallback_models=("openai/gpt-4o",),
                input_price=PRICE,
                output_price=2 * PRICE,
            )
        },
        models={"openai/gpt-4o": ModelInfo(input_price=50 * PRICE, output_price=100 * PRICE)},
        keys=[SimKey(key=KEY, name="ledger/alpha")],
        faults=[Fault(kind="wrong_model")],
    )
    async with (
        run_in_background(sim_config(PRICE)) as cheap,
        run_in_background(dear_fallback) as routed,
    ):
        ran = await run_against(db, cheap, 6)
        (fallback_run,) = await run_against(db, routed, 1)
    with db.transaction() as session:
        run = session.get(Run, fallback_run)
        assert run is not None and run.model == "openai/gpt-4o"
        median = (
            sorted(row.recent_costs or [])[2]
            if (row := session.exec(select(BehaviorRow)).one())
            else 0
        )
        assert (run.cost_usd or 0) > 5 * median  # an anomaly, were it the behavior's own model
        assert row.tier == "C"
        assert max(row.recent_costs or []) == min(row.recent_costs or [])  # not remembered
    assert [(r, o) for r, o, _e in anomalies(db)] == [(ran[5], "pass")]
