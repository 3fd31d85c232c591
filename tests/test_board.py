"""The read model (``ledger.board``) on SQLite and PostgreSQL: the board's filters and counts,
each card's facts and progress (as ``ledger explain`` says it), stable cursor pages while
rows are added, a behavior's page, the ledger, proposals and unattributed broadcast."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from ledger.board import (
    behavior_detail,
    board,
    decode_cursor,
    encode_cursor,
    ledger_entries,
    list_proposals,
    runs,
    unattributed_spans,
)
from ledger.db.models import Approval, BudgetWindow, PromotionProposal
from ledger.db.session import Database
from ledger.errors import ConflictError, InvalidRequestError, NotFoundError
from ledger.explain import explain
from ledger.gates import Gate, GateResult, Outcome
from ledger.policy import Observation, PolicyWindow, observe
from ledger.proposals import accept_proposal, decline_proposal_by_id
from ledger.transitions import PolicyContext, operator_action
from tests.board_rows import behavior_row, run_row, span_row
from tests.conftest import T0

CTX = PolicyContext()


def _names(page: object) -> list[str]:
    return [card.name for card in page.cards]  # type: ignore[attr-defined]


def _seven_clean_runs() -> PolicyWindow:
    window = PolicyWindow()
    for n in range(7):
        result = GateResult(Gate.OUTPUT_CHECK, Outcome.PASS, True)
        at = T0 - timedelta(days=2) + timedelta(hours=8 * n)
        window = observe(window, Observation.run(at, f"old-{n}", [result]))
    return window


def test_the_board_filters_by_tier_status_and_text_and_counts_each_tier(db: Database) -> None:
    with db.transaction() as s:
        behavior_row(s, "alpha", now=T0, description="Weekly SEO audit")
        behavior_row(s, "beta", now=T0, tier="B", paused=True)
        behavior_row(s, "gamma", now=T0, tier="C", pinned=True, description="100% of pages")
        behavior_row(s, "delta", now=T0, retired=True)
        behavior_row(s, "epsilon", now=T0, tier="B", problem="epsilon.yaml:1:1: bad")
        behavior_row(s, "zeta", now=T0, key_problem="ZETA_KEY is not set")
        behavior_row(s, "eta", now=T0, enabled=False, description="1000 pages")

    with db.transaction() as s:
        everything = board(s, now=T0)
        assert _names(everything) == ["alpha", "beta", "epsilon", "eta", "gamma", "zeta"]
        assert [(c.tier, c.count) for c in everything.counts] == [("A", 3), ("B", 2), ("C", 1)]
        assert everything.total == 6 and everything.next_cursor is None
        column_b = board(s, now=T0, tier="B")
        assert _names(column_b) == ["beta", "epsilon"]
        assert column_b.counts == everything.counts  # the columns' counts, tier aside
        by_status = {
            status: _names(board(s, now=T0, status=status))
            for status in (
                "active",
                "paused",
                "pinned",
                "disabled",
                "retired",
                "invalid_file",
                "missing_key",
            )
        }
        assert by_status == {
            "active": ["alpha", "epsilon", "gamma", "zeta"],
            "paused": ["beta"],
            "pinned": ["gamma"],
            "disabled": ["eta"],
            "retired": ["delta"],
            "invalid_file": ["epsilon"],
            "missing_key": ["zeta"],
        }
        assert _names(board(s, now=T0, text="seo")) == ["alpha"]  # any case, the description
        assert _names(board(s, now=T0, text="ETA")) == ["beta", "eta", "zeta"]  # names too
        assert _names(board(s, now=T0, text="0%")) == ["gamma"]  # % is a character, not LIKE's
        searched = board(s, now=T0, text="a", tier="C")
        assert _names(searched) == ["gamma"]
        assert [c.count for c in searched.counts] == [3, 1, 1]  # epsilon has no "a"
        cards = {c.name: c for c in everything.cards}
        assert cards["beta"].status == "paused" and cards["beta"].flags.paused
        assert cards["epsilon"].flags.invalid_file and cards["zeta"].flags.missing_key
        assert cards["eta"].status == "disabled" and cards["gamma"].flags.pinned
        with pytest.raises(InvalidRequestError, match="unknown status 'sleeping'"):
            board(s, now=T0, status="sleeping")
        with pytest.raises(InvalidRequestError, match="unknown tier 'D'"):
            board(s, now=T0, tier="D")


def test_a_card_shows_last_run_failures_spend_and_the_progress_explain_gives(
    db: Database,
) -> None:
    with db.transaction() as s:
        alpha = behavior_row(
            s, "alpha", now=T0, budget={"usd": 2.0, "reset": "day"}, window=_seven_clean_runs()
        )
        run_row(s, alpha, "run-1", at=T0 - timedelta(hours=2))
        run_row(s, alpha, "run-2", at=T0 - timedelta(hours=1), gates=(("output_check", "warn"),))
        run_row(s, alpha, "run-0", at=T0 - timedelta(days=3), gates=(("timeout", "warn"),))
        alpha.last_run_id, alpha.last_run_at, alpha.last_run_status = "run-2", T0, "succeeded"
        s.add(
            BudgetWindow(
                behavior_id=alpha.id or 0,
                window_start=T0.replace(hour=0),
                spent_usd=0.5,
                updated_at=T0,
            )
        )
        s.add(
            BudgetWindow(
                behavior_id=alpha.id or 0,
                window_start=T0.replace(hour=0) - timedelta(days=1),
                spent_usd=1.5,
                updated_at=T0,
            )
        )
        s.add(
            Approval(
                run_id="run-2",
                behavior_id=alpha.id or 0,
                payload={},
                payload_sha256="0" * 64,
                requested_at=T0,
                expires_at=T0 + timedelta(days=1),
            )
        )
        warned = observe(
            _seven_clean_runs(),
            Observation.run(T0, "run-2", [GateResult(Gate.OUTPUT_CHECK, Outcome.WARN, True)]),
        )
        behavior_row(s, "beta", now=T0, tier="B", window=warned)

    with db.transaction() as s:
        cards = {c.name: c for c in board(s, now=T0).cards}
        card = cards["alpha"]
        assert (card.last_run.id, card.last_run.status, card.last_run.at) == (
            "run-2",
            "succeeded",
            T0,
        )
        assert card.failures.last_24h == 1  # run-0's warn is older than 24 hours
        assert (card.spend.usd, card.spend.budget_usd, card.spend.reset) == (0.5, 2.0, "day")
        assert card.spend.fraction == 0.25 and card.spend.window_start == T0.replace(hour=0)
        assert card.pending_approvals == 1
        progress = card.progress
        assert (progress.next_tier, progress.clean_runs, progress.needed) == ("B", 7, 10)
        assert progress.blocked_by == ["clean_runs", "days"] and not progress.eligible
        assert progress.summary == "7 of 10 clean runs"
        words = explain(s, "alpha", T0, CTX).next_steps
        assert f"{progress.clean_runs} of {progress.needed} clean runs over 2 of 3 days" in words
        beta = cards["beta"]
        assert (beta.failures.warned_runs, beta.failures.window_runs) == (1, 8)
        assert (beta.progress.next_tier, beta.progress.approved_runs) == ("C", 0)
        assert beta.spend.budget_usd is None and beta.spend.reset == "month"

        detail = behavior_detail(s, "alpha", now=T0, runs_limit=2, ctx=CTX)
        assert detail.card == card
        assert [r.id for r in detail.runs.runs] == ["run-2", "run-1"]
        assert detail.runs.runs[0].gate_results[0].outcome == "warn"
        assert [w.spent_usd for w in detail.spend_windows] == [0.5, 1.5]
        assert detail.progress_text == words.splitlines()
        with pytest.raises(NotFoundError):
            behavior_detail(s, "nobody", now=T0)


def test_demotions_of_the_last_24_hours_and_the_tier_history_with_reasons_and_actors(
    db: Database,
) -> None:
    with db.transaction() as s:
        behavior_row(s, "alpha", now=T0, tier="C")
        behavior_row(s, "beta", now=T0, tier="B")
    with db.transaction() as s:
        operator_action(
            s,
            "alpha",
            "demote",
            reason="too bold",
            actor="cli:ann",
            now=T0 - timedelta(days=2),
            ctx=CTX,
        )
        operator_action(
            s,
            "alpha",
            "demote",
            reason="still bold",
            actor="cli:ann",
            now=T0 - timedelta(hours=3),
            ctx=CTX,
        )
        operator_action(
            s,
            "beta",
            "demote",
            reason="wrong links",
            actor="api:ops",
            now=T0 - timedelta(hours=1),
            ctx=CTX,
        )
    with db.transaction() as s:
        demotions = board(s, now=T0).demotions_24h
        assert [(d.behavior, d.from_tier, d.to_tier, d.actor) for d in demotions] == [
            ("beta", "B", "A", "api:ops"),
            ("alpha", "B", "A", "cli:ann"),
        ]
        assert "wrong links" in demotions[0].reason
        history = behavior_detail(s, "alpha", now=T0).history
        assert [(h.kind, h.actor) for h in history] == [
            ("demoted", "cli:ann"),
            ("demoted", "cli:ann"),
        ]
        assert "too bold" in history[0].reason and "still bold" in history[1].reason


def test_board_pages_cover_every_behavior_once_while_behaviors_are_added(db: Database) -> None:
    with db.transaction() as s:
        for n in range(0, 50, 2):
            behavior_row(s, f"b-{n:02d}", now=T0, tier="AB"[n % 4 // 2])
    seen: list[str] = []
    cursor = None
    added = 1
    while True:
        with db.transaction() as s:
            page = board(s, now=T0, cursor=cursor, limit=7)
        seen += _names(page)
        cursor = page.next_cursor
        if cursor is None:
            break
        with db.transaction() as s:  # new behaviors land before and after the cursor
            behavior_row(s, f"b-{added:02d}", now=T0)
            behavior_row(s, f"c-{added:02d}", now=T0)
            added += 4
    original = [f"b-{n:02d}" for n in range(0, 50, 2)]
    assert len(seen) == len(set(seen))
    assert set(original) <= set(seen)
    assert seen == sorted(seen)


def test_run_pages_are_stable_with_equal_times_and_runs_arriving(db: Database) -> None:
    with db.transaction() as s:
        alpha = behavior_row(s, "alpha", now=T0)
        for n in range(30):
            at = T0 - timedelta(minutes=10 * (n // 3))  # three runs share each instant
            outcome = "warn" if n % 5 == 0 else "pass"
            status = "failed" if n % 7 == 0 else "succeeded"
            slot = T0 - timedelta(days=1, seconds=n)  # slots are unique, claim times are not
            run_row(
                s,
                alpha,
                f"run-{n:02d}",
                at=at,
                slot=slot,
                status=status,
                gates=(("output_check", outcome),),
            )
    collected: list[str] = []
    cursor = None
    newer = 0
    while True:
        with db.transaction() as s:
            page = runs(s, "alpha", cursor=cursor, limit=4)
        collected += [r.id for r in page.runs]
        cursor = page.next_cursor
        if cursor is None:
            break
        with db.transaction() as s:
            newer += 1
            run_row(s, alpha, f"new-{newer:02d}", at=T0 + timedelta(minutes=newer))
    assert sorted(collected) == [f"run-{n:02d}" for n in range(30)]
    assert len(collected) == len(set(collected))

    with db.transaction() as s:
        warned = runs(s, "alpha", gate="output_check", outcome="warn").runs
        assert sorted(r.id for r in warned) == [f"run-{n:02d}" for n in range(0, 30, 5)]
        assert all(r.gate_results[0].outcome == "warn" for r in warned)
        failed = runs(s, "alpha", status="failed").runs
        assert sorted(r.id for r in failed) == [f"run-{n:02d}" for n in range(0, 30, 7)]
        recent = runs(s, "alpha", since=T0 - timedelta(minutes=10)).runs
        assert {r.id for r in recent} == {
            *(f"new-{n:02d}" for n in range(1, newer + 1)),
            *(f"run-{n:02d}" for n in range(6)),
        }
        assert runs(s, "alpha", gate="timeout").runs == []


def test_ledger_entries_page_both_ways_and_filter_by_behavior_kind_and_time(db: Database) -> None:
    with db.transaction() as s:
        behavior_row(s, "alpha", now=T0)
        behavior_row(s, "beta", now=T0)
    for n in range(6):
        with db.transaction() as s:
            at = T0 + timedelta(hours=n)
            name = "alpha" if n % 2 == 0 else "beta"
            operator_action(s, name, "pin", reason=f"pin {n}", actor="cli:ann", now=at, ctx=CTX)
            operator_action(s, name, "unpin", reason=f"unpin {n}", actor="cli:ann", now=at, ctx=CTX)
    with db.transaction() as s:
        forward: list[int] = []
        after = 0
        while True:
            page = ledger_entries(s, after_id=after, limit=5)
            forward += [e.id for e in page.entries]
            if page.next_cursor is None:
                break
            after = int(page.next_cursor)
        backward: list[int] = []
        before = 2**63 - 1  # beyond any id: the newest first
        while True:
            page = ledger_entries(s, before_id=before, limit=5)
            backward += [e.id for e in page.entries]
            if page.next_cursor is None:
                break
            before = int(page.next_cursor)
        assert len(forward) == 12 and forward == sorted(forward) and backward == forward[::-1]
        assert ledger_entries(s, after_id=2**63 - 1).entries == []
        alpha_pins = ledger_entries(s, behavior="alpha", kinds=["pinned"]).entries
        assert [e.reason for e in alpha_pins] == ["pin 0", "pin 2", "pin 4"]
        window = ledger_entries(s, since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=4))
        assert [e.reason for e in window.entries] == ["pin 2", "unpin 2", "pin 3", "unpin 3"]


def test_unattributed_broadcast_pages_newest_first(db: Database) -> None:
    with db.transaction() as s:
        alpha = behavior_row(s, "alpha", now=T0)
        for n in range(12):
            span_row(s, n, at=T0 - timedelta(minutes=n // 2))  # pairs share an instant
        span_row(s, 100, at=T0, behavior=alpha)
        span_row(s, 101, at=T0, attribution="invalid")
    with db.transaction() as s:
        seen: list[str] = []
        cursor = None
        while True:
            page = unattributed_spans(s, attribution="unattributed", cursor=cursor, limit=5)
            seen += [p.trace_id for p in page.spans]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == sorted(f"{n:032x}" for n in range(12)) and len(set(seen)) == 12
        everything = unattributed_spans(s, limit=50).spans
        assert len(everything) == 13 and everything[0].received_at == T0


def test_cursors_this_daemon_did_not_give_out_are_refused(db: Database) -> None:
    with db.transaction() as s:
        behavior_row(s, "alpha", now=T0)
        for cursor in ("", "!!", "bm90IGpzb24", encode_cursor(1), encode_cursor("a", "b")):
            with pytest.raises(InvalidRequestError, match="board cursor"):
                board(s, now=T0, cursor=cursor)
        for cursor in (
            encode_cursor("yesterday", "run-1"),
            encode_cursor("2026-11-02T09:00:00", "r"),
        ):
            with pytest.raises(InvalidRequestError, match="runs cursor"):
                runs(s, "alpha", cursor=cursor)
        too_big = base64.urlsafe_b64encode(f'["{T0.isoformat()}", {2**64}]'.encode()).decode()
        for cursor in (
            too_big,
            encode_cursor(T0.isoformat(), -1),
            encode_cursor(T0.isoformat(), 2**31),
        ):
            with pytest.raises(InvalidRequestError, match="unattributed deliveries cursor"):
                unattributed_spans(s, cursor=cursor)
    assert decode_cursor(encode_cursor("b-01"), (str,), "board") == ["b-01"]


def test_proposals_are_accepted_or_declined_by_id(db: Database) -> None:
    with db.transaction() as s:
        alpha = behavior_row(s, "alpha", now=T0, definition={"promotion": "confirm"})
        beta = behavior_row(s, "beta", now=T0, tier="B")
        for row, to in ((alpha, "B"), (beta, "C")):
            s.add(
                PromotionProposal(
                    behavior_id=row.id or 0,
                    from_tier=row.tier,
                    to_tier=to,
                    reason="earned",
                    created_at=T0,
                )
            )
    with db.transaction() as s:
        pending = {p.behavior: p for p in list_proposals(s)}
        assert sorted(pending) == ["alpha", "beta"]
        card = {c.name: c for c in board(s, now=T0).cards}["alpha"]
        assert card.progress.pending_proposal == pending["alpha"]
    with db.transaction() as s:
        message = accept_proposal(
            s, pending["alpha"].id, reason="read its runs", actor="api:ops", now=T0, ctx=CTX
        )
        assert "promoted from A · proposal-only to B · human-in-the-loop by api:ops" in message
        decline_proposal_by_id(s, pending["beta"].id, reason="not yet", actor="api:ops", now=T0)
    with db.transaction() as s:
        assert list_proposals(s) == []
        decided = {p.behavior: p for p in list_proposals(s, status=None)}
        assert (decided["alpha"].status, decided["alpha"].decided_by) == ("accepted", "api:ops")
        assert (decided["beta"].status, decided["beta"].decision_reason) == ("declined", "not yet")
        assert {c.name: c.tier for c in board(s, now=T0).cards} == {"alpha": "B", "beta": "B"}
        with pytest.raises(ConflictError, match="already accepted"):
            accept_proposal(s, pending["alpha"].id, reason="again", actor="x", now=T0, ctx=CTX)
        with pytest.raises(NotFoundError):
            decline_proposal_by_id(s, 999_999, reason="no", actor="x", now=T0)
        s.add(
            PromotionProposal(
                behavior_id=beta.id or 0, from_tier="A", to_tier="B", reason="old", created_at=T0
            )
        )
        s.flush()
        stale = list_proposals(s, behavior="beta")[0]
        with pytest.raises(ConflictError, match="is at B · human-in-the-loop now"):
            accept_proposal(s, stale.id, reason="late", actor="x", now=T0, ctx=CTX)
