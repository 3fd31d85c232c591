"""Behavior files → validated ``Behavior`` models, or problems located at file:line:col.

Every problem in every file is collected (an operator fixes them all in one go); nothing here
raises for bad input except through ``BehaviorFileError`` built from the collected problems.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ledger.behaviors.schema import SLUG_RE, Behavior
from ledger.errors import Problem
from ledger.secrets import is_reference, looks_like_secret

BEHAVIOR_SUFFIXES = (".yaml", ".yml")
BUILTIN_PROMPT_VARIABLES = frozenset({"now", "date", "run_id", "behavior", "tier"})
MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True, slots=True)
class LoadedBehavior:
    """A valid behavior file: the model, its prompt text and its definition hash."""

    path: Path
    behavior: Behavior
    prompt_text: str
    definition_hash: str
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.behavior.name


@dataclass(slots=True)
class LoadReport:
    behaviors: list[LoadedBehavior] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files_seen: list[Path] = field(default_factory=list)

    def problems_by_path(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = {}
        for p in self.problems:
            out.setdefault(p.path, []).append(p)
        return out


def behavior_files(directory: Path) -> list[Path]:
    """The behavior files of a folder, sorted; hidden and editor temp files are skipped."""
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in BEHAVIOR_SUFFIXES and p.is_file() and not p.name.startswith((".", "~"))
    )


def load_directory(directory: Path) -> LoadReport:
    """Load every behavior file of ``directory`` and check the rules that span files."""
    report = LoadReport()
    if not directory.is_dir():
        report.problems.append(Problem(str(directory), 1, 1, "behaviors_dir", "folder not found"))
        return report
    for path in behavior_files(directory):
        report.files_seen.append(path)
        loaded, problems = load_file(path)
        report.problems.extend(problems)
        if loaded is not None:
            report.behaviors.append(loaded)
    _check_unique(report)
    return report


def _check_unique(report: LoadReport) -> None:
    """One name per behavior, one key per behavior, one key name per key: offending files are
    reported (each names the other) and dropped from the valid set."""
    bad: set[Path] = set()
    for attr, what in (
        ("name", "behavior name"),
        ("api_key", "api_key reference (one behavior = one key)"),
        ("key_name", "key_name (broadcast attribution needs unique key names)"),
    ):
        seen: dict[str, LoadedBehavior] = {}
        for lb in report.behaviors:
            value = getattr(lb.behavior, attr)
            if value is None:
                continue
            other = seen.get(value)
            if other is None:
                seen[value] = lb
                continue
            for this, that in ((lb, other), (other, lb)):
                line, col = this.positions.get(attr, (1, 1))
                report.problems.append(
                    Problem(
                        str(this.path),
                        line,
                        col,
                        attr,
                        f"{what} {value!r} is also used by {that.path.name}",
                    )
                )
                bad.add(this.path)
    if bad:
        report.behaviors = [lb for lb in report.behaviors if lb.path not in bad]
    report.problems.sort(key=lambda p: (p.path, p.line, p.column))


def load_file(path: Path) -> tuple[LoadedBehavior | None, list[Problem]]:
    """Parse and validate one file. Returns the behavior or None, and every problem found."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Problem(where, 1, 1, "file", f"cannot read: {exc.strerror}")]
    if len(raw) > MAX_FILE_BYTES:
        return None, [Problem(where, 1, 1, "file", "larger than 1 MB; is this a behavior file?")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(where, 1, 1, "file", f"not UTF-8 text (byte {exc.start})")]
    try:
        loader = _Loader(text)
        try:
            data = loader.get_single_node()
            plain_doc = loader.construct_document(data) if data is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(x) for x in (exc.context, exc.problem) if x) or "invalid YAML"
        return None, [Problem(where, line, col, "yaml", f"invalid YAML: {msg}")]
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        return None, [Problem(where, 1, 1, "yaml", f"invalid YAML: {exc}")]
    if data is None or plain_doc is None:
        return None, [
            Problem(
                where,
                1,
                1,
                "file",
                "empty file: a behavior needs at least schedule, preset, api_key and prompt",
            )
        ]
    if not isinstance(data, MappingNode) or not isinstance(plain_doc, dict):
        return None, [Problem(where, 1, 1, "file", "must be a mapping of fields (key: value)")]
    duplicates = list(_duplicate_keys(where, data, ()))
    if duplicates:
        return None, duplicates

    problems: list[Problem] = []
    plain: dict[str, Any] = {str(k): v for k, v in plain_doc.items()}
    if "name" not in plain:
        stem = path.stem
        if not SLUG_RE.match(stem):
            problems.append(
                Problem(
                    where,
                    1,
                    1,
                    "name",
                    f"the file name {stem!r} is not a valid behavior "
                    "name (lowercase slug); rename the file or set name:",
                )
            )
        plain["name"] = stem
    problems.extend(_literal_secrets(where, data))
    prompt_text = ""
    try:
        behavior = Behavior.model_validate(plain)
    except ValidationError as exc:
        problems.extend(_validation_problems(where, data, exc))
        return None, _dedupe(problems)
    if behavior.prompt_file is not None:
        prompt_path = (path.parent / behavior.prompt_file).resolve()
        try:
            prompt_text = prompt_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            line, col = _position(data, ("prompt_file",), value=True)
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            problems.append(
                Problem(where, line, col, "prompt_file", f"cannot read {prompt_path}: {reason}")
            )
    else:
        prompt_text = behavior.prompt or ""
    problems.extend(_prompt_variables(where, data, behavior, prompt_text))
    if problems:
        return None, _dedupe(problems)
    positions = {
        key: _position(data, (key,), value=True) for key in ("name", "api_key", "key_name")
    }
    if _child(data, "name") is None:
        positions["name"] = (1, 1)
    return LoadedBehavior(
        path=path,
        behavior=behavior,
        prompt_text=prompt_text,
        definition_hash=definition_hash(behavior, prompt_text),
        positions=positions,
    ), []


