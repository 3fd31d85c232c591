"""SQLite connections as the daemon opens them."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from ledger.db.engine import make_engine

NEEDLE = "sk-or-v1-" + "deadbeef0" * 7  # key-shaped


def test_sqlite_overwrites_what_it_deletes(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
            conn.execute(text("CREATE TABLE raw (body TEXT)"))
            conn.execute(text("CREATE TABLE kept (body TEXT)"))
            # Larger than a page: the row spills to overflow pages, freed by the delete.
            conn.execute(text("INSERT INTO raw VALUES (:body)"), {"body": NEEDLE * 200})
            conn.execute(text("INSERT INTO kept VALUES ('stays')"))
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM raw"))
    finally:
        engine.dispose()  # the last connection to close checkpoints the log into the file
    content = path.read_bytes()
    assert b"stays" in content
    assert NEEDLE.encode() not in content
