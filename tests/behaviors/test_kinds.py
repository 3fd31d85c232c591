"""Behavior kinds: single (the default), roundtable and broad_canvas, validated with file,
line and field; warnings that never refuse a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ledger.behaviors.load import load_directory, load_file
from tests.conftest import write_behavior

HEAD = """\
schedule: 1d
api_key: env:KEY_K
prompt: Should we migrate the billing service to the new queue?
"""
ROUNDTABLE = (
    HEAD
    + """\
kind: roundtable
roundtable:
  panel: [anthropic/claude-sonnet-4.5, openai/gpt-5, google/gemini-2.5-pro]
  synthesis: anthropic/claude-sonnet-4.5
"""
)
CANVAS = (
    HEAD
    + """\
kind: broad_canvas
canvas:
  models: [openai/gpt-4o-mini, meta-llama/llama-3.3-70b-instruct]
  max_concurrency: 8
"""
)


def problems_of(tmp_path: Path, body: str) -> list[str]:
    path = write_behavior(tmp_path, "k", body)
    loaded, problems = load_file(path)
    assert loaded is None, "expected the file to be invalid"
    return [p.render().removeprefix(str(path) + ":") for p in problems]


def test_a_roundtable_and_a_canvas_are_valid_without_a_preset(tmp_path: Path) -> None:
    for body in (ROUNDTABLE, CANVAS):
        loaded, problems = load_file(write_behavior(tmp_path, "k", body))
        assert problems == [] and loaded is not None
        assert loaded.warnings == ()
    assert loaded.behavior.kind == "broad_canvas"
    assert loaded.behavior.canvas is not None and loaded.behavior.canvas.max_concurrency == 8


def test_a_single_behavior_still_needs_its_preset(tmp_path: Path) -> None:
    assert problems_of(tmp_path, HEAD) == ["1:1: preset: required field is missing"]


def test_a_roundtable_with_fewer_than_two_panel_models_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    body = ROUNDTABLE.replace(
        "[anthropic/claude-sonnet-4.5, openai/gpt-5, google/gemini-2.5-pro]", "[openai/gpt-5]"
    )
    (problem,) = problems_of(tmp_path, body)
    assert problem.startswith("6:10: roundtable.panel: a roundtable needs at least 2 panel models")


def test_a_canvas_without_models_is_refused(tmp_path: Path) -> None:
    body = HEAD + "kind: broad_canvas\ncanvas:\n  max_concurrency: 4\n"
    (problem,) = problems_of(tmp_path, body)
    assert "canvas" in problem and "a broad canvas needs models" in problem


def test_a_kind_without_its_section_and_a_section_of_another_kind_are_refused(
    tmp_path: Path,
) -> None:
    (missing,) = problems_of(tmp_path, HEAD + "kind: roundtable\n")
    assert "kind roundtable needs a roundtable: section" in missing
    (stray,) = problems_of(tmp_path, CANVAS.replace("kind: broad_canvas", "kind: roundtable"))
    assert "needs a roundtable: section" in stray or "canvas: is only read" in stray


def test_a_model_slot_must_be_a_preset_or_a_model_id(tmp_path: Path) -> None:
    body = ROUNDTABLE.replace("openai/gpt-5,", "gpt five,")
    (problem,) = problems_of(tmp_path, body)
    assert "roundtable.panel" in problem and "neither @preset/<slug> nor a model id" in problem


def test_two_panel_models_of_one_vendor_warn_but_load(tmp_path: Path) -> None:
    body = ROUNDTABLE.replace("google/gemini-2.5-pro", "openai/o3")
    loaded, problems = load_file(write_behavior(tmp_path, "k", body))
    assert problems == [] and loaded is not None
    (warning,) = loaded.warnings
    assert warning.field == "roundtable.panel" and warning.line == 6
    assert "openai/gpt-5 and openai/o3 share the vendor 'openai'" in warning.message
    report = load_directory(tmp_path)
    assert report.problems == [] and len(report.warnings) == 1


def test_ledger_validate_prints_warnings_and_passes(tmp_path: Path) -> None:
    folder = tmp_path / "behaviors"
    folder.mkdir()
    write_behavior(folder, "k", ROUNDTABLE.replace("google/gemini-2.5-pro", "openai/o3"))
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "validate", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning: " in done.stdout and "share the vendor 'openai'" in done.stdout
    assert "1 behavior file(s) valid" in done.stdout


def test_ledger_validate_rejects_a_one_model_roundtable(tmp_path: Path) -> None:
    folder = tmp_path / "behaviors"
    folder.mkdir()
    write_behavior(
        folder,
        "k",
        ROUNDTABLE.replace(
            "[anthropic/claude-sonnet-4.5, openai/gpt-5, google/gemini-2.5-pro]", "[openai/gpt-5]"
        ),
    )
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "validate", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    assert "roundtable.panel: a roundtable needs at least 2 panel models" in done.stdout


def test_the_docs_examples_of_every_kind_are_valid(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "docs" / "behaviors.md").read_text()
    section = readme.split("## Kinds", 1)[1].split("## Validation errors", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3
    kinds = []
    for i, block in enumerate(blocks):
        loaded, problems = load_file(write_behavior(tmp_path, f"readme-{i}", block))
        assert problems == [], [p.render() for p in problems]
        assert loaded is not None and loaded.warnings == ()
        kinds.append(loaded.behavior.kind)
    assert kinds == ["single", "roundtable", "broad_canvas"]
