"""``ledger notion init | status | sync`` as an operator runs them against the simulator: one
clear line for every mistake, never the token."""

from __future__ import annotations

import json
from pathlib import Path

from tests.daemon import ledger
from tests.notion.conftest import ROOT, TOKEN, TOKEN_ENV, NotionSim


def _env(tmp_path: Path, sim: NotionSim, token: str = f"env:{TOKEN_ENV}") -> dict[str, str]:
    return {
        "LEDGER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "LEDGER_NOTION_TOKEN": token,
        TOKEN_ENV: TOKEN,
        "LEDGER_NOTION_BASE_URL": sim.base_url,
    }


def test_init_status_and_sync(tmp_path: Path, notion_sim: NotionSim) -> None:
    env = _env(tmp_path, notion_sim)
    assert ledger("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    no_token = {k: v for k, v in env.items() if k != "LEDGER_NOTION_TOKEN"}
    off = ledger("notion", "status", cwd=tmp_path, env=no_token)
    assert off.stdout.startswith("Notion mirror: off. Notion is off: set LEDGER_NOTION_TOKEN")
    before = ledger("notion", "status", cwd=tmp_path, env=env)
    assert "not set up (run `ledger notion init --parent PAGE_ID`)" in before.stdout
    before_json = json.loads(ledger("notion", "status", "--json", cwd=tmp_path, env=env).stdout)
    assert before_json["state"] == "not_set_up" and before_json["configured"] is False
    init = ledger("notion", "init", "--parent", ROOT.replace("-", ""), cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stderr
    again = ledger("notion", "init", "--parent", ROOT, cwd=tmp_path, env=env)
    assert "Behaviors  adopted" in again.stdout
    status = json.loads(ledger("notion", "status", "--json", cwd=tmp_path, env=env).stdout)
    assert status["configured"] and status["queued"] == 0 and status["dead"] == 0
    assert set(status["databases"]) == {"behaviors", "ledger", "approvals"}
    assert status["state"] == "ok" and status["last_poll_at"] is None
    text = ledger("notion", "status", cwd=tmp_path, env=env).stdout.splitlines()
    assert text[-3].startswith("  queued: 0   dead letters: 0")
    assert text[-2] == "  last sync: never   last poll: never"
    assert text[-1] == "  state: ok. Nothing to do: Notion follows the ledger."
    sync = ledger("notion", "sync", cwd=tmp_path, env=env)
    assert sync.returncode == 0, sync.stderr
    assert "0 rows compared" in sync.stdout


def test_mistakes_are_one_clear_line_without_the_token(
    tmp_path: Path, notion_sim: NotionSim
) -> None:
    env = _env(tmp_path, notion_sim)
    assert ledger("db", "upgrade", cwd=tmp_path, env=env).returncode == 0
    cases = {
        "must be a secret reference": (_env(tmp_path, notion_sim, TOKEN), ROOT),
        "is not a Notion page id": (env, "my-page"),
        "404 object_not_found": (env, "0d1e0000-0000-4000-8000-000000000404"),
        "401 unauthorized": ({**env, TOKEN_ENV: "secret_wrong"}, ROOT),
    }
    for expected, (case_env, parent) in cases.items():
        result = ledger("notion", "init", "--parent", parent, cwd=tmp_path, env=case_env)
        assert result.returncode == 2, (expected, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], (expected, result.stderr)
        assert "Traceback" not in result.stderr
        assert TOKEN not in result.stdout + result.stderr
