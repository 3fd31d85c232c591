"""SQLModel tables. Times are aware UTC datetimes on both SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Stable constraint names: Alembic batch mode on SQLite needs them.
SQLModel.metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC; returns aware UTC (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


def _json(nullable: bool = False) -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=nullable))


class BehaviorRow(SQLModel, table=True):
    """A registered behavior: its current state, not its history (that is the ledger)."""

    __tablename__ = "behavior"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    tier: str = Field(max_length=1, default="A")
    max_tier: str = Field(max_length=1, default="C")
    paused: bool = False
    pinned: bool = False
    retired: bool = False
    enabled: bool = True
    definition_hash: str = Field(max_length=64)
    definition: dict[str, Any] = _json()
    prompt_text: str = ""
    source_path: str = Field(max_length=1024, index=True)
    problem: str | None = Field(default=None, max_length=8000)
    policy_window: dict[str, Any] = _json()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    retired_at: datetime | None = _ts(nullable=True)
    last_run_at: datetime | None = _ts(nullable=True)
    last_run_id: str | None = Field(default=None, max_length=40)
    last_run_status: str | None = Field(default=None, max_length=32)
    # The account's name of the behavior's key, learned by ``ledger keys check`` (its file's
    # ``key_name`` wins); cleared when the file points ``api_key`` elsewhere.
    learned_key_name: str | None = Field(default=None, max_length=200)
    # Why the behavior's key cannot be resolved in the daemon's environment (its runs would
    # fail with auth_error); set by the daemon's reconcile, None when it resolves.
    key_problem: str | None = Field(default=None, max_length=1000)
    # The costs of its most recent runs that had one, oldest first (at most its
    # ``checks.cost_anomaly.window_runs``): what the ``cost_anomaly`` gate judges a run
    # against. Emptied when its definition changes.
    recent_costs: list[float] = Field(
        default_factory=list,
        sa_column=Column(JSON, nullable=False, server_default=text("'[]'")),
    )


class FileProblem(SQLModel, table=True):
    """A behavior file that is invalid and belongs to no registered behavior (yet)."""

    __tablename__ = "file_problem"

    path: str = Field(primary_key=True, max_length=1024)
    problems: str = Field(max_length=8000)
    detected_at: datetime = _ts()


LIVE_RUN = "status IN ('claimed', 'running')"


class Run(SQLModel, table=True):
    """One claimed slot of one behavior; the unique (behavior, slot) makes claims exclusive."""

    __tablename__ = "run"
    __table_args__ = (
        UniqueConstraint("behavior_id", "scheduled_for"),
        Index("ix_run_behavior_id_claimed_at", "behavior_id", "claimed_at"),
        # ``ledger status``: the last 24 hours, costs included (read from the index alone).
        Index("ix_run_claimed_at", "claimed_at", "behavior_id", "cost_usd", "broadcast_cost_usd"),
        # The sweep for runs left behind by a crash reads live runs by lease only.
        Index(
            "ix_run_live_lease_until",
            "lease_until",
            postgresql_where=text(LIVE_RUN),
            sqlite_where=text(LIVE_RUN),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    behavior_id: int = Field(foreign_key="behavior.id")
    scheduled_for: datetime = _ts()
    claimed_at: datetime = _ts()
    started_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)
    trigger: str = Field(default="schedule", max_length=16)
    status: str = Field(default="claimed", max_length=16, index=True)
    tier: str = Field(max_length=1)
    preset: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=200)
    generation_id: str | None = Field(default=None, max_length=100, index=True)
    via_fallback: bool = False
    reserved_usd: float = 0.0
    cost_usd: float | None = None
    broadcast_cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # The model's answer as stored: what the sensitive-info detector found is masked (never
    # the value); ``output_findings`` lists each finding's kind and position in the original,
    # ``output_sha256`` is the original's digest (what was judged).
    output: str | None = None
    output_sha256: str | None = Field(default=None, max_length=64)
    output_findings: list[dict[str, Any]] | None = Field(
        default=None, sa_column=Column(JSON, nullable=True)
    )
    disposition: str | None = Field(default=None, max_length=16)
    error: str | None = Field(default=None, max_length=4000)
    # A live (claimed/running) run belongs to the process that renews its lease; one whose
    # lease expired was left behind by a crash and is closed as ``interrupted``.
    lease_until: datetime | None = _ts(nullable=True)
    # The spend window its reservation was taken in (released there if it is interrupted).
    reserved_window: datetime | None = _ts(nullable=True)
    # ``single`` (one call), ``roundtable`` or ``broad_canvas`` (many calls, each a
    # ``run_call`` row; such a run is resumed after a crash instead of being interrupted).
    kind: str = Field(
        default="single",
        sa_column=Column(String(16), nullable=False, server_default="single"),
    )
    # A multi-model run's summary: the synthesis and its confidence, each panel model's
    # deference, or the canvas's answered / failed counts and costs; and a downgrade to an
    # approval request (low confidence at tier C), recorded as such.
    summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class GateResultRow(SQLModel, table=True):
    __tablename__ = "gate_result"
    __table_args__ = (
        Index("ix_gate_result_behavior_id_created_at", "behavior_id", "created_at"),
        # Attributable failures by time (``ledger status``, the board's 24 hours): small.
        Index(
            "ix_gate_result_problem_created_at",
            "created_at",
            "behavior_id",
            postgresql_where=text("attributable AND outcome <> 'pass'"),
            sqlite_where=text("attributable = 1 AND outcome <> 'pass'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    behavior_id: int = Field(foreign_key="behavior.id")
    run_id: str | None = Field(default=None, foreign_key="run.id", index=True)
    gate: str = Field(max_length=32)
    outcome: str = Field(max_length=8)
    attributable: bool
    source: str = Field(max_length=16, default="runner")
    evidence: dict[str, Any] = _json()
    created_at: datetime = _ts()


class ChainHead(SQLModel, table=True):
    """One row: the last ledger entry's id and hash. Appends lock it (O(1), serialized)."""

    __tablename__ = "chain_head"

    id: int = Field(default=1, primary_key=True)
    last_entry_id: int = 0
    last_hash: str = Field(max_length=64)


