"""The promotion policy: when a behavior moves between A · proposal-only, B · human-in-the-loop and
C · autonomous, and why.

Pure and deterministic: no I/O, no clock, no randomness. History is folded into a bounded
``PolicyWindow`` (``observe``); a decision reads only that window (``decide``, O(1) in history
length); a decision that was taken resets what it consumed (``after_decision``). ``replay`` chains
the three and is the reference the database layer is checked against.

The rules (DESIGN.md, Policy), with every number a ``Thresholds`` field:

- an attributable fail demotes one tier at once; a second one within ``second_fail_hours`` demotes
  to A and pauses (at A the behavior stays at A; the second fail still pauses it);
- ``warn_limit`` runs with an attributable warn among the last ``warn_window_runs`` runs demote
  one tier (a rejected approval is a ``human_rejected`` warn);
- A → B: ``promote_b_min_clean_runs`` clean runs spread over ``promote_b_min_days`` days, with no
  attributable warn or fail among them (any of them restarts the count);
- B → C: ``promote_c_min_approved`` approved runs at ``promote_c_min_approval_rate`` or better, and
  no attributable fail in ``promote_c_clean_days`` days;
- no promotion within ``cooldown_days`` of a demotion; never above ``max_tier``, never below A,
  never a skipped tier on the way up; a pin or a pause stops promotion, never a safety demotion;
- results that are not attributable (provider errors, auth errors) never change anything here.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
from pydantic import AfterValidator, AwareDatetime, NonNegativeInt, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from ledger.gates import Gate, GateResult, Outcome, Tier

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MAX_EVIDENCE",
    "MAX_RUN_EVIDENCE",
    "MAX_WARN_WINDOW_RUNS",
    "THRESHOLD_NAMES",
    "WINDOW_FORMAT_VERSION",
    "ApprovalOutcome",
    "BehaviorState",
    "Decision",
    "DecisionKind",
    "EvidenceId",
    "Observation",
    "ObservationKind",
    "PendingFail",
    "PolicyWindow",
    "PromotionMode",
    "PromotionProgress",
    "RunVerdict",
    "ThresholdProblem",
    "Thresholds",
    "after_decision",
    "apply_decision",
    "decide",
    "observe",
    "progress",
    "promotion_progress",
    "replay",
    "threshold_problems",
]

EvidenceId = int | str
DecisionKind = Literal["stay", "promote", "demote", "propose"]
ObservationKind = Literal["run", "result", "approval", "definition_changed"]
ApprovalOutcome = Literal["approved", "rejected", "expired"]
PromotionMode = Literal["auto", "confirm"]
Verdict = Literal["clean", "warn", "fail"]
# A datetime as a stored window holds it: timezone-aware, read back in UTC.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda value: value.astimezone(UTC))]

# Bounds that keep a PolicyWindow small whatever the history: ids kept per window list (the most
# recent), ids kept per run, and the largest warn window a behavior may configure.
MAX_EVIDENCE = 20
MAX_RUN_EVIDENCE = 8
MAX_WARN_WINDOW_RUNS = 100

WINDOW_FORMAT_VERSION = 1

_SEVERITY: dict[Verdict, int] = {"clean": 0, "warn": 1, "fail": 2}
_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Thresholds


_INT_RANGES: dict[str, tuple[int, int]] = {
    "warn_limit": (1, MAX_WARN_WINDOW_RUNS),
    "warn_window_runs": (1, MAX_WARN_WINDOW_RUNS),
    "second_fail_hours": (1, 24 * 365),
    "promote_b_min_clean_runs": (1, 100_000),
    "promote_b_min_days": (0, 365),
    "promote_c_min_approved": (1, 100_000),
    "promote_c_clean_days": (0, 365),
    "cooldown_days": (0, 365),
}


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The policy's numbers. Defaults are DESIGN.md's; a behavior's ``policy:`` block and
    ledger.toml override them by these exact names (``with_overrides``).

    Construction validates every field and raises ``ValueError`` naming the field.
    """

    warn_limit: int = 3
    warn_window_runs: int = 10
    second_fail_hours: int = 24
    promote_b_min_clean_runs: int = 10
    promote_b_min_days: int = 3
    promote_c_min_approved: int = 20
    promote_c_min_approval_rate: float = 0.95
    promote_c_clean_days: int = 14
    cooldown_days: int = 7

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _value_problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"policy threshold {f.name} {problem}")
        if self.warn_limit > self.warn_window_runs:
            raise ValueError(
                f"policy threshold warn_limit ({self.warn_limit}) must not exceed "
                f"warn_window_runs ({self.warn_window_runs}), or warns could never demote"
            )

    def with_overrides(self, overrides: Mapping[str, object]) -> Thresholds:
        """These thresholds with ``overrides`` applied; raises ``ValueError`` naming the field
        for an unknown name or an out-of-range value."""
        known = [f.name for f in fields(self)]
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(
                    f"unknown policy threshold {name!r}; known thresholds: {', '.join(known)}"
                )
            changes[name] = _as_rate(name, value)
        return replace(self, **changes)


THRESHOLD_NAMES: Final = tuple(f.name for f in fields(Thresholds))


