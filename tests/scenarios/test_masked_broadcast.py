"""A key (and an email) in the prompt or completion text OpenRouter's broadcast carries is never
stored: ``ledger serve`` receives two deliveries of one behavior's calls — one the receiver
keeps as it came (the common JSON), one it keeps as decoded spans (a nested attribute value) —
and once the processor has applied them the planted values are in no table, not in the SQLite
file (its deleted deliveries are overwritten, ``secure_delete``), not in the API and not in the
log; the text itself is stored, masked."""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import inspect, text

from ledger.db.session import Database
from ledger.sim.openrouter import GenerationRecord, build_broadcast
from tests.factories import VALID_BEHAVIOR, write_behavior
from tests.servers import Daemon, wait_until

PLANTED = "sk-or-v1-" + "b40adca57" * 7 + "f"  # key-shaped, nobody's real key
EMAIL = "jane.roe@example.org"
NEEDLES = [PLANTED, "b40adca5", EMAIL, "jane.roe"]
TOKEN = "mask-broadcast-token-" + "7" * 20
HEADERS = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}


def _delivery(nested: bool) -> bytes:
    """One call of ``alpha`` as OpenRouter broadcasts it, the planted values in its text;
    ``nested`` adds the messages as an array attribute too (the receiver then decodes it)."""
    now = datetime.now(UTC)
    record = GenerationRecord(
        generation_id=f"gen-{int(now.timestamp())}-{secrets.token_hex(10)}",
        started_at=now - timedelta(seconds=2),
        ended_at=now,
        key_name="alpha-key",
        request_model="openai/gpt-4o-mini",
        response_model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": f"Mail {EMAIL} the deploy note."}],
        completion=f"Deploy with {PLANTED}; questions to {EMAIL}.",
        prompt_tokens=100,
        completion_tokens=20,
        input_unit_price=0.000001,
        user="alpha",
    )
    body = build_broadcast(record, int_as_string=True)
    if nested:
        root = body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        message = {"key": "content", "value": {"stringValue": f"write to {EMAIL}"}}
        root["attributes"].append(
            {
                "key": "gen_ai.input.messages",
                "value": {"arrayValue": {"values": [{"kvlistValue": {"values": [message]}}]}},
            }
        )
    return orjson.dumps(body)


def _tables(database_url: str) -> dict[str, str]:
    """Every table's rows, as text."""
    db = Database.open(database_url)
    try:
        with db.engine.connect() as conn:
            return {
                table: repr(conn.execute(text(f'SELECT * FROM "{table}"')).all())  # noqa: S608
                for table in inspect(conn).get_table_names()
            }
    finally:
        db.close()


def _root_attributes(database_url: str) -> list[dict[str, Any]]:
    """The stored attributes of each ``LLM Generation`` span."""
    db = Database.open(database_url)
    try:
        with db.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT data FROM ingested_span WHERE name = 'LLM Generation'")
            ).scalars()
            return [(orjson.loads(d) if isinstance(d, str) else d)["attributes"] for d in stored]
    finally:
        db.close()


def test_a_key_planted_in_a_broadcast_completion_is_stored_masked_and_nowhere_in_full(
    tmp_path: Path, database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    body = VALID_BEHAVIOR.format(key_env="MASKED_ALPHA_KEY", name="alpha").replace(
        "schedule: 15m", 'schedule: "0 0 1 1 *"'
    )
    write_behavior(tmp_path / "behaviors", "alpha", body)
    daemon = start_daemon(
        database_url,
        {
            "LEDGER_BROADCAST_TOKENS": TOKEN,
            "LEDGER_AUTH": "off",
            "MASKED_ALPHA_KEY": "sk-or-v1-" + "a1" * 32,
        },
    )
    with httpx.Client(base_url=daemon.base_url, timeout=10) as api:
        for nested in (False, True):
            sent = api.post("/v1/traces", content=_delivery(nested), headers=HEADERS)
            assert sent.status_code == 200, sent.text

        def alpha() -> httpx.Response:
            response = api.get("/api/behaviors/alpha")
            assert response.status_code == 200, response.text
            return response

        def applied() -> bool:
            waiting = api.get("/api/behaviors").json()["ingest"]["waiting_deliveries"]
            return len(alpha().json()["last_deliveries"]) >= 6 and waiting == 0

        wait_until(applied, timeout=20, what="both deliveries applied to alpha")
        shown = alpha().text
        rows = _tables(database_url)
        roots = _root_attributes(database_url)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0

    for needle in NEEDLES:
        assert needle not in shown, needle
        assert needle not in daemon.log(), needle
        for table, content in rows.items():
            assert needle not in content, (table, needle)
    # Stored masked, not dropped: the completion and the nested messages keep their text.
    masked = f"Deploy with <openrouter_key: sk-or-v1-…({len(PLANTED)} chars)>; questions to "
    completions = [json.loads(a["gen_ai.completion"])["completion"] for a in roots]
    assert completions == [masked + "<email: j***@***.org>."] * 2
    [nested] = [a["gen_ai.input.messages"] for a in roots if "gen_ai.input.messages" in a]
    assert nested == [{"content": "write to <email: j***@***.org>"}]
    assert rows["ingest_delivery"] == "[]"
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                raw = file.read_bytes()
                for needle in NEEDLES:
                    assert needle.encode() not in raw, (file.name, needle)
