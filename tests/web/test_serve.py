"""``ledger serve`` as a real process: starts, answers, follows the folder, stops cleanly."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import write_behavior
from tests.daemon import Daemon, names, wait_until


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
    time.sleep(0.5)
    assert "gamma" not in names(url)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "gamma" in names(url), what="SIGHUP to trigger a rescan")
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(20) == 0
