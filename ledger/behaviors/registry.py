"""The behaviors folder reconciled into the database.

A new file registers its behavior at its start tier; an edit keeps tier and history and
records the new definition hash; a removed file retires the behavior (history kept) and a file
that comes back restores it at its old tier; an invalid file is reported and the last valid
version keeps running. Every change is a ledger entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlmodel import Session, col

from ledger.behaviors.load import UNIQUE_FIELDS, LoadedBehavior, LoadReport, load_directory
from ledger.db.models import BehaviorRow, FileProblem
from ledger.gates import Tier
from ledger.transitions import (
    cap_at_max_tier,
    record_definition_change,
    record_registered,
    restore_behavior,
    retire_behavior,
)

NAMES_SHOWN = 10  # names of each kind of change in a reconcile's log line


@dataclass(slots=True)
class ReconcileSummary:
    registered: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    capped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.registered or self.updated or self.retired or self.restored or self.capped)

    def describe(self, shown: int = NAMES_SHOWN) -> str:
        """One line for the log: how many of each change, with their names (the first
        ``shown`` of each, then how many more), e.g. ``2 registered (alpha, beta)``."""
        parts = [
            f"{len(v)} {k} ({_first_names(v, shown)})"
            for k, v in (
                ("registered", self.registered),
                ("updated", self.updated),
                ("retired", self.retired),
                ("restored", self.restored),
                ("capped", self.capped),
                ("invalid files", self.invalid),
            )
            if v
        ]
        return ", ".join(parts) or "no changes"


def _first_names(names: list[str], shown: int) -> str:
    listed = ", ".join(names[:shown])
    more = len(names) - shown
    return f"{listed}, …and {more} more" if more > 0 else listed


def reconcile_directory(
    session: Session,
    directory: Path,
    now: datetime,
    global_policy: Mapping[str, Any] | None = None,
) -> ReconcileSummary:
    """Load ``directory`` and reconcile it (inside the caller's transaction); each file's
    ``policy:`` is checked over ``global_policy`` (ledger.toml's ``[policy]``)."""
    report = load_directory(directory, registered_holders(session), global_policy=global_policy)
    return reconcile(session, report, directory, now)


def registered_holders(session: Session) -> dict[tuple[str, str], str]:
    """Which file each registered (not retired) behavior's unique values belong to: a new
    file that reuses one of them is refused, and the behavior that has it keeps running."""
    holders: dict[tuple[str, str], str] = {}
    rows = session.execute(
        select(
            col(BehaviorRow.name), col(BehaviorRow.source_path), col(BehaviorRow.definition)
        ).where(col(BehaviorRow.retired).is_(False))
    )
    for name, source_path, definition in rows:
        file = Path(source_path).name
        holders[("name", name)] = file
        for attr in UNIQUE_FIELDS:
            value = (definition or {}).get(attr)
            if attr != "name" and isinstance(value, str):
                holders[(attr, value)] = file
    return holders


def reconcile(
    session: Session,
    report: LoadReport,
    directory: Path,
    now: datetime,
    key_problems: dict[str, str] | None = None,
) -> ReconcileSummary:
    """Apply a folder's load report to the database. Adds and flushes; the caller commits.

    ``key_problems`` (the daemon's: behavior name → why its key cannot be resolved in the
    daemon's environment) is recorded on each valid behavior, and cleared for the others;
    None (a CLI command, in another environment) leaves what the daemon recorded.

    Replicas sharing one PostgreSQL reconcile one at a time (a transaction-scoped advisory
    lock); SQLite already has a single writer."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('ledger.registry'))"))
    summary = ReconcileSummary()
    rows = {row.name: row for row in session.execute(select(BehaviorRow)).scalars()}
    by_path = {row.source_path: row for row in rows.values() if not row.retired}
    invalid = report.problems_by_path()
    folder_readable = directory.is_dir()

    for lb in report.behaviors:
        row = rows.get(lb.name)
        if row is None:
            rows[lb.name] = _register(session, lb, now)
            summary.registered.append(lb.name)
        else:
            _refresh(session, row, lb, now, summary)
        if key_problems is not None:
            registered = rows[lb.name]
            problem = key_problems.get(lb.name)
            if registered.key_problem != problem:
                registered.key_problem = problem
                session.add(registered)

    known_paths = {str(p) for p in report.files_seen}
    for path, problems in invalid.items():
        rendered = "\n".join(p.render() for p in problems)
        summary.invalid.append(path)
        owner = by_path.get(path)
        if owner is not None and owner.name not in {lb.name for lb in report.behaviors}:
            if owner.problem != rendered:
                owner.problem = rendered
                owner.updated_at = now
                session.add(owner)
            continue
        existing = session.get(FileProblem, path)
        if existing is None:
            session.add(FileProblem(path=path, problems=rendered, detected_at=now))
        elif existing.problems != rendered:
            existing.problems = rendered
            existing.detected_at = now
            session.add(existing)

    for stale in session.execute(select(FileProblem)).scalars():
        if stale.path not in invalid or stale.path not in known_paths:
            session.delete(stale)

    if folder_readable:
        valid_names = {lb.name for lb in report.behaviors}
        for row in rows.values():
            if row.retired or row.name in valid_names:
                continue
            if row.source_path in invalid:
                continue  # an invalid edit: the last valid version keeps running
            retire_behavior(session, row, now=now)
            summary.retired.append(row.name)
    session.flush()
    return summary


def _register(session: Session, lb: LoadedBehavior, now: datetime) -> BehaviorRow:
    b = lb.behavior
    tier = Tier(b.start_tier)
    row = BehaviorRow(
        name=b.name,
        tier=tier.value,
        max_tier=b.max_tier.value,
        enabled=b.enabled,
        definition_hash=lb.definition_hash,
        definition=b.model_dump(mode="json"),
        prompt_text=lb.prompt_text,
        source_path=str(lb.path),
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    record_registered(session, row, path=lb.path, now=now)
    return row


def _refresh(
    session: Session, row: BehaviorRow, lb: LoadedBehavior, now: datetime, summary: ReconcileSummary
) -> None:
    b = lb.behavior
    changed = False
    if row.retired:
        restore_behavior(session, row, path=lb.path, now=now)
        summary.restored.append(row.name)
        changed = True
    if row.definition_hash != lb.definition_hash:
        # Same tier, but a new definition must earn its record again.
        record_definition_change(
            session,
            row,
            path=lb.path,
            new_hash=lb.definition_hash,
            new_preset=b.model_dump(mode="json")["preset"],
            now=now,
        )
        row.definition_hash = lb.definition_hash
        new_definition = b.model_dump(mode="json")
        if (row.definition or {}).get("api_key") != new_definition.get("api_key"):
            row.learned_key_name = None  # learned from the key it used before
        row.definition = new_definition
        row.prompt_text = lb.prompt_text
        row.enabled = b.enabled
        if row.name not in summary.restored:
            summary.updated.append(row.name)
        changed = True
    if row.max_tier != b.max_tier.value:
        row.max_tier = b.max_tier.value
        changed = True
    if Tier(row.tier).rank > b.max_tier.rank:
        cap_at_max_tier(session, row, b.max_tier, path=lb.path, now=now)
        summary.capped.append(row.name)
    if row.source_path != str(lb.path) or row.problem is not None:
        row.source_path = str(lb.path)
        row.problem = None
        changed = True
    if changed:
        row.updated_at = now
        session.add(row)
