"""``ledger demo``'s pure parts and its receiver: the folder it writes is a valid
configuration with demo-only thresholds (the real defaults untouched), its behaviors load, the
simulator knows their keys, the receiver takes only signed alerts and renders Notion rows, and
the CLI refuses bad options with one line. The whole demo runs in
tests/web/test_demo_browser.py."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from ledger.behaviors.load import check_resolved_keys, load_directory
from ledger.cli.demo import MIN_SECONDS
from ledger.config import Settings
from ledger.demo import stage
from ledger.demo.receiver import (
    ReceivedAlert,
    Receiver,
    alerts_page,
    notion_page,
    notion_table,
    parse_alert,
    property_text,
)
from ledger.demo.run import (
    DemoOptions,
    bind_loopback,
    demo_folder,
    demo_settings,
    first_approvals,
    run_demo,
    tier_changes,
)
from ledger.errors import LedgerError
from ledger.policy import Thresholds
from ledger.signatures import GENERIC_HEADER, sign_generic
from ledger.sim.openrouter import SimConfig
from tests.servers import ledger, serve_app

URLS = stage.Urls(
    dashboard="http://127.0.0.1:8700",
    openrouter="http://127.0.0.1:8701",
    notion="http://127.0.0.1:8702",
    receiver="http://127.0.0.1:8703",
)
SECRETS = stage.DemoSecrets.generate()


def written(tmp_path: Path, every: int = 10) -> stage.Stage:
    return stage.write(
        tmp_path, demo_secrets=SECRETS, urls=URLS, port=8700, every=every, log_level="warning"
    )


# --------------------------------------------------------------------------- the folder


def test_the_demo_folder_is_a_valid_configuration_with_demo_only_thresholds(
    tmp_path: Path,
) -> None:
    folder = written(tmp_path)
    settings = demo_settings(folder.config)
    assert settings.database_url == f"sqlite:///{tmp_path / 'ledger.db'}"
    assert settings.behaviors_dir == tmp_path / "behaviors"
    assert settings.openrouter_base_url == URLS.openrouter
    assert settings.notion_base_url == URLS.notion
    assert settings.public_url == URLS.dashboard
    assert settings.policy == stage.DEMO_POLICY
    assert Thresholds().with_overrides(settings.policy).promote_b_min_days == 0
    channel = settings.alert_channels["demo-receiver"]
    assert channel.url is not None and channel.url.get_secret_value() == URLS.alert_hook
    assert channel.events is not None and "demotion" in channel.events
    # Secrets are file: references to the secrets folder, readable by the owner only.
    token_ref = settings.api_tokens["demo"].get_secret_value()
    assert token_ref == f"file:{folder.secrets / 'token'}"
    assert (folder.secrets / "token").read_text() == SECRETS.token
    assert (folder.secrets / "token").stat().st_mode & 0o077 == 0
    assert SECRETS.token not in folder.config.read_text()


def test_the_real_defaults_are_untouched_by_the_demo() -> None:
    assert Settings().policy == {}
    defaults = Thresholds()
    assert (defaults.promote_b_min_clean_runs, defaults.promote_b_min_days) == (10, 3)
    assert (defaults.promote_c_min_approved, defaults.promote_c_clean_days) == (20, 14)


def test_the_demo_behaviors_load_with_their_schedule_and_keys(tmp_path: Path) -> None:
    folder = written(tmp_path, every=25)
    report = load_directory(folder.behaviors)
    assert report.problems == []
    loaded = [b.behavior for b in report.behaviors]
    assert {b.name for b in loaded} == set(stage.BEHAVIORS)
    assert {b.schedule for b in loaded} == {"25s"}
    assert check_resolved_keys(report) == {}  # every key file resolves, none shared
    tiers = {b.name: (b.start_tier, b.max_tier.value) for b in loaded}
    assert tiers["seo-audit"] == ("A", "A")
    assert tiers["release-notes"][0] == "B"


def test_the_simulator_knows_every_behavior_key_and_broadcasts_to_the_daemon() -> None:
    config = SimConfig.from_mapping(
        stage.simulator_settings(URLS.dashboard, "bt"), source="the demo's simulator"
    )
    assert {k.name: k.key for k in config.keys} == {
        name: stage.simulator_key(name) for name in stage.BEHAVIORS
    }
    assert len({key[:11] + key[-3:] for key in map(stage.simulator_key, stage.BEHAVIORS)}) == 4
    assert set(config.presets) == set(stage.BEHAVIORS)
    assert config.broadcast_url == f"{URLS.dashboard}/v1/traces"
    assert config.broadcast_headers == {"Authorization": "Bearer bt"}


def test_a_schedule_below_the_scheduler_floor_is_refused() -> None:
    assert stage.check_every(10) == 10
    with pytest.raises(ValueError, match="at least 10"):
        stage.check_every(5)
    with pytest.raises(LedgerError, match="--seconds must be at least 10"):
        run_demo(DemoOptions(every=9), say=lambda text: None)
    assert MIN_SECONDS == stage.MIN_EVERY  # the CLI's own copy (it imports nothing heavy)


def test_printed_commands_are_quoted_for_a_shell() -> None:
    line = stage.command_line(["ledger"], "explain", "publisher", "--config", "/tmp/a b/x.toml")
    assert line == "ledger explain publisher --config '/tmp/a b/x.toml'"


def test_a_printed_command_unsets_what_would_override_the_demo_file() -> None:
    assert stage.unset_prefix({"HOME": "/root", "LEDGER_LOG_FORMAT": "json"}) == []
    environ = {"LEDGER_DATABASE_URL": "sqlite:///x.db", "LEDGER_POLICY": "{}"}
    assert stage.unset_prefix(environ) == [
        *("env", "-u", "LEDGER_DATABASE_URL", "-u", "LEDGER_POLICY")
    ]


def test_the_demo_file_wins_over_this_shells_ledger_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = written(tmp_path)
    monkeypatch.setenv("LEDGER_OPENROUTER_BASE_URL", "http://127.0.0.1:8601")
    monkeypatch.setenv("LEDGER_DATABASE_URL", "sqlite:///elsewhere.db")
    settings = demo_settings(folder.config)
    assert settings.openrouter_base_url == URLS.openrouter
    assert settings.database_url == folder.database_url


def test_keep_must_name_a_new_or_empty_folder(tmp_path: Path) -> None:
    assert demo_folder(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(LedgerError, match="not empty"):
        demo_folder(tmp_path / "full")


def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(LedgerError, match=r"cannot listen on 127\.0\.0\.1:\d+.*--port"):
            bind_loopback(taken.getsockname()[1])


def test_tier_changes_are_reported_once_and_not_at_first_sight() -> None:
    tiers: dict[str, str] = {}
    assert tier_changes(tiers, [{"name": "p", "tier": "C"}, {"name": "s", "tier": "A"}]) == []
    lines = tier_changes(tiers, [{"name": "p", "tier": "B"}, {"name": "s", "tier": "B"}])
    assert lines == [
        "p demoted: C · autonomous → B · human-in-the-loop",
        "s promoted: A · proposal-only → B · human-in-the-loop",
    ]
    assert tier_changes(tiers, [{"name": "p", "tier": "B"}]) == []


def test_the_first_approval_request_of_each_behavior_is_reported_once() -> None:
    waiting: set[str] = set()
    assert first_approvals(waiting, [{"name": "r", "pending_approvals": 0}]) == []
    lines = first_approvals(waiting, [{"name": "r", "pending_approvals": 2}, {"name": "s"}])
    assert lines == ["r: an approval request is waiting (dashboard → Approvals)"]
    assert first_approvals(waiting, [{"name": "r", "pending_approvals": 3}]) == []


# --------------------------------------------------------------------------- the receiver


def signed(body: bytes, secret: str) -> dict[str, str]:
    return {GENERIC_HEADER: sign_generic(secret, body, int(time.time()))}


def test_the_receiver_keeps_signed_alerts_once_and_refuses_unsigned_ones() -> None:
    told: list[ReceivedAlert] = []
    receiver = Receiver("s" * 32, URLS.dashboard, URLS.notion, "ntn", on_alert=told.append)
    body = orjson.dumps(
        {"event": "demotion", "behavior": "publisher", "text": "demoted <b>", "delivery": 7}
    )
    with (
        serve_app(receiver.app(), "the demo's receiver") as url,
        httpx.Client(base_url=url) as client,
    ):
        assert client.post("/alerts/hook", content=body).status_code == 401
        forged = client.post("/alerts/hook", content=body, headers=signed(body, "x" * 32))
        assert forged.status_code == 401
        for _ in range(2):  # a retried delivery (same id) is kept once
            answer = client.post("/alerts/hook", content=body, headers=signed(body, "s" * 32))
            assert answer.status_code == 200, answer.text
        assert [
            (a["event"], a["delivery"]) for a in client.get("/alerts.json").json()["alerts"]
        ] == [("demotion", "7")]
        page = client.get("/alerts").text
        assert "publisher" in page and "demoted &lt;b&gt;" in page and "verified" in page
        not_json = b"nope"
        bad = client.post("/alerts/hook", content=not_json, headers=signed(not_json, "s" * 32))
        assert bad.status_code == 400
        assert "not created yet" in client.get("/notion").text


def test_an_alert_body_that_is_not_an_object_is_refused() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_alert(b"[1]", now, verified=True)
    alert = parse_alert(b'{"event": "pause"}', now, verified=False)
    assert (alert.event, alert.behavior, alert.verified) == ("pause", "", False)


def test_the_alerts_page_says_what_to_wait_for_when_empty() -> None:
    assert "No alert yet" in alerts_page([], URLS.dashboard)
    alert = ReceivedAlert(datetime.now(UTC), "demotion", "p", "t", "1", True)
    assert 'id="alert-1"' in alerts_page([alert], URLS.dashboard)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (
            {"type": "title", "title": [{"plain_text": "pub"}, {"plain_text": "lisher"}]},
            "publisher",
        ),
        ({"type": "rich_text", "rich_text": []}, ""),
        ({"type": "select", "select": {"name": "B · human-in-the-loop"}}, "B · human-in-the-loop"),
        ({"type": "select", "select": None}, ""),
        ({"type": "status", "status": {"name": "active"}}, "active"),
        ({"type": "multi_select", "multi_select": [{"name": "a"}, {"name": "b"}]}, "a, b"),
        ({"type": "date", "date": {"start": "2026-01-01"}}, "2026-01-01"),
        ({"type": "date", "date": {"start": "a", "end": "b"}}, "a → b"),
        ({"type": "checkbox", "checkbox": False}, "no"),
        ({"type": "number", "number": 0.5}, "0.5"),
        ({"type": "number", "number": 2.0}, "2"),  # a count, as Notion shows it
        ({"type": "number", "number": 3}, "3"),
        ({"type": "url", "url": "http://x"}, "http://x"),
        ({"type": "relation", "relation": [{"id": "1"}]}, "1 linked"),
        ({"type": "people", "people": [{"id": "u1"}, {"id": "u2", "name": "Ann"}]}, "u1, Ann"),
        ({"type": "formula", "formula": {"type": "string"}}, ""),
        ({}, ""),
    ],
)
def test_notion_property_values_as_text(value: dict[str, object], text: str) -> None:
    assert property_text(value) == text


def test_a_notion_table_puts_the_title_first_and_escapes_cells() -> None:
    pages = [
        {
            "properties": {
                "Tier": {"type": "select", "select": {"name": "C"}},
                "Name": {"type": "title", "title": [{"plain_text": "<i>p</i>"}]},
            }
        },
        {"properties": {"Name": {"type": "title", "title": [{"plain_text": "q"}]}}},
    ]
    table = notion_table("Behaviors", pages)
    assert table.columns == ("Name", "Tier")
    assert table.rows == (("<i>p</i>", "C"), ("q", ""))
    html = notion_page([table])
    assert "&lt;i&gt;p&lt;/i&gt;" in html and "(2 rows)" in html and 'id="notion-behaviors"' in html


# --------------------------------------------------------------------------- the command


def test_ledger_help_does_not_import_the_demo() -> None:
    code = "import sys, ledger.cli; print(*(m in sys.modules for m in ('ledger.demo', 'uvicorn')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def readme_demo_section() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("## Try it in two minutes: `ledger demo`")
    return text[start : text.index("\n## ", start + 1)]


def test_the_help_explains_every_option_the_readme_names(tmp_path: Path) -> None:
    done = ledger("demo", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    for text in ("--port", "--keep", "--seconds", "--no-browser-hint", "DEMO-ONLY", "Ctrl-C"):
        assert text in done.stdout
    section = readme_demo_section()
    assert ".venv/bin/ledger demo\n```" in section
    named = set(re.findall(r"--[a-z][a-z-]+", section))
    assert named >= {"--port", "--keep", "--seconds", "--no-browser-hint"}
    assert all(option in done.stdout for option in named), named


def test_bad_options_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "ledger.db").write_text("")
    done = ledger("demo", "--keep", str(tmp_path / "full"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --keep") and "not empty" in done.stderr
    assert "Traceback" not in done.stderr
    too_fast = ledger("demo", "--seconds", "5", cwd=tmp_path)
    assert too_fast.returncode == 2 and "Traceback" not in too_fast.stderr
    assert "--seconds" in too_fast.stderr