class LedgerEntry(SQLModel, table=True):
    """Append-only and hash-chained: ``hash = sha256(prev_hash + canonical_json(entry))``."""

    __tablename__ = "ledger_entry"
    __table_args__ = (
        Index("ix_ledger_entry_behavior_id_id", "behavior_id", "id"),
        Index("ix_ledger_entry_kind_created_at", "kind", "created_at"),  # demotions in 24 h
    )

    id: int | None = Field(default=None, primary_key=True)
    behavior_id: int | None = Field(default=None, foreign_key="behavior.id")
    behavior_name: str | None = Field(default=None, max_length=63)
    kind: str = Field(max_length=32)
    actor: str = Field(max_length=200)
    reason: str = Field(max_length=4000)
    data: dict[str, Any] = _json()
    created_at: datetime = _ts()
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)


class Approval(SQLModel, table=True):
    __tablename__ = "approval"
    __table_args__ = (
        Index(
            "ix_approval_pending_expires_at",
            "expires_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", unique=True)
    behavior_id: int = Field(foreign_key="behavior.id", index=True)
    status: str = Field(default="pending", max_length=16)
    payload: dict[str, Any] = _json()
    payload_sha256: str = Field(max_length=64)
    requested_at: datetime = _ts()
    expires_at: datetime = _ts()
    decided_at: datetime | None = _ts(nullable=True)
    decided_by: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=4000)
    executed_at: datetime | None = _ts(nullable=True)


# The outbox rows not done yet, written as the partial index's predicate: a query that means to
# use ``ix_outbox_open_kind`` says exactly this (a database proves a partial index usable only
# from the same condition, with literals).
OUTBOX_OPEN: Final = "status IN ('pending', 'in_flight', 'dead')"


