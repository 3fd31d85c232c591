"""``database_url`` may be a secret reference to the URL (``file:/run/secrets/database_url``):
the deploy/ examples keep the PostgreSQL password in a secret file, never in the settings."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ledger.db.session import Database
from ledger.errors import ConfigError, SecretError
from ledger.secrets import known_secret_values


def test_a_file_reference_opens_the_database_it_holds(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "database_url"
    secret.write_text(database_url + "\n", encoding="utf-8")  # as `echo URL > file` writes it
    db = Database.open(f"file:{secret}", migrate=True)
    try:
        assert db.engine.url.render_as_string(hide_password=False).endswith(
            database_url.split("://", 1)[1]
        )
        db.require_head()
    finally:
        db.close()
    assert database_url in known_secret_values()  # the log masker hides it
    monkeypatch.setenv("LEDGER_TEST_DB_URL_REF", database_url)
    Database.open("env:LEDGER_TEST_DB_URL_REF").close()


def test_a_bad_reference_or_url_names_the_reference_not_the_contents(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"cannot read .*missing"):
        Database.open(f"file:{tmp_path / 'missing'}")
    secret = tmp_path / "database_url"
    secret.write_text("hunter2-not-a-url\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Database.open(f"file:{secret}")
    assert f"(from file:{secret}) is not valid" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_replicas_starting_together_upgrade_one_after_the_other(database_url: str) -> None:
    """Every replica runs `ledger db upgrade` on start; on one empty database they must not
    race each other's CREATE TABLEs (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE)."""
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            Database.open(database_url, migrate=True).close()
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=start, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "an upgrade is stuck"
    assert errors == []
    db = Database.open(database_url)
    db.require_head()
    db.close()
