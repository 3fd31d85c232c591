"""Settings: embedded defaults, ledger.toml, environment precedence, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.config import Settings, load_settings
from ledger.errors import ConfigError


def test_embedded_defaults_work_with_nothing_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.database_url == "sqlite:///./ledger.db"
    assert s.behaviors_dir == Path("./behaviors")
    assert (s.host, s.port) == ("127.0.0.1", 8600)


def test_toml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text('port = 9000\nhost = "0.0.0.0"\n[policy]\nwarn_limit = 5\n')
    monkeypatch.setenv("LEDGER_PORT", "9100")
    s = load_settings(cfg)
    assert s.port == 9100
    assert s.host == "0.0.0.0"  # noqa: S104 — a value read back, not a bind
    assert s.policy == {"warn_limit": 5}


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml")


def test_bad_toml_and_bad_values_say_where(tmp_path: Path) -> None:
    cfg = tmp_path / "ledger.toml"
    cfg.write_text("port = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(cfg)
    cfg.write_text("port = 99999\nbogus = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "port" in str(err.value) and "bogus" in str(err.value)


def test_masked_config_shows_references_but_never_values() -> None:
    s = Settings(
        notion_token="env:NOTION_TOKEN",  # type: ignore[arg-type]
        broadcast_tokens="env:A,literal-token-value-123",  # type: ignore[arg-type]
        database_url="postgresql://ledger:hunter2@db/ledger",
    )
    masked = s.masked()
    assert masked["notion_token"] == "env:NOTION_TOKEN"
    assert masked["broadcast_tokens"] == "env:A,********"
    assert masked["database_url"] == "postgresql://ledger:********@db/ledger"
    assert "hunter2" not in repr(masked)


def test_runner_lead_and_calls_in_flight_have_defaults_bounds_and_env_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.runner_lead_seconds, s.runner_max_calls) == (5.0, 1024)
    monkeypatch.setenv("LEDGER_RUNNER_LEAD_SECONDS", "30")
    monkeypatch.setenv("LEDGER_RUNNER_MAX_CALLS", "10000")
    s = load_settings()
    assert (s.runner_lead_seconds, s.runner_max_calls) == (30.0, 10000)
    monkeypatch.setenv("LEDGER_RUNNER_LEAD_SECONDS", "-1")
    with pytest.raises(ConfigError, match="LEDGER_RUNNER_LEAD_SECONDS: must be at least 0"):
        load_settings()
