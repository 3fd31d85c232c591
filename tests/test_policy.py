"""The promotion policy: property tests over random histories, then one unit test per rule."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.policy import (
    DEFAULT_THRESHOLDS,
    MAX_EVIDENCE,
    MAX_RUN_EVIDENCE,
    ApprovalOutcome,
    BehaviorState,
    Decision,
    Observation,
    PolicyWindow,
    Thresholds,
    after_decision,
    apply_decision,
    decide,
    observe,
    progress,
    replay,
)
from tests.strategies import (
    behavior_states,
    observation_histories,
    policy_windows,
    thresholds,
)

# Example counts and derandomization come from the profile loaded in conftest ("ci" / "dev");
# histories are long composite draws, so their generation-speed health checks are off.
POLICY_PROPERTIES = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

# A behavior's career: a history, the state it starts from, and the thresholds it runs under.
CAREERS = (observation_histories(max_size=30), behavior_states(), thresholds())


# --------------------------------------------------------------------------------------------
# Helpers


def at(hours: float = 0, days: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, days=days)


def gate_result(
    gate: Gate, outcome: Outcome, result_id: int | None = None, *, attributable: bool = True
) -> GateResult:
    return GateResult(gate=gate, outcome=outcome, attributable=attributable, result_id=result_id)


def clean_run(when: datetime, run_id: str, result_id: int | None = None) -> Observation:
    return Observation.run(when, run_id, [gate_result(Gate.OUTPUT_CHECK, Outcome.PASS, result_id)])


def warn_run(
    when: datetime, run_id: str, gate: Gate = Gate.OUTPUT_CHECK, result_id: int | None = None
) -> Observation:
    return Observation.run(when, run_id, [gate_result(gate, Outcome.WARN, result_id)])


def fail_run(
    when: datetime, run_id: str, gate: Gate = Gate.SPEND_CAP, result_id: int | None = None
) -> Observation:
    return Observation.run(when, run_id, [gate_result(gate, Outcome.FAIL, result_id)])


def provider_error_run(when: datetime, run_id: str) -> Observation:
    return Observation.run(
        when, run_id, [gate_result(Gate.PROVIDER_ERROR, Outcome.FAIL, attributable=False)]
    )


def fold(
    observations: Iterable[Observation],
    window: PolicyWindow | None = None,
    rules: Thresholds = DEFAULT_THRESHOLDS,
) -> PolicyWindow:
    current = PolicyWindow() if window is None else window
    for obs in observations:
        current = observe(current, obs, rules)
    return current


def clean_runs_every_8_hours(
    count: int, start: datetime = T0, prefix: str = "r"
) -> list[Observation]:
    return [
        clean_run(start + timedelta(hours=8 * k), f"{prefix}{k}", result_id=k) for k in range(count)
    ]


def approvals(
    count: int, start: datetime, outcome: ApprovalOutcome = "approved", prefix: str = "ap"
) -> list[Observation]:
    return [
        Observation.approval(
            start + timedelta(hours=k), f"{prefix}-run{k}", outcome, (f"{prefix}-{k}",)
        )
        for k in range(count)
    ]


def last_decision(
    observations: list[Observation], state: BehaviorState, rules: Thresholds = DEFAULT_THRESHOLDS
) -> Decision:
    return replay(observations, state, rules)[-1]


Step = tuple[Observation, BehaviorState, Decision, BehaviorState]


def simulate(history: list[Observation], state: BehaviorState, rules: Thresholds) -> list[Step]:
    """replay(), with the behavior's state before and after each decision."""
    steps: list[Step] = []
    for obs, decision in zip(history, replay(history, state, rules), strict=True):
        after = apply_decision(state, decision)
        steps.append((obs, state, decision, after))
        state = after
    return steps


def is_attributable(obs: Observation, outcomes: set[Outcome]) -> bool:
    """Whether ``obs`` carries an attributable result with one of ``outcomes`` (a rejected
    approval is a human_rejected warn)."""
    if obs.kind == "approval":
        return Outcome.WARN in outcomes and obs.approval_outcome == "rejected"
    return any(r.attributable and r.outcome in outcomes for r in obs.results)


def is_clean_run(obs: Observation) -> bool:
    judged = [r for r in obs.results if r.attributable]
    return obs.kind == "run" and bool(judged) and all(r.outcome is Outcome.PASS for r in judged)


def window_start(steps: list[Step], index: int) -> int:
    """Index of the first observation of the promotion window the decision at ``index`` read."""
    start = 0
    for j in range(index + 1):
        obs, _, decision, _ = steps[j]
        if obs.kind == "definition_changed":
            start = j + 1
        if j < index and decision.kind in ("promote", "demote", "propose"):
            start = j + 1
    return start


