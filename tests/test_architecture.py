"""The layers of DESIGN.md, held by a scan of every import in ``ledger/`` (lazy ones inside
functions included): imports point down, never up or sideways.

    edge      cli, web/, demo/
    daemon    daemon.py
    services  runner/, ingest/, behaviors/, notion/, outbox/ dispatchers and channels
    apply     transitions.py, journal.py, outbox/enqueue.py (the outbox's write side)
    core      policy.py, gates.py
    base      db/, config, errors, logging, secrets, signatures, http, clock
    sim       sim/: stand-ins for the outside world, nothing of the daemon
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ledger

ROOT = Path(ledger.__file__).parent


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importing module, e.g. ledger.runner.run
    target: str  # the imported ledger module, e.g. ledger.outbox.enqueue
    names: tuple[str, ...]  # what a ``from`` import takes from it
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    path = ROOT.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _scan() -> list[Import]:
    found: list[Import] = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found.extend(
                    Import(module, alias.name, (), where)
                    for alias in node.names
                    if alias.name.split(".")[0] == "ledger"
                )
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] != "ledger":
                    continue
                names = tuple(alias.name for alias in node.names)
                submodules = [n for n in names if _is_module(f"{node.module}.{n}")]
                found.extend(Import(module, f"{node.module}.{n}", (), where) for n in submodules)
                if len(submodules) < len(names):
                    found.append(Import(module, node.module, names, where))
    return found


IMPORTS = _scan()


def _in(dotted: str, *prefixes: str) -> bool:
    return any(dotted == p or dotted.startswith(p + ".") for p in prefixes)


def _violations(
    importer: Callable[[str], bool], forbidden: Callable[[str], bool]
) -> Iterator[Import]:
    return (i for i in IMPORTS if importer(i.module) and forbidden(i.target))


def _report(violations: Iterator[Import]) -> list[str]:
    return [str(v) for v in violations]


EDGE = ("ledger.cli", "ledger.__main__", "ledger.web", "ledger.demo")
BASE = (
    "ledger.db",
    "ledger.config",
    "ledger.errors",
    "ledger.logging",
    "ledger.secrets",
    "ledger.signatures",
    "ledger.http",
    "ledger.clock",
)


def test_the_scan_sees_module_level_and_lazy_imports() -> None:
    targets = {(i.module, i.target) for i in IMPORTS}
    assert ("ledger.policy", "ledger.gates") in targets
    assert ("ledger.cli", "ledger.web.app") in targets  # inside a function
    assert ("ledger.__main__", "ledger.cli") in targets


def test_nothing_below_the_edge_imports_cli_or_web() -> None:
    assert _report(_violations(lambda m: not _in(m, *EDGE), lambda t: _in(t, *EDGE))) == []


def test_the_policy_core_imports_nothing_of_the_daemon_but_itself_and_gates() -> None:
    core = ("ledger.policy", "ledger.gates")
    assert _report(_violations(lambda m: _in(m, *core), lambda t: not _in(t, *core))) == []


def test_the_database_layer_imports_no_service() -> None:
    assert _report(_violations(lambda m: _in(m, "ledger.db"), lambda t: not _in(t, *BASE))) == []


def test_the_runner_and_ingest_do_not_import_each_other() -> None:
    runner_to_ingest = _violations(
        lambda m: _in(m, "ledger.runner"), lambda t: _in(t, "ledger.ingest")
    )
    ingest_to_runner = _violations(
        lambda m: _in(m, "ledger.ingest"), lambda t: _in(t, "ledger.runner")
    )
    assert _report(runner_to_ingest) + _report(ingest_to_runner) == []


def test_the_outbox_imports_neither_the_runner_nor_ingest() -> None:
    violations = _violations(
        lambda m: _in(m, "ledger.outbox"), lambda t: _in(t, "ledger.runner", "ledger.ingest")
    )
    assert _report(violations) == []


def test_the_outbox_write_side_imports_only_base_modules() -> None:
    violations = _violations(lambda m: m == "ledger.outbox.enqueue", lambda t: not _in(t, *BASE))
    assert _report(violations) == []


def test_the_apply_layer_imports_no_dispatcher_channel_runner_or_ingest_code() -> None:
    def forbidden(target: str) -> bool:
        if _in(target, "ledger.outbox"):
            return not _in(target, "ledger.outbox.enqueue") and target != "ledger.outbox"
        return _in(target, "ledger.runner", "ledger.ingest", "ledger.daemon", *EDGE)

    violations = _violations(lambda m: m in ("ledger.transitions", "ledger.journal"), forbidden)
    assert _report(violations) == []


def test_only_transitions_writes_ledger_entries() -> None:
    writers = [
        str(i)
        for i in IMPORTS
        if i.target == "ledger.journal" and "append_entry" in i.names
        if i.module != "ledger.transitions"
    ]
    assert writers == []


# Leaves the simulators share with the daemon: they import nothing else of the ledger.
SHARED_LEAVES = ("ledger.listen",)


def test_the_simulators_import_nothing_of_the_daemon() -> None:
    violations = _violations(
        lambda m: _in(m, "ledger.sim"), lambda t: not _in(t, "ledger.sim", *SHARED_LEAVES)
    )
    assert _report(violations) == []


def test_the_leaves_the_simulators_share_import_nothing_of_the_ledger() -> None:
    violations = _violations(lambda m: _in(m, *SHARED_LEAVES), lambda t: _in(t, "ledger"))
    assert _report(violations) == []


def test_the_daemon_is_wired_only_in_daemon_py_and_below_the_edge() -> None:
    """Only the edge (the web app's lifespan, the CLI) opens the daemon or uses its wiring."""
    users = {i.module for i in IMPORTS if i.target == "ledger.daemon"}
    assert {u for u in users if not _in(u, *EDGE)} == set()


def test_the_notion_mirror_imports_neither_the_runner_nor_ingest() -> None:
    """Approving from Notion reaches the runner's approval code through the daemon's wiring."""
    violations = _violations(
        lambda m: _in(m, "ledger.notion"), lambda t: _in(t, "ledger.runner", "ledger.ingest")
    )
    assert _report(violations) == []
