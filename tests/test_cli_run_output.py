"""What a one-shot command prints, against the OpenRouter simulator as a process of its own:
``ledger run`` prints its result and no info log lines (unless ``ledger --verbose`` or
LEDGER_LOG_LEVEL asks for them), and a run costing a few millionths of a dollar shows in
``ledger status`` as that, not as $0.0000."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import key_env, write_behavior
from tests.servers import cli, free_port, ledger, ledger_process

KEY = "sk-or-v1-runoutput" + "0" * 40
SIM = f"""\
presets:
  test-preset: {{model: openai/gpt-4o-mini, input_price: 0.00000001, output_price: 0.00000002}}
keys:
  - {{key: {KEY}, name: alpha-key}}
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """alpha in ./behaviors, a migrated SQLite database, the simulator listening."""
    write_behavior(tmp_path, "sim", SIM)
    write_behavior(tmp_path / "behaviors", "alpha")
    port = free_port()
    args = ["sim", "openrouter", "--port", str(port), "--presets", str(tmp_path / "sim.yaml")]
    url = f"http://127.0.0.1:{port}"
    with ledger_process(args, log=tmp_path / "sim.log", ready=url + "/_sim/calls", timeout=30):
        shell = {
            "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "LEDGER_BEHAVIORS_DIR": "behaviors",
            "LEDGER_OPENROUTER_BASE_URL": url,
            "LEDGER_ALLOW_PRIVATE_URLS": "true",
            key_env("alpha"): KEY,
        }
        upgraded = cli("db", "upgrade", cwd=tmp_path, env=shell)
        assert upgraded.returncode == 0, upgraded.stderr
        yield shell


def _info_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if '"level": "info"' in line]


def test_a_run_prints_its_result_without_info_logs_and_its_spend_shows(
    tmp_path: Path, env: dict[str, str]
) -> None:
    ran = ledger("run", "alpha", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert _info_lines(ran.stderr) == []
    assert "call_succeeded" not in ran.stderr

    status = cli("status", cwd=tmp_path, env={**env, "COLUMNS": "200"})
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if "alpha" in line]
    assert "/ $1.00 per day" in row
    spend = row.split("/ $1.00 per day")[0].split()[-1]
    assert spend.startswith("$0.0000"), row  # less than a hundredth of a cent: e.g. $0.000031
    assert any(digit in spend for digit in "123456789"), row


@pytest.mark.parametrize(
    ("args", "extra"),
    [(("--verbose",), {}), ((), {"LEDGER_LOG_LEVEL": "info"})],
    ids=["--verbose", "LEDGER_LOG_LEVEL"],
)
def test_verbose_or_a_configured_level_shows_the_info_logs(
    tmp_path: Path, env: dict[str, str], args: tuple[str, ...], extra: dict[str, str]
) -> None:
    ran = cli(*args, "run", "alpha", cwd=tmp_path, env={**env, **extra})
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert any("openrouter.call_succeeded" in line for line in _info_lines(ran.stderr))
