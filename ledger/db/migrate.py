"""Alembic driven from code: ``ledger db upgrade`` and ``ledger serve`` work from any directory."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from ledger.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent.parent
# The one set of migrations lives in the repository's top-level ``alembic/`` folder; a wheel
# carries a copy of it as ``ledger/_migrations`` (setup.py maps it in).
PACKAGED_DIR = _PACKAGE / "_migrations"
CHECKOUT_DIR = _PACKAGE.parent / "alembic"


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
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Raises ConfigError when the database is unreachable."""
    cfg = alembic_config(engine)
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
        raise ConfigError(f"cannot upgrade the database: {exc.orig}") from None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
