"""``ledger explain NAME``: a behavior's tier, how it got there, and what comes next."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from ledger.clock import json_time
from ledger.db.models import BehaviorRow, GateResultRow, LedgerEntry, PromotionProposal
from ledger.errors import NotFoundError
from ledger.gates import Tier
from ledger.policy import progress
from ledger.transitions import PolicyContext, state_of, thresholds_for, window_of

STORY_KINDS = (
    "registered",
    "definition_changed",
    "promoted",
    "demoted",
    "paused",
    "resumed",
    "pinned",
    "unpinned",
    "promotion_proposed",
    "proposal_declined",
    "retired",
    "restored",
)
MAX_STORY = 50
MAX_CITED_RUNS = 5  # per step in the text; the JSON lists every cited result


@dataclass(frozen=True, slots=True)
class Cited:
    """A gate result a decision rests on, as an operator finds it: when, which run, which gate."""

    at: datetime
    run_id: str | None
    gate: str
    outcome: str

    def as_json(self) -> dict[str, object]:
        return {
            "at": json_time(self.at),
            "run_id": self.run_id,
            "gate": self.gate,
            "outcome": self.outcome,
        }


@dataclass(frozen=True, slots=True)
class StoryStep:
    at: datetime
    kind: str
    actor: str
    reason: str
    entry_id: int
    evidence: tuple[Cited, ...]

    def cites(self, name: str) -> str:
        """`` (evidence: run run-01… at 06:00 UTC: output_check warn; …)``, or nothing."""
        if not self.evidence:
            return ""
        by_run: dict[str | None, list[Cited]] = {}
        for cited in self.evidence:
            by_run.setdefault(cited.run_id, []).append(cited)
        parts = []
        for run_id, results in list(by_run.items())[:MAX_CITED_RUNS]:
            gates = ", ".join(f"{c.gate} {c.outcome}" for c in results)
            where = f"run {run_id}" if run_id else "a broadcast/webhook result"
            parts.append(f"{where} at {results[0].at:%Y-%m-%d %H:%M} UTC: {gates}")
        more = len(by_run) - MAX_CITED_RUNS
        if more > 0:
            parts.append(f"{more} more run(s): `ledger explain {name} --json`")
        return f" (evidence: {'; '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Explanation:
    name: str
    tier: Tier
    flags: tuple[str, ...]
    story: tuple[StoryStep, ...]
    next_steps: str
    pending_proposal: str | None

    def render(self) -> str:
        flags = f" ({', '.join(self.flags)})" if self.flags else ""
        lines = [f"{self.name} is at {self.tier.label}{flags}.", "", "How it got here:"]
        for step in self.story:
            who = "" if step.actor in ("policy", "registry") else f" [{step.actor}]"
            cites = step.cites(self.name)
            lines.append(f"  {step.at:%Y-%m-%d %H:%M} UTC — {step.reason}{who}{cites}")
        if not self.story:
            lines.append("  (no history yet)")
        lines += ["", "What comes next:"]
        lines += [f"  {line}" for line in self.next_steps.splitlines()]
        if self.pending_proposal:
            lines.append(
                f"  Pending proposal: {self.pending_proposal} — accept with "
                f"`ledger promote {self.name} --reason …` or decline with "
                f"`ledger decline {self.name} --reason …`."
            )
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tier": self.tier.value,
            "tier_label": self.tier.label,
            "flags": list(self.flags),
            "story": [
                {
                    "at": json_time(s.at),
                    "kind": s.kind,
                    "actor": s.actor,
                    "reason": s.reason,
                    "entry_id": s.entry_id,
                    "evidence": [c.as_json() for c in s.evidence],
                }
                for s in self.story
            ],
            "next": self.next_steps.splitlines(),
            "pending_proposal": self.pending_proposal,
        }


def explain(session: Session, name: str, now: datetime, ctx: PolicyContext) -> Explanation:
    row = session.exec(select(BehaviorRow).where(col(BehaviorRow.name) == name)).first()
    if row is None:
        raise NotFoundError(f"behavior {name!r} is not registered (see `ledger status`)")
    entries = list(
        session.exec(
            select(LedgerEntry)
            .where(col(LedgerEntry.behavior_id) == row.id, col(LedgerEntry.kind).in_(STORY_KINDS))
            .order_by(col(LedgerEntry.id).desc())
            .limit(MAX_STORY)
        )
    )
    ids_of = {
        e.id: [i for i in (e.data or {}).get("evidence") or () if isinstance(i, int)]
        for e in entries
    }
    cited = _cited(session, {i for ids in ids_of.values() for i in ids})
    story = tuple(
        StoryStep(
            at=e.created_at,
            kind=e.kind,
            actor=e.actor,
            reason=e.reason,
            entry_id=e.id or 0,
            evidence=tuple(cited[i] for i in ids_of[e.id] if i in cited),
        )
        for e in reversed(entries)
    )
    flags = tuple(
        f
        for f, on in (("retired", row.retired), ("paused", row.paused), ("pinned", row.pinned))
        if on
    )
    proposal = session.exec(
        select(PromotionProposal).where(
            col(PromotionProposal.behavior_id) == row.id,
            col(PromotionProposal.status) == "pending",
        )
    ).first()
    pending = (
        f"promotion to {Tier(proposal.to_tier).label} proposed "
        f"{proposal.created_at:%Y-%m-%d %H:%M} UTC"
        if proposal
        else None
    )
    next_steps = progress(state_of(row), window_of(row), now, thresholds_for(row, ctx))
    if row.retired:
        next_steps = "Retired: restore its file to bring it back at its old tier."
    return Explanation(row.name, Tier(row.tier), flags, story, next_steps, pending)


def _cited(session: Session, ids: set[int]) -> dict[int, Cited]:
    """The gate results with ``ids`` (those pruned or never stored are left out)."""
    if not ids:
        return {}
    rows = session.exec(select(GateResultRow).where(col(GateResultRow.id).in_(sorted(ids))))
    return {r.id or 0: Cited(r.created_at, r.run_id, r.gate, r.outcome) for r in rows}
