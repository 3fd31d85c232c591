"""What an operator reads when the database URL is wrong or its database cannot be opened:
one line naming the database and the setting, and what to do — for SQLite the file and its
folder, for PostgreSQL the server — from ``ledger serve``, ``ledger status`` and
``ledger db upgrade`` alike (real databases; through the entry point in this process, ``cli``,
and as a real process for ``status``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import cli, free_port, ledger


def test_a_sqlite_file_in_a_missing_folder_names_the_folder_and_what_to_do(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "no" / "such"
    url = f"sqlite:///{folder / 'x.db'}"
    expected = (
        f"error: cannot open the SQLite database {folder / 'x.db'} (LEDGER_DATABASE_URL): the "
        f"folder {folder} does not exist: create it (mkdir -p {folder}) or set "
        "LEDGER_DATABASE_URL to a file in an existing folder\n"
    )
    for command in (("serve", "--port", str(free_port())), ("db", "upgrade")):
        result = cli(*command, cwd=tmp_path, env={"LEDGER_DATABASE_URL": url})
        assert result.returncode == 2, command
        assert result.stderr == expected, command
    assert not folder.exists()


@pytest.mark.parametrize("command", [("serve",), ("status",), ("db", "upgrade")])
def test_a_sqlite_url_with_two_slashes_is_answered_with_the_right_form(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = cli(*command, cwd=tmp_path, env={"LEDGER_DATABASE_URL": "sqlite://./ledger.db"})
    assert result.returncode == 2
    assert result.stderr == (
        "error: database URL 'sqlite://./ledger.db' is not a valid SQLite URL: a SQLite URL has "
        "no host, so three slashes come before a relative path (sqlite:///./ledger.db) and four "
        "before an absolute one (sqlite:////var/lib/ledger/ledger.db); set LEDGER_DATABASE_URL\n"
    )
    assert "server" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_postgresql_server_that_is_down_is_one_line_for_status(tmp_path: Path) -> None:
    closed = free_port()
    url = f"postgresql://postgres@127.0.0.1:{closed}/nothing"
    result = ledger("status", cwd=tmp_path, env={"LEDGER_DATABASE_URL": url})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "\t" not in result.stderr
    assert result.stderr.startswith(
        f"error: cannot open the database postgresql+psycopg://postgres@127.0.0.1:{closed}/"
        "nothing: "
    )
    assert result.stderr.endswith("(check LEDGER_DATABASE_URL and that the server is up)\n")
