"""``ledger serve`` as a real process: starts, answers, follows the folder, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.factories import write_behavior
from tests.servers import Daemon, free_port, ledger, names, wait_until


def test_serve_starts_reconciles_follows_the_folder_and_stops_on_sigterm(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    folder = tmp_path / "behaviors"
    write_behavior(folder, "alpha")
    daemon = start_daemon(database_url)
    assert httpx.get(daemon.base_url + "/readyz").json() == {"status": "ready"}
    assert names(database_url) == {"alpha": False}

    write_behavior(folder, "beta")
    wait_until(lambda: names(database_url).get("beta") is False, what="beta to register")
    (folder / "alpha.yaml").unlink()
    wait_until(lambda: names(database_url).get("alpha") is True, what="alpha to retire")

    missing = httpx.get(daemon.base_url + "/api/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    log = daemon.log()
    assert '"event": "ledger stopped"' in log
    assert "Traceback" not in log


def test_sighup_rescans_the_folder(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    url = f"sqlite:///{tmp_path / 'hup.db'}"
    daemon = start_daemon(url, {"LEDGER_WATCH": "false", "LEDGER_RESCAN_SECONDS": "3600"})
    write_behavior(tmp_path / "behaviors", "gamma")
    # Nothing but the signal registers it: the rescan SIGHUP starts is the one that logs
    # registering gamma (below), so no rescan before it did.
    assert "gamma" not in names(url)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "gamma" in names(url), what="SIGHUP to trigger a rescan")

    def logged(found: str) -> Callable[[], bool]:
        return lambda: any(
            entry.get("event") == "SIGHUP: behaviors folder rescanned" and entry["found"] == found
            for entry in (json.loads(line) for line in daemon.log().splitlines() if line[:1] == "{")
        )

    # What the rescan found is logged, names included, and so is finding nothing.
    wait_until(logged("1 registered (gamma)"), what="the rescan to be logged")
    assert '"registered": ["gamma"]' in daemon.log()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(logged("no changes"), what="a rescan that found nothing to be logged")
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(20) == 0


def _serve(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger", "serve", *args],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_auth_off_on_a_public_address_is_one_line_and_exit_2_before_the_server_starts(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "never.db"
    result = _serve(
        tmp_path,
        "--host",
        "0.0.0.0",  # noqa: S104 — the address being refused
        env={"LEDGER_AUTH": "off", "LEDGER_DATABASE_URL": f"sqlite:///{db_file}"},
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: LEDGER_AUTH=off is only allowed when listening on loopback, not 0.0.0.0: "
        "listen on 127.0.0.1 (--host), or leave auth on and configure [api_tokens] "
        "(docs/api.md)\n"
    )
    assert "Started server process" not in result.stdout + result.stderr
    assert not db_file.exists()


def test_every_unresolvable_reference_is_reported_at_once_before_the_server_starts(
    tmp_path: Path,
) -> None:
    result = _serve(
        tmp_path,
        env={
            "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}",
            "LEDGER_API_TOKENS": '{"ops": "env:FIRSTHOUR_UNSET_OPS"}',
            "LEDGER_WEBHOOK_SOURCES": '{"deploys": {"secrets": "env:FIRSTHOUR_UNSET_HOOK"}}',
            "LEDGER_ALERT_CHANNELS": '{"ops": {"type": "slack"}}',
        },
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: api_tokens: secret reference env:FIRSTHOUR_UNSET_OPS: environment variable "
        "FIRSTHOUR_UNSET_OPS is not set",
        "error: webhook_sources.deploys.secrets: secret reference env:FIRSTHOUR_UNSET_HOOK: "
        "environment variable FIRSTHOUR_UNSET_HOOK is not set",
        "error: alert_channels.ops: a slack channel needs a url (a reference: env:NAME)",
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_in_use_is_listed_with_the_other_startup_problems(tmp_path: Path) -> None:
    """The README promises every start-up problem at once: the busy port too, not only the
    references (and the database is left alone while the configuration is wrong)."""
    db_file = tmp_path / "l.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(
            tmp_path,
            "--port",
            str(port),
            env={
                "LEDGER_DATABASE_URL": f"sqlite:///{db_file}",
                "LEDGER_API_TOKENS": '{"ops": "env:FIRSTHOUR_UNSET_OPS"}',
                "LEDGER_ALERT_CHANNELS": '{"ops": {"type": "slack", "url": "env:FIRSTHOUR_NO"}}',
            },
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: api_tokens: secret reference env:FIRSTHOUR_UNSET_OPS: environment variable "
        "FIRSTHOUR_UNSET_OPS is not set",
        "error: alert_channels.ops: secret reference env:FIRSTHOUR_NO: environment variable "
        "FIRSTHOUR_NO is not set",
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (is another daemon "
        "running? stop it or choose another --port)",
    ]
    assert not db_file.exists()


def test_a_fresh_daemon_says_where_the_dashboard_is_and_how_to_make_a_token(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon(f"sqlite:///{tmp_path / 'fresh.db'}")
    plain = [line for line in daemon.log().splitlines() if not line.startswith("{")]
    assert plain == [
        f"dashboard: {daemon.base_url}/",
        "no API tokens yet: create one with `ledger token create NAME --role operator` (it "
        "prints the token once; or set [api_tokens] in ledger.toml), then paste it on the "
        "login page",
    ]
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0


def test_with_a_token_only_the_dashboard_address_is_said(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    upgraded = ledger("db", "upgrade", cwd=tmp_path, env={"LEDGER_DATABASE_URL": url})
    assert upgraded.returncode == 0, upgraded.stderr
    made = ledger(
        "token",
        "create",
        "ana",
        "--role",
        "operator",
        cwd=tmp_path,
        env={"LEDGER_DATABASE_URL": url},
    )
    assert made.returncode == 0, made.stderr
    daemon = start_daemon(url)
    plain = [line for line in daemon.log().splitlines() if not line.startswith("{")]
    assert plain == [f"dashboard: {daemon.base_url}/"]


def test_a_port_in_use_or_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _serve(
            tmp_path,
            "--port",
            str(port),
            env={"LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}"},
        )
    assert busy.returncode == 2
    assert busy.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert busy.stderr.count("\n") == 1

    closed = free_port()
    down = _serve(
        tmp_path,
        env={"LEDGER_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/nothing"},
    )
    assert down.returncode == 2
    assert down.stderr.startswith(
        f"error: cannot open the database postgresql+psycopg://postgres@127.0.0.1:{closed}/"
        "nothing: "
    )
    assert down.stderr.endswith("(check LEDGER_DATABASE_URL and that the server is up)\n")
    assert down.stderr.count("\n") == 1
    assert "Traceback" not in down.stdout + down.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_open_dashboard_stream_does_not_hold_up_the_stop(
    tmp_path: Path, start_daemon: Callable[..., Daemon], stop: signal.Signals
) -> None:
    daemon = start_daemon(f"sqlite:///{tmp_path / 'stream.db'}", {"LEDGER_AUTH": "off"})
    with (
        httpx.Client(base_url=daemon.base_url, timeout=30) as client,
        client.stream("GET", "/events/board") as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "retry: 1000"
        assert next(lines) == ""
        assert next(lines) == "event: changed"  # the stream is live: the feed's first version

        daemon.proc.send_signal(stop)
        # The stream ends cleanly (a complete response, no broken connection), and so does the
        # process, without the 10 s uvicorn would wait for open requests (it logs "timeout
        # graceful shutdown exceeded" when it gives up on them). The stop itself may take
        # several seconds on a busy machine (the broadcast processor's child stops too).
        list(lines)
        assert daemon.proc.wait(30) == 0
    log = daemon.log()
    assert '"event": "ledger stopped"' in log
    assert "Traceback" not in log
    assert "graceful shutdown exceeded" not in log
