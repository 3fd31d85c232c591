"""Response models of ``GET /api/status``, ``GET /api/behaviors`` and ``GET /api/notion``: what
the OpenAPI document shows of ``status.status_document`` and ``notion.health.mirror_status``.
The routes send the documents as built (orjson), so these describe them; tests validate real
answers against them (``tests/web/test_read_api.py``, ``tests/notion/test_health.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

TierLetter = Literal["A", "B", "C"]


class BehaviorStatusItem(BaseModel):
    name: str
    tier: TierLetter
    tier_label: str
    tier_meaning: str
    state: str
    flags: list[str]
    key_problem: str | None
    problem: str | None
    pending_approvals: int
    last_run_at: datetime | None
    last_run_status: str | None
    next_run_at: datetime | None
    interval_seconds: float | None
    recent_failures: int
    interrupted_runs_24h: int
    cost_disagreements_24h: int
    spend_usd: float
    spend_window_start: datetime | None
    budget_usd: float | None
    budget_reset: str | None


class OutboxCounts(BaseModel):
    queued: int
    dead: int


class InvalidFile(BaseModel):
    path: str
    problems: str


class IngestCounts(BaseModel):
    waiting_deliveries: int
    set_aside_deliveries: int
    unattributed_spans_24h: int
    last_received_at: datetime | None


class TableSize(BaseModel):
    table: str
    rows: int
    estimated: bool


class LastPrune(BaseModel):
    table: str
    pruned_at: datetime
    cutoff: datetime
    deleted: int


class Storage(BaseModel):
    tables: list[TableSize]
    last_prunes: list[LastPrune]
    prune_interval_seconds: float


class StatusDocument(BaseModel):
    generated_at: datetime
    behaviors: list[BehaviorStatusItem]
    pending_approvals: int
    outbox: OutboxCounts
    invalid_files: list[InvalidFile]
    ingest: IngestCounts
    storage: Storage


class TierTotal(BaseModel):
    tier: TierLetter
    tier_label: str
    count: int


class BehaviorList(BaseModel):
    """A page of behaviors (by name) with their status; ``next_cursor`` fetches the next one,
    ``counts`` the behaviors per tier under the same filters (tier aside)."""

    behaviors: list[BehaviorStatusItem]
    next_cursor: str | None
    counts: list[TierTotal]
    invalid_files: list[InvalidFile]
    ingest: IngestCounts


class NotionDatabase(BaseModel):
    database_id: str
    data_source_id: str


class NotionDeadLetter(BaseModel):
    id: int
    kind: str
    error: str | None


class NotionStatus(BaseModel):
    """The Notion mirror's status (``ledger.notion.health.mirror_status``): ``state`` and a
    one-line ``advice`` first, then the facts ``ledger notion status --json`` prints."""

    state: Literal["off", "not_set_up", "ok", "behind", "failing"]
    advice: str
    checked_at: datetime
    configured: bool
    token: Literal["set", "not set"]
    base_url: str
    databases: dict[str, NotionDatabase] | None
    parent_page_id: str | None
    queued: int
    oldest_queued_at: datetime | None
    dead: int
    dead_letters: list[NotionDeadLetter]
    last_sync_at: datetime | None
    last_poll_at: datetime | None
    ledger_entries_fed: int
