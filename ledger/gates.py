"""Gate names, outcomes and attributable flags: the taxonomy every result is expressed in.

Pure: imports nothing from the I/O layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    PASS = "pass"  # noqa: S105 — an outcome, not a password
    WARN = "warn"
    FAIL = "fail"


class Gate(StrEnum):
    SPEND_CAP = "spend_cap"
    GUARDRAIL_BLOCK = "guardrail_block"
    SENSITIVE_INFO = "sensitive_info"
    PROMPT_INJECTION = "prompt_injection"
    OUTPUT_CHECK = "output_check"
    TIMEOUT = "timeout"
    COST_ANOMALY = "cost_anomaly"
    HUMAN_REJECTED = "human_rejected"
    PROVIDER_ERROR = "provider_error"
    AUTH_ERROR = "auth_error"
    EXTERNAL_EVENT = "external_event"


# Whether a failure at this gate is the behavior's own doing (DESIGN.md, Gates).
ATTRIBUTABLE: dict[Gate, bool] = {
    Gate.SPEND_CAP: True,
    Gate.GUARDRAIL_BLOCK: True,
    Gate.SENSITIVE_INFO: True,
    Gate.PROMPT_INJECTION: True,
    Gate.OUTPUT_CHECK: True,
    Gate.TIMEOUT: True,
    Gate.COST_ANOMALY: True,
    Gate.HUMAN_REJECTED: True,
    Gate.PROVIDER_ERROR: False,
    Gate.AUTH_ERROR: False,
    Gate.EXTERNAL_EVENT: True,
}


class Tier(StrEnum):
    A = "A"
    B = "B"
    C = "C"

    @property
    def meaning(self) -> str:
        return TIER_MEANING[self]

    @property
    def label(self) -> str:
        """The tier as users see it: ``B · human-in-the-loop``."""
        return f"{self.value} · {TIER_MEANING[self]}"

    @property
    def rank(self) -> int:
        return "ABC".index(self.value)

    def as_json(self) -> dict[str, str]:
        """The tier as the API shows it: letter, label and meaning."""
        return {"tier": self.value, "tier_label": self.label, "tier_meaning": self.meaning}


TIER_MEANING: dict[Tier, str] = {
    Tier.A: "proposal-only",
    Tier.B: "human-in-the-loop",
    Tier.C: "autonomous",
}


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict on a run or an outside event (DESIGN.md: the unit the policy reads)."""

    gate: Gate
    outcome: Outcome
    attributable: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    result_id: int | None = None
    observed_at: datetime | None = None
