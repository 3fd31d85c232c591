"""Behavior files → validated ``Behavior`` models, or problems located at file:line:col.

Every problem in every file is collected (an operator fixes them all in one go); nothing here
raises for bad input except through ``BehaviorFileError`` built from the collected problems.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import string
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ledger.behaviors.schema import SLUG_RE, Behavior, CostAnomaly
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
    warnings: tuple[Problem, ...] = ()
    """Valid but probably not meant (``Behavior.warnings``): shown, never refused."""
    references: tuple[Reference, ...] = ()
    """The secret references the file names (its key, a webhook's url and secret…)."""

    @property
    def name(self) -> str:
        return self.behavior.name


REFERENCE_FIELDS = frozenset({"api_key", "url", "secret"})
"""The fields that hold a secret reference (``env:NAME`` / ``file:PATH``), wherever they are."""


@dataclass(frozen=True, slots=True)
class Reference:
    """A secret reference written in a behavior file: where, in which field, and the
    reference itself (never a value)."""

    field: str
    reference: str
    line: int
    column: int


Holders = Mapping[tuple[str, str], str]
"""Who has each unique value today: ``(field, value)`` → the file name (``alpha.yaml``) of the
registered behavior that has it (``registry.registered_holders``). A file that reuses a value
its holder still has is the one refused."""

UNIQUE_FIELDS = ("name", "api_key", "key_name")


@dataclass(frozen=True, slots=True)
class _Claim:
    """The unique values a file claims (valid or not), and where it writes them."""

    path: Path
    values: dict[str, str]
    positions: dict[str, tuple[int, int]]
    valid: bool


@dataclass(slots=True)
class LoadReport:
    behaviors: list[LoadedBehavior] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    files_seen: list[Path] = field(default_factory=list)
    folder_error: str | None = None
    """Set when the folder itself cannot be read (then there are no files and no problems)."""

    @property
    def warnings(self) -> list[Problem]:
        """The warnings of the valid files (never a reason to refuse one)."""
        return [w for lb in self.behaviors for w in lb.warnings]

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


def load_directory(
    directory: Path,
    holders: Holders | None = None,
    *,
    global_policy: Mapping[str, Any] | None = None,
) -> LoadReport:
    """Load every behavior file of ``directory`` and check the rules that span files: every
    problem of every file is reported in one pass. A value two files share (name, api_key,
    key_name) stays with its registered holder (``holders``), else with the first file — valid
    files before invalid ones, then by file name — and the other file is refused. Each file's
    ``policy:`` is checked over ``global_policy`` (the configuration's ``[policy]``): the
    thresholds it runs with must make sense together."""
    report = LoadReport()
    if not directory.is_dir():
        report.folder_error = _folder_error(directory)
        return report
    claims: list[_Claim] = []
    for path in behavior_files(directory):
        report.files_seen.append(path)
        loaded, problems, claim = _load(path, global_policy or {})
        report.problems.extend(problems)
        if loaded is not None:
            report.behaviors.append(loaded)
        if claim is not None:
            claims.append(claim)
    _check_unique(report, claims, holders or {})
    return report


def _folder_error(directory: Path) -> str:
    shown = directory.as_posix()
    if not directory.is_absolute() and not shown.startswith("."):
        shown = f"./{shown}"
    if directory.exists():
        return (
            f"behaviors folder {shown} is not a folder: point LEDGER_BEHAVIORS_DIR at the "
            "folder of behavior files"
        )
    return f"behaviors folder {shown} not found: create it or set LEDGER_BEHAVIORS_DIR"


_UNIQUE_RULES = (
    ("name", "behavior name", "rename this behavior (name:, or the file name)"),
    ("api_key", "api_key reference", "one behavior = one key, so create an OpenRouter key for it"),
    ("key_name", "key_name", "each key has its own name: write the name of this behavior's key"),
)


def _check_unique(report: LoadReport, claims: list[_Claim], holders: Holders) -> None:
    """One name per behavior, one key per behavior, one key name per key. Of the files sharing
    a value, the keeper keeps running; each other file is refused, naming the keeper."""
    refused: set[Path] = set()
    for attr, what, fix in _UNIQUE_RULES:
        groups: dict[str, list[_Claim]] = {}
        for claim in claims:
            value = claim.values.get(attr)
            if value is not None:
                groups.setdefault(value, []).append(claim)
        for value, group in groups.items():
            if len(group) < 2:
                continue
            holder = holders.get((attr, value))
            keeper, *others = sorted(
                group, key=lambda c: (c.path.name != holder, not c.valid, c.path.name)
            )
            for other in others:
                if keeper.path.name == holder:
                    why = "registered with it"
                elif keeper.valid and not other.valid:
                    why = "a valid file goes before an invalid one"
                else:
                    why = "first by file name"
                line, col = other.positions.get(attr, (1, 1))
                report.problems.append(
                    Problem(
                        str(other.path),
                        line,
                        col,
                        attr,
                        f"{what} {value!r} is already used by {keeper.path.name}, which keeps "
                        f"it ({why}): {fix}",
                    )
                )
                refused.add(other.path)
    if refused:
        report.behaviors = [lb for lb in report.behaviors if lb.path not in refused]
    report.problems.sort(key=lambda p: (p.path, p.line, p.column))


def load_file(
    path: Path, global_policy: Mapping[str, Any] | None = None
) -> tuple[LoadedBehavior | None, list[Problem]]:
    """Parse and validate one file. Returns the behavior or None, and every problem found."""
    loaded, problems, _claim = _load(path, global_policy or {})
    return loaded, problems


def _load(
    path: Path, global_policy: Mapping[str, Any]
) -> tuple[LoadedBehavior | None, list[Problem], _Claim | None]:
    """``load_file``, plus the unique values the file claims (None if it cannot be parsed)."""
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Problem(where, 1, 1, "file", f"cannot read: {exc.strerror}")], None
    if len(raw) > MAX_FILE_BYTES:
        return (
            None,
            [Problem(where, 1, 1, "file", "larger than 1 MB; is this a behavior file?")],
            None,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(where, 1, 1, "file", f"not UTF-8 text (byte {exc.start})")], None
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
        return None, [Problem(where, line, col, "yaml", f"invalid YAML: {msg}")], None
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        return None, [Problem(where, 1, 1, "yaml", f"invalid YAML: {exc}")], None
    if data is None or plain_doc is None:
        empty = "empty file: a behavior needs at least schedule, preset, api_key and prompt"
        return None, [Problem(where, 1, 1, "file", empty)], None
    if not isinstance(data, MappingNode) or not isinstance(plain_doc, dict):
        return (
            None,
            [Problem(where, 1, 1, "file", "must be a mapping of fields (key: value)")],
            None,
        )
    duplicates = list(_duplicate_keys(where, data, ()))
    if duplicates:
        return None, duplicates, None

    problems: list[Problem] = []
    plain: dict[str, Any] = {str(k): v for k, v in plain_doc.items()}
    reported: set[tuple[str, ...]] = set()  # fields whose problem is already in ``problems``
    if "name" not in plain:
        stem = path.stem
        if not SLUG_RE.match(stem):
            reported.add(("name",))  # said here in the file name's words, not by the schema
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
    # The prompt is checked whatever else is wrong, so one pass shows every problem.
    prompt_text, prompt_problems = _prompt(path, data, plain)
    problems.extend(prompt_problems)
    behavior: Behavior | None = None
    try:
        behavior = Behavior.model_validate(plain)
    except ValidationError as exc:
        problems.extend(_validation_problems(where, data, exc, reported))
    if behavior is not None and global_policy:
        problems.extend(_combined_policy_problems(where, data, behavior, global_policy))
    positions = {key: _position(data, (key,), value=True) for key in UNIQUE_FIELDS}
    if _child(data, "name") is None:
        positions["name"] = (1, 1)
    claim = _Claim(
        path=path,
        values={k: v for k in UNIQUE_FIELDS if isinstance(v := plain.get(k), str)},
        positions=positions,
        valid=behavior is not None and not problems,
    )
    if behavior is None or problems:
        return None, _dedupe(problems), claim
    return (
        LoadedBehavior(
            path=path,
            behavior=behavior,
            prompt_text=prompt_text,
            definition_hash=definition_hash(behavior, prompt_text),
            positions=positions,
            warnings=tuple(
                Problem(where, *_position(data, tuple(f.split(".")), value=True), f, message)
                for f, message in behavior.warnings()
            ),
            references=tuple(_references(data, ())),
        ),
        [],
        claim,
    )


