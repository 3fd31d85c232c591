"""A wrong configuration stops every command at once with one line per problem, located where
the operator wrote it (``ledger.toml:LINE:COL``, the variable, the option), exit 2: never a
traceback, never accepted and then failing at run time."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.config import load_settings
from ledger.errors import ConfigError
from ledger.policy import threshold_problems
from ledger.toml_positions import toml_positions
from tests.factories import VALID_BEHAVIOR, write_behavior
from tests.servers import Daemon, cli, ledger


def _env(**values: str) -> dict[str, str]:
    """This process's environment without its LEDGER_* variables, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LEDGER_")}
    return {**env, "LEDGER_LOG_FORMAT": "json", **values}


def _fails_with(result: object, line: str) -> None:
    stderr = getattr(result, "stderr", "")
    assert getattr(result, "returncode", None) == 2, stderr
    assert "Traceback" not in stderr and "SettingsError" not in stderr
    assert stderr.splitlines() == [f"error: {line}"]


# -- [policy] ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "line"),
    [
        ("warn_limt = 3", "ledger.toml:2:1: policy.warn_limt: unknown threshold (did you mean "
         "warn_limit?)"),
        ('warn_limit = "three"', 'ledger.toml:2:14: policy.warn_limit: must be a whole number '
         'from 1 to 100, got "three"'),
        ("warn_limit = 50", "ledger.toml:2:14: policy.warn_limit: warn_limit (50) must not "
         "exceed warn_window_runs (10), or warns could never demote"),
        ("warn_limit = -1", "ledger.toml:2:14: policy.warn_limit: must be a whole number from 1 "
         "to 100, got -1"),
        ("cooldown_days = 7.5", "ledger.toml:2:17: policy.cooldown_days: must be a whole number "
         "from 0 to 365, got 7.5"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", [["config"], ["validate"], ["serve"], ["status"]])
def test_an_invalid_policy_table_stops_every_command(
    tmp_path: Path, policy: str, line: str, command: list[str]
) -> None:
    (tmp_path / "ledger.toml").write_text(f"[policy]\n{policy}\n")
    (tmp_path / "behaviors").mkdir()
    _fails_with(cli(*command, cwd=tmp_path, env=_env()), line)


def test_the_policy_from_the_environment_is_checked_the_same_way(tmp_path: Path) -> None:
    result = cli("config", cwd=tmp_path, env=_env(LEDGER_POLICY='{"warn_limt": 3}'))
    _fails_with(result, "LEDGER_POLICY: warn_limt: unknown threshold (did you mean warn_limit?)")
    result = cli("config", cwd=tmp_path, env=_env(LEDGER_POLICY='{"warn_window_runs": 2}'))
    _fails_with(
        result,
        "LEDGER_POLICY: warn_window_runs: warn_limit (3) must not exceed warn_window_runs (2), "
        "or warns could never demote",
    )
    ok = cli("config", cwd=tmp_path, env=_env(LEDGER_POLICY='{"warn_limit": 2}'))
    assert ok.returncode == 0, ok.stderr
    assert 'policy = {"warn_limit": 2}' in ok.stdout


def test_a_valid_policy_table_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "ledger.toml").write_text(
        "[policy]\nwarn_limit = 2\nwarn_window_runs = 5\npromote_c_min_approval_rate = 1\n"
    )
    result = cli("config", cwd=tmp_path, env=_env())
    assert result.returncode == 0, result.stderr
    assert "policy = " in result.stdout


def test_threshold_problems_name_each_threshold() -> None:
    assert threshold_problems({"warn_limit": 2, "cooldown_days": 0}) == []
    problems = threshold_problems({"warn_limt": 3, "cooldown_days": True, "warn_limit": 11})
    assert [(p.name, p.message) for p in problems] == [
        ("warn_limt", "unknown threshold (did you mean warn_limit?)"),
        ("cooldown_days", "must be a whole number from 0 to 365, got true"),
        (
            "warn_limit",
            "warn_limit (11) must not exceed warn_window_runs (10), or warns could never demote",
        ),
    ]
    (unknown,) = threshold_problems({"zzz": 1})
    assert unknown.message.startswith("unknown threshold (known: warn_limit, warn_window_runs")


# -- a behavior's policy over the [policy] table ----------------------------------------------

POLICY_BEHAVIOR = VALID_BEHAVIOR.format(key_env="K_ALPHA", name="alpha") + (
    "policy:\n  warn_limit: 5\n"  # line 13
)


def test_validate_checks_a_behavior_policy_over_the_global_one(tmp_path: Path) -> None:
    (tmp_path / "ledger.toml").write_text("[policy]\nwarn_window_runs = 3\n")
    write_behavior(tmp_path / "behaviors", "alpha", POLICY_BEHAVIOR)
    result = cli("validate", cwd=tmp_path, env=_env(K_ALPHA="sk-or-v1-" + "a" * 64))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{Path('behaviors') / 'alpha.yaml'}:13:15: policy.warn_limit: warn_limit (5) must not "
        "exceed warn_window_runs (3), or warns could never demote (from the configuration's "
        "[policy]: warn_window_runs = 3)"
    ]
    # Without the [policy] table the same file is valid (5 <= the default 10).
    (tmp_path / "ledger.toml").unlink()
    assert cli("validate", cwd=tmp_path, env=_env()).returncode == 0


