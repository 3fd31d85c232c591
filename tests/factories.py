"""Building things for tests, one way each: behavior definitions (``make_behavior``), behavior
files (``write_behavior``), run rows (``make_run``), a behavior registered with a run waiting for
approval (``registered_at_b_with_a_pending_approval``), ``alpha`` registered at a tier
(``register_behavior``), and the instant tests start at (``T0``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session

from ledger.behaviors.schema import Behavior
from ledger.db.models import Run

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)  # a Monday

# An operator alert's payload: a demotion, as transitions enqueues it (alert texts, channels).
DEMOTION_ALERT: dict[str, Any] = {
    "event": "demotion",
    "behavior": "seo-audit",
    "from": "C",
    "to": "B",
    "reason": "guardrail_block failed on run r-41",
    "evidence": [{"gate": "guardrail_block", "outcome": "fail", "run": "r-41"}],
    "at": "2026-11-02T09:00:00Z",
}

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


def key_env(name: str) -> str:
    """The environment variable ``write_behavior``'s default file reads the key of ``name``
    from: ``LEDGER_TEST_KEY_<NAME>``."""
    return "LEDGER_TEST_KEY_" + name.upper().replace("-", "_")


def write_behavior(folder: Path, name: str, body: str | None = None) -> Path:
    """``folder/NAME.yaml`` holding ``body`` (by default a valid behavior, ``VALID_BEHAVIOR``:
    every 15 minutes, preset ``test-preset``, key from ``LEDGER_TEST_KEY_<NAME>``, named
    ``NAME-key``, a $1 daily budget). Creates ``folder``; returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    if body is None:
        body = VALID_BEHAVIOR.format(key_env=key_env(name), name=name)
    path.write_text(body)
    return path


def make_behavior(name: str = "x", **fields: Any) -> Behavior:
    """A validated ``Behavior`` (as loaded from a file) named ``name``: hourly, preset ``p``, key
    from ``env:K``, prompt ``hi``, unless ``fields`` say otherwise."""
    values: dict[str, Any] = {
        "name": name,
        "schedule": "1h",
        "preset": "p",
        "api_key": "env:K",
        "prompt": "hi",
        **fields,
    }
    return Behavior.model_validate(values)


def make_run(
    session: Session,
    behavior_id: int,
    run_id: str,
    at: datetime = T0,
    *,
    tier: str = "A",
    **fields: Any,
) -> Run:
    """A ``Run`` row of ``behavior_id`` scheduled for and claimed at ``at`` (``fields`` set any
    other column, ``claimed_at`` too), added and flushed in the caller's transaction."""
    values = {"scheduled_for": at, "claimed_at": at, "tier": tier, **fields}
    run = Run(id=run_id, behavior_id=behavior_id, **values)
    session.add(run)
    session.flush()
    return run


def register_behavior(db: Any, folder: Path, tier: str = "A", extra: str = "") -> int:
    """``alpha`` (``VALID_BEHAVIOR`` with its key from ``K``, plus ``extra`` lines) written to
    ``folder``, registered and put at ``tier``: its id. ``db`` is a ``Database``."""
    from ledger.behaviors.registry import reconcile_directory
    from ledger.transitions import lock_behavior

    write_behavior(folder, "alpha", VALID_BEHAVIOR.format(key_env="K", name="alpha") + extra)
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
        row = lock_behavior(session, name="alpha")
        row.tier = tier
        return row.id or 0


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