class OutboxRow(SQLModel, table=True):
    """Work that must happen after a state change, written in the same transaction."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_pending_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # The rows not done yet, by kind (the Notion mirror's health reads its own).
        Index(
            "ix_outbox_open_kind",
            "kind",
            "status",
            "created_at",
            postgresql_where=text(OUTBOX_OPEN),
            sqlite_where=text(OUTBOX_OPEN),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    behavior_id: int | None = Field(default=None, foreign_key="behavior.id", index=True)
    dedup_key: str | None = Field(default=None, max_length=200, unique=True)
    payload: dict[str, Any] = _json()
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = _ts()
    last_error: str | None = Field(default=None, max_length=4000)
    created_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)
    discarded_at: datetime | None = _ts(nullable=True)  # when an operator gave up on it


class IngestDelivery(SQLModel, table=True):
    """A broadcast delivery as the receiver acknowledged it: its accepted spans, waiting for the
    processor.

    The receiver's only write (insert-only, one row per delivery, one index), so acknowledging
    costs little; the processor turns a delivery into ``ingested_span`` rows and its effects and
    deletes it, in one transaction. ``spans`` is the OTLP/JSON request as it came (a JSON
    object) when the receiver's fast path accepted it whole, else a JSON array of ``[trace_id,
    span_id, name, data]`` (``data`` as ``ingested_span.data``). ``set_aside`` is set on a
    delivery the processor cannot store (logged), so it never blocks the ones after it.

    ``pending_usd`` is the cost its generations report for the behavior ``pending_behavior_id``
    (attributed by the receiver from the registry alone: behavior hint, user, key name), so a
    budget check before a call counts spend still waiting here (``ledger.spend.reserve``)."""

    __tablename__ = "ingest_delivery"
    __table_args__ = (
        # What the budget check sums, read from the index alone (the rows are large; SQLite
        # covers the query only with ``set_aside`` in the index too).
        Index(
            "ix_ingest_delivery_pending",
            "pending_behavior_id",
            "pending_usd",
            "set_aside",
            postgresql_where=text("pending_behavior_id IS NOT NULL AND set_aside IS NULL"),
            sqlite_where=text("pending_behavior_id IS NOT NULL AND set_aside IS NULL"),
        ),
        # The few set-aside rows, left out of the backlog (a delivery is never inserted set
        # aside, so the receiver's inserts do not touch this index).
        Index(
            "ix_ingest_delivery_set_aside",
            "id",
            postgresql_where=text("set_aside IS NOT NULL"),
            sqlite_where=text("set_aside IS NOT NULL"),
        ),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    received_at: datetime = _ts()
    span_count: int
    spans: str = Field(sa_column=Column(Text(), nullable=False))
    set_aside: str | None = Field(default=None, max_length=32)
    pending_behavior_id: int | None = None
    pending_usd: float | None = None


class IngestedSpan(SQLModel, table=True):
    """One broadcast span, stored once per (trace id, span id), as processed: the processor
    writes it with its attribution (``behavior_id``, ``run_id``, ``attribution``: the rule that
    matched, or ``unattributed`` / ``no_generation`` / ``invalid`` / ``error``) and the cost and
    tokens of its generation, in the transaction that applies its effects."""

    __tablename__ = "ingested_span"
    __table_args__ = (
        UniqueConstraint("trace_id", "span_id"),
        Index("ix_ingested_span_behavior_id_received_at", "behavior_id", "received_at"),
        Index(
            "ix_ingested_span_run_id",
            "run_id",
            postgresql_where=text("run_id IS NOT NULL"),
            sqlite_where=text("run_id IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    trace_id: str = Field(max_length=32)
    span_id: str = Field(max_length=16)
    name: str = Field(max_length=256)
    source: str = Field(default="broadcast", max_length=16)
    data: dict[str, Any] = _json()
    received_at: datetime = _ts()
    processed_at: datetime | None = _ts(nullable=True)
    behavior_id: int | None = Field(default=None, foreign_key="behavior.id")
    run_id: str | None = Field(default=None, max_length=40)
    attribution: str | None = Field(default=None, max_length=32)
    cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class WebhookEvent(SQLModel, table=True):
    """A verified event from a signed webhook source (GitHub, Stripe, cron pings…)."""

    __tablename__ = "webhook_event"
    __table_args__ = (
        UniqueConstraint("source", "replay_key"),
        Index("ix_webhook_event_source_received_at", "source", "received_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=64)
    event: str = Field(max_length=200)
    replay_key: str = Field(max_length=200)
    payload: dict[str, Any] = _json()
    received_at: datetime = _ts()
    behavior_id: int | None = Field(default=None, foreign_key="behavior.id")
    processed_at: datetime | None = _ts(nullable=True)


class BudgetWindow(SQLModel, table=True):
    """Reserved and spent dollars of one behavior in one budget window.

    Reservations are compare-and-set updates (``reserved + spent + x <= budget``), so
    concurrent runs can never overshoot a budget together."""

    __tablename__ = "budget_window"
    __table_args__ = (Index("ix_budget_window_window_start", "window_start"),)

    behavior_id: int = Field(foreign_key="behavior.id", primary_key=True)
    window_start: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    reserved_usd: float = 0.0
    spent_usd: float = 0.0
    updated_at: datetime = _ts()


class PromotionProposal(SQLModel, table=True):
    """A promotion the policy proposes for a ``promotion: confirm`` behavior."""

    __tablename__ = "promotion_proposal"
    __table_args__ = (Index("ix_promotion_proposal_behavior_id_status", "behavior_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    behavior_id: int = Field(foreign_key="behavior.id")
    from_tier: str = Field(max_length=1)
    to_tier: str = Field(max_length=1)
    reason: str = Field(max_length=4000)
    evidence: dict[str, Any] = _json()
    status: str = Field(default="pending", max_length=16)
    created_at: datetime = _ts()
    decided_at: datetime | None = _ts(nullable=True)
    decided_by: str | None = Field(default=None, max_length=200)
    decision_reason: str | None = Field(default=None, max_length=4000)


class RetentionPrune(SQLModel, table=True):
    """The last prune of one table (``ledger.retention``): when it ran, the cutoff it used and
    how many rows it deleted. One row per table, overwritten by each prune."""

    __tablename__ = "retention_prune"

    target: str = Field(primary_key=True, max_length=32)
    pruned_at: datetime = _ts()
    cutoff: datetime = _ts()
    deleted: int = 0


class ApiToken(SQLModel, table=True):
    """A named API/dashboard token (``ledger token create``): only its SHA-256 digest is
    stored (``ledger.tokens`` says why that suffices), with its role and when it was last used
    (updated at most once a minute). A revoked token keeps its row, so its name stays in the
    record of who did what."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=63, unique=True)
    role: str = Field(max_length=16)
    token_sha256: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts()
    created_by: str = Field(max_length=200)
    last_used_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class NotionWorkspace(SQLModel, table=True):
    """The Notion mirror's databases (one row, id 1): created or adopted by ``ledger notion
    init`` under ``parent_page_id``, with each database's data source (rows are created with a
    ``data_source_id`` parent). ``*_cursor`` columns are how far the mirror's feeder has read
    the ledger, approvals, webhook events, runs and behaviors (it queues work past them)."""

    __tablename__ = "notion_workspace"

    id: int = Field(default=1, primary_key=True)
    parent_page_id: str = Field(max_length=64)
    behaviors_database_id: str = Field(max_length=64)
    behaviors_data_source_id: str = Field(max_length=64)
    ledger_database_id: str = Field(max_length=64)
    ledger_data_source_id: str = Field(max_length=64)
    approvals_database_id: str = Field(max_length=64)
    approvals_data_source_id: str = Field(max_length=64)
    entry_cursor: int = 0
    approval_cursor: int = 0
    event_cursor: int = 0
    run_cursor: datetime | None = _ts(nullable=True)
    behavior_cursor: datetime | None = _ts(nullable=True)
    created_at: datetime = _ts()
    last_sync_at: datetime | None = _ts(nullable=True)
    last_poll_at: datetime | None = _ts(nullable=True)


