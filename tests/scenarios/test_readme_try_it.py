"""The README's "Try it without an OpenRouter account", followed literally: its blocks are read
from README.md (so the two cannot drift) and run in a fresh shell in a temporary directory,
with only the two ports replaced by free ones."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from ledger.db.models import BehaviorRow, IngestedSpan, Run
from ledger.db.session import Database
from tests.servers import answers, free_port, wait_until

README = Path(__file__).parents[2] / "README.md"
HEADING = "### Try it without an OpenRouter account"
DAEMON_PORT, SIM_PORT = "8600", "8601"
# What a fresh shell does not have: nothing of this machine's ledger/OpenRouter setup.
FOREIGN_ENV = re.compile(r"^(LEDGER_|OPENROUTER_|CONTENT_DIGEST_|BROADCAST_TOKEN)")


def try_it_blocks() -> list[str]:
    """The fenced ``sh`` blocks of the README's try-it section, in order."""
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    section = re.split(r"\n#{2,6} ", text.split(HEADING, 1)[1], maxsplit=1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


@dataclass
class TryIt:
    shell: subprocess.Popen[bytes]
    env: dict[str, str]  # the shell's environment once the first block ran
    cwd: Path
    daemon_url: str
    sim_url: str
    next_steps: list[str]  # the second block's commands, ports replaced
    log: Path

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """Type ``command`` into the same shell: its environment and directory."""
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env={**self.env, "COLUMNS": "200"},  # a wide terminal: one table row per line
            capture_output=True,
            text=True,
            timeout=60,
        )

    def step(self, program: str) -> str:
        [command] = [c for c in self.next_steps if c.startswith(program)]
        return command


@pytest.fixture(scope="module")
def try_it(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TryIt]:
    setup, next_steps = try_it_blocks()[:2]
    daemon_port, sim_port = str(free_port()), str(free_port())
    for port in (DAEMON_PORT, SIM_PORT):
        assert re.search(rf"\b{port}\b", setup), f"the try-it block no longer uses port {port}"
    for old, new in ((DAEMON_PORT, daemon_port), (SIM_PORT, sim_port)):
        setup = re.sub(rf"\b{old}\b", new, setup)
        next_steps = re.sub(rf"\b{old}\b", new, next_steps)

    tmp = tmp_path_factory.mktemp("try-it")
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "ledger").exists(), f"no ledger command next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if not FOREIGN_ENV.match(k)}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env_file, log = tmp / "shell.env", tmp / "shell.log"
    # The block as pasted; then the shell's environment is saved (for the next commands) and
    # the shell stays up with its background jobs, like the operator's terminal.
    script = f"{setup}\nenv -0 > {env_file}.part && mv {env_file}.part {env_file}\nwait\n"
    with log.open("wb") as out:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            cwd=tmp,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the jobs end with it
        )
    try:

        def block_ran() -> bool:
            assert shell.poll() is None, log.read_text()
            return env_file.exists()

        wait_until(block_ran, timeout=30, what="the try-it block to run")
        pairs = [p.split("=", 1) for p in env_file.read_text().split("\0") if "=" in p]
        shell_env = {k: v for k, v in pairs}
        yield TryIt(
            shell=shell,
            env=shell_env,
            cwd=Path(shell_env["PWD"]),
            daemon_url=f"http://127.0.0.1:{daemon_port}",
            sim_url=f"http://127.0.0.1:{sim_port}",
            next_steps=[line for line in next_steps.splitlines() if line.strip()],
            log=log,
        )
    finally:
        os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(10)
        urls = (f"http://127.0.0.1:{daemon_port}/healthz", f"http://127.0.0.1:{sim_port}")
        try:
            wait_until(
                lambda: not any(answers(u, status=None) for u in urls), timeout=15, what="shutdown"
            )
        except AssertionError:
            os.killpg(shell.pid, signal.SIGKILL)


@pytest.mark.slow
def test_readme_try_it_runs_quick_digest_and_attributes_its_broadcast_within_60_s(
    try_it: TryIt,
) -> None:
    status = try_it.step("ledger status")
    seen: list[str] = []

    def status_shows_run_and_broadcast() -> bool:
        result = try_it.run(status)
        assert result.returncode == 0, result.stderr
        seen[:] = [result.stdout]
        return bool(
            re.search(r"quick-digest .*· succeeded", result.stdout)
            and re.search(r"broadcast: last delivery \d+[smhd] ago · 0 waiting", result.stdout)
        )

    try:
        wait_until(status_shows_run_and_broadcast, timeout=60, what="a run and its broadcast")
    except AssertionError:
        pytest.fail(f"ledger status:\n{seen}\nshell:\n{try_it.log.read_text()}")

    assert " 0 unattributed span(s)" in seen[0]
    db = Database.open(f"sqlite:///{try_it.cwd / 'ledger.db'}")
    try:
        with db.transaction() as session:
            digest = session.execute(
                select(BehaviorRow).where(BehaviorRow.name == "quick-digest")
            ).scalar_one()
            runs = session.execute(select(Run).where(Run.behavior_id == digest.id)).scalars()
            reported = [r for r in runs if r.broadcast_cost_usd is not None]
            spans = session.execute(select(IngestedSpan)).scalars().all()
    finally:
        db.close()
    # The simulator's report of the run's call counted for quick-digest, at the run's cost.
    assert reported, "no quick-digest run has a broadcast cost"
    run = reported[0]
    assert run.status == "succeeded"
    assert run.broadcast_cost_usd == pytest.approx(run.cost_usd)
    assert {s.behavior_id for s in spans if s.run_id == run.id} == {digest.id}


def test_readme_keys_check_passes_against_the_simulator(try_it: TryIt) -> None:
    wait_until(
        lambda: answers(f"{try_it.sim_url}/api/v1/models", status=None), what="the simulator"
    )

    result = try_it.run(try_it.step("ledger keys check"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ok: every behavior has its own enabled key, capped within its budget"
    ]
