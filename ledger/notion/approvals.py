"""Approve from Notion: the daemon polls the Approvals data source for rows where a person set
Decision to approve or reject, applies the decision through the same code as the CLI and the
API (``Decide``, wired by the daemon), with the Notion user as the actor, and writes the result
back in the row (Result; Decision set back to what the request now is).

Exactly once: a row is picked only while its Decision disagrees with its Status; a decision
already applied (say the daemon stopped before writing back) is recognised from the database
and only written back, never applied again. A decision on a withdrawn or expired request, or
one the approval code refuses, is answered in Result with the reason and Decision goes back to
``pending``."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import structlog
from sqlmodel import Session, col, select

from ledger.clock import Clock
from ledger.db.models import Approval, NotionWorkspace
from ledger.db.session import Database
from ledger.errors import LedgerError, NotionError
from ledger.logging import mask_text
from ledger.notion.api import NotionApi
from ledger.notion.mirror import Mirror
from ledger.notion.props import read_properties, write_properties
from ledger.notion.schema import APPROVALS
from ledger.notion.store import load_workspace, record_page

__all__ = ["DECISION_FILTER", "ApprovalPoller", "Decide", "Outcome"]

log = structlog.get_logger("ledger.notion.approvals")

# (session, run_id, "approve"|"reject", actor, reason, payload_sha256 | None, now) → message;
# raises LedgerError when refused. The CLI and the API call the same functions.
Decide = Callable[[Session, str, str, str, str, str | None, datetime], str]

DECISION_FILTER: Final = {
    "or": [
        {
            "and": [
                {"property": "Decision", "select": {"equals": "approve"}},
                {"property": "Status", "select": {"does_not_equal": "approved"}},
            ]
        },
        {
            "and": [
                {"property": "Decision", "select": {"equals": "reject"}},
                {"property": "Status", "select": {"does_not_equal": "rejected"}},
            ]
        },
    ]
}
_STATUS_DECISION: Final = {"approved": "approve", "rejected": "reject"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one decision: the text for Result and the request's status now."""

    result: str
    status: str
    applied: bool


@dataclass(slots=True)
class ApprovalPoller:
    db: Database
    api: NotionApi
    clock: Clock
    decide: Decide
    mirror: Mirror
    _names: dict[str, str] = field(default_factory=dict)

    async def poll_once(self) -> int:
        """Apply every decision waiting in Notion; returns how many rows were answered."""
        ws = await asyncio.to_thread(self._workspace)
        if ws is None:
            return 0
        rows = [r async for r in self.api.query(ws.approvals_data_source_id, DECISION_FILTER)]
        for row in rows:
            await self._answer(row)
        await asyncio.to_thread(self._polled)
        return len(rows)

    async def run(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            try:
                answered = await self.poll_once()
                if answered:
                    log.info("Notion approval decisions answered", count=answered)
            except NotionError as exc:
                log.warning("polling Notion for approval decisions failed", error=str(exc))
            except Exception:
                log.exception("polling Notion for approval decisions failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    # -- one row ---------------------------------------------------------------------------

    async def _actor(self, page: dict[str, Any]) -> str:
        user = page.get("last_edited_by") or {}
        user_id = str(user.get("id") or "unknown")
        if user.get("name"):
            return f"notion:{user['name']}"
        if not self._names:
            with contextlib.suppress(NotionError):
                listing = await self.api.call("listing Notion users", self.api.client.users.list)
                self._names.update(
                    {str(u["id"]): str(u.get("name") or u["id"]) for u in listing["results"]}
                )
        return f"notion:{self._names.get(user_id, user_id)}"

    async def _answer(self, page: dict[str, Any]) -> None:
        props = read_properties(APPROVALS.properties, page)
        key = str(props.get("Key") or "")
        verdict = str(props.get("Decision") or "")
        if not key.startswith("approval:") or verdict not in ("approve", "reject"):
            return
        run_id = key.removeprefix("approval:")
        actor = await self._actor(page)
        reason = str(props.get("Reason") or "").strip()
        digest = str(props.get("Payload hash") or "")
        outcome = await asyncio.to_thread(
            self._apply, run_id, verdict, actor, reason, digest if _SHA256.match(digest) else None
        )
        log.info(
            "Notion approval decision",
            run_id=run_id,
            decision=verdict,
            actor=actor,
            applied=outcome.applied,
            result=outcome.result,
        )
        answer = {
            "Decision": _STATUS_DECISION.get(outcome.status, "pending"),
            "Result": mask_text(outcome.result)[:2000],
        }
        await self.api.update_page(str(page["id"]), write_properties(APPROVALS.properties, answer))
        await asyncio.to_thread(self._remember, key, str(page["id"]), props, answer)
        await self.mirror.apply(key)  # Status, Decided by, Reason as the database has them

    def _apply(
        self, run_id: str, verdict: str, actor: str, reason: str, digest: str | None
    ) -> Outcome:
        now = self.clock.now()
        with self.db.transaction() as session:
            approval = session.exec(select(Approval).where(col(Approval.run_id) == run_id)).first()
            if approval is None:
                return Outcome(f"refused: run {run_id} has no approval request", "pending", False)
            done = {"approved": "approve", "rejected": "reject"}.get(approval.status)
            if done == verdict:  # applied before (the write-back was lost): never twice
                return Outcome(
                    f"{approval.status} by {approval.decided_by}", approval.status, False
                )
            if done is not None:
                return Outcome(
                    f"refused: already {approval.status} by {approval.decided_by}",
                    approval.status,
                    False,
                )
            status = approval.status
        try:
            with self.db.transaction() as session:
                message = self.decide(session, run_id, verdict, actor, reason, digest, now)
        except LedgerError as exc:
            return Outcome(f"refused: {exc}", status, False)
        return Outcome(message, "approved" if verdict == "approve" else "rejected", True)

    # -- database side ---------------------------------------------------------------------

    def _workspace(self) -> NotionWorkspace | None:
        with self.db.transaction() as session:
            ws = load_workspace(session)
            if ws is not None:
                session.expunge(ws)
            return ws

    def _remember(
        self, key: str, page_id: str, props: dict[str, Any], answer: dict[str, Any]
    ) -> None:
        with self.db.transaction() as session:
            record_page(session, key, page_id, {**props, **answer}, self.clock.now())

    def _polled(self) -> None:
        with self.db.transaction() as session:
            ws = session.get(NotionWorkspace, 1)
            if ws is not None:
                ws.last_poll_at = self.clock.now()
                session.add(ws)
