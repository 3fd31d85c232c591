"""The read model over HTTP against a real ``ledger serve``: the board, paged behaviors and
runs, a behavior's page, proposals accepted by id, unattributed broadcast, the ledger's
filters; typed answers (validated against the OpenAPI models) and 422, never 500, for ids and
cursors out of range."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from ledger.board import BehaviorDetail, Board, RunPage, SpanPage
from ledger.db.models import PromotionProposal
from ledger.db.session import Database
from ledger.transitions import lock_behavior
from ledger.web.status_models import BehaviorList, StatusDocument
from tests.board_rows import run_row, span_row
from tests.conftest import T0, VALID_BEHAVIOR, write_behavior
from tests.daemon import Daemon
from tests.servers import operator_api

TOKEN = "read-token-" + "5" * 24
NAMES = ("alpha", "beta", "gamma")


@pytest.fixture
def api(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> Iterator[httpx.Client]:
    for name in NAMES:  # a yearly schedule: nothing runs during the test
        body = VALID_BEHAVIOR.format(key_env=f"READ_{name.upper()}_KEY", name=name)
        write_behavior(
            tmp_path / "behaviors", name, body.replace("schedule: 15m", 'schedule: "0 0 1 1 *"')
        )
    with operator_api(start_daemon, database_url, TOKEN) as client:
        yield client


def _invalid(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 422, response.text
    error: dict[str, object] = response.json()["error"]
    assert error["code"] == "invalid_request"
    return error


def test_ids_and_cursors_out_of_range_are_422_never_500(api: httpx.Client) -> None:
    for after_id in (2**63, 2**64, 2**70, -1):
        error = _invalid(api.get("/api/ledger", params={"after_id": after_id}))
        assert error["details"][0]["field"] == "query.after_id"  # type: ignore[index]
    for huge in (2**31, 2**63 - 1):  # valid, beyond any id: nothing, not an error
        assert api.get("/api/ledger", params={"after_id": huge}).json()["entries"] == []
        assert api.get("/api/ledger", params={"before_id": huge}).status_code == 200
    _invalid(api.post("/api/proposals/99999999999999999999/accept", json={"reason": "x"}))
    assert api.post("/api/proposals/2147483647/accept", json={"reason": "x"}).status_code == 404
    for path in (
        "/api/behaviors",
        "/api/board",
        "/api/behaviors/alpha/runs",
        "/api/broadcast/unattributed",
    ):
        for cursor in ("WyJ4Il0x", "eyJhIjogMX0", "%%%"):
            _invalid(api.get(path, params={"cursor": cursor}))
    _invalid(api.get("/api/behaviors/alpha", params={"runs_cursor": "WyJ4Il0"}))
    _invalid(api.get("/api/behaviors", params={"status": "sleeping"}))
    for path, params in (  # PostgreSQL refuses NUL in text: refused here first
        ("/api/behaviors", {"text": "al\x00pha"}),
        ("/api/board", {"text": "\x00"}),
        ("/api/ledger", {"behavior": "al\x00pha"}),
        ("/api/ledger", {"kind": ["promoted", "pro\x00moted"]}),
        ("/api/behaviors/alpha/runs", {"gate": "output\x00check"}),
        ("/api/proposals", {"behavior": "\x00"}),
    ):
        _invalid(api.get(path, params=params))
    _invalid(api.get("/api/behaviors/alpha/runs", params={"since": "2026-11-02T09:00:00"}))


def test_board_behaviors_and_status_answer_their_documented_models(api: httpx.Client) -> None:
    board = Board.model_validate(api.get("/api/board").json())
    assert [c.name for c in board.cards] == list(NAMES)
    assert board.counts[0].count == 3 and board.cards[0].progress.summary == "0 of 10 clean runs"
    first = api.get("/api/behaviors", params={"limit": 2}).json()
    BehaviorList.model_validate(first)
    assert [b["name"] for b in first["behaviors"]] == ["alpha", "beta"]
    rest = api.get("/api/behaviors", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [b["name"] for b in rest["behaviors"]] == ["gamma"] and rest["next_cursor"] is None
    assert [
        b["name"] for b in api.get("/api/behaviors", params={"text": "AMM"}).json()["behaviors"]
    ] == ["gamma"]
    StatusDocument.model_validate(api.get("/api/status").json())
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert {"Board", "BehaviorResponse", "BehaviorList", "StatusDocument", "RunPage"} <= set(
        schemas
    )


def test_a_behaviors_page_runs_proposals_and_unattributed_broadcast(
    api: httpx.Client, database_url: str
) -> None:
    db = Database.open(database_url)
    try:
        with db.transaction() as s:
            alpha = lock_behavior(s, name="alpha")
            for n in range(5):
                at = T0 - timedelta(hours=n)
                outcome = "warn" if n == 2 else "pass"
                run_row(s, alpha, f"run-{n}", at=at, gates=(("output_check", outcome),))
            for n in range(3):
                span_row(s, n, at=T0 - timedelta(minutes=n))
            proposal = PromotionProposal(
                behavior_id=alpha.id or 0,
                from_tier="A",
                to_tier="B",
                reason="earned",
                created_at=T0,
            )
            s.add(proposal)
            s.flush()
            proposal_id = proposal.id
    finally:
        db.close()

    page = api.get("/api/behaviors/alpha", params={"runs_limit": 2}).json()
    detail = BehaviorDetail.model_validate(page)
    assert [r.id for r in detail.runs.runs] == ["run-0", "run-1"]
    assert page["tier"] == "A" and page["spend"]["budget_usd"] == 1  # the summary is kept
    assert detail.card.progress.pending_proposal is not None
    more = RunPage.model_validate(
        api.get(
            "/api/behaviors/alpha/runs", params={"limit": 2, "cursor": detail.runs.next_cursor}
        ).json()
    )
    assert [r.id for r in more.runs] == ["run-2", "run-3"]
    warned = api.get(
        "/api/behaviors/alpha/runs", params={"gate": "output_check", "outcome": "warn"}
    )
    assert [r["id"] for r in warned.json()["runs"]] == ["run-2"]
    spans = SpanPage.model_validate(
        api.get("/api/broadcast/unattributed", params={"limit": 2}).json()
    )
    assert len(spans.spans) == 2 and spans.next_cursor is not None

    listed = api.get("/api/proposals").json()["proposals"]
    assert [(p["id"], p["behavior"], p["to_tier"]) for p in listed] == [(proposal_id, "alpha", "B")]
    accepted = api.post(f"/api/proposals/{proposal_id}/accept", json={"reason": "read the runs"})
    assert accepted.status_code == 200, accepted.text
    assert "by api:ops" in accepted.json()["message"]
    again = api.post(f"/api/proposals/{proposal_id}/decline", json={"reason": "too late"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert api.get("/api/behaviors/alpha").json()["tier"] == "B"
    promoted = api.get("/api/ledger", params={"kind": "promoted", "behavior": "alpha"}).json()
    assert [(e["actor"], e["kind"]) for e in promoted["entries"]] == [("api:ops", "promoted")]
    newest = api.get("/api/ledger", params={"before_id": 2**31, "limit": 1}).json()
    assert newest["entries"][0]["kind"] == "promoted" and newest["next_cursor"] is not None
