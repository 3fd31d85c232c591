"""Hypothesis strategies for the policy: gate results, observations (as time-ordered histories),
behavior states, thresholds and reachable policy windows.

Histories are built the way a behavior lives them: times never go backwards, run ids are unique,
approvals and late results refer to earlier runs, and stretches of good work alternate with
incidents, so random histories really promote, demote and pause (a test checks that they do).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from ledger.gates import ATTRIBUTABLE, Gate, GateResult, Outcome, Tier
from ledger.policy import (
    ApprovalOutcome,
    BehaviorState,
    Observation,
    PolicyWindow,
    Thresholds,
    after_decision,
    apply_decision,
    decide,
    observe,
)

ATTRIBUTABLE_GATES = [g for g in Gate if ATTRIBUTABLE[g]]
NON_ATTRIBUTABLE_GATES = [g for g in Gate if not ATTRIBUTABLE[g]]

_ANSWERS: list[ApprovalOutcome | None] = ["approved", "approved", "expired", None]
_MOSTLY_FALSE = [False, False, False, False, True]


_passes = st.builds(
    lambda gate, rid: GateResult(gate, Outcome.PASS, True, result_id=rid),
    st.sampled_from(ATTRIBUTABLE_GATES),
    st.one_of(st.none(), st.integers(1, 10**9)),
)
_incidents = st.builds(
    lambda gate, outcome, rid: GateResult(gate, outcome, True, result_id=rid),
    st.sampled_from(ATTRIBUTABLE_GATES),
    st.sampled_from([Outcome.WARN, Outcome.FAIL]),
    st.one_of(st.none(), st.integers(1, 10**9)),
)


def instants() -> st.SearchStrategy[datetime]:
    """Timezone-aware UTC instants, whole seconds, in a few years around now."""
    return st.integers(0, 5 * 365 * 86400).map(
        lambda s: datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=s)
    )


def gaps() -> st.SearchStrategy[timedelta]:
    """Time between two observations: often minutes or hours, sometimes days."""
    return st.one_of(
        st.integers(0, 12 * 60).map(lambda m: timedelta(minutes=m)),
        st.integers(0, 4 * 24).map(lambda h: timedelta(hours=h)),
    )


def gate_results(
    *,
    attributable: bool | None = None,
    result_ids: st.SearchStrategy[int] | None = None,
    conduct: int = 1,
) -> st.SearchStrategy[GateResult]:
    """Gate results; ``attributable`` forces the flag (None: the gate's default from gates.py);
    ``conduct`` warns and ``conduct`` fails for every 30 passes."""
    gates = (
        st.sampled_from(list(Gate))
        if attributable is None
        else st.sampled_from(ATTRIBUTABLE_GATES if attributable else list(Gate))
    )
    ids = result_ids if result_ids is not None else st.integers(1, 10**9)
    return st.builds(
        lambda gate, outcome, rid: GateResult(
            gate=gate,
            outcome=outcome,
            attributable=ATTRIBUTABLE[gate] if attributable is None else attributable,
            result_id=rid,
        ),
        gates,
        st.sampled_from([Outcome.PASS] * 30 + [Outcome.WARN, Outcome.FAIL] * conduct),
        st.one_of(st.none(), ids),
    )


# A history is a string of episodes, as a behavior lives it: stretches of good work (clean runs,
# approved), incidents (a warn, a fail, a rejection), provider noise, edits, and plain chance.
_EPISODES = ["good", "good", "good", "good", "chance", "chance", "incident", "noise", "edit"]


@st.composite
def observation_histories(
    draw: st.DrawFn, *, min_size: int = 0, max_size: int = 40, attributable: bool | None = None
) -> list[Observation]:
    """A time-ordered history of at most ``max_size`` observations. With ``attributable=False``
    it holds only runs and standalone results that are not attributable: nothing the behavior
    can be blamed or credited for."""
    episodes = ["noise"] if attributable is False else _EPISODES
    gap = gaps()
    noise = gate_results(attributable=False)
    chances = {conduct: gate_results(conduct=conduct) for conduct in (1, 10, 30)}
    size = draw(st.integers(min_size, max_size))
    at = draw(instants())
    history: list[Observation] = []
    runs: list[str] = []

    def add_run(results: list[GateResult]) -> str:
        run_id = f"r-{len(history)}"
        runs.append(run_id)
        history.append(Observation.run(at, run_id, results))
        return run_id

    while len(history) < size:
        episode = draw(st.sampled_from(episodes))
        at += draw(gap)
        if episode == "good":
            for _ in range(draw(st.integers(1, 6))):
                at += draw(gap)
                count = draw(st.integers(1, 2))
                run_id = add_run([draw(_passes) for _ in range(count)])
                answer = draw(st.sampled_from(_ANSWERS))
                if answer is not None:
                    at += draw(gap)
                    history.append(
                        Observation.approval(at, run_id, answer, (f"approval-{len(history)}",))
                    )
        elif episode == "incident":  # one to three, minutes or hours apart
            for _ in range(draw(st.integers(1, 3))):
                at += timedelta(minutes=draw(st.integers(0, 20 * 60)))
                bad = draw(_incidents)
                how = draw(st.sampled_from(["run", "run", "result", "rejection"]))
                if how == "run" or not runs:
                    add_run([bad, *[draw(_passes) for _ in range(draw(st.integers(0, 1)))]])
                elif how == "result":
                    about = draw(st.one_of(st.none(), st.sampled_from(runs[-12:])))
                    history.append(Observation.result(at, bad, run_id=about))
                else:
                    about = draw(st.sampled_from(runs[-12:]))
                    history.append(
                        Observation.approval(at, about, "rejected", (f"approval-{len(history)}",))
                    )
        elif episode == "noise":
            if draw(st.booleans()):
                add_run([draw(noise) for _ in range(draw(st.integers(0, 2)))])
            else:
                about = draw(st.one_of(st.none(), st.sampled_from(runs))) if runs else None
                history.append(Observation.result(at, draw(noise), run_id=about))
        elif episode == "chance":
            chance = chances[draw(st.sampled_from([1, 10, 30]))]
            add_run([draw(chance) for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3])))])
        else:
            history.append(Observation.definition_changed(at, "preset changed"))
    return history[:size]


def thresholds() -> st.SearchStrategy[Thresholds]:
    """Mostly small thresholds, so short histories cross every rule; sometimes the defaults."""

    @st.composite
    def build(draw: st.DrawFn) -> Thresholds:
        if draw(st.sampled_from(_MOSTLY_FALSE)):
            return Thresholds()
        window_runs = draw(st.integers(1, 12))
        return Thresholds(
            warn_limit=draw(st.integers(1, window_runs)),
            warn_window_runs=window_runs,
            second_fail_hours=draw(st.integers(1, 48)),
            promote_b_min_clean_runs=draw(st.integers(1, 6)),
            promote_b_min_days=draw(st.integers(0, 2)),
            promote_c_min_approved=draw(st.integers(1, 8)),
            promote_c_min_approval_rate=draw(st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0])),
            promote_c_clean_days=draw(st.integers(0, 10)),
            cooldown_days=draw(st.integers(0, 5)),
        )

    return build()


def behavior_states(*, within_max_tier: bool = True) -> st.SearchStrategy[BehaviorState]:
    """Behavior states; ``within_max_tier=False`` also yields tiers above their max_tier."""

    @st.composite
    def build(draw: st.DrawFn) -> BehaviorState:
        max_tier = draw(st.sampled_from([Tier.A, Tier.B, Tier.C, Tier.C, Tier.C]))
        tiers = [t for t in Tier if t.rank <= max_tier.rank] if within_max_tier else list(Tier)
        return BehaviorState(
            name=draw(st.sampled_from(["seo-audit", "content-pipeline", "publisher"])),
            tier=draw(st.sampled_from([*tiers, tiers[-1]])),  # the top tier twice as often
            max_tier=max_tier,
            pinned=draw(st.sampled_from(_MOSTLY_FALSE)),
            paused=draw(st.sampled_from(_MOSTLY_FALSE)),
            promotion_mode=draw(st.sampled_from(["auto", "confirm"])),
        )

    return build()


@st.composite
def policy_windows(
    draw: st.DrawFn, *, max_size: int = 40, rules: Thresholds | None = None
) -> PolicyWindow:
    """Windows a behavior can actually reach: a history folded in, with decisions taken after
    most observations (not all, so unhandled fail incidents appear too)."""
    used = rules if rules is not None else draw(thresholds())
    state = draw(behavior_states())
    window = PolicyWindow()
    for obs in draw(observation_histories(max_size=max_size)):
        window = observe(window, obs, used)
        if draw(st.integers(0, 4)):
            decision = decide(state, window, obs.at, used)
            window = after_decision(window, decision, obs.at)
            state = apply_decision(state, decision)
    return window


# -- schedules ----------------------------------------------------------------------------------

SCHEDULE_ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
_DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def _cron_field(lo: int, hi: int, names: list[str] | None = None) -> st.SearchStrategy[str]:
    """One crontab field: ``*``, a value, a range, a step or a short list of them."""

    def value(n: int) -> str:
        return names[n - lo] if names and n - lo < len(names) and n % 3 == 0 else str(n)

    single = st.integers(lo, hi).map(value)
    ranged = st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(
        lambda ab: f"{value(min(ab))}-{value(max(ab))}"
    )
    stepped = st.tuples(st.sampled_from(["*", f"{lo}-{hi}"]), st.integers(1, hi - lo + 1)).map(
        lambda sn: f"{sn[0]}/{sn[1]}"
    )
    element = st.one_of(single, ranged, stepped)
    listed = st.lists(st.one_of(single, ranged), min_size=2, max_size=3).map(",".join)
    return st.one_of(st.just("*"), element, listed)


def cron_expressions() -> st.SearchStrategy[str]:
    """Crontab(5) expressions that fire at most a few times an hour (so a year of their slots
    stays cheap), with hours weighted toward 0-3 h where daylight-saving changes happen."""
    minute = st.one_of(
        st.integers(0, 59).map(str),
        st.sampled_from(["0,30", "*/20", "15-45/15", "5,50"]),
    )
    hour = st.one_of(
        st.integers(0, 3).map(str), st.sampled_from(["1-3", "*/2"]), _cron_field(0, 23)
    )
    return st.tuples(
        minute,
        hour,
        _cron_field(1, 31),
        _cron_field(1, 12, _MONTH_NAMES),
        _cron_field(0, 7, [*_DAY_NAMES, "SUN"]),
    ).map(" ".join)


def schedule_zones() -> st.SearchStrategy[str]:
    """Time zones with and without daylight-saving time (a half-hour one, a half-hour offset)."""
    return st.sampled_from(SCHEDULE_ZONES)
