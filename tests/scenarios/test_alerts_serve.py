"""Demotion alerts from a real ``ledger serve``: behaviors at C · autonomous run against the
OpenRouter simulator, which answers with a planted key (an injected ``sensitive_output``
fault); their output check blocks it, they are demoted, and the alert reaches a local
Slack-compatible receiver and a signed webhook receiver within seconds (the median is
measured) — with blocks that show the tier change, and without the planted key. When one earns
its tier back, the Slack channel (which heard the demotion and asks for recoveries) hears it."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from sqlmodel import col, select

from ledger.db.models import LedgerEntry
from ledger.db.session import Database
from ledger.signatures import GENERIC_HEADER, verify_generic
from ledger.sim.hosting import run_asgi_in_thread
from ledger.sim.openrouter import Preset, SimConfig, SimKey, run_in_thread
from tests.daemon import Daemon, wait_until
from tests.outbox import Capture

PLANTED = "sk-or-v1-" + "a1e27a1e27" * 6 + "beef"  # key-shaped, nobody's real key
NEEDLES = [PLANTED, "a1e27a1e27"]
NAMES = [f"bot-{n}" for n in range(5)]
KEYS = {name: f"sk-or-v1-alerts{n}" + str(n) * 48 for n, name in enumerate(NAMES)}
SECRET = "hook-signing-secret-" + "9" * 16

TOML = """\
public_url = "https://ledger.example.com"
allow_private_urls = true

[alert_channels.chat]
type = "slack"
url = "env:ALERTS_SLACK_URL"
events = ["demotion", "pause", "auth_error", "recovery"]

[alert_channels.hook]
type = "webhook"
url = "env:ALERTS_HOOK_URL"
secret = "env:ALERTS_HOOK_SECRET"
"""


def _behavior(name: str) -> str:
    return (
        f"schedule: 10s\npreset: writer\napi_key: env:ALERTS_KEY_{name.upper().replace('-', '_')}\n"
        f"key_name: {name}\nprompt: 'write the deploy note'\n"
        "checks:\n  sensitive_info: block\n"
    )


def _demotions(database_url: str) -> dict[str, datetime]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            entries = session.exec(
                select(LedgerEntry)
                .where(col(LedgerEntry.kind) == "demoted")
                .order_by(col(LedgerEntry.id))
            ).all()
            first: dict[str, datetime] = {}
            for e in entries:
                first.setdefault(e.behavior_name or "", e.created_at)
            return first
    finally:
        db.close()


def test_a_demotion_reaches_slack_in_seconds_with_blocks_and_no_secret(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    folder = tmp_path / "behaviors"
    folder.mkdir()
    for name in NAMES:
        (folder / f"{name}.yaml").write_text(_behavior(name))
    (tmp_path / "ledger.toml").write_text(TOML)
    config = SimConfig(
        presets={"writer": Preset(model="openai/gpt-4o-mini", output="a fine deploy note")},
        keys=[SimKey(key=key, name=name) for name, key in KEYS.items()],
    )
    capture = Capture()
    with run_in_thread(config) as sim, run_asgi_in_thread(capture.app(), "alert receiver") as rx:
        capture.base_url = rx
        env = {
            "LEDGER_OPENROUTER_BASE_URL": sim,
            "LEDGER_AUTH": "off",
            "ALERTS_SLACK_URL": capture.url("slack"),
            "ALERTS_HOOK_URL": capture.url("hook"),
            "ALERTS_HOOK_SECRET": SECRET,
            **{f"ALERTS_KEY_{n.upper().replace('-', '_')}": k for n, k in KEYS.items()},
        }
        daemon = start_daemon(database_url, env)
        with httpx.Client(base_url=daemon.base_url, timeout=30) as api:
            for name in NAMES:
                promoted = api.post(
                    f"/api/behaviors/{name}/promote", json={"reason": "trusted", "to": "C"}
                )
                assert promoted.status_code == 200, promoted.text
            # From now on the simulator answers every call with the planted key.
            injected = httpx.post(
                f"{sim}/_sim/faults",
                json={"kind": "sensitive_output", "text": f"Deploy with {PLANTED} today."},
                timeout=10,
            )
            assert injected.status_code in (200, 201), injected.text
            wait_until(
                lambda: (
                    {r.json()["blocks"][0]["text"]["text"] for r in capture.to("slack")}
                    >= {f"{name} demoted" for name in NAMES}
                ),
                timeout=60,
                what="a demotion alert per behavior at the Slack receiver",
            )
            wait_until(
                lambda: len(capture.to("hook")) >= len(NAMES), timeout=30, what="the webhooks"
            )
            for name in NAMES:
                api.post(f"/api/behaviors/{name}/pause", json={"reason": "test over"})
            # An operator gives bot-0 its tier back: the channel that heard the demotion and
            # asks for recoveries hears it; the webhook (default events) does not.
            promoted = api.post(
                "/api/behaviors/bot-0/promote", json={"reason": "fixed the prompt", "to": "C"}
            )
            assert promoted.status_code == 200, promoted.text
            wait_until(
                lambda: any(
                    r.json()["text"].startswith("bot-0 recovered: promoted from ")
                    for r in capture.to("slack")
                ),
                timeout=30,
                what="the recovery at the Slack receiver",
            )
        demoted_at = _demotions(database_url)
    slack = capture.to("slack")
    received = {}
    for request in slack:
        title = request.json()["blocks"][0]["text"]["text"]
        if title.endswith(" demoted"):
            received.setdefault(title.removesuffix(" demoted"), request.at)
    latencies = [received[name] - demoted_at[name].timestamp() for name in NAMES]
    median = statistics.median(latencies)
    print(
        f"demotion → Slack receiver: median {median:.3f} s, max {max(latencies):.3f} s "
        f"over {len(latencies)} demotions"
    )
    assert median < 5.0, latencies
    first = next(
        r.json() for r in slack if r.json()["blocks"][0]["text"]["text"] == "bot-0 demoted"
    )
    fields = {f["text"] for f in first["blocks"][1]["fields"]}
    assert "*Tier*\nC · autonomous → B · human-in-the-loop" in fields
    assert "*Behavior*\nbot-0" in fields
    assert any(
        "<https://ledger.example.com/behaviors/bot-0|Open bot-0 in the dashboard>"
        in b.get("text", {}).get("text", "")
        for b in first["blocks"]
    )
    assert first["text"].startswith("bot-0 demoted from C · autonomous to B · human-in-the-loop")
    assert not any(r.json()["event"] == "recovery" for r in capture.to("hook"))
    for request in capture.to("hook"):
        verify_generic(
            request.headers[GENERIC_HEADER.lower()], request.body, [SECRET], now=request.at
        )  # raises unless signed with the shared secret
    everything = b"".join(r.body for r in capture.requests)
    for needle in NEEDLES:
        assert needle.encode() not in everything, needle
        assert needle not in daemon.log(), needle