def _combined_policy_problems(
    where: str, data: MappingNode, behavior: Behavior, global_policy: Mapping[str, Any]
) -> list[Problem]:
    """The file's ``policy:`` over the configuration's ``[policy]``: the thresholds the
    behavior would run with must be valid together (each alone already is). A problem is
    located at the file's own threshold it is about, else at ``policy``."""
    from ledger.policy import threshold_problems

    own = behavior.policy.as_mapping()
    if not own:
        return []  # the configuration's [policy] alone is checked when it is loaded
    problems: list[Problem] = []
    for tp in threshold_problems({**global_policy, **own}):
        name = tp.name
        if name not in own and name == "warn_window_runs" and "warn_limit" in own:
            name = "warn_limit"
        elif name not in own and name == "warn_limit" and "warn_window_runs" in own:
            name = "warn_window_runs"
        inherited = [k for k in global_policy if k not in own]
        note = "; ".join(f"{k} = {global_policy[k]!r}" for k in inherited)
        if note:
            note = f" (from the configuration's [policy]: {note})"
        at = ("policy", name) if name in own else ("policy",)
        line, col = _position(data, at, value=True)
        problems.append(Problem(where, line, col, _dotted(at), tp.message + note))
    return problems


def definition_hash(behavior: Behavior, prompt_text: str) -> str:
    """SHA-256 of the behavior's canonical definition (the prompt file's text included).
    ``checks.cost_anomaly`` left at its defaults is left out, as before the field existed:
    upgrading must not count as an edit of every behavior (which restarts its windows)."""
    dump = behavior.model_dump(mode="json")
    if behavior.checks.cost_anomaly == CostAnomaly():
        del dump["checks"]["cost_anomaly"]
    body = orjson.dumps({"behavior": dump, "prompt": prompt_text}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def _prompt(path: Path, data: MappingNode, plain: dict[str, Any]) -> tuple[str, list[Problem]]:
    """The prompt's text (``prompt``, or ``prompt_file`` read relative to the behavior file)
    and its problems: an unreadable file, a bad template, a ``{variable}`` with no input.
    Works on the raw fields, so it runs even when other fields are invalid."""
    where = str(path)
    prompt, prompt_file = plain.get("prompt"), plain.get("prompt_file")
    if isinstance(prompt_file, str) and prompt is None:
        key = "prompt_file"
        prompt_path = (path.parent / prompt_file).resolve()
        try:
            text = prompt_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            line, col = _position(data, (key,), value=True)
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return "", [Problem(where, line, col, key, f"cannot read {prompt_path}: {reason}")]
    elif isinstance(prompt, str) and prompt_file is None:
        key, text = "prompt", prompt
    else:
        return "", []  # neither or both: the schema says so
    inputs = plain.get("inputs", {})
    if not isinstance(inputs, dict):
        return text, []  # the schema reports inputs itself
    return text, _prompt_variables(where, data, key, text, {str(k) for k in inputs})


def _prompt_variables(
    where: str, data: MappingNode, key: str, prompt_text: str, inputs: set[str]
) -> list[Problem]:
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
    missing = sorted(n for n in names if n not in inputs and n not in BUILTIN_PROMPT_VARIABLES)
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


def _validation_problems(
    where: str,
    data: MappingNode,
    exc: ValidationError,
    reported: Collection[tuple[str, ...]] = (),
) -> list[Problem]:
    """The schema's errors as problems, but none for a field in ``reported`` (already said)."""
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if tuple(str(part) for part in loc) in reported:
            continue
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
            required = _REQUIRED_FOR_KIND.match(message) if not known else None
            if required:  # a field only some kinds require: reported like a missing one
                field_path, message = required["field"], "required field is missing"
        problems.append(Problem(where, line, col, field_path, message))
    return problems


_REQUIRED_FOR_KIND = re.compile(r"^(?P<field>preset) is required \(")


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


def _references(node: Node, loc: tuple[Any, ...]) -> Iterator[Reference]:
    """Every secret reference under ``node``: a REFERENCE_FIELDS key whose value is one."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            name = str(key.value)
            if (
                name in REFERENCE_FIELDS
                and isinstance(value, ScalarNode)
                and isinstance(value.value, str)
                and is_reference(value.value)
            ):
                mark = value.start_mark
                yield Reference(
                    _dotted((*loc, name)), value.value.strip(), mark.line + 1, mark.column + 1
                )
            else:
                yield from _references(value, (*loc, name))
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            yield from _references(item, (*loc, i))


def unresolved_references(report: LoadReport) -> list[Problem]:
    """Each secret reference of the valid files that cannot be resolved here (an unset or
    empty variable, an unreadable or empty file; a relative ``file:`` is read from the file's
    folder), located at its value. The message names the reference, never a value."""
    from ledger.errors import SecretError
    from ledger.secrets import resolve

    problems: list[Problem] = []
    for lb in report.behaviors:
        for ref in lb.references:
            try:
                resolve(ref.reference, base_dir=lb.path.parent)
            except SecretError as exc:
                problems.append(Problem(str(lb.path), ref.line, ref.column, ref.field, str(exc)))
    return problems


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


def check_resolved_keys(
    report: LoadReport, base_dir: Path | None = None, holders: Holders | None = None
) -> dict[str, str]:
    """Resolve every valid behavior's key; of two behaviors resolving to the same key value
    (one behavior = one key) the one registered with its reference keeps it, else the first by
    file name, and the other is refused. Returns, by behavior name, why each key that cannot
    be resolved yet cannot be (such a behavior stays registered and fails at run time with
    ``auth_error``)."""
    from ledger.errors import SecretError
    from ledger.secrets import resolve

    holders = holders or {}
    missing: dict[str, str] = {}
    by_value: dict[str, list[LoadedBehavior]] = {}
    for lb in report.behaviors:
        try:
            value = resolve(lb.behavior.api_key, base_dir=lb.path.parent).get_secret_value()
        except SecretError as exc:
            missing[lb.name] = str(exc)
            continue
        digest = hashlib.sha256(value.encode()).hexdigest()
        by_value.setdefault(digest, []).append(lb)
    refused: set[Path] = set()
    for group in by_value.values():
        if len(group) < 2:
            continue

        def registered(lb: LoadedBehavior) -> bool:
            return holders.get(("api_key", lb.behavior.api_key)) == lb.path.name

        keeper, *others = sorted(group, key=lambda lb: (not registered(lb), lb.path.name))
        why = "registered with it" if registered(keeper) else "first by file name"
        for other in others:
            line, col = other.positions.get("api_key", (1, 1))
            report.problems.append(
                Problem(
                    str(other.path),
                    line,
                    col,
                    "api_key",
                    f"resolves to the same key as {keeper.name} ({keeper.path.name}), which "
                    f"keeps it ({why}): one behavior = one key, so create an OpenRouter key for "
                    "this one",
                )
            )
            refused.add(other.path)
    if refused:
        report.behaviors = [lb for lb in report.behaviors if lb.path not in refused]
        report.problems.sort(key=lambda p: (p.path, p.line, p.column))
    return missing