# --------------------------------------------------------------------------------------------
# Properties


def test_random_histories_reach_every_kind_of_transition() -> None:
    """Guards the properties below against vacuity: the strategies must actually promote,
    propose, demote and pause, or "never promotes when …" would hold trivially.

    Fixed seeds, tried in order until every kind was seen: deterministic, yet as varied as a
    random run. (One seed alone is not enough: Hypothesis may end a run's generation early on
    a loaded machine, and one CI run saw no C → B demotion in its examples.)"""
    wanted = {
        ("promote", "A", "B", False),
        ("promote", "B", "C", False),
        ("propose", "A", "B", False),
        ("demote", "C", "B", False),
        ("demote", "B", "A", False),
        ("stay", "A", "A", True),
    }
    seen: set[tuple[str, str, str, bool]] = set()

    def collect(history: list[Observation], state: BehaviorState, rules: Thresholds) -> None:
        for _, before, decision, _ in simulate(history, state, rules):
            seen.add((decision.kind, before.tier.value, decision.to.value, decision.pause))

    for fixed in (20261102, 20261205, 1, 2, 3):
        seed(fixed)(
            settings(POLICY_PROPERTIES, derandomize=False, database=None, max_examples=200)(
                given(*CAREERS)(collect)
            )
        )()
        if wanted <= seen:
            break
    assert wanted <= seen, wanted - seen


