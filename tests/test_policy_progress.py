"""``policy.promotion_progress``: the next promotion's progress as data agrees with what the
policy decides and with what ``ledger explain`` says in words, at every step of random
careers and on named scenarios."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings

from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.policy import (
    BehaviorState,
    Observation,
    PolicyWindow,
    Thresholds,
    after_decision,
    apply_decision,
    decide,
    observe,
    progress,
    promotion_progress,
)
from tests.strategies import behavior_states, observation_histories, thresholds

PROPERTIES = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _check(state: BehaviorState, window: PolicyWindow, now: datetime, rules: Thresholds) -> None:
    p = promotion_progress(state, window, now, rules)
    decision = decide(state, window, now, rules)
    words = progress(state, window, now, rules).splitlines()[0]
    safety_first = decision.kind == "demote" or decision.pause
    if not safety_first:
        # Eligible exactly when the policy promotes (or proposes), to the tier it names.
        assert p.eligible == (decision.kind in ("promote", "propose")), (p, decision)
        if p.eligible:
            assert decision.to == p.next_tier
    if p.next_tier is None:
        assert "highest_tier" in p.blocked_by or "max_tier" in p.blocked_by
        assert "to " not in words.split(":", 1)[1][:4]
        return
    assert f"to {p.next_tier.label}: " in words
    if p.eligible:
        assert "eligible now" in words
    else:
        assert "eligible now" not in words
    if "cooldown" in p.blocked_by:
        assert p.cooldown_until is not None and p.eligible_from is not None
        assert p.eligible_from >= p.cooldown_until > now
        assert f"eligible from {_when(p.cooldown_until)} after the cooldown" in words
    for flag in ("pinned", "paused"):
        assert (flag in p.blocked_by) == (f"{flag}:" in words)
    if p.next_tier is Tier.B:
        unmet = {"clean_runs", "days"} & set(p.blocked_by)
        assert ("clean_runs" in unmet) == (p.count < p.needed)
        if unmet:
            assert f"{p.count} of {p.needed} clean run" in words
        else:
            assert f"{p.count} clean run" in words
    elif p.count < p.needed:
        assert f"{p.count} of {p.needed} approved run" in words
        assert "approved_runs" in p.blocked_by
    else:
        assert f"{p.count} approved run" in words
    if p.next_tier is Tier.C and "recent_fail" in p.blocked_by:
        assert p.eligible_from is not None
        assert f"needs {rules.promote_c_clean_days} days without one: " in words
        assert p.eligible_from >= now


@PROPERTIES
@given(observation_histories(max_size=30), behavior_states(), thresholds())
def test_structured_progress_agrees_with_decide_and_the_words_at_every_step(
    history: list[Observation], state: BehaviorState, rules: Thresholds
) -> None:
    window = PolicyWindow()
    for obs in history:
        window = observe(window, obs, rules)
        _check(state, window, obs.at, rules)
        _check(state, window, obs.at + timedelta(days=3), rules)  # time alone passes
        decision = decide(state, window, obs.at, rules)
        window = after_decision(window, decision, obs.at)
        state = apply_decision(state, decision)


def _clean_run(at: datetime, n: int) -> Observation:
    return Observation.run(at, f"run-{n}", [GateResult(Gate.OUTPUT_CHECK, Outcome.PASS, True)])


def test_seven_clean_runs_over_two_days_are_seven_of_ten_toward_b() -> None:
    window = PolicyWindow()
    for n in range(7):
        window = observe(window, _clean_run(T0 + timedelta(hours=8 * n), n))
    now = T0 + timedelta(days=2, hours=1)
    p = promotion_progress(BehaviorState("seo"), window, now)
    assert (p.next_tier, p.count, p.needed, p.days, p.days_needed) == (Tier.B, 7, 10, 2.0, 3)
    assert p.blocked_by == ("clean_runs", "days") and not p.eligible
    assert "7 of 10 clean runs over 2 of 3 days" in progress(BehaviorState("seo"), window, now)


def test_a_demotion_blocks_promotion_until_the_cooldown_ends() -> None:
    state = BehaviorState("seo", tier=Tier.B)
    fail = GateResult(Gate.GUARDRAIL_BLOCK, Outcome.FAIL, True)
    window = observe(PolicyWindow(), Observation.run(T0, "bad", [fail]))
    decision = decide(state, window, T0)
    assert decision.kind == "demote"
    window = after_decision(window, decision, T0)
    state = apply_decision(state, decision)
    for n in range(12):
        window = observe(window, _clean_run(T0 + timedelta(hours=7 * (n + 1)), n))
    now = T0 + timedelta(days=4)
    p = promotion_progress(state, window, now)
    assert p.blocked_by == ("cooldown",)
    assert p.eligible_from == T0 + timedelta(days=7)
    assert decide(state, window, now).kind == "stay"
    later = promotion_progress(state, window, T0 + timedelta(days=7))
    assert later.eligible and decide(state, window, T0 + timedelta(days=7)).kind == "promote"


def test_toward_c_a_recent_fail_sets_when_it_becomes_eligible() -> None:
    state = BehaviorState("seo", tier=Tier.B, promotion_mode="confirm")
    window = PolicyWindow(approved=25, rejected=1, last_fail_at=T0)
    p = promotion_progress(state, window, T0 + timedelta(days=3))
    assert (p.next_tier, p.count, p.needed, p.blocked_by) == (Tier.C, 25, 20, ("recent_fail",))
    assert p.eligible_from == T0 + timedelta(days=14)
    assert p.approval_rate is not None and round(p.approval_rate, 4) == round(25 / 26, 4)
    assert decide(state, window, T0 + timedelta(days=14)).kind == "propose"
    assert promotion_progress(state, window, T0 + timedelta(days=14)).eligible


def test_at_max_tier_or_c_there_is_no_next_tier() -> None:
    capped = promotion_progress(
        BehaviorState("seo", tier=Tier.B, max_tier=Tier.B), PolicyWindow(), T0
    )
    top = promotion_progress(BehaviorState("seo", tier=Tier.C), PolicyWindow(), T0)
    assert (capped.next_tier, capped.blocked_by) == (None, ("max_tier",))
    assert (top.next_tier, top.blocked_by) == (None, ("highest_tier",))
