"""The database as the services see it: an engine plus a session factory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from ledger.db.engine import cannot_open, make_engine, session_factory
from ledger.db.migrate import current_revision, head_revision, upgrade
from ledger.errors import ConfigError


@dataclass(slots=True)
class Database:
    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def open(cls, url: str, *, migrate: bool = False) -> Database:
        """Open ``url``. With ``migrate`` the schema is upgraded to head; without it a database
        that is not at head is a ConfigError telling the operator what to run."""
        engine = make_engine(url)
        db = cls(engine, session_factory(engine))
        if migrate:
            upgrade(engine)
        else:
            db.require_head()
        return db

    def require_head(self) -> None:
        head = head_revision()
        try:
            current = current_revision(self.engine)
        except OperationalError as exc:
            raise cannot_open(self.engine.url, exc) from None
        if current != head:
            raise ConfigError(
                f"the database {self.engine.url.render_as_string(hide_password=True)} is at "
                f"schema revision {current or 'none'}, not {head}: run `ledger db upgrade`"
            )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