@POLICY_PROPERTIES
@given(*CAREERS)
def test_promotion_to_b_rests_on_enough_clean_runs_after_the_last_warn_or_fail(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    steps = simulate(history, state, rules)
    for index, (_, before, decision, _) in enumerate(steps):
        if decision.kind not in ("promote", "propose") or before.tier is not Tier.A:
            continue
        start = window_start(steps, index)
        window = [s[0] for s in steps[start : index + 1]]
        bad = [k for k, o in enumerate(window) if is_attributable(o, {Outcome.WARN, Outcome.FAIL})]
        since_last_bad = window[bad[-1] + 1 :] if bad else window
        clean = [o for o in since_last_bad if is_clean_run(o)]
        assert len(clean) >= rules.promote_b_min_clean_runs
        assert clean[-1].at - clean[0].at >= timedelta(days=rules.promote_b_min_days)


@POLICY_PROPERTIES
@given(*CAREERS)
def test_promotion_to_c_rests_on_approvals_and_no_fail_in_the_clean_days(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    steps = simulate(history, state, rules)
    for index, (obs, before, decision, _) in enumerate(steps):
        if decision.kind not in ("promote", "propose") or before.tier is not Tier.B:
            continue
        window = [s[0] for s in steps[window_start(steps, index) : index + 1]]
        approved = sum(o.kind == "approval" and o.approval_outcome == "approved" for o in window)
        rejected = sum(o.kind == "approval" and o.approval_outcome == "rejected" for o in window)
        assert approved >= rules.promote_c_min_approved
        assert approved / (approved + rejected) >= rules.promote_c_min_approval_rate - 1e-12
        for earlier in history[: index + 1]:
            if is_attributable(earlier, {Outcome.FAIL}):
                assert obs.at - earlier.at >= timedelta(days=rules.promote_c_clean_days)


@POLICY_PROPERTIES
@given(*CAREERS)
def test_promotions_never_skip_a_tier_nor_pass_max_tier(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    for _, before, decision, after in simulate(history, state, rules):
        if decision.kind in ("promote", "propose"):
            assert decision.to.rank == before.tier.rank + 1
            assert decision.to.rank <= before.max_tier.rank
        assert after.tier.rank <= after.max_tier.rank


@POLICY_PROPERTIES
@given(observation_histories(max_size=30), behavior_states(within_max_tier=False), thresholds())
def test_a_tier_above_max_tier_is_brought_down_by_the_first_decision(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    for _, _, _, after in simulate(history, state, rules):
        assert after.tier.rank <= after.max_tier.rank


@POLICY_PROPERTIES
@given(*CAREERS)
def test_demotions_go_one_tier_down_unless_a_second_fail_pauses(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    for _, before, decision, _ in simulate(history, state, rules):
        if decision.kind == "demote":
            if decision.pause:
                assert decision.to is Tier.A
            else:
                assert decision.to.rank == before.tier.rank - 1
        if decision.kind in ("stay", "propose"):
            assert not decision.pause or before.tier is Tier.A


@POLICY_PROPERTIES
@given(*CAREERS)
def test_only_attributable_warns_and_fails_demote_or_pause(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    for obs, _, decision, _ in simulate(history, state, rules):
        if decision.kind == "demote" or decision.pause:
            assert is_attributable(obs, {Outcome.WARN, Outcome.FAIL})


@POLICY_PROPERTIES
@given(*CAREERS)
def test_promotions_always_wait_out_the_cooldown(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    demoted_at: list[datetime] = []
    for obs, _, decision, _ in simulate(history, state, rules):
        if decision.kind in ("promote", "propose"):
            for when in demoted_at:
                assert obs.at - when >= timedelta(days=rules.cooldown_days)
        if decision.kind == "demote":
            demoted_at.append(obs.at)


@POLICY_PROPERTIES
@given(*CAREERS)
def test_pinned_or_paused_behaviors_are_never_promoted(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    for _, before, decision, _ in simulate(history, state, rules):
        if before.pinned or before.paused:
            assert decision.kind not in ("promote", "propose")


@POLICY_PROPERTIES
@given(
    policy_windows(),
    observation_histories(min_size=1, max_size=6, attributable=False),
    behavior_states(),
    thresholds(),
)
def test_non_attributable_results_alone_change_nothing(
    window: PolicyWindow, history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    after = fold(history, window, rules)
    assert after == window
    now = history[-1].at
    assert decide(state, after, now, rules) == decide(state, window, now, rules)


@POLICY_PROPERTIES
@given(*CAREERS)
def test_same_history_gives_the_same_decisions(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    assert replay(history, state, rules) == replay(list(history), state, rules)


@POLICY_PROPERTIES
@given(*CAREERS)
def test_storing_the_window_as_json_between_steps_changes_no_decision(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    stored = json.dumps(PolicyWindow().to_json())
    current = state
    decisions = []
    for obs in history:
        window = observe(PolicyWindow.from_json(json.loads(stored)), obs, rules)
        stored = json.dumps(window.to_json())
        decision = decide(current, PolicyWindow.from_json(json.loads(stored)), obs.at, rules)
        stored = json.dumps(after_decision(window, decision, obs.at).to_json())
        current = apply_decision(current, decision)
        decisions.append(decision)
    assert decisions == replay(history, state, rules)


@POLICY_PROPERTIES
@given(policy_windows())
def test_window_json_round_trips(window: PolicyWindow) -> None:
    text = json.dumps(window.to_json(), allow_nan=False)
    assert PolicyWindow.from_json(json.loads(text)) == window


@settings(POLICY_PROPERTIES, max_examples=25)
@given(st.data(), thresholds())
def test_window_stays_bounded_however_long_the_history(
    data: st.DataObject, rules: Thresholds
) -> None:
    window = data.draw(policy_windows(max_size=250, rules=rules))
    assert len(window.recent_runs) <= rules.warn_window_runs
    assert len(window.clean_evidence) <= MAX_EVIDENCE
    assert len(window.approval_evidence) <= MAX_EVIDENCE
    for verdict in window.recent_runs:
        assert len(verdict.result_ids) <= MAX_RUN_EVIDENCE
        assert len(verdict.gates) <= len(Gate)
    if window.pending_fail is not None:
        assert len(window.pending_fail.result_ids) <= MAX_RUN_EVIDENCE


def test_window_json_size_does_not_grow_with_history() -> None:
    def history(count: int) -> list[Observation]:
        out: list[Observation] = []
        for k in range(count):
            when = at(hours=k)
            out.append(clean_run(when, f"r{k}", result_id=k))
            if k % 7 == 0:
                out.append(warn_run(when, f"r{k}", result_id=10_000 + k))
            if k % 3 == 0:
                out.append(Observation.approval(when, f"r{k}", "approved", (f"ap-{k}",)))
        return out

    small = json.dumps(fold(history(200)).to_json())
    large = json.dumps(fold(history(5_000)).to_json())
    assert len(large) <= len(small) + 200  # only wider numbers, never more entries


# --------------------------------------------------------------------------------------------
# Fails


def test_first_attributable_fail_demotes_one_tier_at_once() -> None:
    decision = last_decision([fail_run(at(), "r-123", result_id=7)], BehaviorState("x", Tier.C))
    assert (decision.kind, decision.to, decision.pause) == ("demote", Tier.B, False)
    assert decision.evidence == (7,)
    assert decision.reason == (
        "demoted from C · autonomous to B · human-in-the-loop: "
        "attributable fail at gate spend_cap (run r-123)"
    )


def test_second_fail_within_24h_demotes_to_a_and_pauses() -> None:
    decisions = replay(
        [fail_run(at(), "r1", result_id=1), fail_run(at(hours=23), "r2", Gate.TIMEOUT, 2)],
        BehaviorState("x", Tier.C),
    )
    assert [(d.kind, d.to, d.pause) for d in decisions] == [
        ("demote", Tier.B, False),
        ("demote", Tier.A, True),
    ]
    assert decisions[1].evidence == (2,)
    assert decisions[1].reason.startswith(
        "demoted from B · human-in-the-loop to A · proposal-only and paused: "
        "second attributable fail within 24 hours, at gate timeout (run r2)"
    )


def test_second_fail_after_24h_demotes_only_one_more_tier() -> None:
    decisions = replay(
        [fail_run(at(), "r1"), fail_run(at(hours=25), "r2")], BehaviorState("x", Tier.C)
    )
    assert [(d.to, d.pause) for d in decisions] == [(Tier.B, False), (Tier.A, False)]


def test_second_fail_window_follows_second_fail_hours() -> None:
    rules = Thresholds(second_fail_hours=48)
    decisions = replay(
        [fail_run(at(), "r1"), fail_run(at(hours=40), "r2")], BehaviorState("x", Tier.C), rules
    )
    assert decisions[1].pause


def test_several_fails_in_one_run_are_one_incident() -> None:
    run = Observation.run(
        at(),
        "r1",
        [
            gate_result(Gate.SPEND_CAP, Outcome.FAIL, 1),
            gate_result(Gate.GUARDRAIL_BLOCK, Outcome.FAIL, 2),
        ],
    )
    late_broadcast = Observation.result(
        at(hours=1), gate_result(Gate.SENSITIVE_INFO, Outcome.FAIL, 3), run_id="r1"
    )
    decisions = replay([run, late_broadcast], BehaviorState("x", Tier.C))
    assert [(d.kind, d.to, d.pause) for d in decisions] == [
        ("demote", Tier.B, False),
        ("stay", Tier.B, False),
    ]
    assert decisions[0].reason.endswith("at gates spend_cap, guardrail_block (run r1)")
    assert decisions[0].evidence == (1, 2)


def test_standalone_attributable_fail_demotes_like_a_run() -> None:
    webhook = Observation.result(at(), gate_result(Gate.EXTERNAL_EVENT, Outcome.FAIL, 9))
    decision = last_decision([webhook], BehaviorState("x", Tier.B))
    assert (decision.kind, decision.to, decision.evidence) == ("demote", Tier.A, (9,))
    assert decision.reason.endswith("attributable fail at gate external_event")


def test_fail_at_tier_a_stays_at_a_without_pausing() -> None:
    decision = last_decision([fail_run(at(), "r1", result_id=4)], BehaviorState("x", Tier.A))
    assert (decision.kind, decision.to, decision.pause) == ("stay", Tier.A, False)
    assert decision.evidence == (4,)
    assert "stays at A · proposal-only, the lowest tier" in decision.reason


def test_second_fail_within_24h_at_tier_a_pauses() -> None:
    decisions = replay(
        [fail_run(at(), "r1"), fail_run(at(hours=3), "r2")], BehaviorState("x", Tier.A)
    )
    assert [(d.kind, d.to, d.pause) for d in decisions] == [
        ("stay", Tier.A, False),
        ("stay", Tier.A, True),
    ]


def test_a_fail_is_acted_on_once() -> None:
    state = BehaviorState("x", Tier.C)
    window = fold([fail_run(at(), "r1")])
    first = decide(state, window, at())
    window = after_decision(window, first, at())
    state = apply_decision(state, first)
    again = decide(state, window, at(hours=1))
    assert (first.kind, again.kind, state.tier) == ("demote", "stay", Tier.B)


def test_fail_demotion_respects_max_tier() -> None:
    decision = last_decision([fail_run(at(), "r1")], BehaviorState("x", Tier.C, max_tier=Tier.A))
    assert (decision.kind, decision.to) == ("demote", Tier.A)


def test_pinned_and_paused_behaviors_are_still_demoted() -> None:
    state = BehaviorState("x", Tier.C, pinned=True, paused=True)
    assert last_decision([fail_run(at(), "r1")], state).to is Tier.B


# --------------------------------------------------------------------------------------------
# Warns


def test_three_warns_in_the_last_ten_runs_demote_one_tier() -> None:
    history = [
        warn_run(at(hours=0), "r1", Gate.OUTPUT_CHECK, 1),
        clean_run(at(hours=1), "r2"),
        warn_run(at(hours=2), "r3", Gate.TIMEOUT, 3),
        clean_run(at(hours=3), "r4"),
        warn_run(at(hours=4), "r5", Gate.COST_ANOMALY, 5),
    ]
    decisions = replay(history, BehaviorState("x", Tier.C))
    assert [d.kind for d in decisions] == ["stay"] * 4 + ["demote"]
    assert decisions[-1].to is Tier.B
    assert decisions[-1].evidence == (1, 3, 5)
    assert decisions[-1].reason == (
        "demoted from C · autonomous to B · human-in-the-loop: 3 runs with an attributable warn "
        "in the last 10 runs (output_check (run r1), timeout (run r3), cost_anomaly (run r5))"
    )


def test_warns_older_than_the_last_ten_runs_do_not_count() -> None:
    history = [
        warn_run(at(hours=0), "w1"),
        warn_run(at(hours=1), "w2"),
        *[clean_run(at(hours=2 + k), f"c{k}") for k in range(9)],
        warn_run(at(hours=12), "w3"),
    ]
    decisions = replay(history, BehaviorState("x", Tier.C))
    assert all(d.kind == "stay" for d in decisions)


def test_several_warns_in_one_run_count_once() -> None:
    run = Observation.run(
        at(),
        "r1",
        [
            gate_result(Gate.OUTPUT_CHECK, Outcome.WARN),
            gate_result(Gate.TIMEOUT, Outcome.WARN),
            gate_result(Gate.COST_ANOMALY, Outcome.WARN),
        ],
    )
    assert last_decision([run], BehaviorState("x", Tier.C)).kind == "stay"


def test_a_late_warn_about_a_run_in_the_window_does_not_take_a_new_place() -> None:
    window = fold(
        [
            clean_run(at(hours=0), "r1"),
            Observation.result(at(hours=1), gate_result(Gate.PROMPT_INJECTION, Outcome.WARN, 8)),
            Observation.result(
                at(hours=2), gate_result(Gate.SENSITIVE_INFO, Outcome.WARN, 9), run_id="r1"
            ),
        ]
    )
    assert [(v.run_id, v.verdict, v.result_ids) for v in window.recent_runs] == [
        ("r1", "warn", (9,)),
        (None, "warn", (8,)),
    ]


def test_rejected_approval_counts_as_a_human_rejected_warn() -> None:
    history = [
        Observation.approval(at(hours=k), f"r{k}", "rejected", (f"ap-{k}",)) for k in range(3)
    ]
    decision = last_decision(history, BehaviorState("x", Tier.B))
    assert (decision.kind, decision.to) == ("demote", Tier.A)
    assert "human_rejected (run r0)" in decision.reason
    assert decision.evidence == ("ap-0", "ap-1", "ap-2")


def test_expired_approval_is_neutral() -> None:
    window = fold(clean_runs_every_8_hours(3))
    assert fold([Observation.approval(at(days=2), "r1", "expired")], window) == window


def test_warn_limit_follows_thresholds() -> None:
    rules = Thresholds(warn_limit=1, warn_window_runs=5)
    assert last_decision([warn_run(at(), "r1")], BehaviorState("x", Tier.B), rules).to is Tier.A


def test_warns_at_tier_a_change_nothing_but_the_clean_window() -> None:
    history = [warn_run(at(hours=k), f"r{k}") for k in range(5)]
    decisions = replay(history, BehaviorState("x", Tier.A))
    assert {(d.kind, d.to, d.pause) for d in decisions} == {("stay", Tier.A, False)}


# --------------------------------------------------------------------------------------------
# Promotion A → B


def test_ten_clean_runs_over_three_days_promote_a_to_b() -> None:
    decisions = replay(clean_runs_every_8_hours(10), BehaviorState("x"))
    assert [d.kind for d in decisions] == ["stay"] * 9 + ["promote"]
    assert decisions[-1].to is Tier.B
    assert decisions[-1].evidence == tuple(range(10))
    assert decisions[-1].reason == (
        "promoted from A · proposal-only to B · human-in-the-loop: "
        "10 clean runs over 3 days with no attributable fail or warn"
    )


def test_ten_clean_runs_in_under_three_days_do_not_promote() -> None:
    history = [clean_run(at(hours=7 * k), f"r{k}") for k in range(10)]
    decision = last_decision(history, BehaviorState("x"))
    assert decision.kind == "stay"
    assert decision.reason == (
        "stays at A · proposal-only: 10 of 10 clean runs over 2.6 of 3 days "
        "toward B · human-in-the-loop"
    )


def test_three_days_with_fewer_than_ten_clean_runs_do_not_promote() -> None:
    history = [clean_run(at(days=k), f"r{k}") for k in range(9)]
    assert last_decision(history, BehaviorState("x")).kind == "stay"


def test_a_warn_restarts_the_clean_window() -> None:
    history = clean_runs_every_8_hours(9)
    history.insert(5, warn_run(at(hours=8 * 4 + 1), "w"))
    history.append(clean_run(at(hours=8 * 9), "r9"))
    decision = last_decision(history, BehaviorState("x"))
    assert decision.kind == "stay"
    assert "5 of 10 clean runs" in decision.reason


@pytest.mark.parametrize(
    "incident",
    [
        Observation.result(at(hours=33), gate_result(Gate.PROMPT_INJECTION, Outcome.WARN)),
        Observation.result(at(hours=33), gate_result(Gate.SENSITIVE_INFO, Outcome.FAIL), "r2"),
        Observation.approval(at(hours=33), "r3", "rejected"),
    ],
    ids=["broadcast warn", "late fail about a run", "rejection"],
)
def test_an_incident_outside_a_run_restarts_the_clean_window(incident: Observation) -> None:
    history = clean_runs_every_8_hours(10)
    history.insert(5, incident)
    decision = last_decision(history, BehaviorState("x"))
    assert decision.kind == "stay"
    assert "5 of 10 clean runs" in decision.reason


def test_a_non_attributable_failure_neither_counts_nor_breaks_the_clean_window() -> None:
    history = clean_runs_every_8_hours(10)
    history.insert(5, provider_error_run(at(hours=8 * 4 + 1), "outage"))
    assert last_decision(history, BehaviorState("x")).kind == "promote"
    assert fold([provider_error_run(at(), "outage")]) == PolicyWindow()


def test_a_run_without_output_is_no_evidence() -> None:
    assert fold([Observation.run(at(), "r1", [])]) == PolicyWindow()


def test_a_pass_result_outside_a_run_is_not_a_clean_run() -> None:
    broadcast = Observation.result(at(), gate_result(Gate.SENSITIVE_INFO, Outcome.PASS, 1))
    assert fold([broadcast]) == PolicyWindow()


def test_a_definition_change_keeps_the_tier_and_restarts_the_window() -> None:
    history = [
        *clean_runs_every_8_hours(9),
        Observation.definition_changed(at(hours=65), "preset changed"),
        clean_run(at(hours=72), "r9"),
    ]
    decision = last_decision(history, BehaviorState("x"))
    assert (decision.kind, decision.to) == ("stay", Tier.A)
    assert "1 of 10 clean runs" in decision.reason


# --------------------------------------------------------------------------------------------
# Promotion B → C


def test_twenty_approved_runs_promote_b_to_c() -> None:
    decisions = replay(approvals(20, at()), BehaviorState("x", Tier.B))
    assert [d.kind for d in decisions] == ["stay"] * 19 + ["promote"]
    assert decisions[-1].to is Tier.C
    assert decisions[-1].evidence == tuple(f"ap-{k}" for k in range(20))
    assert decisions[-1].reason == (
        "promoted from B · human-in-the-loop to C · autonomous: 20 approved runs at a 100% "
        "approval rate, no attributable fail in 14 days"
    )


def test_an_approval_rate_below_95_percent_blocks_c() -> None:
    history = [*approvals(2, at(), "rejected", prefix="no"), *approvals(20, at(hours=2))]
    decision = last_decision(history, BehaviorState("x", Tier.B))
    assert decision.kind == "stay"
    assert decision.reason == (
        "stays at B · human-in-the-loop: 20 approved runs at a 90.9% approval rate "
        "(95% needed), no attributable fail in 14 days toward C · autonomous"
    )
    more = approvals(18, at(days=2), prefix="more")  # 38 of 40: exactly 95 %
    decisions = replay(history + more, BehaviorState("x", Tier.B))
    assert [d.kind for d in decisions[-2:]] == ["stay", "promote"]


def test_an_approval_rate_of_exactly_95_percent_promotes() -> None:
    history = [*approvals(1, at(), "rejected", prefix="no"), *approvals(19, at(hours=1))]
    rules = Thresholds(promote_c_min_approved=19)
    decision = last_decision(history, BehaviorState("x", Tier.B), rules)
    assert decision.kind == "promote"
    assert "at a 95% approval rate" in decision.reason


def test_a_fail_within_14_days_blocks_c() -> None:
    rules = Thresholds(cooldown_days=0)
    base = [fail_run(at(), "r1"), *clean_runs_every_8_hours(10, at(hours=1), prefix="c")]
    state = BehaviorState("x", Tier.B)
    assert [d.to for d in replay(base, state, rules)][-1] is Tier.B  # down to A, back to B
    history = [*base, *approvals(20, at(days=4))]
    decision = last_decision(history, state, rules)
    assert decision.kind == "stay"
    assert decision.reason.endswith(
        "last attributable fail 2026-03-02 09:00 UTC "
        "(needs 14 days without one: 2026-03-16 09:00 UTC) toward C · autonomous"
    )
    later = Observation.approval(at(days=14), "late", "approved")
    assert last_decision([*history, later], state, rules).kind == "promote"


# --------------------------------------------------------------------------------------------
# Limits on promotion


def test_no_promotion_within_the_cooldown_of_a_demotion() -> None:
    history = [fail_run(at(), "r0"), *clean_runs_every_8_hours(22, at(hours=1), prefix="c")]
    decisions = replay(history, BehaviorState("x", Tier.B))
    promoted = [k for k, d in enumerate(decisions) if d.kind == "promote"]
    assert decisions[0].to is Tier.A
    assert promoted == [22]  # the first clean run after 7 days: 1 h + 8 h x 21 = 7 days 1 h
    assert "no promotion before 2026-03-09 09:00 UTC" in decisions[21].reason


def test_promotion_never_exceeds_max_tier() -> None:
    decision = last_decision(approvals(25, at()), BehaviorState("x", Tier.B, max_tier=Tier.B))
    assert (decision.kind, decision.to) == ("stay", Tier.B)
    assert (
        decision.reason == "stays at B · human-in-the-loop: its max_tier is B · human-in-the-loop"
    )


def test_a_tier_above_max_tier_is_demoted_to_max_tier() -> None:
    decision = decide(BehaviorState("x", Tier.C, max_tier=Tier.A), PolicyWindow(), at())
    assert (decision.kind, decision.to, decision.pause) == ("demote", Tier.A, False)
    assert decision.reason == (
        "demoted from C · autonomous to A · proposal-only: its max_tier is A · proposal-only"
    )


def test_a_pinned_behavior_is_not_promoted() -> None:
    decision = last_decision(clean_runs_every_8_hours(12), BehaviorState("x", pinned=True))
    assert decision.kind == "stay"
    assert decision.reason == "stays at A · proposal-only: pinned by an operator"


def test_a_paused_behavior_is_not_promoted() -> None:
    decision = last_decision(clean_runs_every_8_hours(12), BehaviorState("x", paused=True))
    assert (decision.kind, decision.reason) == ("stay", "stays at A · proposal-only: paused")


def test_confirm_mode_proposes_instead_of_promoting() -> None:
    decision = last_decision(
        clean_runs_every_8_hours(10), BehaviorState("x", promotion_mode="confirm")
    )
    assert (decision.kind, decision.to) == ("propose", Tier.B)
    assert decision.reason.startswith(
        "proposes promotion from A · proposal-only to B · human-in-the-loop: 10 clean runs"
    )
    assert apply_decision(BehaviorState("x"), decision).tier is Tier.A


def test_a_proposal_is_made_once_and_a_declined_one_must_be_earned_again() -> None:
    state = BehaviorState("x", promotion_mode="confirm")
    decisions = replay(clean_runs_every_8_hours(20), state)
    assert [k for k, d in enumerate(decisions) if d.kind == "propose"] == [9, 19]


def test_an_operator_promotion_restarts_the_window() -> None:
    window = fold(clean_runs_every_8_hours(6))
    operator = Decision("promote", Tier.B, False, "promoted by alice: trusted", (), override=True)
    after = after_decision(window, operator, at(days=3))
    assert (after.clean_runs, after.window_started_at) == (0, at(days=3))


def test_a_demotion_starts_the_cooldown_and_clears_the_warn_window() -> None:
    window = fold([warn_run(at(), "r1"), clean_run(at(hours=1), "r2")])
    demotion = decide(BehaviorState("x", Tier.C), window, at(hours=1), Thresholds(warn_limit=1))
    after = after_decision(window, demotion, at(hours=1))
    assert after.last_demotion_at == at(hours=1)
    assert after.recent_runs == ()


# --------------------------------------------------------------------------------------------
# progress (ledger explain)


def test_progress_shows_clean_runs_days_and_the_cooldown() -> None:
    history = [fail_run(at(), "r0"), *clean_runs_every_8_hours(7, at(hours=1), prefix="c")]
    state = BehaviorState("x", Tier.B)
    window = PolicyWindow()
    for obs in history:
        window = observe(window, obs)
        decision = decide(state, window, obs.at)
        window = after_decision(window, decision, obs.at)
        state = apply_decision(state, decision)
    assert progress(state, window, at(days=2, hours=2)) == (
        "Promotion: to B · human-in-the-loop: 7 of 10 clean runs over 2 of 3 days; "
        "eligible from 2026-03-09 09:00 UTC after the cooldown\n"
        "Demotion: at A · proposal-only, the lowest tier; "
        "two attributable fails within 24 hours pause it"
    )


def test_progress_counts_the_warns_left_before_a_demotion() -> None:
    window = fold([warn_run(at(), "r1"), warn_run(at(hours=1), "r2")])
    text = progress(BehaviorState("x", Tier.C), window, at(days=2))
    assert text == (
        "Promotion: at C · autonomous, the highest tier\n"
        "Demotion: any attributable fail demotes it to B · human-in-the-loop; "
        "1 more warn in the last 10 runs demotes it to B · human-in-the-loop"
    )


def test_progress_warns_that_a_fail_soon_after_a_fail_pauses() -> None:
    window = after_decision(
        fold([fail_run(at(), "r1")]), Decision("demote", Tier.B, False, "", ()), at()
    )
    text = progress(BehaviorState("x", Tier.B), window, at(hours=2))
    assert "an attributable fail before 2026-03-03 09:00 UTC demotes it to A · proposal-only" in (
        text
    )
    assert "3 more warns in the last 10 runs demote it" in text


def test_progress_at_max_tier_and_pinned() -> None:
    capped = progress(BehaviorState("x", Tier.B, max_tier=Tier.B), PolicyWindow(), at())
    assert capped.startswith(
        "Promotion: at its max_tier, B · human-in-the-loop; never promoted further"
    )
    pinned = progress(BehaviorState("x", pinned=True), fold(clean_runs_every_8_hours(10)), at())
    assert pinned.startswith(
        "Promotion: to B · human-in-the-loop: 10 clean runs over 3 days with no attributable "
        "fail or warn; pinned: only an operator promotes it"
    )


def test_progress_says_when_promotion_is_due_now() -> None:
    text = progress(
        BehaviorState("x", Tier.B, promotion_mode="confirm"), fold(approvals(20, at())), at()
    )
    assert "eligible now; promotion: confirm proposes it to an operator" in text


# --------------------------------------------------------------------------------------------
# Thresholds, inputs, storage


def test_default_thresholds_are_the_design_numbers() -> None:
    assert Thresholds() == Thresholds(
        warn_limit=3,
        warn_window_runs=10,
        second_fail_hours=24,
        promote_b_min_clean_runs=10,
        promote_b_min_days=3,
        promote_c_min_approved=20,
        promote_c_min_approval_rate=0.95,
        promote_c_clean_days=14,
        cooldown_days=7,
    )


def test_overrides_apply_by_field_name() -> None:
    rules = Thresholds().with_overrides({"cooldown_days": 2, "promote_c_min_approval_rate": 1})
    assert (rules.cooldown_days, rules.promote_c_min_approval_rate, rules.warn_limit) == (
        2,
        1.0,
        3,
    )


def test_an_unknown_override_is_named() -> None:
    with pytest.raises(ValueError, match="unknown policy threshold 'cooldown_hours'"):
        Thresholds().with_overrides({"cooldown_hours": 3})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("warn_limit", 0),
        ("warn_window_runs", 101),
        ("second_fail_hours", 0),
        ("promote_b_min_clean_runs", 2.5),
        ("promote_b_min_days", -1),
        ("promote_c_min_approved", True),
        ("promote_c_min_approval_rate", 1.5),
        ("promote_c_min_approval_rate", math.nan),
        ("promote_c_min_approval_rate", "95%"),
        ("promote_c_clean_days", "14"),
        ("cooldown_days", None),
    ],
)
def test_an_out_of_range_override_names_the_field(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"policy threshold {name} must be"):
        Thresholds().with_overrides({name: value})


def test_a_warn_limit_above_the_warn_window_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"warn_limit \(3\) must not exceed warn_window_runs"):
        Thresholds().with_overrides({"warn_window_runs": 2})


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        clean_run(datetime(2026, 1, 1), "r1")  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="now must be a timezone-aware"):
        decide(BehaviorState("x"), PolicyWindow(), datetime(2026, 1, 1))  # noqa: DTZ001


def test_observations_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="exactly one gate result"):
        Observation("result", at())
    with pytest.raises(ValueError, match="approved, rejected or expired"):
        Observation("approval", at(), run_id="r1")
    with pytest.raises(ValueError, match="promotion must be 'auto' or 'confirm'"):
        BehaviorState("x", promotion_mode="sometimes")  # type: ignore[arg-type]


def test_an_empty_json_object_is_a_fresh_window() -> None:
    assert PolicyWindow.from_json({}) == PolicyWindow()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2}, "unsupported format version 2"),
        ({"clean_runs": -1}, "clean_runs must be a whole number"),
        ({"last_fail_at": "2026-01-01T00:00:00"}, "last_fail_at has no timezone"),
        ({"last_fail_at": "yesterday"}, "last_fail_at is not an ISO datetime"),
        ({"clean_evidence": [1, None]}, "clean_evidence must be a list of result ids"),
        ({"recent_runs": [{"verdict": "bad"}]}, "recent_runs\\[\\].verdict is invalid"),
        ({"pending_fail": []}, "pending_fail must be an object"),
    ],
)
def test_a_malformed_window_names_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicyWindow.from_json(data)