def _as_rate(name: str, value: object) -> object:
    if (
        name == "promote_c_min_approval_rate"
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return float(value)
    return value


def _value_problem(name: str, value: object) -> str | None:
    """What is wrong with ``value`` for the threshold ``name`` (known), or None."""
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high}, got {_shown(value)}"
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0.0 <= value <= 1.0)  # also rejects NaN
    ):
        return f"must be a number from 0 to 1 (0.95 = 95 %), got {_shown(value)}"
    return None


def _shown(value: object) -> str:
    """A value as an operator wrote it: text in double quotes, numbers and the rest as is."""
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


@dataclass(frozen=True, slots=True)
class ThresholdProblem:
    """One problem of a set of threshold overrides: the name it is about and what is wrong
    (``message`` does not repeat the name)."""

    name: str
    message: str


def threshold_problems(
    overrides: Mapping[str, object], base: Thresholds | None = None
) -> list[ThresholdProblem]:
    """Every problem of ``overrides`` applied over ``base`` (the defaults), each named: an
    unknown name (with the closest known one), a value out of range, then warn_limit above
    warn_window_runs. Empty: ``base.with_overrides(overrides)`` succeeds. Pure."""
    import difflib

    base = base if base is not None else DEFAULT_THRESHOLDS
    problems: list[ThresholdProblem] = []
    good: dict[str, object] = {}
    for raw_name, value in overrides.items():
        name = str(raw_name)
        if name not in THRESHOLD_NAMES:
            close = difflib.get_close_matches(name, THRESHOLD_NAMES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(THRESHOLD_NAMES)}"
            problems.append(ThresholdProblem(name, f"unknown threshold ({hint})"))
            continue
        problem = _value_problem(name, _as_rate(name, value))
        if problem:
            problems.append(ThresholdProblem(name, problem))
        else:
            good[name] = _as_rate(name, value)
    limit = good.get("warn_limit", base.warn_limit)
    window = good.get("warn_window_runs", base.warn_window_runs)
    if isinstance(limit, int) and isinstance(window, int) and limit > window:
        # Said of the one the overrides set (warn_limit when they set both or neither).
        about = "warn_window_runs" if "warn_limit" not in overrides else "warn_limit"
        if "warn_window_runs" not in overrides:
            about = "warn_limit"
        problems.append(
            ThresholdProblem(
                about,
                f"warn_limit ({limit}) must not exceed warn_window_runs ({window}), or warns "
                "could never demote",
            )
        )
    return problems


DEFAULT_THRESHOLDS = Thresholds()


# --------------------------------------------------------------------------------------------
# Inputs: the behavior and what happened to it


@dataclass(frozen=True, slots=True)
class BehaviorState:
    """What the policy needs to know of a registered behavior."""

    name: str
    tier: Tier = Tier.A
    max_tier: Tier = Tier.C
    pinned: bool = False
    paused: bool = False
    promotion_mode: PromotionMode = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.tier, Tier) or not isinstance(self.max_tier, Tier):
            raise ValueError(f"behavior {self.name}: tier and max_tier must be Tier values")
        if self.promotion_mode not in ("auto", "confirm"):
            raise ValueError(
                f"behavior {self.name}: promotion must be 'auto' or 'confirm', "
                f"got {self.promotion_mode!r}"
            )


