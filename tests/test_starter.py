"""``ledger init``'s starter files: what they show an operator works once uncommented."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.config import load_settings
from ledger.starter import write_starter
from ledger.web.auth import TokenAuth


def test_starter_config_shows_how_to_make_api_tokens_and_the_example_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_starter(tmp_path)
    config = tmp_path / "ledger.toml"
    text = config.read_text(encoding="utf-8")
    assert "# [api_tokens]" in text and "docs/api.md" in text
    assert load_settings(config).api_tokens == {}  # commented out: nothing configured

    uncommented = text.replace("# [api_tokens]", "[api_tokens]").replace(
        '# ops = "env:LEDGER_OPS_TOKEN"', 'ops = "env:LEDGER_OPS_TOKEN"'
    )
    config.write_text(uncommented, encoding="utf-8")
    monkeypatch.setenv("LEDGER_OPS_TOKEN", "t" * 43)
    settings = load_settings(config)
    assert list(settings.api_tokens) == ["ops"]
    operator = TokenAuth(settings).authenticate("Bearer " + "t" * 43)
    assert operator is not None and operator.name == "api:ops"
