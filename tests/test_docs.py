"""The operator docs stay honest: what docs/*.md and the READMEs name must exist.

Mechanical checks, all in process (no daemon, no database):
- every ``ledger …`` command in a fenced shell block (and in inline code) resolves to a real
  command whose ``--help`` exits 0, and every ``--flag`` written after it is one of its options;
- every ``LEDGER_*`` name is a setting of ``Settings`` or a variable the code reads;
- docs/behaviors.md's field tables list exactly the fields of the behavior schema, every YAML
  example of the docs validates (a fragment inside a minimal behavior), and the
  validation-error example prints what the doc says;
- docs/operations.md lists every setting and exactly the exported metrics; every TOML block
  builds a valid ``Settings``;
- every relative link (and its ``#anchor``) resolves.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from ledger.behaviors.load import load_directory, load_file
from ledger.behaviors.schema import behavior_json_schema
from ledger.cli import app
from ledger.config import Settings

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", REPO / "behaviors" / "README.md", REPO / "deploy" / "README.md", *DOCS]
BEHAVIORS_DOC = REPO / "docs" / "behaviors.md"

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL_LANGS = {"sh", "bash", "shell", "console", ""}
# A command position: start of a line, after a shell separator, `$ ` or `$(`.
LEDGER_CALL = re.compile(r"(?:^|[;&|(]|\$\s|\$\()\s*ledger\s+([^;&|)#`\n]*)", re.MULTILINE)
INLINE_CODE = re.compile(r"(?<!`)`(ledger [^`\n]+)`(?!`)")


def _pages_text() -> list[tuple[Path, str]]:
    return [(page, page.read_text(encoding="utf-8")) for page in PAGES]


def _without_fences(text: str) -> str:
    return FENCE.sub("", text)


# -- ledger commands -------------------------------------------------------------------------


def _documented_commands() -> list[tuple[str, str]]:
    """(page, command text after ``ledger``) for every command in a shell block or inline code."""
    found: list[tuple[str, str]] = []
    for page, text in _pages_text():
        where = page.relative_to(REPO).as_posix()
        for lang, body in FENCE.findall(text):
            if lang in SHELL_LANGS:
                for line in body.splitlines():
                    for part in line.split(" / "):  # "ledger approve RUN / ledger reject RUN"
                        found += [(where, m.strip()) for m in LEDGER_CALL.findall(part)]
        for code in INLINE_CODE.findall(_without_fences(text)):
            found += [(where, m.strip()) for m in LEDGER_CALL.findall(code)]
    return found


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unclosed quote in a shorthand: plain words are enough here
        return command.split()


def _resolve(command: str) -> list[tuple[list[str], set[str], Any]]:
    """The command paths ``command`` names (``a|b`` alternatives expand), each with the
    ``--flags`` written after it and the click command it resolves to (None: unknown)."""
    root = get_command(app)
    paths: list[tuple[list[str], Any]] = [([], root)]
    flags: set[str] = set()
    for token in _tokens(command):
        token = token.strip("[]")
        if token.startswith("--"):
            flags.add(token.split("=", 1)[0])
            continue
        if token.startswith("-") or not token:
            continue
        extended = []
        for path, cmd in paths:
            if cmd is None or not hasattr(cmd, "list_commands"):
                extended.append((path, cmd))  # an argument of a leaf command
                continue
            ctx = cmd.make_context("ledger", [], resilient_parsing=True)
            names = token.split("|")
            if all(cmd.get_command(ctx, n) is not None for n in names):
                extended += [([*path, n], cmd.get_command(ctx, n)) for n in names]
            elif path and type(cmd).parse_args is not type(root).parse_args:
                # A group with a default subcommand (``ledger silence NAME`` = ``… add NAME``).
                sub = cmd.make_context(path[-1], [token, "--help"], parent=ctx)
                default = (getattr(sub, "_protected_args", None) or sub.args)[0]
                extended.append(([*path, default], cmd.get_command(ctx, default)))
            else:
                extended.append(([*path, token], None))
        paths = extended
    return [(path, flags, cmd) for path, cmd in paths]


def test_every_documented_ledger_command_exists_with_its_flags() -> None:
    commands = _documented_commands()
    assert len(commands) > 50, "the docs name far more commands: is the extraction broken?"
    runner = CliRunner()
    problems: list[str] = []
    helped: set[tuple[str, ...]] = set()
    for where, command in commands:
        for path, flags, cmd in _resolve(command):
            if cmd is None:
                named = " ".join(path)
                problems.append(f"{where}: `ledger {command}`: no command `ledger {named}`")
                continue
            options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            unknown = sorted(flags - options)
            if unknown:
                problems.append(
                    f"{where}: `ledger {command}`: `ledger {' '.join(path)}` has no {unknown}"
                )
            if tuple(path) not in helped:
                helped.add(tuple(path))
                result = runner.invoke(app, [*path, "--help"])
                if result.exit_code != 0:
                    problems.append(f"{where}: `ledger {' '.join(path)} --help` failed")
    assert problems == []


def test_the_command_check_catches_a_wrong_command_and_a_wrong_flag() -> None:
    [(_, _, unknown)] = _resolve("frobnicate NAME")
    assert unknown is None
    [(path, flags, cmd)] = _resolve("silence seo-audit --for 2h --reason x")
    assert path == ["silence", "add"] and cmd is not None
    assert flags <= {o for p in cmd.params for o in p.opts}
    alternatives = _resolve("promote|demote NAME --reason TEXT --colour")
    assert [p for p, _, _ in alternatives] == [["promote"], ["demote"]]
    assert all("--colour" not in {o for p in c.params for o in p.opts} for _, _, c in alternatives)


# -- settings and environment variables ------------------------------------------------------


@cache
def _code_text() -> str:
    sources = [*(REPO / "ledger").rglob("*.py"), *(REPO / "tests").rglob("*.py"), REPO / ".ci/run"]
    here = Path(__file__).resolve()
    return "\n".join(
        p.read_text(encoding="utf-8") for p in sources if p.is_file() and p.resolve() != here
    )


def test_every_ledger_variable_named_is_a_setting_or_read_by_the_code() -> None:
    settings = {f"LEDGER_{name.upper()}" for name in Settings.model_fields}
    problems = []
    for page, text in _pages_text():
        for name in sorted(set(re.findall(r"\bLEDGER_[A-Z0-9_]*[A-Z0-9]\b", text))):
            if name in settings or re.search(rf"\b{name}\b", _code_text()):
                continue
            problems.append(f"{page.relative_to(REPO)}: {name}")
        for prefix in set(re.findall(r"\b(LEDGER_[A-Z0-9_]+_)\*", text)):
            if not any(s.startswith(prefix) for s in settings):
                problems.append(f"{page.relative_to(REPO)}: {prefix}*")
    assert problems == []


def test_every_toml_example_is_a_valid_configuration() -> None:
    blocks = [
        (page, body)
        for page, text in _pages_text()
        for lang, body in FENCE.findall(text)
        if lang == "toml"
    ]
    assert blocks
    for page, body in blocks:
        data = tomllib.loads(body)
        Settings(**{k: v for k, v in data.items() if k != "ledger"}), page  # raises if invalid


def test_the_metrics_section_lists_exactly_the_exported_metrics() -> None:
    metrics = (REPO / "ledger" / "metrics.py").read_text(encoding="utf-8")
    exported = set(re.findall(r'"(ledger_[a-z_]+)"', metrics))
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = operations.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    named = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for name in re.findall(r"\bledger_[a-z_]+\b", section)
    }
    assert len(exported) > 10
    assert sorted(exported - named) == [], "metrics missing from docs/operations.md"
    assert sorted(named - exported) == [], "docs/operations.md names metrics that do not exist"


# -- behavior files --------------------------------------------------------------------------


def _schema_paths() -> set[str]:
    schema = behavior_json_schema()
    defs = schema.get("$defs", {})
    out: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub, prefix)
        if isinstance(node.get("items"), dict):
            walk(node["items"], prefix)
        for name, sub in node.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            out.add(path)
            walk(sub, path)

    walk(schema, "")
    return out


def test_the_behavior_reference_lists_exactly_the_schema_fields() -> None:
    text = BEHAVIORS_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+)*)` \|", text, re.MULTILINE))
    schema = _schema_paths()
    assert "canvas.catalog.max_prompt_price_per_mtok" in schema
    assert sorted(schema - documented) == [], "fields missing from docs/behaviors.md"
    assert sorted(documented - schema) == [], "docs/behaviors.md lists fields that do not exist"


MINIMAL = {"schedule": "1h", "preset": "example", "api_key": "env:KEY", "prompt": "Hello"}
"""What a fragment of docs/behaviors.md is checked inside."""


def _yaml_examples() -> list[tuple[str, int, str, bool]]:
    """(page, line, YAML, marked invalid) for every YAML block of the docs: behavior files or
    fragments of one."""
    out = []
    for page, text in _pages_text():
        for match in FENCE.finditer(text):
            if match.group(1) == "yaml":
                before = text[: match.start()].rstrip().splitlines()[-1]
                line = text[: match.start()].count("\n") + 1
                where = page.relative_to(REPO).as_posix()
                out.append((where, line, match.group(2), "invalid" in before))
    return out


def test_every_behavior_example_is_valid(tmp_path: Path) -> None:
    examples = [e for e in _yaml_examples() if not e[3]]
    assert len(examples) > 20
    for where, line, body, _ in examples:
        fragment = yaml.safe_load(body)  # only its top-level keys are read here
        assert isinstance(fragment, dict), (where, line)
        keys = {str(k) for k in fragment}
        base = {} if {"schedule", "api_key"} <= keys else dict(MINIMAL)
        if fragment.get("kind", "single") != "single" or "prompt_file" in keys:
            base.pop("preset" if "kind" in keys else "prompt", None)
        if "prompt_file" in keys:
            prompt = tmp_path / fragment["prompt_file"]
            prompt.parent.mkdir(parents=True, exist_ok=True)
            prompt.write_text("Audit {site}", encoding="utf-8")
        head = "".join(f"{k}: {v}\n" for k, v in base.items() if k not in keys)
        path = tmp_path / f"example-{len(list(tmp_path.glob('*.yaml')))}.yaml"
        path.write_text(head + body, encoding="utf-8")
        loaded, problems = load_file(path)
        assert problems == [], (f"{where} line {line}", [p.render() for p in problems])
        assert loaded is not None


def test_the_validation_error_example_prints_what_the_doc_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BEHAVIORS_DOC.read_text(encoding="utf-8")
    section = text.split("## Validation errors", 1)[1]
    [invalid] = [body for _, _, body, bad in _yaml_examples() if bad]
    expected = re.search(r"```text\n(.*?)```", section, re.DOTALL)
    assert expected is not None
    (tmp_path / "behaviors").mkdir()
    (tmp_path / "behaviors" / "digest.yaml").write_text(invalid, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    report = load_directory(Path("behaviors"))
    printed = [p.render() for p in report.problems]
    summary = f"{len(printed)} problem(s) in 1 of 1 file(s)"
    assert [*printed, summary] == expected.group(1).splitlines()
    result = CliRunner().invoke(app, ["validate", "behaviors"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == printed


# -- links -----------------------------------------------------------------------------------


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens, repeats
    numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _without_fences(markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_every_relative_link_resolves() -> None:
    problems = []
    for page, text in _pages_text():
        for target in re.findall(r"\]\(([^)\s]+)\)", _without_fences(text)):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)} → {target}"
            if not resolved.exists():
                problems.append(f"{where}: no such file")
            elif (
                anchor
                and resolved.suffix == ".md"
                and anchor not in _anchors(resolved.read_text(encoding="utf-8"))
            ):
                problems.append(f"{where}: no such heading")
    assert problems == []


def test_the_readme_links_every_doc() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documentation = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    for doc in DOCS:
        assert f"(docs/{doc.name})" in documentation, doc.name


def test_the_configuration_table_lists_every_setting() -> None:
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = operations.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    missing = [f for f in Settings.model_fields if f"`LEDGER_{f.upper()}`" not in section]
    assert missing == [], "settings missing from docs/operations.md's Configuration table"


def test_the_readme_keeps_its_two_commands() -> None:
    """The install+serve and the install+tests commands, verbatim, each in its own block."""
    blocks = [body.strip() for lang, body in FENCE.findall((REPO / "README.md").read_text())]
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/ledger serve" in blocks
    assert (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/python -m pytest"
        in blocks
    )
