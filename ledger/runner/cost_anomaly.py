"""The ``cost_anomaly`` gate: a run that cost more than ``factor`` times the median cost of its
behavior's recent runs is an attributable warn.

Pure: no I/O, no clock. The recent costs are a bounded list kept on the behavior's row
(``behavior.recent_costs``, oldest first, at most ``window_runs`` long): ``judge_cost`` reads
it, ``remember_cost`` adds a run's cost to it, so judging is O(window), whatever the history.
Only runs that had a cost enter the list; a run without one is not judged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Any

from ledger.gates import ATTRIBUTABLE, Gate, GateResult, Outcome

__all__ = ["CostAnomalySpec", "judge_cost", "remember_cost"]


@dataclass(frozen=True, slots=True)
class CostAnomalySpec:
    """A behavior's ``checks.cost_anomaly`` (validated by the behavior-file schema)."""

    enabled: bool = True
    factor: float = 5.0
    window_runs: int = 20
    min_runs: int = 5
    min_usd: float = 0.0


def judge_cost(
    cost_usd: float, recent: Sequence[float], spec: CostAnomalySpec, *, passes: bool = True
) -> GateResult | None:
    """The ``cost_anomaly`` result of a run that cost ``cost_usd``, against ``recent`` (the
    costs of the behavior's previous runs that had one, oldest first; the last
    ``spec.window_runs`` count). A WARN when the cost is over ``spec.factor`` times their median
    (and at least ``spec.min_usd``); a PASS when it is not and ``passes`` (the caller records
    a pass only where it does not change what the run counts as); None when nothing is judged:
    the check is off, the run had no cost, or fewer than ``spec.min_runs`` runs had one."""
    if not spec.enabled or not cost_usd > 0 or not math.isfinite(cost_usd):
        return None
    window = [c for c in recent[-spec.window_runs :] if c > 0]
    if len(window) < spec.min_runs:
        return None
    middle = median(window)
    limit = spec.factor * middle
    ratio = cost_usd / middle
    anomaly = cost_usd > limit and cost_usd >= spec.min_usd
    if not anomaly and not passes:
        return None
    verdict = f"more than {spec.factor:g} times is an anomaly"
    if not anomaly and cost_usd > limit:
        verdict = f"under min_usd ${spec.min_usd:g}: not an anomaly"
    elif not anomaly:
        verdict = f"within {spec.factor:g} times"
    evidence: dict[str, Any] = {
        "cost_usd": cost_usd,
        "median_usd": middle,
        "factor": spec.factor,
        "runs": len(window),
        "ratio": round(ratio, 2),
        "reason": f"the run cost ${cost_usd:.6f}, {ratio:.1f} times the median ${middle:.6f} "
        f"of the behavior's last {len(window)} runs with a cost ({verdict})",
    }
    outcome = Outcome.WARN if anomaly else Outcome.PASS
    return GateResult(Gate.COST_ANOMALY, outcome, ATTRIBUTABLE[Gate.COST_ANOMALY], evidence)


def remember_cost(recent: Sequence[float], cost_usd: float, window_runs: int) -> list[float]:
    """``recent`` with a run's cost added (a run without a cost leaves it as it is), cut to
    the last ``window_runs``. The anomalous runs count too: a lasting change of cost becomes
    the new median instead of warning for ever."""
    kept = [c for c in recent if c > 0]
    if cost_usd > 0 and math.isfinite(cost_usd):
        kept.append(cost_usd)
    return kept[-max(window_runs, 1) :]