class NotionPage(SQLModel, table=True):
    """A Notion row the mirror created or adopted, by its stable ``key`` (also the row's Key
    property: ``behavior:NAME``, ``entry:ID``, ``approval:RUN``): its page id and the
    properties last written (normalized), so an update sends only what changed."""

    __tablename__ = "notion_page"

    key: str = Field(primary_key=True, max_length=200)
    page_id: str = Field(max_length=64)
    properties: dict[str, Any] = _json()
    content_chars: int = 0
    updated_at: datetime = _ts()


class AlertWindow(SQLModel, table=True):
    """Alert dedup state: per (channel, behavior, event), the window that began with the last
    alert sent at once. Repeats inside it fold into one follow-up outbox row (``followup_id``,
    sent when the window ends with ``count``). A row also says that the channel heard the event
    about the behavior (a recovery goes to the channels that heard the demotion)."""

    __tablename__ = "alert_window"
    __table_args__ = (UniqueConstraint("channel", "behavior", "event"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=200)
    behavior: str = Field(max_length=63)
    event: str = Field(max_length=40)
    started_at: datetime = _ts()
    ends_at: datetime = _ts()
    count: int = 1
    followup_id: int | None = None


class Silence(SQLModel, table=True):
    """An operator's silence: a behavior's alerts (all behaviors' when ``behavior_name`` is
    null) are muted from ``starts_at`` until ``ends_at`` or until ended early (``ended_at``).
    ``muted`` counts what was held back, by event, for the summary when it ends."""

    __tablename__ = "silence"
    __table_args__ = (Index("ix_silence_ended_at_ends_at", "ended_at", "ends_at"),)

    id: int | None = Field(default=None, primary_key=True)
    behavior_id: int | None = Field(default=None, foreign_key="behavior.id")
    behavior_name: str | None = Field(default=None, max_length=63)
    reason: str = Field(max_length=4000)
    created_by: str = Field(max_length=200)
    starts_at: datetime = _ts()
    ends_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    ended_by: str | None = Field(default=None, max_length=200)
    muted: dict[str, Any] = _json()


class RunCall(SQLModel, table=True):
    """One model call of a multi-model run (a roundtable's round and panel slot, a canvas's
    slot), recorded the moment it returns: a restarted run keeps every answer it got and does
    not ask a model again for a slot it answered. ``status``: ``pending`` (not asked yet),
    ``calling`` (asked; its reservation is held), ``answered``, ``failed`` (classified by
    ``reason``/``gate``), ``skipped`` (not asked: a persistent failure, or the round could not
    start) or ``refused`` (the budget refused its reservation). ``output`` is masked as stored
    (``ledger.sensitive``); ``attempts`` counts how many times the model was actually asked."""

    __tablename__ = "run_call"
    __table_args__ = (UniqueConstraint("run_id", "round", "slot"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", max_length=40, index=True)
    behavior_id: int = Field(foreign_key="behavior.id")
    round: int = 0
    slot: int = 0
    role: str = Field(default="canvas", max_length=32)
    model_asked: str = Field(max_length=200)
    model_answered: str | None = Field(default=None, max_length=200)
    status: str = Field(default="pending", max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    gate: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, max_length=2000)
    timeout_seconds: float | None = None
    latency_seconds: float | None = None
    cost_usd: float | None = None
    reserved_usd: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    generation_id: str | None = Field(default=None, max_length=100)
    output: str | None = Field(default=None, sa_column=Column(Text(), nullable=True))
    output_sha256: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    started_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True)


class ModelHealth(SQLModel, table=True):
    """A canvas model's run of persistent failures for one behavior (unknown or deprecated
    model, forbidden): after ``skip_after_failures`` in a row it is ``skipped`` by later
    runs (and listed in their summary) until an operator re-enables it."""

    __tablename__ = "model_health"

    behavior_id: int = Field(foreign_key="behavior.id", primary_key=True)
    model: str = Field(primary_key=True, max_length=200)
    consecutive_failures: int = 0
    skipped: bool = False
    reason: str | None = Field(default=None, max_length=500)
    last_run_id: str | None = Field(default=None, max_length=40)
    updated_at: datetime = _ts()
