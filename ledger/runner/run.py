"""One run of one behavior: claim → budget pre-check → call → output gates → disposition.

The database steps are functions over an open transaction (``claim_slots``, ``begin_run``,
``finish_run``); the model call between them happens outside any transaction. Approvals
(``approve``, ``reject``, ``expire_approvals``) decide tier-B requests. A run whose output
failed an attributable gate never runs its action, at any tier.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, text, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from ledger.behaviors.schema import Behavior
from ledger.db.bulk import DriverInsert, driver_insert
from ledger.db.models import LIVE_RUN, Approval, BehaviorRow, BudgetWindow, Run
from ledger.errors import ConflictError, LedgerError, NotFoundError, SecretError
from ledger.gates import Gate, GateResult, Outcome, Tier
from ledger.outbox.enqueue import enqueue_action
from ledger.policy import Observation
from ledger.runner.catalog import ModelCatalog
from ledger.runner.checks import CheckSpec, run_checks
from ledger.runner.cost_anomaly import CostAnomalySpec, judge_cost, remember_cost
from ledger.secrets import resolve
from ledger.sensitive import mask_sensitive
from ledger.spend import reserve, settle, window_start
from ledger.transitions import (
    PolicyContext,
    apply_observation,
    lock_behavior,
    lock_behaviors,
    note_provider_errors,
    note_spend,
    pause_after_auth_error,
    record_approved,
    record_expired,
    record_rejected,
    record_result_sets,
    record_results,
    takes_approvals,
    withdraw_approvals,
)

DEFAULT_CALL_ESTIMATE_USD = 0.05
# A live run's lease: the process that owns it renews it (``renew_leases``) well before it
# ends; a run whose lease expired was left behind by a crash (``interrupt_expired_runs``).
DEFAULT_LEASE = timedelta(seconds=60)
LIVE_STATUSES = ("claimed", "running")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


_ULID_SHIFTS = tuple(range(125, -5, -5))


def new_run_id(now: datetime) -> str:
    """A sortable, unique run id: ``run-`` + a ULID (48-bit milliseconds + 80 random bits)."""
    value = (int(now.timestamp() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "run-" + "".join([_CROCKFORD[(value >> shift) & 31] for shift in _ULID_SHIFTS])


# -- claiming slots ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotClaim:
    behavior_id: int
    scheduled_for: datetime
    tier: str
    trigger: str = "schedule"


def claim_slots(
    session: Session,
    claims: Sequence[SlotClaim],
    now: datetime,
    lease: timedelta = DEFAULT_LEASE,
) -> list[ClaimedRun]:
    """Claim many ``(behavior, slot)`` pairs in one round; return the runs this caller won.

    The unique constraint on ``(behavior_id, scheduled_for)`` makes each slot exclusive: a
    replica that loses the race gets nothing back for that slot and does nothing. The rows go
    in as one driver-level ``executemany`` (``ON CONFLICT DO NOTHING``); the runs that exist
    afterwards under this caller's ids are the ones it won. Each run's lease lasts ``lease``
    from ``now``: the caller renews it while the run is in flight (``renew_leases``)."""
    if not claims:
        return []
    conn = session.connection()
    insert = _claim_insert(conn.dialect)
    converted: dict[datetime, Any] = {}  # a batch shares its slot: convert each time once

    def when(value: datetime) -> Any:
        if value not in converted:
            converted[value] = insert.converter("scheduled_for")(value)
        return converted[value]

    rows = [(new_run_id(now), c.behavior_id, c.scheduled_for, c.tier, c.trigger) for c in claims]
    claimed_at = when(now)
    lease_until = insert.converter("lease_until")(now + lease)
    insert.execute(
        conn,
        insert.params(
            [
                {
                    "id": run_id,
                    "behavior_id": behavior_id,
                    "scheduled_for": when(slot),
                    "claimed_at": claimed_at,
                    "tier": tier,
                    "trigger": trigger,
                    "status": "claimed",
                    "via_fallback": False,
                    "reserved_usd": 0.0,
                    "lease_until": lease_until,
                }
                for run_id, behavior_id, slot, tier, trigger in rows
            ]
        ),
    )
    table = Run.__table__  # type: ignore[attr-defined]
    ids = [row[0] for row in rows]
    won = set(conn.execute(sa_select(table.c.id).where(table.c.id.in_(ids))).scalars())
    return [ClaimedRun(r[0], r[1], r[2]) for r in rows if r[0] in won]


_CLAIM_COLUMNS = (
    "id",
    "behavior_id",
    "scheduled_for",
    "claimed_at",
    "tier",
    "trigger",
    "status",
    "via_fallback",
    "reserved_usd",
    "lease_until",
)


def _claim_insert(dialect: Any) -> DriverInsert:
    """``INSERT INTO run … ON CONFLICT (behavior_id, scheduled_for) DO NOTHING``."""
    table = Run.__table__  # type: ignore[attr-defined]
    return driver_insert(table, _CLAIM_COLUMNS, ("behavior_id", "scheduled_for"), dialect)


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A slot this caller won."""

    id: str
    behavior_id: int
    scheduled_for: datetime


