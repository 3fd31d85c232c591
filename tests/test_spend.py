"""Budget reservations never overshoot, however many calls race for them."""

from __future__ import annotations

import threading
from pathlib import Path

from ledger.behaviors.registry import reconcile_directory
from ledger.db.session import Database
from ledger.spend import reserve, settle, spent_in_window
from ledger.transitions import lock_behavior
from tests.conftest import T0, write_behavior


def test_fifty_concurrent_reservations_at_a_budget_that_fits_ten(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha")
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        behavior_id = lock_behavior(session, name="alpha").id or 0
    granted: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def call() -> None:
        barrier.wait()
        with db.transaction() as session:
            ok = reserve(
                session,
                behavior_id=behavior_id,
                window_start=T0,
                amount=0.1,
                budget=1.0 + 1e-9,
                now=T0,
            )
        with lock:
            granted.append(ok)

    threads = [threading.Thread(target=call) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 10
    with db.transaction() as session:
        spent, reserved = spent_in_window(session, behavior_id, T0)
    assert spent == 0.0 and abs(reserved - 1.0) < 1e-9


def test_settling_turns_reservations_into_spend_and_frees_the_rest(
    db: Database, tmp_path: Path
) -> None:
    write_behavior(tmp_path, "alpha")
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        bid = lock_behavior(session, name="alpha").id or 0
        assert reserve(session, behavior_id=bid, window_start=T0, amount=0.6, budget=1.0, now=T0)
        assert not reserve(
            session, behavior_id=bid, window_start=T0, amount=0.6, budget=1.0, now=T0
        )
        settle(session, behavior_id=bid, window_start=T0, reserved=0.6, spent=0.2, now=T0)
        assert reserve(session, behavior_id=bid, window_start=T0, amount=0.6, budget=1.0, now=T0)
        spent, reserved = spent_in_window(session, bid, T0)
    assert (round(spent, 9), round(reserved, 9)) == (0.2, 0.6)