def test_validate_of_a_folder_still_reports_a_broken_configuration(tmp_path: Path) -> None:
    (tmp_path / "ledger.toml").write_text("[policy]\nwarn_limt = 3\n")
    write_behavior(tmp_path / "behaviors", "alpha", POLICY_BEHAVIOR)
    result = cli("validate", "behaviors", cwd=tmp_path, env=_env(K_ALPHA="k"))
    _fails_with(
        result, "ledger.toml:2:1: policy.warn_limt: unknown threshold (did you mean warn_limit?)"
    )


def test_the_daemon_scan_shows_the_file_invalid_and_never_registers_it(tmp_path: Path) -> None:
    from sqlmodel import select

    from ledger.clock import FakeClock
    from ledger.daemon import Daemon
    from ledger.db.models import BehaviorRow, FileProblem
    from ledger.db.session import Database
    from tests.conftest import T0

    write_behavior(tmp_path / "behaviors", "alpha", POLICY_BEHAVIOR)
    (tmp_path / "ledger.toml").write_text(
        f'behaviors_dir = "{tmp_path / "behaviors"}"\n[policy]\nwarn_window_runs = 3\n'
    )
    settings = load_settings(tmp_path / "ledger.toml")
    db = Database.open(f"sqlite:///{tmp_path / 'ledger.db'}", migrate=True)
    try:
        daemon = Daemon(settings=settings, db=db, clock=FakeClock(T0))
        summary = daemon._reconcile_sync()
        assert summary.registered == []
        assert summary.invalid == [str(tmp_path / "behaviors" / "alpha.yaml")]
        with db.transaction() as session:
            assert session.exec(select(BehaviorRow)).all() == []
            (problem,) = session.exec(select(FileProblem)).all()
        assert problem.problems.endswith(
            "alpha.yaml:13:15: policy.warn_limit: warn_limit (5) must not exceed "
            "warn_window_runs (3), or warns could never demote (from the configuration's "
            "[policy]: warn_window_runs = 3)"
        )
    finally:
        db.close()


