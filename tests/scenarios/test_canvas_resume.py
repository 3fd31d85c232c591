"""A broad canvas survives a killed ``ledger serve``: after a restart the run is adopted once
its lease expired and resumed from its recorded calls — no answer lost, no model that answered
asked again (the simulator's request log says so), the calls in flight asked once more.

The simulator runs as a process of its own (its request log outlives the daemon). Fast models
answer in a blink, slow ones take seconds, so the daemon is killed with slow calls in flight
and some slots not asked yet."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.db.session import Database
from ledger.runs import run_calls, run_json
from tests.conftest import free_port
from tests.daemon import Daemon, wait_until
from tests.servers import ledger

KEY = "sk-or-v1-canvasresume" + "0" * 40
FAST = [f"quick{i % 3}/model-{i:02d}" for i in range(12)]
SLOW = [f"slow{i % 3}/model-{i:02d}" for i in range(8)]
# Daily, twelve hours away from now: no scheduled run of the behavior during the test (with
# `1d` one started at midnight UTC beside the manual run, in the same budget window).
BEHAVIOR = f"""\
schedule: "0 {(datetime.now(UTC).hour + 12) % 24} * * *"
kind: broad_canvas
api_key: env:CANVAS_RESUME_KEY
key_name: canvas
prompt: Name one risk of message queues
max_output_tokens: 40
budget:
  usd: 50
  per_call_estimate_usd: 0.25
canvas:
  max_concurrency: 6
  models: [{", ".join(FAST + SLOW)}]
"""


def _sim_yaml() -> str:
    lines = ["keys:", f"  - {{key: {KEY}, name: canvas}}", "models:"]
    lines += [f"  {m}: {{latency: [0.01, 0.05]}}" for m in FAST]
    lines += [f"  {m}: {{latency: [4.0, 5.0]}}" for m in SLOW]
    return "\n".join(lines) + "\n"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "sim.yaml").write_text(_sim_yaml())
    port = free_port()
    args = ["sim", "openrouter", "--port", str(port), "--presets", str(tmp_path / "sim.yaml")]
    with (tmp_path / "sim.log").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledger", *args], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/_sim/calls", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, what="the simulator")
        yield url
    finally:
        proc.kill()
        proc.wait(10)


def _env(sim: str) -> dict[str, str]:
    return {
        "LEDGER_OPENROUTER_BASE_URL": sim,
        "CANVAS_RESUME_KEY": KEY,
        "LEDGER_AUTH": "off",
        "LEDGER_RUNNER_LEASE_SECONDS": "6",
    }


def _run(database_url: str, run_id: str) -> dict[str, Any]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            doc = run_json(session, run_id)
            doc["calls"] = run_calls(session, run_id)
            return doc
    finally:
        db.close()


def _asked(sim: str, run_id: str) -> Counter[str]:
    """How often each model was asked by this run (its calls carry the run as ``session_id``;
    the behavior's own schedule may start another run meanwhile, e.g. at midnight UTC)."""
    calls = httpx.get(sim + "/_sim/calls", timeout=10).json()["calls"]
    return Counter(
        c["body"]["model"]
        for c in calls
        if c["path"] == "/api/v1/chat/completions" and c["body"].get("session_id") == run_id
    )


def test_a_canvas_killed_mid_run_resumes_without_losing_or_reasking_an_answer(
    tmp_path: Path, database_url: str, sim: str, start_daemon: Callable[..., Daemon]
) -> None:
    (tmp_path / "behaviors").mkdir()
    (tmp_path / "behaviors" / "canvas.yaml").write_text(BEHAVIOR)
    first = start_daemon(database_url, _env(sim))
    started = httpx.post(f"{first.base_url}/api/behaviors/canvas/run?wait=0", timeout=30)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]

    def fast_answered_and_slow_in_flight() -> bool:
        calls = _run(database_url, run_id)["calls"]
        statuses = {c["model"]: c["status"] for c in calls}
        return all(statuses.get(m) == "answered" for m in FAST) and any(
            statuses.get(m) == "calling" for m in SLOW
        )

    wait_until(fast_answered_and_slow_in_flight, timeout=60, what="fast answers, slow in flight")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    before = {c["model"]: c for c in _run(database_url, run_id)["calls"]}
    in_flight = {m for m, c in before.items() if c["status"] == "calling"}
    not_asked = {m for m, c in before.items() if c["status"] == "pending"}
    answered = {m: c["output"] for m, c in before.items() if c["status"] == "answered"}
    assert set(FAST) <= set(answered) and in_flight and not_asked
    assert _run(database_url, run_id)["status"] == "running"

    second = start_daemon(database_url, _env(sim))
    wait_until(
        lambda: _run(database_url, run_id)["status"] == "succeeded",
        timeout=90,
        what="the resumed canvas to finish",
    )
    run = _run(database_url, run_id)
    after = {c["model"]: c for c in run["calls"]}
    assert {m: c["status"] for m, c in after.items()} == {m: "answered" for m in FAST + SLOW}
    # No answer lost: what was recorded before the kill is still there, unchanged.
    assert {m: after[m]["output"] for m in answered} == answered
    asked = _asked(sim, run_id)
    for model in answered:  # answered before the kill: never asked again
        assert asked[model] == 1, model
    for model in not_asked:  # not asked before the kill: asked once, after
        assert asked[model] == 1, model
    for model in in_flight:  # its answer never reached the dead daemon: asked once more
        # (once in all when the kill fell between recording "calling" and sending the request)
        assert asked[model] in (1, 2) and after[model]["attempts"] == 2, model
    assert run["summary"]["answered"] == len(FAST + SLOW)
    # Every reservation was settled or given back.
    db = Database.open(database_url)
    try:
        from sqlmodel import select

        from ledger.db.models import BudgetWindow

        with db.transaction() as session:
            window = session.exec(select(BudgetWindow)).one()
            assert window.reserved_usd == pytest.approx(0.0)
            assert window.spent_usd == pytest.approx(run["cost_usd"])
    finally:
        db.close()
    assert "resuming a multi-model run" in second.log()
    served = httpx.get(f"{second.base_url}/api/runs/{run_id}", timeout=30).json()
    assert served["kind"] == "broad_canvas" and served["summary"]["answered"] == 20
    assert [c["model"] for c in served["calls"]] == FAST + SLOW
    assert {c["status"] for c in served["calls"]} == {"answered"}
    shown = ledger("show", run_id, cwd=tmp_path, env={"LEDGER_DATABASE_URL": database_url})
    shown.check_returncode()
    assert f"broad canvas · {len(FAST + SLOW)} of {len(FAST + SLOW)} answered" in shown.stdout
    assert all(m in shown.stdout for m in SLOW)