# -- manual runs -------------------------------------------------------------------------------


def check_manual_run(row: BehaviorRow, *, here: str, instead: str) -> None:
    """Refuse a manual run (ConflictError) that must not start: its behavior is retired,
    disabled or paused, or its key cannot be resolved ``here`` (where the run would start).
    A key missing there is that environment's problem, not the behavior's conduct: nothing is
    claimed, judged or paused. ``instead`` says where the run should be started."""
    if row.retired:
        raise ConflictError(f"{row.name} is retired (its file was removed); nothing was run")
    if not row.enabled:
        raise ConflictError(f"{row.name} is disabled in its file (enabled: false); nothing was run")
    if row.paused:
        raise ConflictError(
            f"{row.name} is paused; nothing was run. Resume it first: "
            f"`ledger resume {row.name} --reason TEXT`"
        )
    reference = str((row.definition or {}).get("api_key", ""))
    try:
        resolve(reference)
    except SecretError as exc:
        raise ConflictError(
            f"{row.name}: its key cannot be resolved {here} ({exc}); nothing was run or "
            f"recorded. {instead}"
        ) from None


# -- starting a run ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What a claimed run is about to do (built in ``begin_run``, read by the caller)."""

    run_id: str
    behavior_id: int
    behavior: Behavior
    tier: Tier
    preset: str
    prompt: str
    reserved_usd: float
    budget_window: datetime | None
    deadline_seconds: float
    # Prepared before its slot: the request is written at this instant (None: at once).
    send_at: datetime | None = None


def render_prompt(template: str, inputs: Mapping[str, Any], builtins: Mapping[str, Any]) -> str:
    """``template`` with ``{variables}`` from inputs and built-ins (``{{``/``}}`` are literal)."""
    values = {**builtins, **inputs}
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        value = values.get(name.split(".")[0].split("[")[0], "{" + name + "}")
        if conversion == "r":
            value = repr(value)
        out.append(format(value, spec or ""))
    return "".join(out)


_BEHAVIOR_CACHE: dict[str, Behavior] = {}
_BEHAVIOR_CACHE_MAX = 50_000


def begin_run(
    session: Session,
    run_id: str,
    *,
    now: datetime,
    ctx: PolicyContext,
    default_estimate_usd: float = DEFAULT_CALL_ESTIMATE_USD,
    catalog: ModelCatalog | None = None,
) -> RunPlan | None:
    """Start one claimed run (see ``begin_runs``). Returns its plan, or None."""
    plans = begin_runs(
        session,
        [run_id],
        now=now,
        ctx=ctx,
        default_estimate_usd=default_estimate_usd,
        catalog=catalog,
    )
    return plans[0] if plans else None


def begin_runs(
    session: Session,
    run_ids: Sequence[str],
    *,
    now: datetime,
    ctx: PolicyContext,
    default_estimate_usd: float = DEFAULT_CALL_ESTIMATE_USD,
    catalog: ModelCatalog | None = None,
) -> list[RunPlan]:
    """Start claimed runs in one transaction: skip those whose behavior is paused, retired or
    disabled; reserve each call's worst-case cost (a budget that does not fit records
    ``spend_cap`` and makes no call). Returns the plans of the runs that should call now.

    Batched (two reads for all runs, behaviors locked in id order) so that a thousand runs due
    at the same instant start in one short transaction."""
    run_table = Run.__table__  # type: ignore[attr-defined]
    runs: dict[str, int] = {}
    slots: dict[str, datetime] = {}
    for rid, behavior_id, scheduled_for in session.execute(
        sa_select(run_table.c.id, run_table.c.behavior_id, run_table.c.scheduled_for).where(
            run_table.c.id.in_(run_ids)
        )
    ):
        runs[rid] = behavior_id
        slots[rid] = _aware(scheduled_for)
    missing = [rid for rid in run_ids if rid not in runs]
    if missing:
        raise NotFoundError(f"run {missing[0]} does not exist")
    table = BehaviorRow.__table__  # type: ignore[attr-defined]
    ids = sorted(set(runs.values()))
    rows = {
        r.id: r
        for r in session.execute(
            sa_select(
                table.c.id,
                table.c.name,
                table.c.tier,
                table.c.paused,
                table.c.retired,
                table.c.enabled,
                table.c.definition_hash,
                table.c.prompt_text,
            )
            .where(table.c.id.in_(ids))
            .order_by(table.c.id)
            .with_for_update()
        )
    }
    unknown = [r.id for r in rows.values() if r.definition_hash not in _BEHAVIOR_CACHE]
    if unknown:
        for _bid, definition_hash, definition in session.execute(
            sa_select(table.c.id, table.c.definition_hash, table.c.definition).where(
                table.c.id.in_(unknown)
            )
        ):
            _cache_behavior(definition_hash, definition)
    plans: list[RunPlan] = []
    updates: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for run_id in run_ids:
        row = rows[runs[run_id]]
        if row.retired or row.paused or not row.enabled:
            why = "retired" if row.retired else ("paused" if row.paused else "disabled")
            skipped.append({"rid": run_id, "why": why})
            continue
        # A run prepared before its slot starts (renders, reserves, is sent) at its slot.
        at = max(now, slots[run_id])
        plan = _plan(session, run_id, row, now, ctx, default_estimate_usd, catalog, at)
        if plan is not None:
            if at > now:
                plan = replace(plan, send_at=at)
            plans.append(plan)
            updates.append(
                {
                    "rid": run_id,
                    "tier": plan.tier.value,
                    "preset": plan.preset,
                    "reserved": plan.reserved_usd,
                    "window": plan.budget_window,
                    "started": at,
                    "kind": plan.behavior.kind,
                }
            )
    if updates:
        session.execute(
            update(run_table)
            .where(run_table.c.id == bindparam("rid"))
            .values(
                tier=bindparam("tier"),
                preset=bindparam("preset"),
                reserved_usd=bindparam("reserved"),
                reserved_window=bindparam("window"),
                started_at=bindparam("started"),
                kind=bindparam("kind"),
                status="running",
            ),
            updates,
        )
    if skipped:
        session.execute(
            update(run_table)
            .where(run_table.c.id == bindparam("rid"))
            .values(status="skipped", finished_at=now, error=bindparam("why")),
            skipped,
        )
    return plans