def test_ledger_serve_shows_the_file_invalid_with_its_problem(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    import httpx

    from tests.databases import sqlite_url

    write_behavior(tmp_path / "behaviors", "alpha", POLICY_BEHAVIOR)
    daemon = start_daemon(
        sqlite_url(tmp_path / "ledger.db"),
        {"LEDGER_POLICY": '{"warn_window_runs": 3}', "LEDGER_AUTH": "off", "K_ALPHA": "k"},
    )
    with httpx.Client(base_url=daemon.base_url, timeout=30) as client:
        assert client.get("/api/behaviors/alpha").status_code == 404
        (invalid,) = client.get("/api/status").json()["invalid_files"]
    assert invalid["path"].endswith("alpha.yaml")
    assert invalid["problems"].endswith(
        "alpha.yaml:13:15: policy.warn_limit: warn_limit (5) must not exceed warn_window_runs "
        "(3), or warns could never demote (from the configuration's [policy]: "
        "warn_window_runs = 3)"
    )


def test_a_registered_policy_that_no_longer_fits_never_breaks_a_reader(tmp_path: Path) -> None:
    """Registered while valid, then ledger.toml's [policy] changed: the file is refused at the
    next scan but the registered version keeps running; explain, the API and recording runs
    read its thresholds without an exception."""
    import asyncio

    import httpx

    from ledger.behaviors.registry import reconcile_directory
    from ledger.clock import SystemClock
    from ledger.db.session import Database
    from ledger.transitions import PolicyContext, lock_behavior, thresholds_for
    from ledger.web.app import create_app
    from tests.conftest import T0

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    write_behavior(tmp_path / "behaviors", "alpha", POLICY_BEHAVIOR)
    db = Database.open(url, migrate=True)
    try:
        with db.transaction() as session:
            reconcile_directory(session, tmp_path / "behaviors", T0)
            row = lock_behavior(session, name="alpha")
            ctx = PolicyContext(global_overrides={"warn_window_runs": 3})
            thresholds = thresholds_for(row, ctx)
        # warn_limit 5 cannot be kept with a window of 3: the window is, the limit is not.
        assert (thresholds.warn_limit, thresholds.warn_window_runs) == (3, 3)
    finally:
        db.close()
    (tmp_path / "ledger.toml").write_text(
        f'database_url = "{url}"\nbehaviors_dir = "{tmp_path / "behaviors"}"\nauth = "off"\n'
        "[policy]\nwarn_window_runs = 3\n"
    )
    env = _env(LEDGER_CONFIG=str(tmp_path / "ledger.toml"))
    explained = cli("explain", "alpha", cwd=tmp_path, env=env)
    assert explained.returncode == 0, explained.stderr
    assert "Traceback" not in explained.stderr
    settings = load_settings(tmp_path / "ledger.toml", watch=False, ingest_processor="thread")
    app = create_app(settings, clock=SystemClock())

    async def read() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://ledger.test") as client,
        ):
            paths = ("/api/behaviors/alpha", "/api/behaviors/alpha/explain", "/api/status")
            return [(await client.get(path)).status_code for path in paths]

    assert asyncio.run(read()) == [200, 200, 200]


# -- structured settings in the environment ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("LEDGER_POLICY", "{bad", "LEDGER_POLICY: not valid JSON (Expecting property name "
         "enclosed in double quotes at character 2); write it as a JSON object, e.g. "
         """LEDGER_POLICY='{"warn_limit": 3}'"""),
        ("LEDGER_ALERT_CHANNELS", "[1", "LEDGER_ALERT_CHANNELS: not valid JSON (Expecting ',' "
         """delimiter at character 3); write it as a JSON object, e.g. LEDGER_ALERT_CHANNELS='"""
         """{"name": ...}'"""),
        ("LEDGER_API_TOKENS", "x", "LEDGER_API_TOKENS: not valid JSON (Expecting value at "
         """character 1); write it as a JSON object, e.g. LEDGER_API_TOKENS='{"name": ...}'"""),
        ("ledger_webhook_sources", "{", "ledger_webhook_sources: not valid JSON (Expecting "
         "property name enclosed in double quotes at character 2); write it as a JSON object, "
         """e.g. ledger_webhook_sources='{"name": ...}'"""),
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    "command", [["config"], ["validate"], ["serve"], ["status"], ["db", "upgrade"]]
)
def test_bad_json_in_a_structured_variable_is_one_line(
    tmp_path: Path, name: str, value: str, line: str, command: list[str]
) -> None:
    (tmp_path / "behaviors").mkdir()
    _fails_with(cli(*command, cwd=tmp_path, env=_env(**{name: value})), line)


def test_a_structured_variable_of_the_wrong_shape_says_so(tmp_path: Path) -> None:
    result = cli("config", cwd=tmp_path, env=_env(LEDGER_POLICY="[1]"))
    _fails_with(result, "LEDGER_POLICY: must be a JSON object, got a list")
    result = cli("config", cwd=tmp_path, env=_env(LEDGER_API_TOKENS='"literal-token"'))
    _fails_with(result, "LEDGER_API_TOKENS: must be a JSON object")  # never the value


# -- ledger.toml: located, in plain words -----------------------------------------------------


def test_ledger_toml_problems_give_line_column_and_plain_words(tmp_path: Path) -> None:
    (tmp_path / "ledger.toml").write_text(
        '# settings\n\ndatabse_url = "sqlite:///x.db"\nport = "eighty"\n'
        '[alert_channels.ops]\ntype = "slak"\nurll = "env:SLACK_URL"\n'
        'events = ["demotion", "nope"]\n'
    )
    result = cli("config", cwd=tmp_path, env=_env())
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: ledger.toml:3:1: databse_url: unknown setting (did you mean database_url?)",
        'ledger.toml:4:8: port: must be a whole number, got "eighty"',
        "ledger.toml:6:8: alert_channels.ops.type: must be one of 'slack', 'webhook', 'email', "
        """'notion' or 'log', got "slak\"""",
        "ledger.toml:7:1: alert_channels.ops.urll: unknown field (did you mean url?)",
        "ledger.toml:8:23: alert_channels.ops.events[1]: must be one of 'demotion', 'pause', "
        "'auth_error', 'promotion', 'promotion_proposed', 'recovery', 'provider_error', 'spend' "
        """or 'dead_letter', got "nope\"""",
    ]


