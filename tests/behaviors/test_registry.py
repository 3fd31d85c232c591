"""Reconciling the behaviors folder into the database (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from ledger.behaviors.registry import ReconcileSummary, reconcile_directory
from ledger.db.models import BehaviorRow, FileProblem, LedgerEntry
from ledger.db.session import Database
from ledger.journal import verify
from tests.factories import T0, write_behavior


def _sync(db: Database, folder: Path, minutes: int = 0):  # type: ignore[no-untyped-def]
    with db.transaction() as session:
        return reconcile_directory(session, folder, T0 + timedelta(minutes=minutes))


def _row(db: Database, name: str) -> BehaviorRow:
    with db.transaction() as session:
        row = session.execute(select(BehaviorRow).where(BehaviorRow.name == name)).scalar_one()
        session.expunge(row)
        return row


def _entries(db: Database, name: str) -> list[tuple[str, str]]:
    with db.transaction() as session:
        rows = session.execute(
            select(LedgerEntry).where(LedgerEntry.behavior_name == name).order_by(LedgerEntry.id)
        ).scalars()
        return [(e.kind, e.reason) for e in rows]


def test_new_file_registers_at_its_start_tier_with_a_ledger_entry(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha")
    summary = _sync(db, tmp_path)
    assert summary.registered == ["alpha"]
    row = _row(db, "alpha")
    assert (row.tier, row.retired, row.paused) == ("A", False, False)
    assert _entries(db, "alpha") == [
        ("registered", "registered from alpha.yaml at A · proposal-only")
    ]


def test_unchanged_folder_is_a_no_op(db: Database, tmp_path: Path) -> None:
    write_behavior(tmp_path, "alpha")
    _sync(db, tmp_path)
    assert not _sync(db, tmp_path, 1).changed
    assert len(_entries(db, "alpha")) == 1


def test_edit_keeps_tier_and_history_and_records_new_hash(db: Database, tmp_path: Path) -> None:
    path = write_behavior(tmp_path, "alpha")
    _sync(db, tmp_path)
    with db.transaction() as session:
        row = session.execute(select(BehaviorRow).where(BehaviorRow.name == "alpha")).scalar_one()
        row.tier = "B"
        old_hash = row.definition_hash
    path.write_text(path.read_text().replace("15m", "30m"))
    summary = _sync(db, tmp_path, 5)
    assert summary.updated == ["alpha"]
    row = _row(db, "alpha")
    assert row.tier == "B"
    assert row.definition_hash != old_hash
    assert row.definition["schedule"] == "30m"
    kinds = [k for k, _ in _entries(db, "alpha")]
    assert kinds == ["registered", "definition_changed"]


def test_changed_preset_is_named_in_the_entry(db: Database, tmp_path: Path) -> None:
    path = write_behavior(tmp_path, "alpha")
    _sync(db, tmp_path)
    path.write_text(path.read_text().replace("test-preset", "stricter"))
    _sync(db, tmp_path, 1)
    kind, reason = _entries(db, "alpha")[-1]
    assert kind == "definition_changed"
    assert "preset test-preset → stricter" in reason


def test_deleted_file_retires_and_restored_file_comes_back_at_old_tier(
    db: Database, tmp_path: Path
) -> None:
    path = write_behavior(tmp_path, "alpha")
    body = path.read_text()
    _sync(db, tmp_path)
    with db.transaction() as session:
        session.execute(select(BehaviorRow)).scalar_one().tier = "B"
    path.unlink()
    assert _sync(db, tmp_path, 1).retired == ["alpha"]
    assert _row(db, "alpha").retired
    path.write_text(body)
    assert _sync(db, tmp_path, 2).restored == ["alpha"]
    row = _row(db, "alpha")
    assert (row.retired, row.tier) == (False, "B")
    assert [k for k, _ in _entries(db, "alpha")] == ["registered", "retired", "restored"]


def test_invalid_edit_keeps_the_last_valid_version_running(db: Database, tmp_path: Path) -> None:
    path = write_behavior(tmp_path, "alpha")
    _sync(db, tmp_path)
    good_hash = _row(db, "alpha").definition_hash
    path.write_text(path.read_text().replace("15m", "every tuesday"))
    summary = _sync(db, tmp_path, 1)
    assert summary.retired == [] and summary.invalid == [str(path)]
    row = _row(db, "alpha")
    assert not row.retired
    assert row.definition_hash == good_hash
    assert row.problem is not None and "schedule:" in row.problem
    path.write_text(path.read_text().replace("every tuesday", "20m"))
    _sync(db, tmp_path, 2)
    assert _row(db, "alpha").problem is None


def test_invalid_new_file_is_reported_not_registered(db: Database, tmp_path: Path) -> None:
    write_behavior(tmp_path, "broken", "schedule: 15m\n")
    _sync(db, tmp_path)
    with db.transaction() as session:
        problems = session.execute(select(FileProblem)).scalars().all()
        assert [Path(p.path).name for p in problems] == ["broken.yaml"]
        assert session.execute(select(BehaviorRow)).first() is None
    (tmp_path / "broken.yaml").unlink()
    _sync(db, tmp_path, 1)
    with db.transaction() as session:
        assert session.execute(select(FileProblem)).first() is None


def test_a_new_file_reusing_a_registered_key_is_refused_and_the_existing_keeps_running(
    db: Database, tmp_path: Path
) -> None:
    """The new file sorts first by name, yet the behavior registered with the key keeps it."""
    old = write_behavior(tmp_path, "z-old")
    _sync(db, tmp_path)
    key_line = next(line for line in old.read_text().splitlines() if line.startswith("api_key"))
    new = write_behavior(
        tmp_path, "a-new", old.read_text().replace("key_name: z-old-key", "key_name: a-key")
    )
    assert key_line in new.read_text()
    summary = _sync(db, tmp_path, 1)
    assert summary.registered == [] and summary.retired == []
    assert summary.invalid == [str(new)]
    row = _row(db, "z-old")
    assert row.problem is None and not row.retired
    with db.transaction() as session:
        assert session.execute(select(BehaviorRow.name)).scalars().all() == ["z-old"]
        problem = session.execute(select(FileProblem)).scalar_one()
    assert problem.path == str(new)
    assert "is already used by z-old.yaml, which keeps it (registered with it)" in (
        problem.problems
    )


def test_lowering_max_tier_demotes_to_the_cap(db: Database, tmp_path: Path) -> None:
    path = write_behavior(tmp_path, "alpha")
    _sync(db, tmp_path)
    with db.transaction() as session:
        session.execute(select(BehaviorRow)).scalar_one().tier = "C"
    path.write_text(path.read_text() + "max_tier: B\n")
    assert _sync(db, tmp_path, 1).capped == ["alpha"]
    assert _row(db, "alpha").tier == "B"


def test_missing_folder_retires_nothing(db: Database, tmp_path: Path) -> None:
    write_behavior(tmp_path / "b", "alpha")
    _sync(db, tmp_path / "b")
    assert _sync(db, tmp_path / "gone", 1).retired == []


def test_registry_history_keeps_the_hash_chain_intact(db: Database, tmp_path: Path) -> None:
    path = write_behavior(tmp_path, "alpha")
    write_behavior(tmp_path, "beta")
    _sync(db, tmp_path)
    path.write_text(path.read_text().replace("15m", "1h"))
    _sync(db, tmp_path, 1)
    path.unlink()
    _sync(db, tmp_path, 2)
    with db.transaction() as session:
        result = verify(session)
    assert result.ok and result.entries == 4


def test_a_reconcile_summary_names_what_changed_and_counts_the_rest() -> None:
    few = ReconcileSummary(registered=["alpha"], retired=["beta", "gamma"])
    assert few.describe() == "1 registered (alpha), 2 retired (beta, gamma)"
    many = ReconcileSummary(updated=[f"b{i:02}" for i in range(14)])
    assert many.describe(shown=3) == "14 updated (b00, b01, b02, …and 11 more)"
    assert ReconcileSummary().describe() == "no changes"
