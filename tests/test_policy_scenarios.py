"""Policy scenarios as tables: each row is (hour, what happened, what the policy did).

The third column reads "<decision kind> <tier after it>[ paused]"; for a proposal it names the
proposed tier (the behavior's tier itself does not change until an operator accepts). Every
scenario goes through ``replay``, the reference the database layer is later compared against.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.policy import (
    DEFAULT_THRESHOLDS,
    ApprovalOutcome,
    BehaviorState,
    Observation,
    Thresholds,
    apply_decision,
    replay,
)

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

Event = Callable[[datetime], Observation]
Row = tuple[float, Event, str]


def clean(run_id: str) -> Event:
    return lambda at: Observation.run(
        at,
        run_id,
        [
            GateResult(Gate.OUTPUT_CHECK, Outcome.PASS, attributable=True),
            GateResult(Gate.SENSITIVE_INFO, Outcome.PASS, attributable=True),
        ],
    )


def warn(run_id: str, gate: Gate = Gate.OUTPUT_CHECK) -> Event:
    return lambda at: Observation.run(at, run_id, [GateResult(gate, Outcome.WARN, True)])


def fail(run_id: str, gate: Gate = Gate.SPEND_CAP) -> Event:
    return lambda at: Observation.run(at, run_id, [GateResult(gate, Outcome.FAIL, True)])


def provider_error(run_id: str, gate: Gate = Gate.PROVIDER_ERROR) -> Event:
    return lambda at: Observation.run(at, run_id, [GateResult(gate, Outcome.FAIL, False)])


def broadcast(gate: Gate, outcome: Outcome, attributable: bool, run_id: str | None = None) -> Event:
    return lambda at: Observation.result(at, GateResult(gate, outcome, attributable), run_id)


def answered(run_id: str, outcome: ApprovalOutcome = "approved") -> Event:
    return lambda at: Observation.approval(at, run_id, outcome, (f"approval-{run_id}",))


def edited(note: str) -> Event:
    return lambda at: Observation.definition_changed(at, note)


def run_and_approve(start: float, count: int, expected: str, prefix: str = "b") -> list[Row]:
    """``count`` runs every 4 hours from hour ``start``, each approved 2 hours later."""
    rows: list[Row] = []
    for k in range(count):
        rows.append((start + 4 * k, clean(f"{prefix}{k}"), expected))
        rows.append((start + 4 * k + 2, answered(f"{prefix}{k}"), expected))
    return rows


def clean_runs(start: float, every: float, count: int, expected: str, prefix: str) -> list[Row]:
    return [(start + every * k, clean(f"{prefix}{k}"), expected) for k in range(count)]


def play(
    state: BehaviorState, rows: list[Row], rules: Thresholds = DEFAULT_THRESHOLDS
) -> list[str]:
    history = [event(T0 + timedelta(hours=hour)) for hour, event, _ in rows]
    outcome = []
    for decision in replay(history, state, rules):
        state = apply_decision(state, decision)
        tier = decision.to if decision.kind == "propose" else state.tier
        outcome.append(f"{decision.kind} {tier.value}" + (" paused" if state.paused else ""))
    return outcome


# --------------------------------------------------------------------------------------------
# The tables

A_TO_B_TO_C_AND_BACK_TO_B: list[Row] = [
    *clean_runs(0, 8, 9, "stay A", prefix="a"),
    (72, clean("a9"), "promote B"),  # 10 clean runs over 3 days
    *run_and_approve(80, 19, "stay B"),
    (156, clean("b19"), "stay B"),
    (158, answered("b19"), "promote C"),  # the 20th approved run, 100 %
    (170, clean("c1"), "stay C"),
    (180, fail("c2", Gate.SPEND_CAP), "demote B"),
    (190, clean("c3"), "stay B"),
    (192, answered("c3"), "stay B"),  # cooldown, and a fresh window
]

SECOND_FAIL_WITHIN_24H_PAUSES: list[Row] = [
    (0, clean("r1"), "stay C"),
    (1, fail("r2", Gate.SPEND_CAP), "demote B"),
    (20, fail("r3", Gate.GUARDRAIL_BLOCK), "demote A paused"),
    *clean_runs(30, 12, 20, "stay A paused", prefix="manual"),  # paused: never promoted
]

FAILS_MORE_THAN_24H_APART_GO_ONE_TIER_EACH: list[Row] = [
    (0, fail("r1", Gate.TIMEOUT), "demote B"),
    (30, fail("r2", Gate.TIMEOUT), "demote A"),
    (40, clean("r3"), "stay A"),
    (45, fail("r4", Gate.SENSITIVE_INFO), "stay A paused"),  # second within 24 h, at A
]

ONE_RUN_WITH_SEVERAL_FAILS_IS_ONE_INCIDENT: list[Row] = [
    (0, fail("r1", Gate.SPEND_CAP), "demote B"),
    (0.1, broadcast(Gate.GUARDRAIL_BLOCK, Outcome.FAIL, True, run_id="r1"), "stay B"),
    (0.2, broadcast(Gate.SENSITIVE_INFO, Outcome.FAIL, True, run_id="r1"), "stay B"),
]

THREE_WARNS_IN_TEN_RUNS_DEMOTE: list[Row] = [
    (0, warn("r1", Gate.OUTPUT_CHECK), "stay C"),
    (1, clean("r2"), "stay C"),
    (2, clean("r3"), "stay C"),
    (3, warn("r4", Gate.COST_ANOMALY), "stay C"),
    (4, clean("r5"), "stay C"),
    (5, broadcast(Gate.PROMPT_INJECTION, Outcome.WARN, True), "demote B"),
    # at B the warn window starts afresh: three warns spread over more than ten runs
    (6, warn("r7"), "stay B"),
    *clean_runs(7, 1, 5, "stay B", prefix="x"),
    (12, warn("r8"), "stay B"),
    *clean_runs(13, 1, 5, "stay B", prefix="y"),
    (18, warn("r9"), "stay B"),
]

THREE_REJECTIONS_DEMOTE_B_TO_A: list[Row] = [
    (0, clean("r1"), "stay B"),
    (1, answered("r1", "rejected"), "stay B"),
    (2, clean("r2"), "stay B"),
    (3, answered("r2", "rejected"), "stay B"),
    (4, clean("r3"), "stay B"),
    (5, answered("r3", "expired"), "stay B"),  # nobody answered: neutral
    (6, answered("r3", "rejected"), "demote A"),
]

APPROVAL_RATE_MUST_REACH_95_PERCENT: list[Row] = [
    (0, clean("n0"), "stay B"),
    (1, answered("n0", "rejected"), "stay B"),
    (2, clean("n1"), "stay B"),
    (3, answered("n1", "rejected"), "stay B"),
    *run_and_approve(4, 20, "stay B"),  # 20 of 22: 90.9 %
    *run_and_approve(84, 17, "stay B", prefix="m"),
    (152, clean("m17"), "stay B"),
    (154, answered("m17"), "promote C"),  # 38 of 40: 95 %
]

COOLDOWN_HOLDS_FOR_A_WEEK: list[Row] = [
    (0, fail("r0", Gate.GUARDRAIL_BLOCK), "demote A"),
    *clean_runs(12, 12, 13, "stay A", prefix="c"),  # 13 clean runs over 6 days: cooldown
    (168, clean("c13"), "promote B"),  # 7 days after the demotion
]

FAIL_WITHIN_14_DAYS_BLOCKS_C: list[Row] = [
    (0, fail("r0"), "demote A"),
    *clean_runs(1, 8, 21, "stay A", prefix="c"),
    (169, clean("c21"), "promote B"),  # the cooldown ended at hour 168
    *run_and_approve(170, 20, "stay B"),  # 20 approved, but the fail was under 14 days ago
    (335, clean("late"), "stay B"),
    (336, clean("later"), "promote C"),  # 14 days after the fail: the next decision promotes
]

PROVIDER_TROUBLE_CHANGES_NOTHING: list[Row] = [
    *[(k, provider_error(f"r{k}"), "stay C") for k in range(10)],
    (10, provider_error("r10", Gate.AUTH_ERROR), "stay C"),
    (11, broadcast(Gate.PROVIDER_ERROR, Outcome.FAIL, False), "stay C"),
    (12, broadcast(Gate.SPEND_CAP, Outcome.FAIL, False), "stay C"),  # a workspace-wide refusal
    (13, clean("r13"), "stay C"),
]

CONFIRM_MODE_PROPOSES_AND_WAITS: list[Row] = [
    *clean_runs(0, 8, 9, "stay A", prefix="a"),
    (72, clean("a9"), "propose B"),
    *clean_runs(80, 8, 9, "stay A", prefix="b"),  # proposed once, not on every run
    (152, clean("b9"), "propose B"),  # declined (or unanswered): earned again
]

MAX_TIER_B_IS_NEVER_AUTONOMOUS: list[Row] = run_and_approve(0, 25, "stay B")

PINNED_IS_NOT_PROMOTED_BUT_STILL_DEMOTED: list[Row] = [
    *run_and_approve(0, 25, "stay B"),
    (100, fail("r1", Gate.SENSITIVE_INFO), "demote A"),
]

EDITING_THE_DEFINITION_RESTARTS_THE_WINDOW: list[Row] = [
    *clean_runs(0, 8, 9, "stay A", prefix="old"),
    (70, edited("preset changed"), "stay A"),
    *clean_runs(72, 8, 9, "stay A", prefix="new"),
    (144, clean("new9"), "promote B"),
]

SCENARIOS: dict[str, tuple[BehaviorState, list[Row]]] = {
    "A to B to C and back to B": (BehaviorState("seo-audit"), A_TO_B_TO_C_AND_BACK_TO_B),
    "second fail within 24h demotes to A and pauses": (
        BehaviorState("publisher", Tier.C),
        SECOND_FAIL_WITHIN_24H_PAUSES,
    ),
    "fails more than 24h apart go one tier each": (
        BehaviorState("publisher", Tier.C),
        FAILS_MORE_THAN_24H_APART_GO_ONE_TIER_EACH,
    ),
    "one run with several fails is one incident": (
        BehaviorState("publisher", Tier.C),
        ONE_RUN_WITH_SEVERAL_FAILS_IS_ONE_INCIDENT,
    ),
    "three warns in ten runs demote one tier": (
        BehaviorState("content-pipeline", Tier.C),
        THREE_WARNS_IN_TEN_RUNS_DEMOTE,
    ),
    "three rejections demote B to A": (
        BehaviorState("content-pipeline", Tier.B),
        THREE_REJECTIONS_DEMOTE_B_TO_A,
    ),
    "approval rate must reach 95 percent": (
        BehaviorState("content-pipeline", Tier.B),
        APPROVAL_RATE_MUST_REACH_95_PERCENT,
    ),
    "cooldown holds for a week": (BehaviorState("seo-audit", Tier.B), COOLDOWN_HOLDS_FOR_A_WEEK),
    "fail within 14 days blocks C": (
        BehaviorState("seo-audit", Tier.B),
        FAIL_WITHIN_14_DAYS_BLOCKS_C,
    ),
    "provider trouble changes nothing": (
        BehaviorState("publisher", Tier.C),
        PROVIDER_TROUBLE_CHANGES_NOTHING,
    ),
    "confirm mode proposes and waits": (
        BehaviorState("seo-audit", promotion_mode="confirm"),
        CONFIRM_MODE_PROPOSES_AND_WAITS,
    ),
    "max_tier B is never autonomous": (
        BehaviorState("publisher", Tier.B, max_tier=Tier.B),
        MAX_TIER_B_IS_NEVER_AUTONOMOUS,
    ),
    "pinned is not promoted but still demoted": (
        BehaviorState("publisher", Tier.B, pinned=True),
        PINNED_IS_NOT_PROMOTED_BUT_STILL_DEMOTED,
    ),
    "editing the definition restarts the window": (
        BehaviorState("seo-audit"),
        EDITING_THE_DEFINITION_RESTARTS_THE_WINDOW,
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str) -> None:
    state, rows = SCENARIOS[name]
    assert play(state, rows) == [expected for _, _, expected in rows]


def test_thresholds_from_the_behavior_file_apply() -> None:
    rules = Thresholds().with_overrides(
        {
            "promote_b_min_clean_runs": 2,
            "promote_b_min_days": 0,
            "warn_limit": 1,
            "cooldown_days": 0,
        }
    )
    rows: list[Row] = [
        (0, clean("r1"), "stay A"),
        (1, clean("r2"), "promote B"),
        (2, warn("r3"), "demote A"),
        (3, clean("r4"), "stay A"),
    ]
    assert play(BehaviorState("seo-audit"), rows, rules) == [expected for _, _, expected in rows]


def test_story_reasons_read_as_plain_english() -> None:
    state, rows = SCENARIOS["A to B to C and back to B"]
    history = [event(T0 + timedelta(hours=hour)) for hour, event, _ in rows]
    changes = [d.reason for d in replay(history, state) if d.kind != "stay"]
    assert changes == [
        "promoted from A · proposal-only to B · human-in-the-loop: "
        "10 clean runs over 3 days with no attributable fail or warn",
        "promoted from B · human-in-the-loop to C · autonomous: "
        "20 approved runs at a 100% approval rate, no attributable fail in 14 days",
        "demoted from C · autonomous to B · human-in-the-loop: "
        "attributable fail at gate spend_cap (run c2)",
    ]
