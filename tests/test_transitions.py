"""Applying policy decisions in one transaction (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from ledger.behaviors.registry import reconcile_directory
from ledger.db.models import BehaviorRow, LedgerEntry, OutboxRow, PromotionProposal
from ledger.db.session import Database
from ledger.errors import ConflictError, LedgerError
from ledger.explain import explain
from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.journal import verify
from ledger.outbox.alerts import alert_text
from ledger.policy import (
    BehaviorState,
    Observation,
    PolicyWindow,
    after_decision,
    apply_decision,
    decide,
    observe,
)
from ledger.transitions import (
    PolicyContext,
    apply_observation,
    decline_proposal,
    lock_behavior,
    operator_action,
    record_results,
    thresholds_for,
)
from tests.factories import T0, VALID_BEHAVIOR, make_run, write_behavior

CTX = PolicyContext()
FAST_POLICY = """policy:
  promote_b_min_clean_runs: 3
  promote_b_min_days: 1
  promote_c_min_approved: 3
  promote_c_clean_days: 1
  cooldown_days: 1
"""


def register(db: Database, folder: Path, name: str = "alpha", extra: str = "") -> None:
    body = VALID_BEHAVIOR.format(key_env=f"K_{name.upper()}", name=name) + extra
    write_behavior(folder, name, body)
    with db.transaction() as session:
        reconcile_directory(session, folder, T0)


def run_result(
    db: Database,
    name: str,
    at: datetime,
    run_id: str,
    outcome: Outcome,
    gate: Gate = Gate.OUTPUT_CHECK,
    attributable: bool = True,
):  # type: ignore[no-untyped-def]
    with db.transaction() as session:
        row = lock_behavior(session, name=name)
        make_run(session, row.id or 0, run_id, at, tier=row.tier)
        stored = record_results(
            session,
            row,
            [GateResult(gate, outcome, attributable)],
            now=at,
            source="runner",
            run_id=run_id,
        )
        return apply_observation(session, row, Observation.run(at, run_id, stored), now=at, ctx=CTX)


def approval(db: Database, name: str, at: datetime, run_id: str, outcome: str):  # type: ignore[no-untyped-def]
    with db.transaction() as session:
        row = lock_behavior(session, name=name)
        return apply_observation(
            session,
            row,
            Observation.approval(at, run_id, outcome),
            now=at,
            ctx=CTX,  # type: ignore[arg-type]
        )


def behavior(db: Database, name: str = "alpha") -> BehaviorRow:
    with db.transaction() as session:
        row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).one()
        session.expunge(row)
        return row


def kinds(db: Database, name: str = "alpha") -> list[str]:
    with db.transaction() as session:
        return [
            e.kind
            for e in session.exec(
                select(LedgerEntry)
                .where(col(LedgerEntry.behavior_name) == name)
                .order_by(col(LedgerEntry.id))
            )
        ]


def set_tier(db: Database, tier: str, name: str = "alpha") -> None:
    with db.transaction() as session:
        lock_behavior(session, name=name).tier = tier


def test_attributable_fail_demotes_one_tier_with_entry_and_alert(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "C")
    applied = run_result(db, "alpha", T0, "r1", Outcome.FAIL, Gate.SPEND_CAP)
    assert applied.decision.kind == "demote"
    assert behavior(db).tier == "B"
    assert kinds(db)[-1] == "demoted"
    with db.transaction() as session:
        row = session.exec(select(OutboxRow).where(col(OutboxRow.kind) == "alert.demotion")).one()
        alert = row.payload["alert"]
        assert (row.payload["channel"], alert["event"]) == ("log", "demotion")
        assert alert["from"] == "C" and alert["to"] == "B"
        assert "spend_cap" in alert["reason"]
        assert row.status == "pending"
        assert (
            session.exec(select(OutboxRow).where(col(OutboxRow.kind) == "mirror")).first() is None
        )


def test_second_fail_within_24h_demotes_to_a_and_pauses(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path)
    set_tier(db, "C")
    run_result(db, "alpha", T0, "r1", Outcome.FAIL)
    run_result(db, "alpha", T0 + timedelta(hours=3), "r2", Outcome.FAIL)
    row = behavior(db)
    assert (row.tier, row.paused) == ("A", True)
    assert kinds(db)[-2:] == ["demoted", "paused"]
    with db.transaction() as session:
        events = [
            o.payload["alert"]["event"]
            for o in session.exec(select(OutboxRow).order_by(col(OutboxRow.id)))
        ]
    assert events == ["demotion", "demotion", "pause"]


def test_non_attributable_results_never_change_the_tier(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path)
    set_tier(db, "C")
    for i in range(5):
        applied = run_result(
            db,
            "alpha",
            T0 + timedelta(minutes=i),
            f"r{i}",
            Outcome.FAIL,
            Gate.PROVIDER_ERROR,
            attributable=False,
        )
        assert applied.decision.kind == "stay"
    assert behavior(db).tier == "C"


def test_mirror_rows_only_when_notion_is_configured(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path)
    set_tier(db, "B")
    with db.transaction() as session:
        row = lock_behavior(session, name="alpha")
        stored = record_results(
            session,
            row,
            [GateResult(Gate.SPEND_CAP, Outcome.FAIL, True)],
            now=T0,
            source="broadcast",
        )
        apply_observation(
            session, row, Observation.result(T0, stored[0]), now=T0, ctx=PolicyContext(mirror=True)
        )
    with db.transaction() as session:
        assert [o.kind for o in session.exec(select(OutboxRow).order_by(col(OutboxRow.id)))] == [
            "alert.demotion",
            "mirror",
        ]


def test_operator_actions_need_a_reason_and_record_who(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path)
    with db.transaction() as session, pytest.raises(LedgerError, match="reason is required"):
        operator_action(session, "alpha", "pin", reason=" ", actor="cli:ann", now=T0, ctx=CTX)
    with db.transaction() as session:
        msg = operator_action(
            session, "alpha", "pin", reason="launch week", actor="cli:ann", now=T0, ctx=CTX
        )
    assert msg == "alpha pinned at A · proposal-only by cli:ann: launch week"
    with db.transaction() as session, pytest.raises(ConflictError):
        operator_action(session, "alpha", "pin", reason="again", actor="cli:ann", now=T0, ctx=CTX)
    with db.transaction() as session:
        entry = session.exec(select(LedgerEntry).order_by(col(LedgerEntry.id).desc())).first()
        assert entry is not None
        assert (entry.kind, entry.actor, entry.reason) == ("pinned", "cli:ann", "launch week")
    assert behavior(db).pinned


def test_manual_promotion_past_the_policy_is_an_override(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path)
    with db.transaction() as session:
        msg = operator_action(
            session, "alpha", "promote", reason="trusted", actor="api:ops", now=T0, ctx=CTX
        )
    assert "override" in msg
    assert behavior(db).tier == "B"
    with db.transaction() as session:
        entry = session.exec(select(LedgerEntry).where(col(LedgerEntry.kind) == "promoted")).one()
        assert entry.data["override"] is True and entry.actor == "api:ops"


def test_pinned_behavior_is_not_promoted_but_still_demoted(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path, extra=FAST_POLICY)
    with db.transaction() as session:
        operator_action(session, "alpha", "pin", reason="hold", actor="t", now=T0, ctx=CTX)
    for i in range(6):
        run_result(db, "alpha", T0 + timedelta(hours=8 * i), f"c{i}", Outcome.PASS)
    assert behavior(db).tier == "A"
    set_tier(db, "B")
    run_result(db, "alpha", T0 + timedelta(days=3), "f1", Outcome.FAIL)
    assert behavior(db).tier == "A"


def test_confirm_mode_proposes_and_a_declined_proposal_restarts_the_window(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path, extra=FAST_POLICY + "promotion: confirm\n")
    for i in range(4):
        run_result(db, "alpha", T0 + timedelta(hours=12 * i), f"c{i}", Outcome.PASS)
    assert behavior(db).tier == "A"
    with db.transaction() as session:
        proposal = session.exec(select(PromotionProposal)).one()
        assert (proposal.status, proposal.to_tier) == ("pending", "B")
    with db.transaction() as session:
        decline_proposal(
            session, "alpha", reason="not yet", actor="cli:ann", now=T0 + timedelta(days=2)
        )
    with db.transaction() as session:
        assert session.exec(select(PromotionProposal)).one().status == "declined"
    assert behavior(db).policy_window["clean_runs"] == 0
    assert "proposal_declined" in kinds(db)


def test_accepting_a_proposal_is_not_an_override(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path, extra=FAST_POLICY + "promotion: confirm\n")
    for i in range(4):
        run_result(db, "alpha", T0 + timedelta(hours=12 * i), f"c{i}", Outcome.PASS)
    now = T0 + timedelta(hours=40)
    # The proposal restarted the window: accepting it relies on the pending proposal.
    with db.transaction() as session:
        msg = operator_action(
            session, "alpha", "promote", reason="looks good", actor="cli:ann", now=now, ctx=CTX
        )
    assert behavior(db).tier == "B"
    with db.transaction() as session:
        assert session.exec(select(PromotionProposal)).one().status == "accepted"
    assert msg.startswith("promoted from A · proposal-only to B · human-in-the-loop by cli:ann")
    assert "override" not in msg
    with db.transaction() as session:
        entry = session.exec(select(LedgerEntry).where(col(LedgerEntry.kind) == "promoted")).one()
        assert entry.data["override"] is False


def test_explain_tells_the_story_of_a_to_b_to_c_to_b(db: Database, tmp_path: Path) -> None:
    register(db, tmp_path, extra=FAST_POLICY)
    t = T0
    for i in range(4):
        run_result(db, "alpha", t, f"a{i}", Outcome.PASS)
        t += timedelta(hours=12)
    assert behavior(db).tier == "B"
    for i in range(4):
        approval(db, "alpha", t, f"a{i}", "approved")
        run_result(db, "alpha", t, f"b{i}", Outcome.PASS)
        t += timedelta(hours=12)
    assert behavior(db).tier == "C"
    run_result(db, "alpha", t, "c0", Outcome.FAIL, Gate.SENSITIVE_INFO)
    assert behavior(db).tier == "B"
    with db.transaction() as session:
        text = explain(session, "alpha", t + timedelta(hours=1), CTX).render()
    assert text.splitlines()[0] == "alpha is at B · human-in-the-loop."
    story = text.split("How it got here:")[1].split("What comes next:")[0]
    assert "registered from alpha.yaml at A · proposal-only" in story
    assert "promoted from A · proposal-only to B · human-in-the-loop: 3 clean runs" in story
    assert "promoted from B · human-in-the-loop to C · autonomous" in story
    assert (
        "demoted from C · autonomous to B · human-in-the-loop: "
        "attributable fail at gate sensitive_info" in story
    )
    # Evidence is cited as runs an operator can look up (`ledger show RUN`), not row ids.
    failed_at = f"{t:%Y-%m-%d %H:%M}"
    assert f"(evidence: run c0 at {failed_at} UTC: sensitive_info fail)" in story
    assert "run a0 at " in story and "evidence: results" not in story
    with db.transaction() as session:
        steps = explain(session, "alpha", t + timedelta(hours=1), CTX).as_json()["story"]
    assert steps[-1]["evidence"] == [
        {
            "at": f"{t:%Y-%m-%dT%H:%M:%S}Z",
            "run_id": "c0",
            "gate": "sensitive_info",
            "outcome": "fail",
        }
    ]
    assert "Promotion:" in text and "Demotion:" in text
    with db.transaction() as session:
        assert verify(session).ok


@pytest.mark.parametrize("workers", [4])
def test_concurrent_results_serialize_like_a_sequential_replay(
    db: Database, tmp_path: Path, workers: int
) -> None:
    register(db, tmp_path, extra=FAST_POLICY.replace("cooldown_days: 1", "cooldown_days: 0"))
    set_tier(db, "C")
    outcomes = [Outcome.PASS] * 5 + [Outcome.WARN] + [Outcome.PASS] * 3 + [Outcome.WARN]
    per_worker = 60
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(per_worker):
                at = T0 + timedelta(minutes=i, seconds=w)
                outcome = outcomes[(i * 7 + w) % len(outcomes)]
                with db.transaction() as session:
                    row = lock_behavior(session, name="alpha")
                    stored = record_results(
                        session,
                        row,
                        [GateResult(Gate.OUTPUT_CHECK, outcome, True)],
                        now=at,
                        source="broadcast",
                    )
                    apply_observation(
                        session, row, Observation.result(at, stored[0]), now=at, ctx=CTX
                    )
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    final = behavior(db)
    # Replay the results in the order they were applied (ids are assigned under the lock).
    from ledger.db.models import GateResultRow

    with db.transaction() as session:
        rows = list(session.exec(select(GateResultRow).order_by(col(GateResultRow.id))))
    assert len(rows) == workers * per_worker
    observations = [
        Observation.result(
            r.created_at,
            GateResult(Gate(r.gate), Outcome(r.outcome), r.attributable, result_id=r.id),
        )
        for r in rows
    ]
    state = BehaviorState("alpha", Tier.C)
    window = PolicyWindow()
    rules = thresholds_for(final, CTX)
    for obs in observations:
        window = observe(window, obs, rules)
        decision = decide(state, window, obs.at, rules)
        window = after_decision(window, decision, obs.at)
        state = apply_decision(state, decision)
    assert (Tier(final.tier), final.paused) == (state.tier, state.paused)
    # Every counter matches too: no result was lost or applied to a stale window.
    assert final.policy_window == window.to_json()
    with db.transaction() as session:
        assert verify(session).ok


def rendered_alerts(db: Database) -> list[str]:
    """The text of every queued alert, as a channel would send it (without its time)."""
    with db.transaction() as session:
        rows = session.exec(
            select(OutboxRow)
            .where(col(OutboxRow.kind).startswith("alert"))
            .order_by(col(OutboxRow.id))
        ).all()
        return [alert_text({**o.payload["alert"], "at": None}) for o in rows]


def test_a_policy_demotion_alert_says_the_change_once_then_its_cause(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "B")
    run_result(db, "alpha", T0, "r1", Outcome.FAIL)
    run_result(db, "alpha", T0 + timedelta(hours=3), "r2", Outcome.FAIL)
    demoted, paused = rendered_alerts(db)
    assert demoted.splitlines()[0] == (
        "alpha demoted from B · human-in-the-loop to A · proposal-only: attributable fail at "
        "gate output_check (run r1)"
    )
    assert paused.splitlines()[0].startswith(
        "alpha paused: second attributable fail within 24 hours, at gate output_check (run r2)"
    )
    assert all(text.count("demoted from") <= 1 for text in (demoted, paused))
    # The evidence reads as the gate results it is, with their runs, not as bare row ids.
    assert demoted.splitlines()[1:] == [
        "Evidence:",
        "- gate output_check, outcome fail, run r1",
    ]
    with db.transaction() as session:
        first = session.exec(
            select(OutboxRow)
            .where(col(OutboxRow.kind).startswith("alert"))
            .order_by(col(OutboxRow.id))
        ).first()
    assert first is not None
    alert = first.payload["alert"]
    assert [type(i) for i in alert["evidence"]] == [int]  # the ids stay, for machines
    assert alert["cited"] == [{"gate": "output_check", "outcome": "fail", "run": "r1"}]


def test_operator_demotion_and_pause_alerts_name_the_operator_once(
    db: Database, tmp_path: Path
) -> None:
    register(db, tmp_path)
    set_tier(db, "B")
    with db.transaction() as session:
        operator_action(
            session, "alpha", "demote", reason="too noisy", actor="cli:ann", now=T0, ctx=CTX
        )
    with db.transaction() as session:
        operator_action(
            session, "alpha", "pause", reason="maintenance", actor="api:ops", now=T0, ctx=CTX
        )
    assert rendered_alerts(db) == [
        "alpha demoted from B · human-in-the-loop to A · proposal-only by cli:ann: too noisy",
        "alpha paused by api:ops: maintenance",
    ]


@pytest.mark.parametrize(
    ("verb", "state"),
    [
        ("pin", "is already pinned"),
        ("unpin", "is not pinned"),
        ("pause", "is already paused"),
        ("resume", "is not paused"),
    ],
)
def test_an_action_that_changes_nothing_says_the_state_in_plain_english(
    db: Database, tmp_path: Path, verb: str, state: str
) -> None:
    register(db, tmp_path)
    if verb in ("pin", "pause"):
        with db.transaction() as session:
            operator_action(session, "alpha", verb, reason="first", actor="t", now=T0, ctx=CTX)  # type: ignore[arg-type]
    with db.transaction() as session, pytest.raises(ConflictError) as refused:
        operator_action(session, "alpha", verb, reason="again", actor="t", now=T0, ctx=CTX)  # type: ignore[arg-type]
    assert str(refused.value) == f"behavior 'alpha' {state}; nothing to do"