def _aware(value: datetime) -> datetime:
    """A stored UTC time as an aware datetime (SQLite gives it back naive)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _cache_behavior(definition_hash: str, definition: Any) -> Behavior:
    behavior = Behavior.model_validate(definition)
    if len(_BEHAVIOR_CACHE) >= _BEHAVIOR_CACHE_MAX:
        _BEHAVIOR_CACHE.clear()
    _BEHAVIOR_CACHE[definition_hash] = behavior
    return behavior


def _plan(
    session: Session,
    run_id: str,
    row: Any,
    now: datetime,
    ctx: PolicyContext,
    default_estimate_usd: float,
    catalog: ModelCatalog | None = None,
    at: datetime | None = None,
) -> RunPlan | None:
    """The plan of one run whose behavior is active; None when its budget refuses the call
    (then the ``spend_cap`` result is recorded here). The reservation is the behavior's own
    per-call estimate, else the call's worst case at the catalog's price of its primary model,
    else ``default_estimate_usd``. ``at`` is the run's own time (its slot, when it is prepared
    before it): the prompt's ``{now}``/``{date}`` and the budget window are those of ``at``;
    what is recorded is recorded at ``now``."""
    at = at or now
    behavior = _BEHAVIOR_CACHE[row.definition_hash]
    tier = Tier(row.tier)
    prompt = render_prompt(
        row.prompt_text,
        behavior.inputs,
        {
            "now": at.isoformat(timespec="seconds"),
            "date": at.date().isoformat(),
            "run_id": run_id,
            "behavior": behavior.name,
            "tier": tier.value,
        },
    )
    reserved = 0.0
    # Spend is counted in a window even without a budget (the calendar month): only a budget
    # reserves before the call.
    window = window_start(behavior.budget.reset if behavior.budget else None, at)
    # A multi-model run reserves before each round or call instead (``ledger.runner.multi``).
    if behavior.budget is not None and behavior.kind == "single":
        estimate = behavior.budget.per_call_estimate_usd
        if not estimate and catalog is not None:
            estimate = catalog.worst_case_usd(
                behavior.primary_model, prompt, behavior.max_output_tokens
            )
        if not estimate:
            estimate = default_estimate_usd
        if not reserve(
            session,
            behavior_id=row.id,
            window_start=window,
            amount=estimate,
            budget=behavior.budget.usd,
            now=now,
        ):
            _refuse(session, run_id, row.id, behavior, window, estimate, now, ctx)
            return None
        reserved = estimate
    return RunPlan(
        run_id=run_id,
        behavior_id=row.id,
        behavior=behavior,
        tier=tier,
        preset=behavior.preset_for(tier),
        prompt=prompt,
        reserved_usd=reserved,
        budget_window=window,
        deadline_seconds=behavior.timeout_seconds,
    )


def _refuse(
    session: Session,
    run_id: str,
    behavior_id: int,
    behavior: Behavior,
    window: datetime,
    estimate: float,
    now: datetime,
    ctx: PolicyContext,
) -> None:
    """No call: the worst case does not fit the budget. Records ``spend_cap``."""
    assert behavior.budget is not None  # noqa: S101 — only called with a budget
    run = session.get(Run, run_id)
    row = lock_behavior(session, id=behavior_id)
    if run is None:
        raise NotFoundError(f"run {run_id} does not exist")
    run.status = "refused"
    run.finished_at = now
    run.disposition = "none"
    run.error = "budget exhausted: the call's worst case does not fit the budget"
    session.add(run)
    result = GateResult(
        Gate.SPEND_CAP,
        Outcome.FAIL,
        True,
        {
            "source": "budget_reservation",
            "reason": f"the call was not made: its worst case (${estimate:.4f}) does not fit "
            f"what is left of the {behavior.budget.reset} budget of ${behavior.budget.usd}",
            "budget_usd": behavior.budget.usd,
            "reset": behavior.budget.reset,
            "window_start": window.isoformat(),
            "estimate_usd": estimate,
        },
    )
    _record(session, row, run, [result], now, ctx)


# -- leases and runs left behind ---------------------------------------------------------------

LEASE_BATCH = 500  # run ids per renewing UPDATE


def renew_leases(session: Session, run_ids: Sequence[str], until: datetime) -> int:
    """Extend the lease of this process's live runs to ``until``: one ``UPDATE`` per
    ``LEASE_BATCH`` runs. Returns how many live runs were renewed (a finished or interrupted
    run is left as it is). On PostgreSQL a run locked by a transaction finishing it is skipped
    (``SKIP LOCKED``): waiting for it could deadlock with a batch of finishes."""
    table = Run.__table__  # type: ignore[attr-defined]
    postgres = session.get_bind().dialect.name == "postgresql"
    renewed = 0
    ids = list(run_ids)
    for i in range(0, len(ids), LEASE_BATCH):
        live = table.c.id.in_(ids[i : i + LEASE_BATCH]), table.c.status.in_(LIVE_STATUSES)
        if postgres:
            unlocked = sa_select(table.c.id).where(*live).with_for_update(skip_locked=True)
            live = (table.c.id.in_(unlocked.scalar_subquery()), live[1])
        result = session.execute(update(table).where(*live).values(lease_until=until))
        renewed += result.rowcount  # type: ignore[attr-defined]  # CursorResult
    return renewed


def interrupt_expired_runs(session: Session, now: datetime, limit: int = 200) -> list[str]:
    """Close live runs whose lease expired before ``now`` — left behind by a process that
    crashed, was killed or stopped before they finished — as ``interrupted``, and release
    their budget reservation. Not the behavior's doing: no gate result, no tier change.
    Multi-model runs are resumed instead (``ledger.runner.multi.adopt_expired_runs``).

    Each run is closed by a compare-and-set on its status and lease, so a run whose owner
    renewed its lease meanwhile, or that another replica closed first, is left alone. Returns
    the ids of the runs closed here (at most ``limit``; call again while it returns some)."""
    table = Run.__table__  # type: ignore[attr-defined]
    due = session.execute(
        sa_select(
            table.c.id,
            table.c.behavior_id,
            table.c.reserved_usd,
            table.c.reserved_window,
            table.c.lease_until,
        )
        .where(text(LIVE_RUN), table.c.lease_until < now, table.c.kind == "single")
        .order_by(table.c.lease_until)
        .limit(limit)
    ).all()
    closed: list[str] = []
    for run_id, behavior_id, reserved, window, lease_until in due:
        result = session.execute(
            update(table)
            .where(
                table.c.id == run_id,
                table.c.status.in_(LIVE_STATUSES),
                table.c.lease_until < now,
            )
            .values(
                status="interrupted",
                finished_at=now,
                disposition="none",
                lease_until=None,
                error="interrupted: the process running it stopped before it finished (its "
                f"lease expired at {_aware(lease_until).isoformat(timespec='seconds')}); not "
                "held against the behavior",
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]  # renewed, or closed elsewhere
            continue
        if reserved and window is not None:
            settle(
                session,
                behavior_id=behavior_id,
                window_start=_aware(window),
                reserved=reserved,
                spent=0.0,
                now=now,
            )
        closed.append(run_id)
    return closed


# -- finishing a run ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What the model call produced, whichever transport answered.

    ``failures`` are the classified failures seen on the way (an OpenRouter failure stays on
    record as ``provider_error`` even when the fallback answered). ``output`` is None when no
    answer came back."""

    output: str | None = None
    model: str | None = None
    generation_id: str | None = None
    cost_usd: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    failures: tuple[GateResult, ...] = ()
    via_fallback: bool = False
    pause: bool = False
    primary_model: str | None = None
    error: str | None = None
    # Multi-model runs: the run's summary (stored on it), whether its spend was already
    # settled call by call (``ledger.runner.multi``), and why a tier-C action must become an
    # approval request instead (a roundtable's low confidence).
    summary: Mapping[str, Any] | None = None
    settled: bool = False
    downgrade: str | None = None


