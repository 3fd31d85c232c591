"""Shared fixtures: real databases (SQLite always, PostgreSQL when LEDGER_TEST_DATABASE_URL is
set), each test in a schema of its own built by ``alembic upgrade head``."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from ledger.db.session import Database

hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, max_examples=200)
hypothesis_settings.register_profile("dev", deadline=None, max_examples=100)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")

PG_URL = os.environ.get("LEDGER_TEST_DATABASE_URL")
BACKENDS = ["sqlite", *(["postgresql"] if PG_URL else [])]

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday


def _pg_schema_url(schema: str) -> str:
    assert PG_URL is not None
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(autouse=True)
def _no_real_openrouter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the real OpenRouter: a daemon a test starts without naming a simulator
    talks to a closed local port (the model catalog's first fetch fails fast, offline)."""
    monkeypatch.setenv("LEDGER_OPENROUTER_BASE_URL", "http://127.0.0.1:9")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of each backend, dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    assert PG_URL is not None
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database.open(database_url, migrate=True)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(f"sqlite:///{tmp_path / 'ledger.db'}", migrate=True)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Any]:
    """Start ``ledger serve`` processes (see tests/daemon.py); killed after the test."""
    from tests.daemon import daemon_starter

    yield from daemon_starter(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


VALID_BEHAVIOR = """\
description: test behavior
schedule: 15m
preset: test-preset
api_key: env:{key_env}
key_name: {name}-key
prompt: "Say hello to {{who}}"
inputs:
  who: world
budget:
  usd: 1
  reset: day
"""


def write_behavior(folder: Path, name: str, body: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    key_env = "LEDGER_TEST_KEY_" + name.upper().replace("-", "_")
    path.write_text(body if body is not None else VALID_BEHAVIOR.format(key_env=key_env, name=name))
    return path


def registered_at_b_with_a_pending_approval(tmp_path: Path, database_url: str) -> str:
    """``alpha`` registered at B · human-in-the-loop, one run waiting for approval: its id."""
    from ledger.behaviors.registry import reconcile_directory
    from ledger.db.session import Database
    from ledger.runner.run import CallOutcome, SlotClaim, begin_run, claim_slots, finish_run
    from ledger.transitions import PolicyContext, lock_behavior

    write_behavior(tmp_path / "behaviors", "alpha")
    db = Database.open(database_url, migrate=True)
    try:
        with db.transaction() as session:
            reconcile_directory(session, tmp_path / "behaviors", T0)
            row = lock_behavior(session, name="alpha")
            row.tier = "B"
            (run,) = claim_slots(session, [SlotClaim(row.id or 0, T0, "B")], T0)
            plan = begin_run(session, run.id, now=T0, ctx=PolicyContext())
        assert plan is not None
        with db.transaction() as session:
            finish_run(
                session, plan, CallOutcome(output="hello", model="m"), now=T0, ctx=PolicyContext()
            )
        return run.id
    finally:
        db.close()
