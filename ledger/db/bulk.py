"""Driver-level bulk inserts for hot paths (broadcast deliveries, slot claims).

``DriverInsert`` compiles ``INSERT … ON CONFLICT (keys) DO NOTHING`` once per dialect and runs
it as one ``executemany`` on the DBAPI cursor: SQLAlchemy's per-row bind processing is most of
a big batch's cost otherwise. Column values must already be in driver form; ``converter`` gives
a column's bind processor (e.g. a datetime to the exact text SQLite stores), so callers convert
each distinct value once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

__all__ = ["DriverInsert", "driver_insert"]


class DriverInsert:
    """``INSERT INTO table (columns) … ON CONFLICT (conflict) DO NOTHING`` for ``dialect``
    (a plain insert when ``conflict`` is empty)."""

    def __init__(
        self, table: Table, columns: Sequence[str], conflict: Sequence[str], dialect: Dialect
    ) -> None:
        insert = pg_insert if dialect.name == "postgresql" else sqlite_insert
        stmt = insert(table)
        if conflict:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        compiled = stmt.values({name: None for name in columns}).inline().compile(dialect=dialect)
        self.sql = str(compiled)
        self._order = compiled.positiontup  # None for named paramstyles (psycopg)
        self._table = table
        self._dialect = dialect

    def converter(self, column: str) -> Callable[[Any], Any]:
        """The driver form of a value of ``column`` (its type's bind processor)."""
        process = (
            self._table.c[column].type.dialect_impl(self._dialect).bind_processor(self._dialect)
        )
        return process if process is not None else _same

    def params(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Rows (column → driver value) in the paramstyle of the compiled statement."""
        if self._order is None:
            return list(rows)
        order = self._order
        return [tuple(row[name] for name in order) for row in rows]

    def execute(self, conn: Connection, params: list[Any]) -> None:
        """Insert rows already passed through ``params``."""
        if params:
            conn.exec_driver_sql(self.sql, params)


def _same(value: Any) -> Any:
    return value


_COMPILED: dict[tuple[str, tuple[str, ...], tuple[str, ...], str], DriverInsert] = {}


def driver_insert(
    table: Table, columns: Sequence[str], conflict: Sequence[str], dialect: Dialect
) -> DriverInsert:
    """A ``DriverInsert``, compiled once per table, columns, conflict keys and dialect."""
    key = (table.name, tuple(columns), tuple(conflict), dialect.name)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = DriverInsert(table, columns, conflict, dialect)
    return found