def test_a_secret_value_is_never_echoed(tmp_path: Path) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text('api_tokens = "sk-literal-token-value"\n[alert_channels.ops]\nurl = 5\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    text = str(caught.value)
    assert "sk-literal" not in text
    assert f"{cfg}:1:14: api_tokens: must be a table" in text.splitlines()


def test_a_ledger_table_and_inline_tables_are_located(tmp_path: Path) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text("[ledger]\nport = 0\npolicy = { warn_limit = 0 }\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert str(caught.value).splitlines() == [
        f"{cfg}:2:8: port: must be at least 1, got 0",
        f"{cfg}:3:25: policy.warn_limit: must be a whole number from 1 to 100, got 0",
    ]


def test_toml_positions_follow_multiline_values_and_arrays_of_tables() -> None:
    text = (
        's = """\nport = 1\n"""\na = [\n  1, # one\n  { b = 2 },\n]\n'
        "[[x]]\nq = 1\n[[x]]\nq = 'two'\n"
    )
    found = toml_positions(text)
    assert ("port",) not in found
    assert (found[("a", 1, "b")].key_line, found[("a", 1, "b")].value_col) == (6, 9)
    assert (found[("x", 1, "q")].value_line, found[("x", 1, "q")].value_col) == (11, 5)


# -- the source of a value: an option --------------------------------------------------------


def test_a_bad_option_is_named_as_the_option(tmp_path: Path) -> None:
    _fails_with(
        cli("serve", "--port", "0", cwd=tmp_path, env=_env()),
        "--port: must be at least 1, got 0",
    )
    _fails_with(
        cli("serve", "--port", "0", cwd=tmp_path, env=_env(LEDGER_PORT="9000")),
        "--port: must be at least 1, got 0",
    )
    _fails_with(
        cli("serve", cwd=tmp_path, env=_env(LEDGER_PORT="0")),
        "LEDGER_PORT: must be at least 1, got 0",
    )


# -- unknown LEDGER_* variables ---------------------------------------------------------------


def _warnings(stderr: str) -> list[str]:
    return [
        json.loads(line)["event"]
        for line in stderr.splitlines()
        if line.startswith("{") and json.loads(line).get("logger") == "ledger.config"
    ]


def test_a_misspelled_variable_is_warned_about_once_and_not_fatal(tmp_path: Path) -> None:
    # A real process (the others run the entry point in this one, ``cli``): its stderr logs.
    result = ledger("config", cwd=tmp_path, env=_env(LEDGER_DATABSE_URL="sqlite:///x.db"))
    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == [
        "LEDGER_DATABSE_URL is not a setting; ignored (did you mean LEDGER_DATABASE_URL?)"
    ]
    assert 'database_url = "sqlite:///./ledger.db"' in result.stdout


def test_the_project_s_own_variables_and_referenced_ones_are_not_warned_about(
    tmp_path: Path,
) -> None:
    (tmp_path / "ledger.toml").write_text('[api_tokens]\nops = "env:LEDGER_OPS_SECRET"\n')
    write_behavior(tmp_path / "behaviors", "alpha", POLICY_BEHAVIOR.replace("K_ALPHA", "LEDGER_K"))
    env = _env(
        LEDGER_TEST_DATABASE_URL="sqlite://",
        LEDGER_TEST_ARTIFACTS=str(tmp_path),
        LEDGER_BENCH_DATABASE_URL="sqlite://",
        LEDGER_LONG_TESTS="1",
        LEDGER_CONFIG=str(tmp_path / "ledger.toml"),
        LEDGER_DAEMON_URL="http://127.0.0.1:1",
        LEDGER_API_TOKEN="t",
        LEDGER_OPS_TOKEN="t",
        LEDGER_BROADCAST_TOKEN="t",
        LEDGER_OPS_SECRET="x" * 40,  # named by ledger.toml
        LEDGER_K="sk-or-v1-" + "b" * 64,  # named by a behavior file
    )
    result = cli("config", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert _warnings(result.stderr) == []
