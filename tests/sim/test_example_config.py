"""The simulator's shipped configuration covers every shipped example behavior: its presets
exist, its key is there under its ``key_name``, capped within its budget, with a label no
other key has, so ``ledger keys check`` finds nothing to report."""

from __future__ import annotations

from pathlib import Path

from ledger.behaviors.load import load_directory
from ledger.gates import Tier
from ledger.runner.keys import ManagedKey, check_keys
from ledger.sim.openrouter import SimConfig

ROOT = Path(__file__).parents[2]
EXAMPLE_YAML = ROOT / "ledger" / "sim" / "presets.example.yaml"


def label(key: str) -> str:
    return f"{key[:11]}...{key[-3:]}"  # what GET /api/v1/key answers, as OpenRouter shows it


def test_every_shipped_example_has_its_presets_in_the_simulator() -> None:
    config = SimConfig.from_yaml(EXAMPLE_YAML)
    report = load_directory(ROOT / "behaviors")

    assert report.problems == []
    assert len(report.behaviors) >= 3
    for loaded in report.behaviors:
        presets = {loaded.behavior.preset_for(tier) for tier in Tier}
        assert presets <= set(config.presets), loaded.name


def test_every_shipped_example_has_its_own_capped_key_named_as_its_key_name() -> None:
    config = SimConfig.from_yaml(EXAMPLE_YAML)
    behaviors = [lb.behavior for lb in load_directory(ROOT / "behaviors").behaviors]
    managed = [
        ManagedKey(
            hash=k.key, name=k.name, label=label(k.key), limit=k.limit, limit_reset=k.limit_reset
        )
        for k in config.keys
    ]

    assert check_keys(behaviors, managed) == []
    assert {b.key_name for b in behaviors} <= {k.name for k in config.keys}
    assert len({label(k.key) for k in config.keys}) == len(config.keys)


def test_ledger_init_writes_the_shipped_examples_unchanged() -> None:
    shipped = {p.name: p.read_text() for p in (ROOT / "behaviors").glob("*.yaml")}
    templates = ROOT / "ledger" / "templates"

    assert {name: (templates / name).read_text() for name in shipped} == shipped
