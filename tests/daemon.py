"""Helpers for tests that run ``ledger serve`` as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from sqlalchemy import select

from ledger.db.models import BehaviorRow
from ledger.db.session import Database
from tests.conftest import free_port


class Daemon:
    def __init__(self, proc: subprocess.Popen[str], base_url: str, log_path: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text()


def ledger(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m ledger ARGS`` as an operator runs it (JSON logs, 60 s at most)."""
    full_env = {**os.environ, "LEDGER_LOG_FORMAT": "json", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ledger", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def daemon_starter(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    procs: list[subprocess.Popen[str]] = []

    def start(database_url: str, env: dict[str, str] | None = None) -> Daemon:
        port = free_port()
        log_path = tmp_path / f"serve-{port}.log"
        full_env = {
            **os.environ,
            "LEDGER_DATABASE_URL": database_url,
            "LEDGER_BEHAVIORS_DIR": str(tmp_path / "behaviors"),
            "LEDGER_LOG_FORMAT": "json",
            "LEDGER_RESCAN_SECONDS": "1",
            **(env or {}),
        }
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ledger", "serve", "--port", str(port)],
                cwd=tmp_path,
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                text=True,
            )
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(base + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, log_path.read_text()
                return False

        wait_until(healthy, timeout=60, what="the daemon to answer /healthz")
        return Daemon(proc, base, log_path)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def names(database_url: str) -> dict[str, bool]:
    db = Database.open(database_url)
    try:
        with db.transaction() as session:
            return {r.name: r.retired for r in session.execute(select(BehaviorRow)).scalars()}
    finally:
        db.close()
