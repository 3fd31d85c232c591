"""Response models of ``GET /api/status`` and ``GET /api/behaviors``: what the OpenAPI document
shows of ``status.status_document``. The routes send the document as built (orjson), so these
describe it; ``tests/web/test_read_api.py`` validates real answers against them."""

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
