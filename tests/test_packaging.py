"""An installed wheel carries its migrations and the dashboard's templates and assets: build
it, install it in a fresh virtual environment, and run ``ledger db upgrade`` and ``ledger
serve`` far from the checkout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from ledger.db.migrate import CHECKOUT_DIR
from tests.servers import free_port, process

REPO = Path(__file__).resolve().parent.parent


def _checkout_head() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(CHECKOUT_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    out: str = done.stdout
    return out


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_upgrades_the_database_and_serves(
    tmp_path: Path,
) -> None:
    # Build from a copy, so the build's own folders (build/, *.egg-info) stay out of the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", "tests", "*.db*"
        ),
    )
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)])
    (wheel,) = dist.glob("promotion_ledger-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)])

    site = tmp_path / "site"  # not the checkout: nothing here but what the operator brings
    site.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "LEDGER_DATABASE_URL": f"sqlite:///{site / 'ledger.db'}",
        "LEDGER_BEHAVIORS_DIR": str(site / "behaviors"),
        "LEDGER_LOG_FORMAT": "json",
    }
    found = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "from ledger.db import migrate; print(migrate.migrations_dir())",
        ],
        cwd=site,
        env=env,
    )
    assert Path(found.strip()).is_relative_to(venv), found

    upgraded = _run([str(bin_dir / "ledger"), "db", "upgrade"], cwd=site, env=env)
    assert upgraded.strip() == f"database at revision {_checkout_head()}"

    port = free_port()
    with process(
        [str(bin_dir / "ledger"), "serve", "--port", str(port)],
        log=tmp_path / "serve.log",
        ready=f"http://127.0.0.1:{port}/healthz",
        env=env,
        cwd=site,
    ) as proc:
        # The dashboard's templates and assets are package data of the wheel.
        login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=10)
        assert login.status_code == 200 and "API token" in login.text, login.text
        for asset in ("app.css", "app.js", "favicon.svg"):
            served = httpx.get(f"http://127.0.0.1:{port}/static/dashboard/{asset}", timeout=10)
            assert served.status_code == 200, asset
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
