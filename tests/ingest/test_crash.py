"""Crash test: acknowledged broadcast deliveries survive SIGKILL.

A load generator sends 20,000 distinct deliveries to a ``ledger serve`` process while the test
kills it with SIGKILL twice and starts it again. Like a real OTLP sender, the generator retries a
delivery that failed (connection error, 429, 5xx) until it gets a 2xx. At the end every
acknowledged delivery is in the database exactly once — and since the generator retried, all of
them are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest
from sqlalchemy import func, select

from ledger.db.models import IngestDelivery, IngestedSpan
from ledger.db.session import Database
from tests.servers import Daemon, wait_until

DELIVERIES = 20_000
CONCURRENCY = 48
SEND_DEADLINE = 300.0  # seconds for every delivery to be acknowledged (~15 s here)
TOKEN = "crash-test-token"
SPAN_ID = "00000000000000a1"


def delivery(number: int) -> bytes:
    """A small OpenRouter-shaped delivery: one root span, its own trace id."""
    attributes = [
        {"key": "gen_ai.usage.total_cost", "value": {"doubleValue": 0.0001}},
        {"key": "gen_ai.usage.total_tokens", "value": {"intValue": "120"}},
        {"key": "trace.metadata.openrouter.api_key_name", "value": {"stringValue": "crash"}},
    ]
    span = {
        "traceId": f"{number:032x}",
        "spanId": SPAN_ID,
        "name": "LLM Generation",
        "startTimeUnixNano": "1762074000000000000",
        "endTimeUnixNano": "1762074002000000000",
        "attributes": attributes,
    }
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "openrouter"}}]}
    return orjson.dumps(
        {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}
    )


class Sender:
    """One keep-alive HTTP/1.1 connection, as lean as a load generator needs to be (httpx spends
    milliseconds of CPU per request at this concurrency, which would dominate the test)."""

    def __init__(self) -> None:
        self._port: int | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, port: int, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; (status, response body). Raises OSError or
        ``asyncio.IncompleteReadError`` when the daemon is down or died mid-request."""
        if self._writer is None or self._port != port:
            self.close()
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
            self._port = port
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
            length, keep_alive = 0, True
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and b"close" in value.lower():
                    keep_alive = False
            payload = await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if not keep_alive:
            self.close()
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def port_of(daemon: Daemon) -> int:
    return int(daemon.base_url.rsplit(":", 1)[1])


def _waiting(db: Database) -> int:
    with db.transaction() as session:
        return int(session.execute(select(func.count()).select_from(IngestDelivery)).scalar_one())


@pytest.mark.slow
async def test_every_acknowledged_delivery_survives_two_sigkills_exactly_once(
    database_url: str, start_daemon: Callable[..., Daemon]
) -> None:
    # The processor in its own process (the default outside tests): a killed daemon's child
    # finishes its batch and stops, the next daemon's takes over.
    env = {
        "LEDGER_BROADCAST_TOKENS": TOKEN,
        "LEDGER_WATCH": "false",
        "LEDGER_INGEST_PROCESSOR": "process",
    }
    current = await asyncio.to_thread(start_daemon, database_url, env)
    acknowledged: set[int] = set()
    attempts = 0
    refusals: dict[int, int] = {}
    pending = iter(range(DELIVERIES))
    started = time.monotonic()

    async def sender() -> None:
        nonlocal attempts
        connection = Sender()
        for number in pending:  # one shared iterator: each delivery goes to one sender
            body = delivery(number)
            while True:
                attempts += 1
                try:
                    status, answer = await asyncio.wait_for(
                        connection.post(port_of(current), "/v1/traces", body), 30
                    )
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    await asyncio.sleep(0.05)  # the daemon is down: retry, like a real sender
                    continue
                if status == 200:
                    acknowledged.add(number)
                    break
                assert status in (429, 503), answer
                refusals[status] = refusals.get(status, 0) + 1
                await asyncio.sleep(0.05)
        connection.close()

    async def killer() -> None:
        nonlocal current
        for threshold in (DELIVERIES // 4, DELIVERIES // 2):
            while len(acknowledged) < threshold:
                await asyncio.sleep(0.005)
            current.proc.kill()  # SIGKILL while requests are in flight
            await asyncio.to_thread(current.proc.wait, 10)
            current = await asyncio.to_thread(start_daemon, database_url, env)

    # Senders retry while the daemon is down; a daemon that never comes back (it died of
    # something else) fails the test instead of hanging it.
    await asyncio.wait_for(
        asyncio.gather(killer(), *(sender() for _ in range(CONCURRENCY))), SEND_DEADLINE
    )
    elapsed = time.monotonic() - started

    db = Database.open(database_url)
    try:
        # What the killed daemons acknowledged but had not processed, the last one processes.
        await asyncio.to_thread(
            wait_until, lambda: _waiting(db) == 0, 120, "the processor to take every delivery"
        )
        with db.transaction() as session:
            stored = session.execute(select(IngestedSpan.trace_id)).scalars().all()
            total = session.execute(select(func.count()).select_from(IngestedSpan)).scalar_one()
    finally:
        db.close()
    numbers = [int(trace_id, 16) for trace_id in stored]
    assert len(acknowledged) == DELIVERIES
    assert total == len(set(numbers)) == DELIVERIES  # exactly once each
    assert acknowledged <= set(numbers)
    assert attempts > DELIVERIES  # the kills did interrupt deliveries, which were retried
    print(  # visible with -s: how the run went
        f"{DELIVERIES} deliveries, {attempts} attempts, refusals {refusals}, {elapsed:.1f} s"
    )
