"""A run's database steps: claims, budget pre-check, dispositions by tier, approvals."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.db.models import Approval, BehaviorRow, GateResultRow, LedgerEntry, OutboxRow, Run
from ledger.db.session import Database
from ledger.errors import ConflictError
from ledger.gates import Gate, GateResult, Outcome
from ledger.runner.catalog import ModelCatalog
from ledger.runner.run import (
    CallOutcome,
    SlotClaim,
    approve,
    begin_run,
    claim_slots,
    expire_approvals,
    finish_run,
    payload_digest,
    reject,
    render_prompt,
)
from ledger.runs import gate_reason
from ledger.transitions import PolicyContext, lock_behavior, operator_action
from tests.factories import T0, VALID_BEHAVIOR, register_behavior, write_behavior

CTX = PolicyContext()
OK = CallOutcome(
    output="Hello, world!",
    model="m/primary",
    generation_id="gen-1",
    cost_usd=0.01,
    prompt_tokens=10,
    completion_tokens=5,
)


def run_once(db: Database, bid: int, outcome: CallOutcome, slot_minutes: int = 0, tier: str = "A"):  # type: ignore[no-untyped-def]
    at = T0 + timedelta(minutes=slot_minutes)
    with db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(bid, at, tier)], at)
        plan = begin_run(session, run.id, now=at, ctx=CTX)
    if plan is None:
        return run.id, None
    with db.transaction() as session:
        return run.id, finish_run(session, plan, outcome, now=at, ctx=CTX)


def outbox(db: Database) -> list[OutboxRow]:
    with db.transaction() as session:
        rows = list(session.exec(select(OutboxRow).order_by(col(OutboxRow.id))))
        for r in rows:
            session.expunge(r)
        return rows


def test_a_slot_is_claimed_once(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path)
    with db.transaction() as session:
        first = claim_slots(session, [SlotClaim(bid, T0, "A")], T0)
    with db.transaction() as session:
        second = claim_slots(
            session, [SlotClaim(bid, T0, "A"), SlotClaim(bid, T0 + timedelta(minutes=15), "A")], T0
        )
    assert len(first) == 1
    assert [r.scheduled_for for r in second] == [T0 + timedelta(minutes=15)]


def test_claimed_slot_times_compare_equal_to_orm_bound_times(db: Database, tmp_path: Path) -> None:
    """Claims are inserted at the driver level; their datetimes must be stored exactly as the
    ORM binds them (SQLite compares text), or lookups by slot find nothing."""
    bid = register_behavior(db, tmp_path)
    slot = T0.replace(microsecond=0)
    with db.transaction() as session:
        (claimed,) = claim_slots(session, [SlotClaim(bid, slot, "A")], slot)
    with db.transaction() as session:
        found = session.exec(select(Run).where(col(Run.scheduled_for) == slot)).all()
        assert [run.id for run in found] == [claimed.id]
        assert found[0].scheduled_for == slot
        assert found[0].claimed_at == slot


def test_tier_a_output_is_a_proposal_and_nothing_runs(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "A")
    run_id, finished = run_once(db, bid, OK)
    assert finished is not None and finished.disposition == "proposal"
    assert outbox(db) == []
    with db.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.output == "Hello, world!" and run.status == "succeeded"
        assert run.prompt_tokens == 10 and run.cost_usd == 0.01


def test_tier_c_runs_its_action_through_the_outbox(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "C")
    run_id, finished = run_once(db, bid, OK, tier="C")
    assert finished is not None and finished.disposition == "action"
    (row,) = outbox(db)
    assert row.kind == "action.log" and row.dedup_key == f"action.log:{run_id}"
    assert row.payload["output"] == "Hello, world!"


def test_attributable_fail_never_runs_the_action(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "C", "checks:\n  sensitive_info: block\n")
    leaky = CallOutcome(output="mail me at jane.doe@example.com", model="m", cost_usd=0.0)
    _, finished = run_once(db, bid, leaky, tier="C")
    assert finished is not None and finished.disposition == "blocked"
    assert [o.kind for o in outbox(db)] == ["alert.demotion"]  # the demotion alert, no action
    with db.transaction() as session:
        assert lock_behavior(session, name="alpha").tier == "B"


def test_tier_b_approval_runs_once_even_if_approved_twice(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_id, finished = run_once(db, bid, OK, tier="B")
    assert finished is not None and finished.disposition == "approval"
    with db.transaction() as session:
        approval = session.exec(select(Approval)).one()
        digest = approval.payload_sha256
        assert digest == payload_digest(approval.payload)
    with db.transaction() as session:
        assert "action is queued" in approve(
            session, run_id, actor="cli:ann", now=T0, ctx=CTX, payload_sha256=digest
        )
    with db.transaction() as session:
        assert "already approved" in approve(session, run_id, actor="cli:bob", now=T0, ctx=CTX)
    actions = [o for o in outbox(db) if o.kind.startswith("action.")]
    assert len(actions) == 1


def test_approval_bound_to_the_payload_the_operator_saw(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_id, _ = run_once(db, bid, OK, tier="B")
    with db.transaction() as session, pytest.raises(ConflictError, match="differs"):
        approve(session, run_id, actor="a", now=T0, ctx=CTX, payload_sha256="0" * 64)
    with db.transaction() as session:
        approval = session.exec(select(Approval)).one()
        approval.payload = {**approval.payload, "output": "something else"}
    with db.transaction() as session, pytest.raises(ConflictError, match="changed"):
        approve(session, run_id, actor="a", now=T0, ctx=CTX)
    assert [o for o in outbox(db) if o.kind.startswith("action.")] == []


def test_rejection_is_a_human_rejected_warn(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_id, _ = run_once(db, bid, OK, tier="B")
    with db.transaction() as session:
        reject(session, run_id, actor="cli:ann", reason="off-brand", now=T0, ctx=CTX)
    with db.transaction() as session:
        gates = [(r.gate, r.outcome) for r in session.exec(select(GateResultRow))]
        assert ("human_rejected", "warn") in gates
        with pytest.raises(ConflictError):
            approve(session, run_id, actor="a", now=T0, ctx=CTX)


def test_a_demotion_below_b_withdraws_pending_approvals_and_approving_says_why(
    db: Database, tmp_path: Path
) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_id, _ = run_once(db, bid, OK, tier="B")
    with db.transaction() as session:
        operator_action(
            session, "alpha", "demote", reason="too noisy", actor="cli:ann", now=T0, ctx=CTX
        )
    with db.transaction() as session, pytest.raises(ConflictError) as refused:
        approve(session, run_id, actor="cli:bob", now=T0, ctx=CTX)
    assert str(refused.value) == (
        f"run {run_id}'s approval request was withdrawn (2026-11-02 09:00 UTC) because alpha "
        "was demoted from B · human-in-the-loop to A · proposal-only by cli:ann: too noisy; "
        "its action will not run. A new run at B · human-in-the-loop asks again"
    )
    with db.transaction() as session, pytest.raises(ConflictError, match="was withdrawn"):
        reject(session, run_id, actor="cli:bob", reason="late", now=T0, ctx=CTX)
    assert [o for o in outbox(db) if o.kind.startswith("action.")] == []
    with db.transaction() as session:
        approval = session.exec(select(Approval)).one()
        assert (approval.status, approval.decided_by) == ("withdrawn", "cli:ann")
        entry = session.exec(
            select(LedgerEntry).where(col(LedgerEntry.kind) == "approvals_withdrawn")
        ).one()
        assert entry.data == {"run_ids": [run_id]} and entry.actor == "cli:ann"


def test_a_pause_withdraws_pending_approvals(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_id, _ = run_once(db, bid, OK, tier="B")
    with db.transaction() as session:
        operator_action(
            session, "alpha", "pause", reason="maintenance", actor="api:ops", now=T0, ctx=CTX
        )
    with db.transaction() as session, pytest.raises(ConflictError) as refused:
        approve(session, run_id, actor="cli:bob", now=T0, ctx=CTX)
    assert "because alpha was paused by api:ops: maintenance" in str(refused.value)
    assert [o for o in outbox(db) if o.kind.startswith("action.")] == []


def test_a_demotion_from_c_to_b_keeps_pending_approvals(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_id, _ = run_once(db, bid, OK, tier="B")
    with db.transaction() as session:
        lock_behavior(session, name="alpha").tier = "C"
    with db.transaction() as session:
        operator_action(session, "alpha", "demote", reason="calm", actor="t", now=T0, ctx=CTX)
    with db.transaction() as session:
        assert "action is queued" in approve(session, run_id, actor="a", now=T0, ctx=CTX)


def test_a_run_that_finishes_after_its_behavior_left_b_asks_nobody(
    db: Database, tmp_path: Path
) -> None:
    bid = register_behavior(db, tmp_path, "B")
    with db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(bid, T0, "B")], T0)
        plan = begin_run(session, run.id, now=T0, ctx=CTX)
    assert plan is not None
    with db.transaction() as session:
        operator_action(session, "alpha", "demote", reason="noisy", actor="t", now=T0, ctx=CTX)
    with db.transaction() as session:
        finish_run(session, plan, OK, now=T0, ctx=CTX)
    with db.transaction() as session, pytest.raises(ConflictError, match="alpha is at A"):
        approve(session, run.id, actor="a", now=T0, ctx=CTX)


def test_unanswered_approvals_expire_neutrally(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    run_once(db, bid, OK, tier="B")
    with db.transaction() as session:
        assert expire_approvals(session, T0 + timedelta(hours=25), CTX) == 1
    with db.transaction() as session:
        assert session.exec(select(Approval)).one().status == "expired"
        assert lock_behavior(session, name="alpha").tier == "B"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # the primary model's catalog price: (prompt bytes + overhead) and the output cap
        ("primary_model: m/known\nmax_output_tokens: 100\n", (18 + 16) * 0.001 + 100 * 0.002),
        # the operator's own estimate wins over the catalog
        (
            "primary_model: m/known\nmax_output_tokens: 100\n",
            "estimate",
        ),
        # a model the catalog does not list: the default estimate
        ("primary_model: m/unlisted\n", 0.05),
    ],
)
def test_reservation_uses_the_estimate_then_the_catalog_then_the_default(
    db: Database, tmp_path: Path, extra: str, expected: float | str
) -> None:
    body = VALID_BEHAVIOR.format(key_env="K", name="alpha").replace("  usd: 1\n", "  usd: 100\n")
    if expected == "estimate":
        body = body.replace("  usd: 100\n", "  usd: 100\n  per_call_estimate_usd: 0.25\n")
        expected = 0.25
    write_behavior(tmp_path, "alpha", body + extra)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        bid = lock_behavior(session, name="alpha").id or 0
    catalog = ModelCatalog("http://unused.invalid")
    pricing = {"prompt": "0.001", "completion": "0.002"}
    catalog.load({"data": [{"id": "m/known", "pricing": pricing}]})
    with db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(bid, T0, "A")], T0)
        plan = begin_run(session, run.id, now=T0, ctx=CTX, catalog=catalog)
    assert plan is not None
    assert plan.prompt == "Say hello to world"  # 18 bytes
    assert plan.reserved_usd == pytest.approx(expected)


def test_budget_that_does_not_fit_records_spend_cap_and_makes_no_call(
    db: Database, tmp_path: Path
) -> None:
    folder = tmp_path
    write_behavior(
        folder,
        "alpha",
        VALID_BEHAVIOR.format(key_env="K", name="alpha").replace(
            "  usd: 1\n", "  usd: 0.12\n  per_call_estimate_usd: 0.05\n"
        ),
    )
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)
        bid = lock_behavior(session, name="alpha").id or 0
    costly = CallOutcome(output="ok", model="m", cost_usd=0.05)
    results = [run_once(db, bid, costly, slot_minutes=i)[1] for i in range(3)]
    assert results[0] is not None and results[1] is not None
    assert results[2] is None  # 0.10 spent + 0.05 worst case > 0.12: refused before calling
    with db.transaction() as session:
        refused = session.exec(select(Run).where(col(Run.status) == "refused")).one()
        assert "budget" in (refused.error or "")
        result = session.exec(
            select(GateResultRow).where(col(GateResultRow.gate) == "spend_cap")
        ).one()
        assert result.outcome == "fail" and result.attributable
        # ledger show / explain say why, not "no reason recorded".
        assert gate_reason(result.outcome, result.evidence) == (
            "the call was not made: its worst case ($0.0500) does not fit what is left of the "
            "day budget of $0.12"
        )


def test_paused_behavior_skips_its_slot(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path)
    with db.transaction() as session:
        lock_behavior(session, name="alpha").paused = True
    run_id, finished = run_once(db, bid, OK)
    assert finished is None
    with db.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None and (run.status, run.error) == ("skipped", "paused")


def test_auth_error_pauses_and_alerts(db: Database, tmp_path: Path) -> None:
    bid = register_behavior(db, tmp_path, "B")
    failed = CallOutcome(
        failures=(GateResult(Gate.AUTH_ERROR, Outcome.FAIL, False, {"status": 401}),),
        pause=True,
        error="401 invalid key",
    )
    _, finished = run_once(db, bid, failed, tier="B")
    assert finished is not None and finished.status == "failed"
    with db.transaction() as session:
        row = session.exec(select(BehaviorRow)).one()
        assert row.paused and row.tier == "B"
    assert [o.payload["alert"]["event"] for o in outbox(db)] == ["auth_error"]


def test_prompt_rendering_keeps_literal_braces() -> None:
    assert render_prompt("{a} {{x}} {date}", {"a": 1}, {"date": "2026-11-25"}) == "1 {x} 2026-11-25"


NO_BUDGET = VALID_BEHAVIOR.format(key_env="K", name="alpha").split("budget:")[0]


def test_a_behavior_without_a_budget_counts_its_runs_spend_in_the_month(
    db: Database, tmp_path: Path
) -> None:
    from ledger.spend import spent_in_window, window_start
    from ledger.status import collect_status

    write_behavior(tmp_path, "alpha", NO_BUDGET)
    with db.transaction() as session:
        reconcile_directory(session, tmp_path, T0)
        bid = lock_behavior(session, name="alpha").id or 0
    run_once(db, bid, OK)
    run_once(db, bid, OK, slot_minutes=15)
    month = window_start("month", T0)
    with db.transaction() as session:
        assert spent_in_window(session, bid, month) == (pytest.approx(0.02), 0.0)
        (status,) = collect_status(session, T0).behaviors
    assert status.spend_usd == pytest.approx(0.02)
    assert (status.budget_usd, status.spend_window_start) == (None, month)


def _claim_and_begin(db: Database, bid: int, at=T0):  # type: ignore[no-untyped-def]
    with db.transaction() as session:
        (run,) = claim_slots(session, [SlotClaim(bid, at, "A")], at, timedelta(seconds=60))
        plan = begin_run(session, run.id, now=at, ctx=CTX)
    assert plan is not None
    return plan


def test_a_run_whose_lease_expired_is_interrupted_and_its_reservation_released(
    db: Database, tmp_path: Path
) -> None:
    from ledger.runner.run import interrupt_expired_runs
    from ledger.spend import spent_in_window
    from ledger.status import collect_status

    bid = register_behavior(db, tmp_path)
    plan = _claim_and_begin(db, bid)
    assert plan.budget_window is not None
    with db.transaction() as session:
        assert spent_in_window(session, bid, plan.budget_window) == (0.0, 0.05)
        assert interrupt_expired_runs(session, T0 + timedelta(seconds=59)) == []
    with db.transaction() as session:
        assert interrupt_expired_runs(session, T0 + timedelta(seconds=61)) == [plan.run_id]
    with db.transaction() as session:
        assert interrupt_expired_runs(session, T0 + timedelta(seconds=62)) == []  # once
        run = session.get(Run, plan.run_id)
        assert run is not None and (run.status, run.disposition) == ("interrupted", "none")
        assert spent_in_window(session, bid, plan.budget_window) == (0.0, 0.0)
        # Not the behavior's doing: no gate result, no ledger decision, tier unchanged.
        assert session.exec(select(GateResultRow)).all() == []
        (status,) = collect_status(session, T0 + timedelta(minutes=2)).behaviors
        assert (status.interrupted_24h, status.tier.value, status.recent_failures) == (1, "A", 0)


def test_a_renewed_lease_keeps_its_run_live(db: Database, tmp_path: Path) -> None:
    from ledger.runner.run import interrupt_expired_runs, renew_leases

    bid = register_behavior(db, tmp_path)
    plan = _claim_and_begin(db, bid)
    with db.transaction() as session:
        assert renew_leases(session, [plan.run_id], T0 + timedelta(seconds=110)) == 1
    with db.transaction() as session:
        assert interrupt_expired_runs(session, T0 + timedelta(seconds=100)) == []
        run = session.get(Run, plan.run_id)
        assert run is not None and run.status == "running"


def test_a_run_finishing_after_it_was_interrupted_does_not_release_twice(
    db: Database, tmp_path: Path
) -> None:
    from ledger.runner.run import interrupt_expired_runs
    from ledger.spend import spent_in_window

    bid = register_behavior(db, tmp_path)
    plan = _claim_and_begin(db, bid)
    later = T0 + timedelta(minutes=2)
    with db.transaction() as session:
        interrupt_expired_runs(session, later)
    with db.transaction() as session:
        finish_run(session, plan, OK, now=later, ctx=CTX)
    with db.transaction() as session:
        assert plan.budget_window is not None
        spent, reserved = spent_in_window(session, bid, plan.budget_window)
        assert (spent, reserved) == (pytest.approx(0.01), 0.0)


PLANTED = "sk-or-v1-" + "abad1dea" * 8
LEAKY = CallOutcome(output=f"use {PLANTED} or write to jane.doe@example.com", model="m")


def test_a_blocked_output_is_stored_masked_with_its_findings_and_digest(
    db: Database, tmp_path: Path
) -> None:
    import hashlib

    bid = register_behavior(db, tmp_path, "A", "checks:\n  sensitive_info: block\n")
    run_id, finished = run_once(db, bid, LEAKY)
    assert finished is not None and finished.disposition == "blocked"
    with db.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.output is not None
        assert PLANTED not in run.output and "abad1dea" not in run.output
        assert run.output == (
            "use <openrouter_key: sk-or-v1-…(73 chars)> or write to <email: j***@***.com>"
        )
        assert run.output_findings == [
            {"kind": "openrouter_key", "start": 4, "end": 77},
            {"kind": "email", "start": 90, "end": 110},
        ]
        original = LEAKY.output or ""
        assert run.output_sha256 == hashlib.sha256(original.encode()).hexdigest()
        evidence = [r.evidence for r in session.exec(select(GateResultRow))]
        assert "abad1dea" not in repr(evidence)


def test_warned_findings_are_masked_too_in_the_approval_and_the_action(
    db: Database, tmp_path: Path
) -> None:
    bid = register_behavior(db, tmp_path, "B")  # sensitive_info: warn (the default)
    run_id, finished = run_once(db, bid, LEAKY, tier="B")
    assert finished is not None and finished.disposition == "approval"
    with db.transaction() as session:
        approval = session.exec(select(Approval)).one()
        run = session.get(Run, run_id)
        assert run is not None
        assert approval.payload["output"] == run.output and "abad1dea" not in run.output
        # Bound to the answer as judged: its digest is part of the approved payload.
        assert approval.payload["output_sha256"] == run.output_sha256
        assert approval.payload_sha256 == payload_digest(approval.payload)
    with db.transaction() as session:
        approve(session, run_id, actor="op", now=T0, ctx=CTX)
    (action,) = outbox(db)
    assert action.payload["output"] == run.output
    assert "abad1dea" not in repr(action.payload)