@dataclass(frozen=True, slots=True)
class Observation:
    """One thing that happened to a behavior, to be folded into its window exactly once.

    Build one with ``Observation.run``, ``.result``, ``.approval`` or ``.definition_changed``.
    ``at`` must be timezone-aware. ``result_ids`` are the ids a decision would cite; for runs and
    results the ids of the ``GateResult`` objects are used when they have one.
    """

    kind: ObservationKind
    at: datetime
    run_id: str | None = None
    results: tuple[GateResult, ...] = ()
    approval_outcome: ApprovalOutcome | None = None
    result_ids: tuple[EvidenceId, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        _require_aware(self.at, "Observation.at")
        if self.kind not in ("run", "result", "approval", "definition_changed"):
            raise ValueError(f"unknown observation kind {self.kind!r}")
        if self.kind == "result" and len(self.results) != 1:
            raise ValueError("a result observation carries exactly one gate result")
        if self.kind == "approval" and self.approval_outcome not in (
            "approved",
            "rejected",
            "expired",
        ):
            raise ValueError(
                "an approval observation needs approved, rejected or expired, got "
                f"{self.approval_outcome!r}"
            )

    @classmethod
    def run(
        cls,
        at: datetime,
        run_id: str,
        results: Iterable[GateResult],
        result_ids: tuple[EvidenceId, ...] = (),
    ) -> Observation:
        """A completed run with all its gate results."""
        return cls("run", at, run_id=run_id, results=tuple(results), result_ids=result_ids)

    @classmethod
    def result(
        cls,
        at: datetime,
        result: GateResult,
        run_id: str | None = None,
        result_ids: tuple[EvidenceId, ...] = (),
    ) -> Observation:
        """A gate result that arrived outside a run (broadcast event, signed webhook)."""
        return cls(
            "result",
            at,
            run_id=run_id if run_id is not None else result.run_id,
            results=(result,),
            result_ids=result_ids,
        )

    @classmethod
    def approval(
        cls,
        at: datetime,
        run_id: str,
        outcome: ApprovalOutcome,
        result_ids: tuple[EvidenceId, ...] = (),
    ) -> Observation:
        """An operator's answer to a tier-B approval request (expired: nobody answered)."""
        return cls("approval", at, run_id=run_id, approval_outcome=outcome, result_ids=result_ids)

    @classmethod
    def definition_changed(cls, at: datetime, note: str = "") -> Observation:
        """The behavior's file or preset changed: same tier, fresh promotion window."""
        return cls("definition_changed", at, note=note)

    def ids_of(self, results: Iterable[GateResult]) -> tuple[EvidenceId, ...]:
        """Ids of ``results``, or this observation's own ``result_ids`` if they carry none."""
        ids = tuple(r.result_id for r in results if r.result_id is not None)
        return _bounded(ids or self.result_ids, MAX_RUN_EVIDENCE)


# --------------------------------------------------------------------------------------------
# The window: bounded rolling counters, stored as one JSON column


@dataclass(frozen=True, slots=True)
class RunVerdict:
    """One judged run in the warn window. ``gates``/``result_ids`` name what warned or failed."""

    run_id: str | None
    at: UtcDatetime
    verdict: Verdict
    gates: tuple[str, ...] = ()
    result_ids: tuple[EvidenceId, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingFail:
    """An attributable fail incident no decision has acted on yet. ``previous_at`` is set when
    another fail happened within ``second_fail_hours`` of it: the incident then pauses."""

    at: UtcDatetime
    gates: tuple[str, ...]
    run_id: str | None
    result_ids: tuple[EvidenceId, ...]
    previous_at: UtcDatetime | None = None

    @property
    def is_repeat(self) -> bool:
        return self.previous_at is not None


@dataclass(frozen=True, slots=True)
class PolicyWindow:
    """Everything the policy remembers of a behavior's history; bounded whatever its length.

    The *promotion window* (``window_started_at`` … ``approval_evidence``) restarts on every tier
    change, proposal and definition change; the *clean window* inside it (``clean_runs`` …
    ``clean_evidence``) also restarts on any attributable warn or fail. ``recent_runs`` holds the
    last ``warn_window_runs`` judged runs; ``last_fail_at``/``pending_fail`` serve the fail rules;
    ``last_demotion_at`` the cooldown. Datetimes are UTC.
    """

    window_started_at: UtcDatetime | None = None
    clean_runs: NonNegativeInt = 0
    first_clean_at: UtcDatetime | None = None
    last_clean_at: UtcDatetime | None = None
    clean_evidence: tuple[EvidenceId, ...] = ()
    approved: NonNegativeInt = 0
    rejected: NonNegativeInt = 0
    approval_evidence: tuple[EvidenceId, ...] = ()
    recent_runs: tuple[RunVerdict, ...] = ()
    last_fail_at: UtcDatetime | None = None
    last_fail_run_id: str | None = None
    pending_fail: PendingFail | None = None
    last_demotion_at: UtcDatetime | None = None

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-able dict (str, int, list, dict, None only)."""
        return {"version": WINDOW_FORMAT_VERSION, **_WINDOW.dump_python(self, mode="json")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicyWindow:
        """The inverse of ``to_json``; raises ``ValueError`` naming each field that is wrong.
        Missing fields take their defaults (an empty dict is a fresh window)."""
        if isinstance(data, Mapping):
            version = data.get("version", WINDOW_FORMAT_VERSION)
            if version != WINDOW_FORMAT_VERSION:
                raise ValueError(f"policy window: unsupported format version {version!r}")
        try:
            # JSON mode: strict types with ISO datetimes, as the window is stored.
            return _WINDOW.validate_json(orjson.dumps(data), strict=True)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"policy window: not JSON data ({exc})") from None
        except ValidationError as exc:
            raise ValueError(_window_problems(exc)) from None


# --------------------------------------------------------------------------------------------
# The decision


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided. ``to`` is the tier after the decision (the proposed tier for
    ``propose``, which changes nothing until an operator accepts). ``pause`` asks the caller to
    pause the behavior. ``evidence`` holds the ids of the results it rests on (at most
    ``MAX_EVIDENCE``, the most recent). ``override`` marks an operator's decision. ``cause`` is
    the reason without its "demoted from … to …" predicate (what an alert's headline, which
    states the change itself, adds after it); empty when the reason has no predicate."""

    kind: DecisionKind
    to: Tier
    pause: bool
    reason: str
    evidence: tuple[EvidenceId, ...]
    override: bool = False
    cause: str = ""


# --------------------------------------------------------------------------------------------
# Fold


def observe(
    window: PolicyWindow, obs: Observation, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> PolicyWindow:
    """``window`` with ``obs`` folded in. Pure; an observation with nothing attributable in it
    returns ``window`` unchanged."""
    at = obs.at.astimezone(UTC)
    if obs.kind == "definition_changed":
        return _restart_promotion(window, at)
    if obs.kind == "approval":
        return _observe_approval(window, obs, at, thresholds)
    if obs.kind == "run":
        return _observe_run(window, obs, at, thresholds)
    return _observe_result(window, obs, at, thresholds)


def _observe_run(
    window: PolicyWindow, obs: Observation, at: datetime, thresholds: Thresholds
) -> PolicyWindow:
    attributable = [r for r in obs.results if r.attributable]
    if not attributable:
        return window  # no evidence: neither clean nor a failure
    fails = [r for r in attributable if r.outcome is Outcome.FAIL]
    warns = [r for r in attributable if r.outcome is Outcome.WARN]
    if not fails and not warns:
        return replace(
            window,
            clean_runs=window.clean_runs + 1,
            first_clean_at=_min_time(window.first_clean_at, at),
            last_clean_at=_max_time(window.last_clean_at, at),
            clean_evidence=_bounded(window.clean_evidence + obs.ids_of(attributable)),
            recent_runs=_record_verdict(
                window.recent_runs, RunVerdict(obs.run_id, at, "clean"), thresholds
            ),
        )
    bad = fails + warns
    verdict = RunVerdict(
        obs.run_id,
        at,
        "fail" if fails else "warn",
        _unique(str(r.gate) for r in bad),
        obs.ids_of(bad),
    )
    window = replace(
        _reset_clean(window),
        recent_runs=_record_verdict(window.recent_runs, verdict, thresholds),
    )
    if fails:
        window = _fail_incident(
            window,
            at,
            _unique(str(r.gate) for r in fails),
            obs.run_id,
            obs.ids_of(fails),
            thresholds,
        )
    return window


def _observe_result(
    window: PolicyWindow, obs: Observation, at: datetime, thresholds: Thresholds
) -> PolicyWindow:
    result = obs.results[0]
    if not result.attributable or result.outcome is Outcome.PASS:
        return window  # a pass on its own is not a run; non-attributable never counts
    ids = obs.ids_of([result])
    gate = str(result.gate)
    verdict: Verdict = "fail" if result.outcome is Outcome.FAIL else "warn"
    window = replace(
        _reset_clean(window),
        recent_runs=_record_verdict(
            window.recent_runs, RunVerdict(obs.run_id, at, verdict, (gate,), ids), thresholds
        ),
    )
    if verdict == "fail":
        window = _fail_incident(window, at, (gate,), obs.run_id, ids, thresholds)
    return window


def _observe_approval(
    window: PolicyWindow, obs: Observation, at: datetime, thresholds: Thresholds
) -> PolicyWindow:
    ids = _bounded(obs.result_ids, MAX_RUN_EVIDENCE)
    if obs.approval_outcome == "approved":
        return replace(
            window,
            approved=window.approved + 1,
            approval_evidence=_bounded(window.approval_evidence + ids),
        )
    if obs.approval_outcome == "rejected":
        verdict = RunVerdict(obs.run_id, at, "warn", (str(Gate.HUMAN_REJECTED),), ids)
        return replace(
            _reset_clean(window),
            rejected=window.rejected + 1,
            recent_runs=_record_verdict(window.recent_runs, verdict, thresholds),
        )
    return window  # expired: nobody answered, which says nothing about the behavior


def _fail_incident(
    window: PolicyWindow,
    at: datetime,
    gates: tuple[str, ...],
    run_id: str | None,
    ids: tuple[EvidenceId, ...],
    thresholds: Thresholds,
) -> PolicyWindow:
    """Record an attributable fail. Several fails of one run are one incident."""
    last = window.last_fail_at
    latest = _max_time(last, at)
    pending = window.pending_fail
    if run_id is not None and run_id == window.last_fail_run_id:
        if pending is not None and pending.run_id == run_id:
            pending = replace(
                pending,
                gates=_unique(pending.gates + gates),
                result_ids=_bounded(pending.result_ids + ids, MAX_RUN_EVIDENCE),
            )
        return replace(window, last_fail_at=latest, pending_fail=pending)
    within = timedelta(hours=thresholds.second_fail_hours)
    previous = last if last is not None and abs(at - last) <= within else None
    incident = PendingFail(at, gates, run_id, ids, previous)
    if pending is not None and pending.is_repeat and not incident.is_repeat:
        incident = pending  # keep the more severe incident no decision has handled yet
    return replace(window, last_fail_at=latest, last_fail_run_id=run_id, pending_fail=incident)


def _record_verdict(
    recent: tuple[RunVerdict, ...], verdict: RunVerdict, thresholds: Thresholds
) -> tuple[RunVerdict, ...]:
    """Add a run's verdict to the warn window, merging a later result into the run it is about."""
    limit = thresholds.warn_window_runs
    if verdict.run_id is not None:
        for index, old in enumerate(recent):
            if old.run_id == verdict.run_id:
                worse = max(old.verdict, verdict.verdict, key=_SEVERITY.__getitem__)
                merged = RunVerdict(
                    old.run_id,
                    old.at,
                    worse,
                    _unique(old.gates + verdict.gates),
                    _bounded(old.result_ids + verdict.result_ids, MAX_RUN_EVIDENCE),
                )
                return (*recent[:index], merged, *recent[index + 1 :])[-limit:]
    return (*recent, verdict)[-limit:]


# --------------------------------------------------------------------------------------------
# Decide


def decide(
    state: BehaviorState,
    window: PolicyWindow,
    now: datetime,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Decision:
    """The decision for ``state`` given its folded ``window`` at ``now``. Pure; reads only the
    bounded window. Safety first: fail rules, the max_tier cap and the warn rule are checked
    before any promotion, and apply to pinned and paused behaviors alike."""
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    if window.pending_fail is not None:
        return _decide_on_fail(state, window.pending_fail, thresholds)
    if state.tier.rank > state.max_tier.rank:
        return _demotion(
            state.tier, state.max_tier, f"its max_tier is {state.max_tier.label}", (), pause=False
        )
    warned = _warned_runs(window, thresholds)
    if state.tier is not Tier.A and len(warned) >= thresholds.warn_limit:
        detail = ", ".join(f"{'/'.join(v.gates)}{_in_run(v.run_id)}" for v in warned)
        return _demotion(
            state.tier,
            _one_down(state),
            f"{_count_of(len(warned), 'run')} with an attributable warn in the last "
            f"{thresholds.warn_window_runs} runs ({detail})",
            _bounded(tuple(i for v in warned for i in v.result_ids)),
            pause=False,
        )
    return _decide_promotion(state, window, now, thresholds)


def _decide_on_fail(state: BehaviorState, fail: PendingFail, thresholds: Thresholds) -> Decision:
    gates = f"gate{'s' if len(fail.gates) > 1 else ''} {', '.join(fail.gates)}"
    if fail.previous_at is not None:
        cause = (
            f"second attributable fail within {thresholds.second_fail_hours} hours, at {gates}"
            f"{_in_run(fail.run_id)}; previous fail {_when(fail.previous_at)}"
        )
        if state.tier is Tier.A:
            return Decision(
                kind="stay",
                to=Tier.A,
                pause=True,
                reason=f"stays at {Tier.A.label} and is paused: {cause}",
                evidence=fail.result_ids,
                cause=cause,
            )
        return _demotion(state.tier, Tier.A, cause, fail.result_ids, pause=True)
    cause = f"attributable fail at {gates}{_in_run(fail.run_id)}"
    if state.tier is Tier.A:
        return Decision(
            kind="stay",
            to=Tier.A,
            pause=False,
            reason=f"stays at {Tier.A.label}, the lowest tier: {cause}",
            evidence=fail.result_ids,
        )
    return _demotion(state.tier, _one_down(state), cause, fail.result_ids, pause=False)


def _demotion(
    from_tier: Tier, to: Tier, cause: str, evidence: tuple[EvidenceId, ...], *, pause: bool
) -> Decision:
    paused = " and paused" if pause else ""
    return Decision(
        kind="demote",
        to=to,
        pause=pause,
        reason=f"demoted from {from_tier.label} to {to.label}{paused}: {cause}",
        evidence=evidence,
        cause=cause,
    )


def _decide_promotion(
    state: BehaviorState, window: PolicyWindow, now: datetime, thresholds: Thresholds
) -> Decision:
    here = state.tier.label

    def stay(why: str) -> Decision:
        return Decision(
            kind="stay", to=state.tier, pause=False, reason=f"stays at {here}: {why}", evidence=()
        )

    if state.tier is Tier.C:
        return stay("the highest tier")
    if state.tier.rank >= state.max_tier.rank:
        return stay(f"its max_tier is {state.max_tier.label}")
    if state.pinned:
        return stay("pinned by an operator")
    if state.paused:
        return stay("paused")
    cooldown_end = _cooldown_end(window, thresholds)
    if cooldown_end is not None and now < cooldown_end:
        return stay(f"no promotion before {_when(cooldown_end)}, the end of the cooldown")
    target = _next_tier(state.tier)
    met, needs, evidence = _requirements(state.tier, window, now, thresholds)
    if not met:
        return stay(f"{needs} toward {target.label}")
    if state.promotion_mode == "confirm":
        return Decision(
            kind="propose",
            to=target,
            pause=False,
            reason=f"proposes promotion from {here} to {target.label}: {needs}; "
            "promotion: confirm waits for an operator",
            evidence=evidence,
            cause=f"{needs}; promotion: confirm waits for an operator",
        )
    return Decision(
        kind="promote",
        to=target,
        pause=False,
        reason=f"promoted from {here} to {target.label}: {needs}",
        evidence=evidence,
        cause=needs,
    )


def _requirements(
    tier: Tier, window: PolicyWindow, now: datetime, thresholds: Thresholds
) -> tuple[bool, str, tuple[EvidenceId, ...]]:
    """Whether the promotion out of ``tier`` is earned, said in words, and its evidence."""
    if tier is Tier.A:
        return _requirements_for_b(window, thresholds)
    return _requirements_for_c(window, now, thresholds)


def _requirements_for_b(
    window: PolicyWindow, thresholds: Thresholds
) -> tuple[bool, str, tuple[EvidenceId, ...]]:
    span = _clean_span(window)
    met = window.clean_runs >= thresholds.promote_b_min_clean_runs and span >= timedelta(
        days=thresholds.promote_b_min_days
    )
    if met:
        text = (
            f"{_count_of(window.clean_runs, 'clean run')} over {_days(span)} days "
            "with no attributable fail or warn"
        )
    else:
        text = (
            f"{window.clean_runs} of {_count_of(thresholds.promote_b_min_clean_runs, 'clean run')}"
        )
        if thresholds.promote_b_min_days:
            text += f" over {_days(span)} of {thresholds.promote_b_min_days} days"
    return met, text, window.clean_evidence


def _requirements_for_c(
    window: PolicyWindow, now: datetime, thresholds: Thresholds
) -> tuple[bool, str, tuple[EvidenceId, ...]]:
    total = window.approved + window.rejected
    required = Fraction(str(thresholds.promote_c_min_approval_rate))
    count_ok = window.approved >= thresholds.promote_c_min_approved
    rate_ok = total > 0 and Fraction(window.approved, total) >= required
    clean_days = timedelta(days=thresholds.promote_c_clean_days)
    last_fail = window.last_fail_at
    fail_ok = last_fail is None or now - last_fail >= clean_days
    if count_ok:
        text = _count_of(window.approved, "approved run")
    else:
        text = (
            f"{window.approved} of {_count_of(thresholds.promote_c_min_approved, 'approved run')}"
        )
    rate = _percent(float(required))
    if total:
        text += f" at a {_percent(window.approved / total)} approval rate"
        text += "" if rate_ok else f" ({rate} needed)"
    else:
        text += f" (approval rate {rate} needed)"
    if last_fail is None or fail_ok:
        text += f", no attributable fail in {thresholds.promote_c_clean_days} days"
    else:
        text += (
            f", last attributable fail {_when(last_fail)} (needs "
            f"{thresholds.promote_c_clean_days} days without one: {_when(last_fail + clean_days)})"
        )
    return count_ok and rate_ok and fail_ok, text, window.approval_evidence


# --------------------------------------------------------------------------------------------
# After a decision


def after_decision(window: PolicyWindow, decision: Decision, now: datetime) -> PolicyWindow:
    """What taking ``decision`` (decided on this same ``window``) does to the counters.

    A demotion starts the cooldown and restarts the promotion and warn windows; a promotion
    restarts them too; a proposal restarts the promotion window, so it is raised once and a
    declined proposal leaves the behavior to earn a fresh one (an accepted one arrives as an
    operator ``promote``). Any decision consumes the fail incident it acted on. Applying it
    after a ``stay`` is always safe.
    """
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    if decision.kind == "demote":
        return replace(
            _restart_promotion(window, now),
            recent_runs=(),
            pending_fail=None,
            last_demotion_at=now,
        )
    if decision.kind == "promote":
        return replace(_restart_promotion(window, now), recent_runs=(), pending_fail=None)
    if decision.kind == "propose":
        return _restart_promotion(window, now)
    if window.pending_fail is not None:
        return replace(window, pending_fail=None)
    return window


def apply_decision(state: BehaviorState, decision: Decision) -> BehaviorState:
    """The behavior after ``decision``: its tier for promote/demote, paused if it pauses.
    A proposal changes nothing until an operator accepts it."""
    tier = decision.to if decision.kind in ("promote", "demote") else state.tier
    return replace(state, tier=tier, paused=state.paused or decision.pause)


def replay(
    observations: Iterable[Observation],
    state: BehaviorState,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    window: PolicyWindow | None = None,
) -> list[Decision]:
    """Fold, decide and apply each observation in order, deciding at each observation's time:
    the reference sequence of decisions for a behavior's history."""
    current = PolicyWindow() if window is None else window
    decisions: list[Decision] = []
    for obs in observations:
        current = observe(current, obs, thresholds)
        decision = decide(state, current, obs.at, thresholds)
        current = after_decision(current, decision, obs.at)
        state = apply_decision(state, decision)
        decisions.append(decision)
    return decisions


# --------------------------------------------------------------------------------------------
# Explain


def progress(
    state: BehaviorState,
    window: PolicyWindow,
    now: datetime,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> str:
    """Two lines for ``ledger explain``: what the next promotion needs, and what would demote."""
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    return (
        f"Promotion: {_promotion_progress(state, window, now, thresholds)}\n"
        f"Demotion: {_demotion_progress(state, window, now, thresholds)}"
    )


@dataclass(frozen=True, slots=True)
class PromotionProgress:
    """Where a behavior stands toward its next promotion, as data (``progress`` says it in
    words from the same rules).

    ``next_tier`` is None when no promotion can come (at C, at its max_tier, above it).
    ``count``/``needed`` are clean runs (toward B) or approved runs (toward C); ``days`` /
    ``days_needed`` the span of the clean runs (toward B) or the days since the last
    attributable fail (toward C, None when there was none). ``eligible`` is whether the next
    decision promotes (or, with ``promotion: confirm``, proposes). ``eligible_from`` is the
    earliest instant a time rule allows it (the cooldown's end; for C the end of the fail-free
    days), None when no time rule is pending. ``blocked_by`` names what stands in the way:
    ``highest_tier``, ``max_tier``, ``pinned``, ``paused``, ``cooldown``, ``clean_runs``,
    ``days``, ``approved_runs``, ``approval_rate``, ``recent_fail``."""

    next_tier: Tier | None
    eligible: bool
    count: int
    needed: int
    days: float | None
    days_needed: int | None
    approval_rate: float | None
    approval_rate_needed: float | None
    eligible_from: datetime | None
    blocked_by: tuple[str, ...]
    mode: PromotionMode
    cooldown_until: datetime | None = None


def promotion_progress(
    state: BehaviorState,
    window: PolicyWindow,
    now: datetime,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> PromotionProgress:
    """The next promotion's progress as data; agrees with ``decide`` (``eligible`` iff it would
    promote or propose, when no safety rule acts first) and with ``progress``'s words."""
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    blocked: list[str] = []
    if state.tier is Tier.C:
        blocked.append("highest_tier")
    elif state.tier.rank >= state.max_tier.rank:
        blocked.append("max_tier")
    target = None if blocked else _next_tier(state.tier)
    if state.pinned:
        blocked.append("pinned")
    if state.paused:
        blocked.append("paused")
    eligible_from = cooldown_until = None
    cooldown_end = _cooldown_end(window, thresholds)
    if cooldown_end is not None and now < cooldown_end:
        blocked.append("cooldown")
        eligible_from = cooldown_until = cooldown_end
    rate: float | None = None
    rate_needed: float | None = None
    if state.tier is Tier.A:
        count, needed = window.clean_runs, thresholds.promote_b_min_clean_runs
        span = _clean_span(window)
        days: float | None = math.floor(span.total_seconds() / 8640) / 10
        days_needed: int | None = thresholds.promote_b_min_days
        if target is not None and count < needed:
            blocked.append("clean_runs")
        if target is not None and span < timedelta(days=thresholds.promote_b_min_days):
            blocked.append("days")
    else:
        count, needed = window.approved, thresholds.promote_c_min_approved
        total = window.approved + window.rejected
        rate = window.approved / total if total else None
        rate_needed = thresholds.promote_c_min_approval_rate
        days_needed = thresholds.promote_c_clean_days
        required = Fraction(str(rate_needed))
        last_fail = window.last_fail_at
        days = None
        if last_fail is not None:
            days = math.floor((now - last_fail).total_seconds() / 8640) / 10
        if target is not None:
            if count < needed:
                blocked.append("approved_runs")
            if not (total > 0 and Fraction(window.approved, total) >= required):
                blocked.append("approval_rate")
            clean_days = timedelta(days=thresholds.promote_c_clean_days)
            if last_fail is not None and now - last_fail < clean_days:
                blocked.append("recent_fail")
                eligible_from = max(eligible_from or now, last_fail + clean_days)
    return PromotionProgress(
        next_tier=target,
        eligible=target is not None and not blocked,
        count=count,
        needed=needed,
        days=days,
        days_needed=days_needed,
        approval_rate=rate,
        approval_rate_needed=rate_needed,
        eligible_from=eligible_from,
        blocked_by=tuple(blocked),
        mode=state.promotion_mode,
        cooldown_until=cooldown_until,
    )


def _promotion_progress(
    state: BehaviorState, window: PolicyWindow, now: datetime, thresholds: Thresholds
) -> str:
    if state.tier.rank > state.max_tier.rank:
        return f"above its max_tier {state.max_tier.label}; the next decision demotes it there"
    if state.tier is Tier.C:
        return f"at {state.tier.label}, the highest tier"
    if state.tier.rank >= state.max_tier.rank:
        return f"at its max_tier, {state.max_tier.label}; never promoted further"
    target = _next_tier(state.tier)
    met, needs, _ = _requirements(state.tier, window, now, thresholds)
    notes = []
    cooldown_end = _cooldown_end(window, thresholds)
    if cooldown_end is not None and now < cooldown_end:
        notes.append(f"eligible from {_when(cooldown_end)} after the cooldown")
    elif met and not state.pinned and not state.paused:
        notes.append(
            "eligible now; promotion: confirm proposes it to an operator"
            if state.promotion_mode == "confirm"
            else "eligible now"
        )
    if state.pinned:
        notes.append("pinned: only an operator promotes it")
    if state.paused:
        notes.append("paused: not promoted until resumed")
    return "; ".join([f"to {target.label}: {needs}", *notes])


def _demotion_progress(
    state: BehaviorState, window: PolicyWindow, now: datetime, thresholds: Thresholds
) -> str:
    hours = thresholds.second_fail_hours
    last = window.last_fail_at
    repeat_until = last + timedelta(hours=hours) if last is not None else None
    fail_is_recent = repeat_until is not None and now < repeat_until
    if state.tier is Tier.A:
        if fail_is_recent and repeat_until is not None:
            return (
                f"at {Tier.A.label}, the lowest tier; an attributable fail before "
                f"{_when(repeat_until)} pauses it"
            )
        return (
            f"at {Tier.A.label}, the lowest tier; two attributable fails within {hours} hours "
            "pause it"
        )
    down = _one_down(state)
    parts = []
    if fail_is_recent and repeat_until is not None:
        parts.append(
            f"an attributable fail before {_when(repeat_until)} demotes it to {Tier.A.label} "
            "and pauses it"
        )
    else:
        parts.append(f"any attributable fail demotes it to {down.label}")
    remaining = thresholds.warn_limit - len(_warned_runs(window, thresholds))
    if remaining <= 0:
        parts.append("the warn limit is reached: the next decision demotes it")
    else:
        plural = "s" if remaining > 1 else ""
        verb = "demote" if remaining > 1 else "demotes"
        parts.append(
            f"{remaining} more warn{plural} in the last {thresholds.warn_window_runs} runs "
            f"{verb} it to {down.label}"
        )
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# Small helpers


def _restart_promotion(window: PolicyWindow, at: datetime) -> PolicyWindow:
    return replace(
        _reset_clean(window),
        window_started_at=at,
        approved=0,
        rejected=0,
        approval_evidence=(),
    )


def _reset_clean(window: PolicyWindow) -> PolicyWindow:
    return replace(window, clean_runs=0, first_clean_at=None, last_clean_at=None, clean_evidence=())


def _warned_runs(window: PolicyWindow, thresholds: Thresholds) -> list[RunVerdict]:
    recent = window.recent_runs[-thresholds.warn_window_runs :]
    return [v for v in recent if v.verdict == "warn"]


def _clean_span(window: PolicyWindow) -> timedelta:
    if window.first_clean_at is None or window.last_clean_at is None:
        return timedelta(0)
    return window.last_clean_at - window.first_clean_at


def _cooldown_end(window: PolicyWindow, thresholds: Thresholds) -> datetime | None:
    if window.last_demotion_at is None:
        return None
    return window.last_demotion_at + timedelta(days=thresholds.cooldown_days)


def _next_tier(tier: Tier) -> Tier:
    return Tier("ABC"[min(tier.rank + 1, 2)])


def _one_down(state: BehaviorState) -> Tier:
    """One tier down, never below A, and never above max_tier."""
    rank = min(max(state.tier.rank - 1, 0), state.max_tier.rank)
    return Tier("ABC"[rank])


def _count_of(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _in_run(run_id: str | None) -> str:
    return f" (run {run_id})" if run_id is not None else ""


def _bounded(ids: tuple[EvidenceId, ...], limit: int = MAX_EVIDENCE) -> tuple[EvidenceId, ...]:
    """The last ``limit`` distinct ids, oldest first."""
    return _unique(ids)[-limit:]


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def _min_time(current: datetime | None, at: datetime) -> datetime:
    return at if current is None else min(current, at)


def _max_time(current: datetime | None, at: datetime) -> datetime:
    return at if current is None else max(current, at)


def _require_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _days(span: timedelta) -> str:
    """Days, rounded down to a tenth so a shown value is never more than the real one."""
    tenths = math.floor(span.total_seconds() / 8640)
    return f"{tenths // 10}" if tenths % 10 == 0 else f"{tenths / 10:.1f}"


def _percent(rate: float) -> str:
    """A rate as a percentage rounded down to a tenth: 0.9499 shows as 94.9%, not 95%."""
    tenths = math.floor(rate * 1000 + 1e-9)
    return f"{tenths // 10}%" if tenths % 10 == 0 else f"{tenths / 10:.1f}%"


# Reading a stored window: pydantic checks it against the dataclasses' own annotations; its
# errors are worded here, one per wrong field.

_WINDOW: Final = TypeAdapter(PolicyWindow)
_ID_LISTS: Final = frozenset({"clean_evidence", "approval_evidence", "result_ids"})
_UNION_TAGS: Final = frozenset({"int", "str"})  # pydantic names the member of ``EvidenceId`` tried


def _window_problems(exc: ValidationError) -> str:
    problems = dict.fromkeys(_window_problem(error) for error in exc.errors(include_url=False))
    return "policy window: " + "; ".join(problems)


def _window_problem(error: ErrorDetails) -> str:
    """One error as ``place what, got value (item n)``; list items are ``name[]``."""
    place, field, items = "", "", []
    for part in error["loc"]:
        if isinstance(part, int):
            place += "[]"
            items.append(str(part))
        elif part not in _UNION_TAGS:
            place += f".{part}" if place else part
            field = part
    kind = error["type"]
    if not place:
        return f"the window must be an object, got {type(error['input']).__name__}"
    if field in _ID_LISTS:
        place = place[: place.rindex(field) + len(field)]
        what = "must be a list of result ids (whole numbers or strings)"
    elif kind == "missing":
        return f"{place} is missing" + (f" (item {', '.join(items)})" if items else "")
    elif kind == "timezone_aware":
        what = "has no timezone"
    elif kind == "datetime_type":
        what = "must be an ISO datetime string"
    elif kind.startswith("datetime"):
        what = "is not an ISO datetime"
    elif kind == "literal_error":
        what = f"is invalid (expected {error.get('ctx', {}).get('expected', '')})"
    elif kind == "dataclass_type":
        what = "must be an object"
    elif kind in ("int_type", "greater_than_equal"):
        what = "must be a whole number >= 0"
    elif kind == "tuple_type":
        what = "must be a list"
    elif kind == "string_type":
        what = "must be a string or null"
    else:
        what = f"is invalid ({error['msg']})"
    where = f" (item {', '.join(items)})" if items else ""
    return f"{place} {what}, got {reprlib.repr(error['input'])}{where}"