@dataclass(frozen=True, slots=True)
class FinishedRun:
    run_id: str
    status: str
    disposition: str
    results: tuple[GateResult, ...] = field(default_factory=tuple)
    decision: str = "stay"


def finish_run(
    session: Session,
    plan: RunPlan,
    outcome: CallOutcome,
    *,
    now: datetime,
    ctx: PolicyContext,
) -> FinishedRun:
    """Record a run's outcome: settle its budget, judge its output, dispose of it by tier and
    let the policy decide — all in the caller's one transaction (``finish_runs`` of one)."""
    return finish_runs(session, [(plan, outcome)], now=now, ctx=ctx)[0]


def finish_runs(
    session: Session,
    finished: Sequence[tuple[RunPlan, CallOutcome]],
    *,
    now: datetime,
    ctx: PolicyContext,
) -> list[FinishedRun]:
    """Record many runs' outcomes in the caller's one transaction, set-based: each run's budget
    settled, output judged, disposed of by tier and decided on by the policy, as if recorded
    one after the other in the given order. Returns one ``FinishedRun`` per item, in order.

    The behaviors are locked once, in id order (as claims lock them). The runs are recorded
    in rounds in which each behavior appears at most once (a behavior's second run in the
    batch goes in the second round, and so on), each round with one statement per table for
    all of its runs; the policy then decides run by run, in order, and only a decision that
    changes something (or an auth error, a persistent provider error, a spend alert) writes
    ledger entries and outbox rows, through ``ledger.transitions``. Raises NotFoundError for
    a run or behavior that does not exist: the caller rolls the batch back (the scheduler then
    records its runs one by one, each in a savepoint)."""
    rows = lock_behaviors(session, [plan.behavior_id for plan, _ in finished])
    seen: dict[int, int] = {}
    rounds: list[list[int]] = []
    for i, (plan, _outcome) in enumerate(finished):
        k = seen.get(plan.behavior_id, 0)
        seen[plan.behavior_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    out: dict[int, FinishedRun] = {}
    for indexes in rounds:
        items = [finished[i] for i in indexes]
        for i, result in zip(indexes, _finish_round(session, rows, items, now, ctx), strict=True):
            out[i] = result
    session.flush()
    return [out[i] for i in range(len(finished))]


@dataclass(slots=True)
class _Recorded:
    """One run of a round as it is being recorded."""

    plan: RunPlan
    outcome: CallOutcome
    results: list[GateResult]
    values: dict[str, Any]
    output: str | None
    downgraded: bool


def _finish_round(
    session: Session,
    rows: Mapping[int, BehaviorRow],
    items: Sequence[tuple[RunPlan, CallOutcome]],
    now: datetime,
    ctx: PolicyContext,
) -> list[FinishedRun]:
    """Record runs of distinct behaviors (see ``finish_runs``)."""
    run_table = Run.__table__  # type: ignore[attr-defined]
    ids = [plan.run_id for plan, _ in items]
    # Read after the lock: the broadcast processor takes the same lock before it counts a
    # run's spend, so ``broadcast_cost_usd`` is what it has counted so far.
    state: dict[str, tuple[str, float | None]] = {}
    started: dict[str, datetime | None] = {}
    for rid, status, counted, started_at in session.execute(
        sa_select(
            run_table.c.id,
            run_table.c.status,
            run_table.c.broadcast_cost_usd,
            run_table.c.started_at,
        ).where(run_table.c.id.in_(ids))
    ):
        state[rid], started[rid] = (status, counted), started_at
    for rid in ids:
        if rid not in state:
            raise NotFoundError(f"run {rid} does not exist")
    _settle_spend(session, rows, items, state, now, ctx)
    recorded = [_judge(plan, outcome, now) for plan, outcome in items]
    for r in recorded:
        _judge_cost(r, rows[r.plan.behavior_id], state[r.plan.run_id][1])
    with_summary = [r.values for r in recorded if "summary" in r.values]
    without = [r.values for r in recorded if "summary" not in r.values]
    for values in with_summary + without:
        # Unchanged, carried so that whoever watches the statement (the /metrics counters)
        # sees each run's duration.
        values["started_at"] = started[values["rid"]]
    for group in (with_summary, without):
        if group:
            # executemany: the SET clause is the parameters' column keys, one set per run.
            session.execute(update(run_table).where(run_table.c.id == bindparam("rid")), group)
    stored_sets = record_result_sets(
        session,
        [(r.plan.behavior_id, r.plan.run_id, r.results) for r in recorded],
        now=now,
        source="runner",
    )
    done: list[FinishedRun] = []
    for r, stored in zip(recorded, stored_sets, strict=True):
        plan, outcome, row = r.plan, r.outcome, rows[r.plan.behavior_id]
        disposition = r.values["disposition"]
        if disposition == "approval":
            payload = action_payload(plan, r.output or "", r.values["output_sha256"])
            if r.downgraded:  # tier-B handling for this run only, and it says so
                payload["downgraded"] = {"from_tier": "C", "reason": outcome.downgrade}
            session.add(
                Approval(
                    run_id=plan.run_id,
                    behavior_id=plan.behavior_id,
                    payload=payload,
                    payload_sha256=payload_digest(payload),
                    requested_at=now,
                    expires_at=now + plan.behavior.approval_ttl_delta,
                )
            )
        elif disposition == "action":
            payload = action_payload(plan, r.output or "", r.values["output_sha256"])
            _enqueue_action(session, plan.behavior_id, payload, now)
        status = r.values["status"]
        row.last_run_at = now
        row.last_run_id = plan.run_id
        row.last_run_status = _run_summary(status, stored)
        applied = apply_observation(
            session, row, Observation.run(now, plan.run_id, stored), now=now, ctx=ctx, flush=False
        )
        note_provider_errors(session, row, run_id=plan.run_id, results=r.results, now=now, ctx=ctx)
        if outcome.pause and not row.paused:
            pause_after_auth_error(
                session, row, run_id=plan.run_id, error=outcome.error or "auth", now=now, ctx=ctx
            )
        if disposition == "approval":  # demoted below B or paused while this run was out
            _withdraw_if_not_waiting(session, row, now)
        done.append(
            FinishedRun(plan.run_id, status, disposition, tuple(r.results), applied.decision.kind)
        )
    return done


def _settle_spend(
    session: Session,
    rows: Mapping[int, BehaviorRow],
    items: Sequence[tuple[RunPlan, CallOutcome]],
    state: Mapping[str, tuple[str, float | None]],
    now: datetime,
    ctx: PolicyContext,
) -> None:
    """Turn the runs' reservations into what they spent, in one statement per step for all of
    them, and alert on spend crossing 80 % of a budget (``note_spend``). The larger of the
    runner's and broadcast's figures counts, once: broadcast may have counted its own already
    (it then counts only what exceeds the runner's; see ingest.process). A run closed as
    interrupted meanwhile (its lease expired) had its reservation released."""
    moves: list[tuple[int, datetime, float, float]] = []
    for plan, outcome in items:
        if plan.budget_window is None or outcome.settled:
            continue
        status, counted = state[plan.run_id]
        counted = counted or 0.0
        spent = max(outcome.cost_usd, counted) - counted
        reserved = plan.reserved_usd if status in LIVE_STATUSES else 0.0
        moves.append((plan.behavior_id, plan.budget_window, reserved, spent))
    if not moves:
        return
    table = BudgetWindow.__table__  # type: ignore[attr-defined]
    conn = session.connection()
    ensure = driver_insert(table, _WINDOW_COLUMNS, ("behavior_id", "window_start"), conn.dialect)
    when = ensure.converter("window_start")
    stamp = when(now)
    keys = list(dict.fromkeys((bid, window) for bid, window, _r, _s in moves))
    ensure.execute(
        conn,
        ensure.params(
            [
                {
                    "behavior_id": bid,
                    "window_start": when(window),
                    "reserved_usd": 0.0,
                    "spent_usd": 0.0,
                    "updated_at": stamp,
                }
                for bid, window in keys
            ]
        ),
    )
    before: dict[tuple[int, datetime], float] = {}
    for bid, window, spent_usd in session.execute(
        sa_select(table.c.behavior_id, table.c.window_start, table.c.spent_usd).where(
            table.c.behavior_id.in_({bid for bid, _w in keys}),
            table.c.window_start.in_({window for _b, window in keys}),
        )
    ):
        before[(bid, _aware(window))] = spent_usd
    session.execute(
        update(table)
        .where(
            table.c.behavior_id == bindparam("b_id"),
            table.c.window_start == bindparam("b_window"),
        )
        .values(
            reserved_usd=table.c.reserved_usd - bindparam("b_reserved"),
            spent_usd=table.c.spent_usd + bindparam("b_spent"),
            updated_at=now,
        ),
        [
            {"b_id": bid, "b_window": window, "b_reserved": reserved, "b_spent": spent}
            for bid, window, reserved, spent in moves
        ],
    )
    for bid, window, _reserved, spent in moves:
        was = before.get((bid, window), 0.0)
        note_spend(session, rows[bid], before=was, after=was + spent, now=now, ctx=ctx)


_WINDOW_COLUMNS = ("behavior_id", "window_start", "reserved_usd", "spent_usd", "updated_at")


def _judge_cost(r: _Recorded, row: BehaviorRow, counted: float | None) -> None:
    """Add the run's ``cost_anomaly`` result (if it is judged) and its cost to the behavior's
    recent costs, which are on its locked row: no read of run history, no extra statement
    (the row is written anyway). The cost is the larger of the runner's figure and what
    broadcast counted so far. A pass is recorded only beside the output checks' (a run with
    an output), so it never turns a failed call into a clean run. A run that failed for a
    reason not the behavior's own (``provider_error``, ``auth_error``: retries billed, say) is
    neither judged nor remembered: a provider's trouble must never move a tier (DESIGN.md);
    nor is one answered by a model other than the preset's primary (OpenRouter's fallback
    routing around an outage may pick a dearer model)."""
    cost = max(r.outcome.cost_usd, counted or 0.0)
    if not cost > 0:
        return
    if any(res.outcome is Outcome.FAIL and not res.attributable for res in r.results):
        return
    o = r.outcome
    if o.primary_model and o.model and o.model != o.primary_model:
        return  # OpenRouter routed around the preset's model: its price is not the behavior's
    c = r.plan.behavior.checks.cost_anomaly
    spec = CostAnomalySpec(c.enabled, c.factor, c.window_runs, c.min_runs, c.min_usd)
    recent = row.recent_costs or []
    result = judge_cost(cost, recent, spec, passes=r.output is not None)
    if result is not None:
        r.results.append(result)
    row.recent_costs = remember_cost(recent, cost, spec.window_runs)


def _judge(plan: RunPlan, outcome: CallOutcome, now: datetime) -> _Recorded:
    """A run's gate results, disposition and the column values it is recorded with (pure)."""
    results: list[GateResult] = [r for r in outcome.failures]
    if outcome.output is not None:
        b = plan.behavior
        spec = CheckSpec(
            json_schema=b.checks.json_schema,
            max_chars=b.checks.max_chars,
            must_match=tuple(b.checks.must_match),
            must_not_match=tuple(b.checks.must_not_match),
            sensitive_info=b.checks.sensitive_info,
        )
        results.extend(run_checks(outcome.output, spec))
        if (
            b.require_primary_model
            and outcome.primary_model
            and outcome.model
            and outcome.model != outcome.primary_model
        ):
            results.append(
                GateResult(
                    Gate.OUTPUT_CHECK,
                    Outcome.WARN,
                    True,
                    {
                        "check": "require_primary_model",
                        "reason": f"answered by {outcome.model}, not the preset's primary "
                        f"model {outcome.primary_model}; not acted on",
                        "model": outcome.model,
                        "primary_model": outcome.primary_model,
                    },
                )
            )
    # Judged on the original; stored, approved and acted on masked (see ``mask_sensitive``).
    output = sha256 = findings = None
    if outcome.output is not None:
        output, found = mask_sensitive(outcome.output)
        sha256 = hashlib.sha256(outcome.output.encode("utf-8")).hexdigest()
        findings = [{"kind": f.kind, "start": f.start, "end": f.end} for f in found] or None
    downgraded = outcome.downgrade is not None and output is not None and plan.tier is Tier.C
    blocked = any(r.attributable and r.outcome is Outcome.FAIL for r in results) or any(
        (r.evidence or {}).get("check") == "require_primary_model" for r in results
    )
    if output is None:
        disposition = "none"
    elif blocked:
        disposition = "blocked"
    elif plan.tier is Tier.A:
        disposition = "proposal"
    elif plan.tier is Tier.B or downgraded:
        disposition = "approval"
    else:
        disposition = "action"
    values: dict[str, Any] = {
        "rid": plan.run_id,
        "model": outcome.model,
        "generation_id": outcome.generation_id,
        "cost_usd": outcome.cost_usd,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "via_fallback": outcome.via_fallback,
        "output_sha256": sha256,
        "output_findings": findings,
        "output": output,
        "lease_until": None,
        "finished_at": now,
        "error": outcome.error,
        "status": "succeeded" if outcome.output is not None else "failed",
        "disposition": disposition,
    }
    if outcome.summary is not None:
        summary = dict(outcome.summary)
        if downgraded:
            summary["downgraded"] = {
                "from_tier": "C",
                "to": "approval",
                "reason": outcome.downgrade,
            }
        values["summary"] = summary
    return _Recorded(plan, outcome, results, values, output, downgraded)


def _record(
    session: Session,
    row: Any,
    run: Run,
    results: Sequence[GateResult],
    now: datetime,
    ctx: PolicyContext,
) -> str:
    stored = record_results(session, row, results, now=now, source="runner", run_id=run.id)
    row.last_run_at = now
    row.last_run_id = run.id
    row.last_run_status = _run_summary(run.status, stored)
    applied = apply_observation(
        session, row, Observation.run(now, run.id, stored), now=now, ctx=ctx
    )
    return applied.decision.kind


def _run_summary(status: str, results: Sequence[GateResult]) -> str:
    bad = [r for r in results if r.outcome is not Outcome.PASS]
    if not bad:
        return f"{status}"
    worst = max(bad, key=lambda r: (r.outcome is Outcome.FAIL, r.attributable))
    return f"{status}: {worst.gate} {worst.outcome}"[:32]


def action_payload(plan: RunPlan, output: str, output_sha256: str | None = None) -> dict[str, Any]:
    """What the action will do: exactly what an approver sees and what is hashed. ``output``
    is the stored (masked) answer; ``output_sha256`` the digest of the answer as judged, so an
    approval stays bound to it."""
    action = plan.behavior.action.model_dump(mode="json", exclude_none=True)
    payload = {
        "action": action,
        "behavior": plan.behavior.name,
        "run_id": plan.run_id,
        "tier": plan.tier.value,
        "output": output,
    }
    if output_sha256 is not None:
        payload["output_sha256"] = output_sha256
    return payload


def payload_digest(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _enqueue_action(
    session: Session, behavior_id: int, payload: Mapping[str, Any], now: datetime
) -> None:
    """One outbox row per run's action: queuing it twice is impossible (dedup key per run)."""
    action = dict(payload["action"])
    kind = action.pop("type")
    enqueue_action(
        session,
        action=kind,
        behavior=payload["behavior"],
        run_id=payload["run_id"],
        tier=payload["tier"],
        output=payload["output"],
        now=now,
        behavior_id=behavior_id,
        options=action,
    )


# -- approvals ---------------------------------------------------------------------------------


def _lock_approval(session: Session, run_id: str) -> tuple[Approval, BehaviorRow]:
    """The request and its behavior, both locked: the behavior first, in the order a
    demotion or pause (which withdraws pending requests) takes them."""
    query = select(Approval).where(col(Approval.run_id) == run_id)
    found = session.exec(query).first()
    if found is None:
        if session.get(Run, run_id) is None:
            raise NotFoundError(
                f"run {run_id} does not exist (`ledger approvals` lists the requests waiting)"
            )
        raise NotFoundError(f"run {run_id} has no approval request (only tier-B runs ask)")
    row = lock_behavior(session, id=found.behavior_id)
    approval = session.exec(query.with_for_update().execution_options(populate_existing=True))
    return approval.one(), row


def _withdraw_if_not_waiting(session: Session, row: BehaviorRow, now: datetime) -> None:
    """Withdraw the behavior's pending requests when it no longer takes approvals."""
    if not takes_approvals(row):
        state = "is paused" if row.paused else f"is at {Tier(row.tier).label}"
        withdraw_approvals(session, row, actor="runner", why=f"{row.name} {state}", now=now)


def _refuse_withdrawn(
    session: Session, approval: Approval, row: BehaviorRow, now: datetime
) -> None:
    """Raise ConflictError when the request was withdrawn (or must be now: its behavior left
    B · human-in-the-loop or was paused before withdrawals existed), saying why."""
    if approval.status == "pending":
        _withdraw_if_not_waiting(session, row, now)
    if approval.status == "withdrawn":
        when = f"{approval.decided_at:%Y-%m-%d %H:%M} UTC" if approval.decided_at else "earlier"
        raise ConflictError(
            f"run {approval.run_id}'s approval request was withdrawn ({when}) because "
            f"{approval.reason}; its action will not run. A new run at "
            f"{Tier.B.label} asks again"
        )


def approve(
    session: Session,
    run_id: str,
    *,
    actor: str,
    now: datetime,
    ctx: PolicyContext,
    payload_sha256: str | None = None,
    reason: str = "approved",
) -> str:
    """Approve a pending request: its action is queued exactly once, bound to the payload the
    operator saw (``payload_sha256``). Approving again is a no-op that says so; a request
    withdrawn by a demotion below B or a pause is refused with the reason."""
    approval, row = _lock_approval(session, run_id)
    _refuse_withdrawn(session, approval, row, now)
    if approval.status == "approved":
        return f"run {run_id} was already approved by {approval.decided_by}; nothing to do"
    if approval.status != "pending":
        raise ConflictError(f"run {run_id}'s approval request is {approval.status}")
    if now >= approval.expires_at:
        _expire(session, approval, now, ctx)
        raise ConflictError(
            f"run {run_id}'s approval request expired at {approval.expires_at:%Y-%m-%d %H:%M} UTC"
        )
    actual = payload_digest(approval.payload)
    if actual != approval.payload_sha256:
        raise ConflictError(
            f"run {run_id}: the stored action payload changed since it was "
            "requested; refusing to run it"
        )
    if payload_sha256 is not None and payload_sha256 != actual:
        raise ConflictError(
            f"run {run_id}: the action payload differs from the one you reviewed "
            f"(sha256 {payload_sha256[:12]}… ≠ {actual[:12]}…); review it again"
        )
    approval.status = "approved"
    approval.decided_at = now
    approval.decided_by = actor
    approval.reason = reason
    session.add(approval)
    _enqueue_action(session, approval.behavior_id, dict(approval.payload), now)
    record_approved(
        session, row, run_id, actor=actor, reason=reason, payload_sha256=actual, now=now, ctx=ctx
    )
    kind = approval.payload["action"]["type"]
    return f"approved run {run_id} of {row.name}; its {kind} action is queued"


def reject(
    session: Session, run_id: str, *, actor: str, reason: str, now: datetime, ctx: PolicyContext
) -> str:
    """Reject a pending request: the action never runs; it counts as a ``human_rejected`` warn."""
    if not reason.strip():
        raise LedgerError("a reason is required to reject (--reason TEXT)")
    approval, row = _lock_approval(session, run_id)
    _refuse_withdrawn(session, approval, row, now)
    if approval.status != "pending":
        raise ConflictError(f"run {run_id}'s approval request is already {approval.status}")
    approval.status = "rejected"
    approval.decided_at = now
    approval.decided_by = actor
    approval.reason = reason
    session.add(approval)
    record_rejected(session, row, run_id, actor=actor, reason=reason, now=now, ctx=ctx)
    return f"rejected run {run_id} of {row.name}: {reason}"


def _expire(session: Session, approval: Approval, now: datetime, ctx: PolicyContext) -> None:
    approval.status = "expired"
    approval.decided_at = now
    session.add(approval)
    row = lock_behavior(session, id=approval.behavior_id)
    record_expired(session, row, approval.run_id, now=now, ctx=ctx)


def expire_approvals(session: Session, now: datetime, ctx: PolicyContext, limit: int = 100) -> int:
    """Expire pending requests past their TTL (through the partial index on pending rows).
    Each behavior is locked before its request, in the order approving and withdrawing take
    them (the opposite order could deadlock with an operator approving at that moment)."""
    due = session.exec(
        select(Approval.run_id, Approval.behavior_id)
        .where(col(Approval.status) == "pending", col(Approval.expires_at) <= now)
        .order_by(col(Approval.expires_at))
        .limit(limit)
    ).all()
    expired = 0
    for run_id, behavior_id in due:
        lock_behavior(session, id=behavior_id)
        approval = session.exec(
            select(Approval)
            .where(col(Approval.run_id) == run_id, col(Approval.status) == "pending")
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        ).first()
        if approval is not None:
            _expire(session, approval, now, ctx)
            expired += 1
    return expired