def definition_hash(behavior: Behavior, prompt_text: str) -> str:
    """SHA-256 of the behavior's canonical definition (the prompt file's text included)."""
    body = orjson.dumps(
        {"behavior": behavior.model_dump(mode="json"), "prompt": prompt_text},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(body).hexdigest()


def _prompt_variables(
    where: str, data: MappingNode, behavior: Behavior, prompt_text: str
) -> list[Problem]:
    key = "prompt" if behavior.prompt is not None else "prompt_file"
    try:
        names = {
            fname.split(".")[0].split("[")[0]
            for _, fname, _, _ in string.Formatter().parse(prompt_text)
            if fname
        }
    except ValueError as exc:
        line, col = _position(data, (key,), value=True)
        return [
            Problem(
                where,
                line,
                col,
                key,
                f"invalid template: {exc} (write {{{{ and }}}} for literal braces)",
            )
        ]
    missing = sorted(
        n for n in names if n not in behavior.inputs and n not in BUILTIN_PROMPT_VARIABLES
    )
    if not missing:
        return []
    line, col = _position(data, (key,), value=True)
    return [
        Problem(
            where,
            line,
            col,
            key,
            f"uses {{{missing[0]}}} but inputs has no "
            f"{missing[0]!r} (built-ins: {', '.join(sorted(BUILTIN_PROMPT_VARIABLES))})",
        )
    ]


def _literal_secrets(where: str, root: MappingNode) -> list[Problem]:
    """A credential pasted anywhere in the file (a prompt, an input, a URL) is refused."""
    problems: list[Problem] = []
    stack: list[tuple[Node, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, MappingNode):
            stack.extend((v, (*loc, str(k.value))) for k, v in node.value)
        elif isinstance(node, SequenceNode):
            stack.extend((v, (*loc, i)) for i, v in enumerate(node.value))
        elif isinstance(node, ScalarNode) and isinstance(node.value, str):
            if is_reference(node.value):
                continue
            kind = looks_like_secret(node.value)
            if kind:
                problems.append(
                    Problem(
                        where,
                        node.start_mark.line + 1,
                        node.start_mark.column + 1,
                        _dotted(loc),
                        f"this looks like {kind}; never put a secret in a behavior file — "
                        "store it in an environment variable or a file and reference it as "
                        "env:NAME or file:PATH",
                    )
                )
    return problems


def _duplicate_keys(where: str, node: Node, loc: tuple[str | int, ...]) -> Iterable[Problem]:
    """YAML loaders keep the last of two equal keys silently; an operator must hear of it."""
    if isinstance(node, MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                yield Problem(
                    where,
                    key.start_mark.line + 1,
                    key.start_mark.column + 1,
                    _dotted((*loc, name)),
                    f"duplicate key {name!r} (first given on line {seen[name]})",
                )
            else:
                seen[name] = key.start_mark.line + 1
            yield from _duplicate_keys(where, value, (*loc, name))
    elif isinstance(node, SequenceNode):
        for i, value in enumerate(node.value):
            yield from _duplicate_keys(where, value, (*loc, i))


def _validation_problems(where: str, data: MappingNode, exc: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        known = _known_prefix(data, loc)
        field_path = _dotted(known) or "behavior"
        kind = err["type"]
        if kind == "missing":
            name = str(loc[len(known)]) if len(loc) > len(known) else field_path
            line, col = _position(data, known, value=True) if known else (1, 1)
            field_path = _dotted((*known, name))
            message = "required field is missing"
        elif kind == "extra_forbidden":
            line, col = _position(data, known, value=False)
            message = f"unknown field {str(known[-1])!r}" + _suggestion(str(known[-1]))
        else:
            line, col = _position(data, known, value=True) if known else (1, 1)
            message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(Problem(where, line, col, field_path, message))
    return problems


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """One problem per (line, field): union types report once per member; keep the most
    specific message (a value error beats a type mismatch of another union member)."""
    best: dict[tuple[int, str], Problem] = {}
    for p in problems:
        key = (p.line, p.field)
        current = best.get(key)
        if current is None or (_is_type_noise(current.message) and not _is_type_noise(p.message)):
            best[key] = p
    return sorted(best.values(), key=lambda p: (p.line, p.column, p.field))


def _is_type_noise(message: str) -> bool:
    return message.startswith(("Input should be a valid", "Input should be 'fast'"))


def _all_field_names() -> set[str]:
    names: set[str] = set()
    stack: list[type[BaseModel]] = [Behavior]
    seen: set[type[BaseModel]] = set()
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for fname, finfo in model.model_fields.items():
            names.add(fname)
            ann = finfo.annotation
            for arg in (*getattr(ann, "__args__", ()), ann):
                for inner in (*getattr(arg, "__args__", ()), arg):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        stack.append(inner)
    return names


_FIELD_NAMES = _all_field_names()


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, _FIELD_NAMES, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _child(node: Node | None, part: Any) -> tuple[Node, Node] | None:
    """(key node, value node) of ``part`` in a mapping, or (item, item) in a sequence."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                return key, value
    elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: Node = node.value[part]
        return item, item
    return None


def _known_prefix(data: Node, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The longest prefix of ``loc`` that exists in the YAML document."""
    node: Node | None = data
    known: list[Any] = []
    for part in loc:
        found = _child(node, part)
        if found is None:
            break
        node = found[1]
        known.append(part)
    return tuple(known)


def _position(data: Node, loc: tuple[Any, ...], *, value: bool) -> tuple[int, int]:
    """1-based (line, column) of the key (value=False) or the value at ``loc``."""
    node: Node | None = data
    line, col = 1, 1
    for i, part in enumerate(loc):
        found = _child(node, part)
        if found is None:
            break
        key, node = found
        mark = key.start_mark if (not value and i == len(loc) - 1) else node.start_mark
        line, col = mark.line + 1, mark.column + 1
    return line, col


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Loader(yaml.CSafeLoader):
    """libyaml's C loader (fast) resolving booleans as YAML 1.2 does: only true/false, so a
    field named ``on`` or a value ``no`` stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def check_resolved_keys(report: LoadReport, base_dir: Path | None = None) -> list[str]:
    """Resolve every valid behavior's key; two behaviors resolving to the same key value are
    both invalid (one behavior = one key). Returns warnings for keys that cannot be resolved
    yet (such a behavior stays registered and fails at run time with ``auth_error``)."""
    from ledger.errors import SecretError
    from ledger.secrets import resolve

    warnings: list[str] = []
    by_value: dict[str, LoadedBehavior] = {}
    bad: set[Path] = set()
    for lb in report.behaviors:
        try:
            value = resolve(lb.behavior.api_key, base_dir=lb.path.parent).get_secret_value()
        except SecretError as exc:
            warnings.append(f"{lb.name}: {exc}")
            continue
        digest = hashlib.sha256(value.encode()).hexdigest()
        other = by_value.get(digest)
        if other is None:
            by_value[digest] = lb
            continue
        for this, that in ((lb, other), (other, lb)):
            line, col = this.positions.get("api_key", (1, 1))
            report.problems.append(
                Problem(
                    str(this.path),
                    line,
                    col,
                    "api_key",
                    f"resolves to the same key as {that.name} ({that.path.name}); one "
                    "behavior = one key: create a key per behavior",
                )
            )
            bad.add(this.path)
    if bad:
        report.behaviors = [lb for lb in report.behaviors if lb.path not in bad]
        report.problems.sort(key=lambda p: (p.path, p.line, p.column))
    return warnings
