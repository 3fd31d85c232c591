"""``ledger sim openrouter`` and ``ledger sim notion`` as an operator starts them: a port in
use is one line and exit 2 before anything starts, the "on http://…" line comes once the
simulator listens, and SIGTERM stops it cleanly (exit 0), as ``ledger serve`` does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import cli, free_port

SIMS = {
    "openrouter": ("OpenRouter simulator on ", "/_sim/calls"),
    "notion": ("Notion simulator on ", "/_sim/requests"),
}


@pytest.mark.parametrize("sim", sorted(SIMS))
def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path, sim: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("sim", sim, "--port", str(port), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (is the simulator "
        "already running? stop it or choose another --port)\n"
    )
    assert "simulator on" not in result.stdout  # it never claimed to listen


@pytest.mark.parametrize("sim", sorted(SIMS))
def test_it_says_where_it_listens_once_it_does_and_stops_cleanly_on_sigterm(
    tmp_path: Path, sim: str
) -> None:
    announced, probe = SIMS[sim]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", "sim", sim, "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "LEDGER_LOG_FORMAT": "json"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"{announced}http://127.0.0.1:{port}"), line
        # Said once listening: the first request after the line is answered.
        assert httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err
