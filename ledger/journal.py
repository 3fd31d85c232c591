"""The hash-chained ledger: ``append_entry`` (O(1)), ``verify`` and ``export``.

Each entry stores ``prev_hash`` and ``hash = sha256(prev_hash + canonical_json(entry))``, where
the canonical JSON includes the entry's id, so an edited, deleted or reordered entry breaks the
chain. The single ``chain_head`` row is locked by every append (row lock on PostgreSQL; SQLite
serializes writers), which keeps appends O(1) and the chain linear under concurrency.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlmodel import Session, col, select

from ledger.clock import json_times
from ledger.db.models import ChainHead, LedgerEntry

GENESIS_HASH = "0" * 64


def canonical_json(entry: LedgerEntry) -> bytes:
    return orjson.dumps(
        {
            "id": entry.id,
            "behavior_id": entry.behavior_id,
            "behavior_name": entry.behavior_name,
            "kind": entry.kind,
            "actor": entry.actor,
            "reason": entry.reason,
            "data": entry.data,
            "created_at": entry.created_at.isoformat(timespec="microseconds"),
        },
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
    )


def entry_hash(prev_hash: str, entry: LedgerEntry) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(entry)).hexdigest()


def append_entry(
    session: Session,
    *,
    kind: str,
    actor: str,
    reason: str,
    now: datetime,
    behavior_id: int | None = None,
    behavior_name: str | None = None,
    data: dict[str, Any] | None = None,
) -> LedgerEntry:
    """Append one entry inside the caller's open transaction (adds and flushes, no commit)."""
    head = session.execute(
        select(ChainHead).where(col(ChainHead.id) == 1).with_for_update()
    ).scalar_one()
    # JSON columns store what JSON can carry; normalise now so the hash matches what is read.
    entry = LedgerEntry(
        id=head.last_entry_id + 1,
        behavior_id=behavior_id,
        behavior_name=behavior_name,
        kind=kind,
        actor=actor,
        reason=reason,
        data=orjson.loads(orjson.dumps(json_times(data or {}), option=orjson.OPT_NON_STR_KEYS)),
        created_at=now.astimezone(UTC),
        prev_hash=head.last_hash,
        hash="",
    )
    entry.hash = entry_hash(head.last_hash, entry)
    head.last_entry_id = entry.id or 0
    head.last_hash = entry.hash
    session.add(entry)
    session.add(head)
    session.flush()
    return entry


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    entries: int
    broken_entry_id: int | None = None
    problem: str | None = None


def iter_entries(session: Session, batch: int = 1000) -> Iterator[LedgerEntry]:
    last = 0
    while True:
        rows = (
            session.execute(
                select(LedgerEntry)
                .where(col(LedgerEntry.id) > last)
                .order_by(col(LedgerEntry.id))
                .limit(batch)
            )
            .scalars()
            .all()
        )
        if not rows:
            return
        yield from rows
        last = rows[-1].id or last
        session.expunge_all()


def verify(session: Session) -> VerifyResult:
    """Walk the chain; report the first entry that does not follow from its predecessor."""
    prev_hash = GENESIS_HASH
    expected_id = 1
    count = 0
    for entry in iter_entries(session):
        count += 1
        if entry.id != expected_id:
            return VerifyResult(
                False,
                count,
                entry.id,
                f"entry {expected_id} is missing (found entry {entry.id} next): entries were "
                "deleted or renumbered",
            )
        if entry.prev_hash != prev_hash:
            return VerifyResult(
                False,
                count,
                entry.id,
                f"entry {entry.id} does not link to the entry before it: the chain was "
                "reordered or an entry was removed",
            )
        if entry_hash(prev_hash, entry) != entry.hash:
            return VerifyResult(
                False,
                count,
                entry.id,
                f"entry {entry.id} ({entry.kind}, {entry.created_at.isoformat()}) was edited "
                "after it was written: its content no longer matches its hash",
            )
        prev_hash = entry.hash
        expected_id += 1
    head = session.get(ChainHead, 1)
    if head is not None and (head.last_entry_id != expected_id - 1 or head.last_hash != prev_hash):
        return VerifyResult(
            False,
            count,
            expected_id,
            f"the chain ends at entry {expected_id - 1} but was written up to entry "
            f"{head.last_entry_id}: the newest entries were deleted",
        )
    return VerifyResult(True, count)


def export_jsonl(session: Session) -> Iterator[bytes]:
    """Each entry as one JSON line with its hashes, verifiable elsewhere."""
    for entry in iter_entries(session):
        record = orjson.loads(canonical_json(entry))
        record["prev_hash"] = entry.prev_hash
        record["hash"] = entry.hash
        yield orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"


def verify_exported(lines: Iterable[bytes]) -> VerifyResult:
    """Walk the chain of an ``export_jsonl`` file (one entry per line, from entry 1): the same
    checks as ``verify`` without the database. A line that is not an exported entry is a
    broken chain at that line (``broken_entry_id`` is then the line number)."""
    prev_hash = GENESIS_HASH
    expected_id = 1
    count = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            stored_prev, stored_hash = record.pop("prev_hash"), record.pop("hash")
            entry_id, kind = record["id"], record["kind"]
            if not isinstance(stored_hash, str):
                raise TypeError(stored_hash)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return VerifyResult(
                False, count, number, f"line {number} is not a ledger entry exported as jsonl"
            )
        count += 1
        if entry_id != expected_id:
            return VerifyResult(
                False,
                count,
                entry_id,
                f"entry {expected_id} is missing (line {number} holds entry {entry_id}): "
                "entries were deleted or renumbered",
            )
        if stored_prev != prev_hash:
            return VerifyResult(
                False,
                count,
                entry_id,
                f"entry {entry_id} (line {number}) does not link to the entry before it: the "
                "chain was reordered or an entry was removed",
            )
        body = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        if hashlib.sha256(prev_hash.encode("ascii") + body).hexdigest() != stored_hash:
            return VerifyResult(
                False,
                count,
                entry_id,
                f"entry {entry_id} ({kind}, line {number}) was edited after it was written: "
                "its content no longer matches its hash",
            )
        prev_hash = stored_hash
        expected_id += 1
    return VerifyResult(True, count)
