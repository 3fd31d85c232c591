"""A tier-B approval survives a crash: ``ledger serve`` is killed (SIGKILL) after the run asked
for approval, the operator approves twice while it is down, and the restarted daemon delivers
the webhook action exactly once, signed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlmodel import col, select

from ledger.db.models import Approval, OutboxRow, Run
from ledger.db.session import Database
from ledger.outbox.enqueue import KIND_WEBHOOK
from ledger.signatures import GENERIC_HEADER, verify_generic
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_background
from tests.factories import write_behavior
from tests.servers import Capture, Daemon, capture_server, wait_until

KEY = "sk-or-v1-approvalcrash" + "ef" * 17
SECRET = "whsec-approval-crash-7c41d9"

BEHAVIOR = """\
description: approval crash scenario
schedule: "0 0 1 1 *"
preset: writer
api_key: env:APPROVAL_CRASH_KEY
key_name: alpha-key
prompt: "Write one line about approvals"
start_tier: B
action:
  type: webhook
  url: {url}
  secret: env:APPROVAL_CRASH_SECRET
"""


def sim_config() -> SimConfig:
    return SimConfig(
        presets={"writer": Preset(model="openai/gpt-4o-mini")},
        keys=[SimKey(key=KEY, name="alpha-key")],
    )


def ledger_cli(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """Run ``python -m ledger ARGS`` like an operator would; returns its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_BEHAVIORS_DIR": str(tmp_path / "behaviors"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def action_rows(database_url: str) -> list[OutboxRow]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            rows = session.exec(select(OutboxRow).where(col(OutboxRow.kind) == KIND_WEBHOOK))
            return list(rows)
    finally:
        db.close()


def deliveries(capture: Capture, run_id: str) -> list[bytes]:
    """The bodies the capture server received for ``run_id``'s action."""
    return [r.body for r in capture.to("/action") if r.json().get("run_id") == run_id]


async def test_approving_twice_across_a_daemon_crash_delivers_the_action_exactly_once(
    database_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    async with run_in_background(sim_config()) as sim_url, capture_server() as capture:
        (tmp_path / "behaviors").mkdir()
        write_behavior(tmp_path / "behaviors", "alpha", BEHAVIOR.format(url=capture.url("/action")))
        env = {
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_OPENROUTER_BASE_URL": sim_url,
            "LEDGER_ALLOW_PRIVATE_URLS": "true",
            "LEDGER_LOG_FORMAT": "json",
            "APPROVAL_CRASH_KEY": KEY,
            "APPROVAL_CRASH_SECRET": SECRET,
        }

        # The daemon registers the behavior; the run asks for approval; then the daemon dies.
        daemon = await asyncio.to_thread(start_daemon, database_url, env)
        ran = await asyncio.to_thread(ledger_cli, tmp_path, env, "run", "alpha")
        first_line = ran.splitlines()[0]
        run_id = first_line.split(":")[0]
        assert run_id.startswith("run-")
        assert first_line == f"{run_id}: succeeded, disposition approval"
        daemon.proc.kill()
        assert await asyncio.to_thread(daemon.proc.wait, 10) == -9
        assert action_rows(database_url) == []

        # Two approvals while nothing can deliver: one queued action, still pending.
        approved = await asyncio.to_thread(ledger_cli, tmp_path, env, "approve", run_id)
        assert f"approved run {run_id} of alpha; its webhook action is queued" in approved
        again = await asyncio.to_thread(ledger_cli, tmp_path, env, "approve", run_id)
        assert f"run {run_id} was already approved by cli:" in again
        assert "nothing to do" in again
        (pending,) = action_rows(database_url)
        assert (pending.status, pending.attempts) == ("pending", 0)
        assert capture.to("/action") == []

        # The restarted daemon delivers it, once.
        restarted = await asyncio.to_thread(start_daemon, database_url, env)
        await asyncio.to_thread(
            wait_until,
            lambda: len(deliveries(capture, run_id)) >= 1,
            20.0,
            "the restarted daemon to deliver the approved action",
        )
        # Recorded delivered: the dispatcher claims it no more, so no retry can follow.
        await asyncio.to_thread(
            wait_until,
            lambda: [r.status for r in action_rows(database_url)] == ["delivered"],
            20.0,
            "the action's one outbox row to be recorded delivered",
        )
        restarted.proc.terminate()
        assert await asyncio.to_thread(restarted.proc.wait, 20) == 0, restarted.log()

    (delivered,) = capture.to("/action")  # one POST in all: no retry, no duplicate
    assert delivered.json()["run_id"] == run_id
    verify_generic(
        delivered.headers[GENERIC_HEADER.lower()], delivered.body, [SECRET], now=time.time()
    )
    assert delivered.headers["x-ledger-delivery"] == run_id
    assert delivered.json()["behavior"] == "alpha"
    assert delivered.json()["tier"] == "B"

    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            (approval,) = session.exec(select(Approval)).all()
            assert (approval.run_id, approval.status) == (run_id, "approved")
            assert approval.decided_by is not None and approval.decided_by.startswith("cli:")
            (row,) = session.exec(select(OutboxRow).where(col(OutboxRow.kind) == KIND_WEBHOOK))
            assert row.dedup_key == f"{KIND_WEBHOOK}:{run_id}"
            assert (row.status, row.attempts) == ("delivered", 1)
            assert row.delivered_at is not None
            (run,) = session.exec(select(Run)).all()
            assert (run.id, run.disposition) == (run_id, "approval")
    finally:
        db.close()
