"""Manual runs in the daemon (``POST /api/behaviors/{name}/run``, ``ledger run --via-daemon``)
against the OpenRouter simulator: the daemon's environment holds the key, not the operator's
shell. The CLI's path goes through a real ``ledger serve``; the API alone, the app in process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from ledger.config import Settings
from ledger.db.models import BehaviorRow, OutboxRow, Run
from ledger.db.session import Database
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_background
from tests.factories import write_behavior
from tests.servers import Daemon, app_client, ledger, wait_until

KEY = "sk-or-v1-manualrun" + "ab" * 19
TOKEN = "ops-token-" + "9" * 24
BEHAVIOR = """\
description: manual runs
schedule: "0 0 1 1 *"
preset: writer
api_key: env:MANUAL_RUN_KEY
key_name: alpha-key
prompt: "Write one line about manual runs"
"""


def sim_config() -> SimConfig:
    return SimConfig(
        presets={"writer": Preset(model="openai/gpt-4o-mini")},
        keys=[SimKey(key=KEY, name="alpha-key")],
    )


def daemon_env(database_url: str, sim_url: str) -> dict[str, str]:
    return {
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_OPENROUTER_BASE_URL": sim_url,
        "LEDGER_API_TOKENS": '{"ops": "env:OPS_TOKEN"}',
        "OPS_TOKEN": TOKEN,
    }


def client(daemon: Daemon) -> httpx.AsyncClient:
    """The API from a test that also hosts the simulator: never block its event loop."""
    return httpx.AsyncClient(
        base_url=daemon.base_url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}
    )


def database(database_url: str, read: Callable[[Any], Any]) -> Any:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            return read(session)
    finally:
        db.close()


async def test_a_manual_run_in_the_daemon_uses_its_key_and_approvals_end_with_a_demotion(
    database_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    async with run_in_background(sim_config()) as sim_url, contextlib.AsyncExitStack() as stack:
        (tmp_path / "behaviors").mkdir()
        (tmp_path / "ledger.toml").write_text('[alert_channels.ops]\ntype = "log"\n')
        env = daemon_env(database_url, sim_url)
        daemon = await asyncio.to_thread(start_daemon, database_url, {**env, "MANUAL_RUN_KEY": KEY})
        # A file the daemon has not seen yet: the run reconciles the folder first.
        write_behavior(tmp_path / "behaviors", "alpha", BEHAVIOR)

        # From a shell without the key: the daemon runs it with its own.
        shell = {
            "LEDGER_BEHAVIORS_DIR": "behaviors",
            "LEDGER_DAEMON_URL": daemon.base_url,
            "LEDGER_API_TOKEN": TOKEN,
        }
        ran = await asyncio.to_thread(
            ledger, "run", "alpha", "--via-daemon", cwd=tmp_path, env=shell
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        first = ran.stdout.splitlines()[0]
        assert first.startswith("run-") and first.endswith(": succeeded, disposition proposal")

        api = await stack.enter_async_context(client(daemon))
        # Not waiting: 202 with the run id and where to poll.
        started = await api.post("/api/behaviors/alpha/run", params={"wait": 0})
        assert started.status_code == 202, started.text
        body = started.json()
        assert body["poll"] == f"/api/runs/{body['run_id']}" == started.headers["location"]
        assert body["status"] == "running"
        await asyncio.to_thread(
            wait_until,
            lambda: (
                httpx.get(
                    daemon.base_url + body["poll"], headers={"Authorization": f"Bearer {TOKEN}"}
                ).json()["status"]
                == "succeeded"
            ),
            20.0,
            "the polled run to succeed",
        )

        # At B the run asks for approval; a demotion to A withdraws the request.
        promoted = await api.post("/api/behaviors/alpha/promote", json={"reason": "r", "to": "B"})
        assert promoted.status_code == 200, promoted.text
        asked = await api.post("/api/behaviors/alpha/run", params={"wait": 60})
        assert asked.status_code == 200, asked.text
        assert asked.json()["run"]["disposition"] == "approval"
        run_id = asked.json()["run_id"]
        demoted = await api.post("/api/behaviors/alpha/demote", json={"reason": "too noisy"})
        assert demoted.status_code == 200, demoted.text
        refused = await api.post(f"/api/approvals/{run_id}/approve", json={})
        assert refused.status_code == 409
        assert (
            "was withdrawn" in refused.json()["error"]["message"]
            and "because alpha was demoted from B · human-in-the-loop to A · proposal-only by "
            "api:ops: too noisy; its action will not run"
            in refused.json()["error"]["message"]
        )
        withdrawn = (await api.get("/api/approvals", params={"status": "withdrawn"})).json()
        assert [a["run_id"] for a in withdrawn["approvals"]] == [run_id]

        # Paused: nothing runs, through the API or the CLI.
        pause = await api.post("/api/behaviors/alpha/pause", json={"reason": "maintenance"})
        assert pause.status_code == 200, pause.text
        paused = await api.post("/api/behaviors/alpha/run")
        assert paused.status_code == 409
        assert paused.json()["error"]["message"].startswith("alpha is paused; nothing was run")
        again = await asyncio.to_thread(
            ledger, "run", "alpha", "--via-daemon", cwd=tmp_path, env=shell
        )
        assert again.returncode == 1
        assert again.stderr.startswith("error: alpha is paused; nothing was run")

    def alerts(session: Any) -> list[tuple[str, str]]:
        rows = session.exec(
            select(OutboxRow)
            .where(col(OutboxRow.kind).startswith("alert"))
            .order_by(col(OutboxRow.id))
        )
        return [(r.payload["channel"], r.payload["alert"]["event"]) for r in rows]

    # The operator's demotion and pause went to ledger.toml's channel, not only the log.
    assert database(database_url, alerts) == [
        ("ops", "demotion"),
        ("log", "demotion"),
        ("ops", "pause"),
        ("log", "pause"),
    ]  # every alert is also written to the log
    assert database(database_url, lambda s: len(s.exec(select(Run)).all())) == 3


async def test_a_key_missing_in_the_daemon_refuses_the_manual_run_and_pauses_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MANUAL_RUN_KEY", raising=False)  # not in the daemon's environment
    monkeypatch.setenv("OPS_TOKEN", TOKEN)
    async with run_in_background(sim_config()) as sim_url:
        write_behavior(tmp_path / "behaviors", "alpha", BEHAVIOR)
        settings = Settings(
            database_url=database_url,
            behaviors_dir=tmp_path / "behaviors",
            openrouter_base_url=sim_url,
            api_tokens={"ops": "env:OPS_TOKEN"},
            watch=False,
        )
        async with app_client(settings, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            refused = await api.post("/api/behaviors/alpha/run")
    assert refused.status_code == 409
    assert refused.json()["error"]["message"].startswith(
        "alpha: its key cannot be resolved in the daemon's environment (secret reference "
        "env:MANUAL_RUN_KEY: environment variable MANUAL_RUN_KEY is not set); nothing was run "
        "or recorded. Set it where `ledger serve` runs and restart the daemon"
    )
    assert database(database_url, lambda s: s.exec(select(Run)).all()) == []
    row = database(database_url, lambda s: s.exec(select(BehaviorRow)).one().paused)
    assert row is False
