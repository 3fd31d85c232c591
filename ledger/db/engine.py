"""Engines for SQLite (WAL, busy timeout, foreign keys, BEGIN IMMEDIATE) and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from ledger.errors import ConfigError
from ledger.secrets import is_reference, resolve

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """Let operators write ``postgresql://``; we drive PostgreSQL with psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Build an engine for ``url``. Raises ConfigError for an unsupported or malformed URL.

    ``url`` may be a secret reference (``file:/run/secrets/database_url``, ``env:NAME``) to the
    URL, which then carries the password without it being written in the settings."""
    shown = url
    if is_reference(url):
        url = resolve(url).get_secret_value()
        shown = f"(from {shown.strip()})"  # the reference names a file or variable, no secret
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        if shown == url:
            shown = repr(url)
        raise ConfigError(
            f"database URL {shown} is not valid (e.g. sqlite:///./ledger.db or "
            "postgresql://user@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and (parsed.host or parsed.port or parsed.username):
        # sqlite://./ledger.db reads as a host "." and a file "ledger.db".
        shown = shown if shown != url else repr(url)
        path = "/".join(p for p in (parsed.host or "", parsed.database or "") if p)
        raise ConfigError(
            f"database URL {shown} is not a valid SQLite URL: a SQLite URL has no host, so "
            f"three slashes come before a relative path (sqlite:///{path}) and four before an "
            "absolute one (sqlite:////var/lib/ledger/ledger.db); set LEDGER_DATABASE_URL"
        )
    if backend == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        _setup_sqlite(engine)
        return engine
    if backend == "postgresql":
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    raise ConfigError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def cannot_open(url: URL, exc: BaseException) -> ConfigError:
    """The one-line error for a database that cannot be opened (``exc``: the driver's error,
    or SQLAlchemy's wrapping of it): which database and what to do. For SQLite it names the
    file and says when its folder is missing or not writable; for PostgreSQL, the server."""
    orig = getattr(exc, "orig", None) or exc
    reason = " ".join(str(orig).split()) or type(orig).__name__  # drivers' messages span lines
    if url.get_backend_name() != "sqlite":
        shown = url.render_as_string(hide_password=True)
        return ConfigError(
            f"cannot open the database {shown}: {reason} (check LEDGER_DATABASE_URL and that "
            "the server is up)"
        )
    path = url.database or ""
    where = f"the SQLite database {path} (LEDGER_DATABASE_URL)"
    if path and path != ":memory:" and not path.startswith("file:"):
        folder = Path(path).absolute().parent
        if not folder.is_dir():
            return ConfigError(
                f"cannot open {where}: the folder {folder} does not exist: create it "
                f"(mkdir -p {folder}) or set LEDGER_DATABASE_URL to a file in an existing folder"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            return ConfigError(
                f"cannot open {where}: {reason}; the folder {folder} is not writable by this "
                "user: let it write there, or set LEDGER_DATABASE_URL to a file in a folder it "
                "can write"
            )
    return ConfigError(
        f"cannot open {where}: {reason} (check the file's path and permissions; the form is "
        "sqlite:///./ledger.db, or sqlite:////absolute/path/ledger.db)"
    )


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is
        # DEFERRED, which turns concurrent read-then-write transactions into SQLITE_BUSY).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        # Deleted rows are overwritten, not left in free pages: a broadcast delivery holds the
        # call's unmasked text until the processor deletes it. (Many builds, Debian's among
        # them, compile this in; others do not.)
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, class_=Session, expire_on_commit=False)
