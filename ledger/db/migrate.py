"""Alembic driven from code: ``ledger db upgrade`` and ``ledger serve`` work from any directory.

Alembic itself (and its templating dependencies) is imported only by what migrates: checking
that a database is at head, which every command does, reads the revision ids from the
migration files and the ``alembic_version`` table directly."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import OperationalError

from ledger.db.engine import cannot_open
from ledger.errors import ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

_PACKAGE = Path(__file__).resolve().parent.parent
# The one set of migrations lives in the repository's top-level ``alembic/`` folder; a wheel
# carries a copy of it as ``ledger/_migrations`` (setup.py maps it in).
PACKAGED_DIR = _PACKAGE / "_migrations"
CHECKOUT_DIR = _PACKAGE.parent / "alembic"
VERSION_TABLE = "alembic_version"

# ``revision: str = "0012"`` / ``down_revision: str | None = "0011"`` (or None, or a tuple of
# the revisions a merge joins) at the start of a line, as alembic's template writes them.
_REVISION = re.compile(r"""^revision\s*(?::[^=]*)?=\s*["']([^"']+)["']""", re.MULTILINE)
_DOWN_REVISION = re.compile(r"""^down_revision\s*(?::[^=]*)?=\s*(.+)$""", re.MULTILINE)
_QUOTED = re.compile(r"""["']([^"']+)["']""")


def migrations_dir() -> Path:
    """The migrations folder: the installed copy, else the checkout's. Raises ConfigError."""
    for candidate in (PACKAGED_DIR, CHECKOUT_DIR):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise ConfigError(
        f"migrations not found (looked in {PACKAGED_DIR} and {CHECKOUT_DIR}): reinstall "
        "promotion-ledger from its wheel or a checkout of the repository"
    )


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Raises ConfigError when the database cannot be opened
    (``engine.cannot_open``) or the migration fails."""
    from alembic import command

    cfg = alembic_config(engine)
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        raise cannot_open(engine.url, exc) from None
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together upgrade one after the other (the later ones find
                # the schema at head); held until this transaction ends, released if we die.
                conn.execute(
                    text(
                        "SELECT pg_advisory_xact_lock("
                        "hashtext('ledger.migrate:' || current_schema()))"
                    )
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as exc:
        reason = " ".join(str(exc.orig).split())
        shown = engine.url.render_as_string(hide_password=True)
        raise ConfigError(
            f"cannot migrate the database {shown} to schema revision {revision}: {reason}"
        ) from None


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (None before the first upgrade), read from alembic's
    version table. Raises OperationalError when the database cannot be reached."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()  # noqa: S608 (a constant)
    return ", ".join(sorted(rows)) or None


@lru_cache(maxsize=4)
def head_revision(folder: Path | None = None) -> str:
    """The newest revision of the migrations in ``folder`` (default: :func:`migrations_dir`),
    read from the files' ``revision`` / ``down_revision`` lines without importing them.
    Raises ConfigError unless the revisions form one line with a single head."""
    versions = (folder or migrations_dir()) / "versions"
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted(versions.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        revision = _REVISION.search(source)
        down = _DOWN_REVISION.search(source)
        if revision is None or down is None:
            continue  # not a migration (a helper module)
        revisions.add(revision.group(1))
        parents.update(_QUOTED.findall(down.group(1)))
    heads = revisions - parents
    if len(heads) != 1:
        raise ConfigError(
            f"the migrations in {versions} have {len(heads)} heads ({', '.join(sorted(heads))}),"
            " not one: two migrations follow the same revision (chain them), or the installed"
            " copy is incomplete (reinstall promotion-ledger)"
        )
    return heads.pop()
