"""Operations endpoints: ``/metrics`` (Prometheus text, parsed with prometheus_client's own
parser) moves when runs, tier changes, deliveries and broadcasts happen; ``/readyz`` fails when
the scheduler is stopped or the outbox is stalled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from ledger.clock import SystemClock
from ledger.config import Settings
from ledger.db.models import OutboxRow
from ledger.db.session import Database
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_background
from ledger.tokens import create_token
from ledger.web.app import create_app
from tests.conftest import T0
from tests.daemon import Daemon

KEY = "sk-or-v1-metrics" + "cd" * 20
OPS = "ops-token-" + "4" * 24
BEHAVIOR = """\
description: metrics
schedule: "0 0 1 1 *"
preset: writer
api_key: env:METRICS_KEY
key_name: alpha-key
prompt: "Write one line"
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_need_a_viewer_token_parse_and_move_when_things_happen(
    database_url: str, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as session:
            viewer, _ = create_token(session, "prometheus", "viewer", actor="test", now=T0)
    finally:
        db.close()
    config = SimConfig(
        presets={"writer": Preset(model="openai/gpt-4o-mini")},
        keys=[SimKey(key=KEY, name="alpha-key")],
    )
    async with run_in_background(config) as sim_url, contextlib.AsyncExitStack() as stack:
        (tmp_path / "behaviors").mkdir()
        (tmp_path / "behaviors" / "alpha.yaml").write_text(BEHAVIOR)
        (tmp_path / "ledger.toml").write_text('[alert_channels.ops]\ntype = "log"\n')
        env = {
            "LEDGER_OPENROUTER_BASE_URL": sim_url,
            "LEDGER_API_TOKENS": '{"ops": "env:OPS_TOKEN"}',
            "OPS_TOKEN": OPS,
            "METRICS_KEY": KEY,
            "LEDGER_BROADCAST_TOKENS": "broadcast-secret-" + "6" * 20,
        }
        daemon = await asyncio.to_thread(start_daemon, database_url, env)
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=daemon.base_url, timeout=30)
        )
        ops = {"Authorization": f"Bearer {OPS}"}

        async def scrape() -> Samples:
            answer = await http.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            return samples(answer.text)

        assert (await http.get("/metrics")).status_code == 401
        before = await scrape()
        assert value(before, "ledger_behaviors", tier="A") == 1
        assert value(before, "ledger_behaviors", tier="C") == 0
        assert ("ledger_outbox_pending", ()) in before
        assert ("ledger_broadcast_backlog_deliveries", ()) in before

        run = await http.post("/api/behaviors/alpha/run", headers=ops)
        assert run.status_code == 200 and run.json()["status"] == "succeeded", run.text
        promoted = await http.post(
            "/api/behaviors/alpha/promote", json={"reason": "trusted", "to": "B"}, headers=ops
        )
        assert promoted.status_code == 200, promoted.text
        demoted = await http.post(
            "/api/behaviors/alpha/demote", json={"reason": "not yet", "to": "A"}, headers=ops
        )
        assert demoted.status_code == 200, demoted.text
        refused = await http.post(
            "/v1/traces", json={"resourceSpans": []}, headers={"Authorization": "Bearer no"}
        )
        assert refused.status_code == 401

        after = await scrape()
        assert value(after, "ledger_runs_total", outcome="succeeded") == 1 + value(
            before, "ledger_runs_total", outcome="succeeded"
        )
        assert value(after, "ledger_run_duration_seconds_count") == 1
        gates = sum(v for (n, _), v in after.items() if n == "ledger_gate_results_total")
        assert gates >= 1
        change = {"direction": "promotion", "from_tier": "A", "to_tier": "B"}
        assert value(after, "ledger_tier_changes_total", **change) == 1
        change = {"direction": "demotion", "from_tier": "B", "to_tier": "A"}
        assert value(after, "ledger_tier_changes_total", **change) == 1
        assert value(after, "ledger_broadcast_deliveries_total", result="rejected") == 1

        # The demotion's alert goes through the outbox to the log channel: its lag is observed.
        async def delivered() -> Samples:
            while True:
                now = await scrape()
                lags = [v for (n, _), v in now.items() if n.endswith("dispatch_lag_seconds_count")]
                if sum(lags) >= 1:
                    return now
                await asyncio.sleep(0.1)

        final = await asyncio.wait_for(delivered(), timeout=20)
        assert value(final, "ledger_outbox_pending") >= 0


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run in this process, called over ASGI."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ledger.test"
        ) as client,
    ):
        yield client


async def test_readyz_fails_when_the_outbox_stalls_or_the_scheduler_stops(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "behaviors").mkdir()
    settings = Settings(
        database_url=database_url,
        behaviors_dir=tmp_path / "behaviors",
        auth="off",
        watch=False,
        outbox_stall_seconds=300,
    )
    app = create_app(settings, clock=SystemClock())
    async with serving(app) as http:
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        daemon = app.state.ledger
        # No dispatcher makes progress, and a row has been due for 10 minutes.
        await daemon.services.dispatcher.stop()
        now = daemon.clock.now()

        def stalled_row() -> None:
            with daemon.db.transaction() as session:
                session.add(
                    OutboxRow(
                        kind="alert",
                        payload={},
                        next_attempt_at=now - timedelta(minutes=10),
                        created_at=now - timedelta(minutes=10),
                    )
                )

        await asyncio.to_thread(stalled_row)
        stalled = await http.get("/readyz")
        assert stalled.status_code == 503
        assert stalled.json()["reason"].startswith(
            "the outbox is stalled: a delivery has been due for 6"
        )
        metrics = samples((await http.get("/metrics")).text)
        assert value(metrics, "ledger_outbox_pending") == 1
        assert value(metrics, "ledger_outbox_oldest_pending_age_seconds") >= 600

        await daemon.services.runner.stop()
        stopped = await http.get("/readyz")
        assert stopped.status_code == 503
        assert stopped.json()["reason"].startswith("the scheduler is not running; the outbox")


@pytest.mark.parametrize("public", [True, False])
async def test_metrics_public_serves_them_without_a_token(
    public: bool, tmp_path: Path, sqlite_db: Database
) -> None:
    (tmp_path / "behaviors").mkdir()
    settings = Settings(
        database_url=str(sqlite_db.engine.url),
        behaviors_dir=tmp_path / "behaviors",
        watch=False,
        metrics_public=public,
    )
    async with serving(create_app(settings)) as http:
        answer = await http.get("/metrics")
        assert answer.status_code == (200 if public else 401)
        assert answer.headers["x-content-type-options"] == "nosniff"
