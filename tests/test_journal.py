"""The hash-chained ledger: appends, verification, tamper detection, export."""

from __future__ import annotations

import itertools
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import delete, text, update
from sqlmodel import select

from ledger.db.models import ChainHead, LedgerEntry
from ledger.db.session import Database
from ledger.journal import GENESIS_HASH, append_entry, entry_hash, export_jsonl, verify
from tests.factories import T0


def _append_n(db: Database, n: int) -> None:
    with db.transaction() as session:
        for i in range(n):
            append_entry(
                session,
                kind="note",
                actor="test",
                reason=f"entry {i}",
                now=T0 + timedelta(seconds=i),
                data={"i": i, "nested": {"b": [1, 2.5]}},
            )


def test_empty_ledger_verifies(db: Database) -> None:
    with db.transaction() as session:
        assert verify(session).ok


def test_entries_chain_from_genesis(db: Database) -> None:
    _append_n(db, 5)
    with db.transaction() as session:
        entries = list(session.exec(select(LedgerEntry).order_by(LedgerEntry.id)))
        assert entries[0].prev_hash == GENESIS_HASH
        for before, after in itertools.pairwise(entries):
            assert after.prev_hash == before.hash
            assert entry_hash(before.hash, after) == after.hash
        result = verify(session)
    assert result.ok and result.entries == 5


def test_verify_catches_an_edited_entry(db: Database) -> None:
    _append_n(db, 5)
    with db.transaction() as session:
        session.execute(
            update(LedgerEntry).where(LedgerEntry.id == 3).values(reason="nothing happened")
        )
    with db.transaction() as session:
        result = verify(session)
    assert not result.ok
    assert result.broken_entry_id == 3
    assert "edited" in (result.problem or "")


def test_verify_catches_a_deleted_entry(db: Database) -> None:
    _append_n(db, 5)
    with db.transaction() as session:
        session.execute(delete(LedgerEntry).where(LedgerEntry.id == 2))
    with db.transaction() as session:
        result = verify(session)
    assert not result.ok and result.broken_entry_id == 3


def test_verify_catches_deleted_newest_entries(db: Database) -> None:
    _append_n(db, 5)
    with db.transaction() as session:
        session.execute(delete(LedgerEntry).where(LedgerEntry.id >= 4))  # type: ignore[operator]
    with db.transaction() as session:
        result = verify(session)
    assert not result.ok and "newest entries were deleted" in (result.problem or "")


def test_verify_catches_reordered_entries(db: Database) -> None:
    _append_n(db, 5)
    # Swap the contents of entries 2 and 4 (ids stay contiguous; the links do not).
    with db.transaction() as session:
        session.execute(update(LedgerEntry).where(LedgerEntry.id == 2).values(id=100))
        session.execute(update(LedgerEntry).where(LedgerEntry.id == 4).values(id=2))
        session.execute(update(LedgerEntry).where(LedgerEntry.id == 100).values(id=4))
    with db.transaction() as session:
        result = verify(session)
    assert not result.ok and result.broken_entry_id == 2


def test_head_row_tracks_the_last_entry(db: Database) -> None:
    _append_n(db, 3)
    with db.transaction() as session:
        head = session.get(ChainHead, 1)
        last = session.get(LedgerEntry, 3)
        assert head is not None and last is not None
        assert (head.last_entry_id, head.last_hash) == (3, last.hash)


def test_export_lines_can_be_verified_elsewhere(db: Database) -> None:
    _append_n(db, 4)
    with db.transaction() as session:
        lines = [orjson.loads(line) for line in export_jsonl(session)]
    assert [r["id"] for r in lines] == [1, 2, 3, 4]
    import hashlib

    prev = GENESIS_HASH
    for record in lines:
        body = {k: v for k, v in record.items() if k not in {"hash", "prev_hash"}}
        digest = hashlib.sha256(
            prev.encode() + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        assert record["prev_hash"] == prev and record["hash"] == digest
        prev = digest


def test_rolled_back_append_leaves_no_trace(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as session:
        append_entry(session, kind="note", actor="t", reason="r", now=T0)
        raise RuntimeError("abort")
    with db.transaction() as session:
        assert session.execute(text("SELECT count(*) FROM ledger_entry")).scalar_one() == 0
        assert verify(session).ok
