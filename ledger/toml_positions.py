"""Where each key of a TOML document is written: ``tomllib`` parses values but keeps no
positions, so configuration errors could not say ``ledger.toml:LINE:COL``. This scans the text
of a document ``tomllib`` has already accepted, for positions only (never for values)."""

from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column of a key and of its value (a table header: both the header)."""

    key_line: int
    key_col: int
    value_line: int
    value_col: int


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def toml_positions(text: str) -> dict[Path_, Position]:
    """The position of every key (dotted keys and inline tables included; array items by
    index; tables of ``[[arrays]]`` by index) of ``text``. A document this scanner does not
    follow gives the positions found up to there: never an exception."""
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError):
        scanner.document()
    return scanner.found


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.found: dict[Path_, Position] = {}
        self._starts = [0] + [n + 1 for n, ch in enumerate(text) if ch == "\n"]
        self._array_tables: dict[Path_, int] = {}

    # -- positions ---------------------------------------------------------------------

    def _line_col(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._starts, offset) - 1
        return line + 1, offset - self._starts[line] + 1

    def _record(self, path: Path_, key_at: int, value_at: int) -> None:
        if path not in self.found:
            self.found[path] = Position(*self._line_col(key_at), *self._line_col(value_at))

    # -- lexing ------------------------------------------------------------------------

    def _peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.text[j] if j < len(self.text) else ""

    def _skip_blank(self, *, newlines: bool) -> None:
        """Skip spaces (and newlines and comments when ``newlines``); a comment ends a line."""
        while self.i < len(self.text):
            ch = self.text[self.i]
            if ch in " \t" or (newlines and ch in "\r\n"):
                self.i += 1
            elif ch == "#":
                while self.i < len(self.text) and self.text[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _key_part(self) -> str:
        ch = self._peek()
        if ch == '"':
            return self._basic_string()
        if ch == "'":
            end = self.text.index("'", self.i + 1)
            part = self.text[self.i + 1 : end]
            self.i = end + 1
            return part
        start = self.i
        while self._peek() and self._peek() in _BARE:
            self.i += 1
        if self.i == start:
            raise ValueError("no key")
        return self.text[start : self.i]

    def _key(self) -> list[tuple[str, int]]:
        """A dotted key: each part with the offset it starts at."""
        parts: list[tuple[str, int]] = []
        while True:
            self._skip_blank(newlines=False)
            at = self.i
            parts.append((self._key_part(), at))
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return parts
            self.i += 1

    def _basic_string(self) -> str:
        """A one-line "..." string (escapes kept undecoded except \\" and \\\\)."""
        self.i += 1
        out: list[str] = []
        while self.text[self.i] != '"':
            if self.text[self.i] == "\\":
                out.append(self.text[self.i + 1])
                self.i += 2
            else:
                out.append(self.text[self.i])
                self.i += 1
        self.i += 1
        return "".join(out)

    # -- structure ---------------------------------------------------------------------

    def document(self) -> None:
        table: Path_ = ()
        while True:
            self._skip_blank(newlines=True)
            if self.i >= len(self.text):
                return
            if self._peek() == "[":
                table = self._header()
            else:
                self._key_value(table)

    def _header(self) -> Path_:
        array = self._peek(1) == "["
        self.i += 2 if array else 1
        parts = self._key()
        self.i += 2 if array else 1
        path: Path_ = tuple(name for name, _ in parts)
        for n, (_, at) in enumerate(parts):
            self._record(path[: n + 1], at, at)
        if array:
            index = self._array_tables.get(path, -1) + 1
            self._array_tables[path] = index
            path = (*path, index)
            self._record(path, parts[-1][1], parts[-1][1])
        return path

    def _key_value(self, table: Path_) -> None:
        parts = self._key()
        self.i += 1  # "="
        self._skip_blank(newlines=False)
        path = table
        for n, (name, at) in enumerate(parts):
            path = (*path, name)
            self._record(path, at, self.i if n == len(parts) - 1 else at)
        self._value(path)

    def _value(self, path: Path_) -> None:
        ch = self._peek()
        if self.text.startswith(('"""', "'''"), self.i):
            quote = self.text[self.i : self.i + 3]
            end = self.i + 3
            while True:
                end = self.text.index(quote, end)
                if quote == '"""' and self._escaped(end):
                    end += 1
                    continue
                break
            self.i = end + 3
            while self._peek() == quote[0]:  # up to two quotes may end the content
                self.i += 1
        elif ch == '"':
            self._basic_string()
        elif ch == "'":
            self.i = self.text.index("'", self.i + 1) + 1
        elif ch == "[":
            self.i += 1
            index = 0
            while True:
                self._skip_blank(newlines=True)
                if self._peek() == "]":
                    self.i += 1
                    return
                self._record((*path, index), self.i, self.i)
                self._value((*path, index))
                index += 1
                self._skip_blank(newlines=True)
                if self._peek() == ",":
                    self.i += 1
        elif ch == "{":
            self.i += 1
            while True:
                self._skip_blank(newlines=False)
                if self._peek() == "}":
                    self.i += 1
                    return
                self._key_value(path)
                self._skip_blank(newlines=False)
                if self._peek() == ",":
                    self.i += 1
        else:  # a number, boolean or date: up to a separator
            while self._peek() and self._peek() not in ",]}#\r\n":
                self.i += 1

    def _escaped(self, at: int) -> bool:
        backslashes = 0
        while at - backslashes - 1 >= 0 and self.text[at - backslashes - 1] == "\\":
            backslashes += 1
        return backslashes % 2 == 1
