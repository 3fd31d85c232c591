"""The lean HTTP/1.1 transport (``ledger.runner.lean_http``) against scripted loopback servers:
framing, keep-alive, httpx's errors and timeouts, and the security properties a hand-written
transport must keep — the server's certificate verified, no header injection, no response
smuggling (an answer is never read from bytes another answer left behind)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trustme
import uvloop

from ledger.runner.lean_http import LeanTransport
from tests.servers import wait_until_async


@dataclass
class RawServer:
    """A loopback server answering each request with the next scripted bytes (None: close the
    connection without answering; a float: wait that long first)."""

    answers: list[bytes | float | None]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if isinstance(answer, float):
                    await asyncio.sleep(answer)
                    answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[list[bytes | float | None]], Any]]:
    servers: list[asyncio.Server] = []

    async def start(answers: list[bytes | float | None]) -> tuple[RawServer, str]:
        script = RawServer(list(answers))
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return script, f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()


OK_JSON = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'
)


async def test_lean_transport_reads_lengths_chunks_and_keeps_connections_alive(
    raw_server: Any,
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n3;ext=1\r\n: 1\r\n1\r\n}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_JSON
    script, base = await raw_server([OK_JSON, chunked, interim])
    async with httpx.AsyncClient(transport=LeanTransport(8, 60)) as http:
        first = await http.post(base + "/v1/x?q=1", json={"n": 1})
        second = await http.get(base + "/two")
        third = await http.get(base + "/three")
    assert (
        first.json() == {"ok": True} and second.json() == {"a": 1} and third.json() == {"ok": True}
    )
    assert script.connections == 1  # one kept-alive connection for all three
    assert script.requests[0].startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
    assert script.requests[0].endswith(b'{"n":1}')
    assert b"\r\nContent-Length: 7\r\n" in script.requests[0]


async def test_lean_transport_does_not_reuse_a_closed_or_closing_connection(
    raw_server: Any,
) -> None:
    closing = OK_JSON.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    script, base = await raw_server([closing, OK_JSON, None, OK_JSON])
    transport = LeanTransport(8, 60)
    async with httpx.AsyncClient(transport=transport) as http:
        assert (await http.get(base + "/a")).status_code == 200  # Connection: close
        assert (await http.get(base + "/b")).status_code == 200  # a new connection
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(base + "/c")  # the server hangs up without answering
        assert (await http.get(base + "/d")).status_code == 200
    assert script.connections == 3


async def test_lean_transport_raises_httpx_errors_for_timeouts_and_bad_answers(
    raw_server: Any,
) -> None:
    _script, base = await raw_server([2.0, OK_JSON])
    async with httpx.AsyncClient(transport=LeanTransport(8, 60)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(base + "/slow", timeout=httpx.Timeout(0.2))
    _script, base = await raw_server([b"NOT HTTP AT ALL\r\n\r\n"])
    async with httpx.AsyncClient(transport=LeanTransport(8, 60)) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(base + "/bad")
    async with httpx.AsyncClient(transport=LeanTransport(8, 60)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("http://127.0.0.1:9/refused")
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")


async def test_lean_transport_read_timeout_is_the_longest_silence_not_the_whole_answer() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"abcdef":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
            # 0.6 s in all, never more than 0.1 s without a byte: within a 0.3 s read timeout
            response = await http.get(base + "/", timeout=httpx.Timeout(5, read=0.3))
            assert response.content == b"abcdef"
    finally:
        server.close()


async def test_lean_transport_never_reuses_a_connection_with_unread_bytes(
    raw_server: Any,
) -> None:
    stale = OK_JSON + b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"
    script, base = await raw_server([stale, OK_JSON])
    async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
        assert (await http.get(base + "/a")).status_code == 200
        await asyncio.sleep(0.05)  # the stray 408 arrives while the connection is idle
        assert (await http.get(base + "/b")).status_code == 200  # not the 408
    assert script.connections == 2


async def test_lean_transport_refuses_a_header_with_a_line_break(raw_server: Any) -> None:
    script, base = await raw_server([OK_JSON])
    async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
        with pytest.raises(httpx.LocalProtocolError, match="line break"):
            await http.get(base + "/", headers={"authorization": "Bearer k\r\nX-Injected: 1"})
    assert script.requests == []


def test_lean_transport_connects_on_uvloop_by_name_falling_back_across_addresses() -> None:
    """``ledger serve`` runs on uvloop (no ``happy_eyeballs_delay`` there): the transport's own
    happy eyeballs connect by host name, to whichever of its addresses listens."""

    async def main() -> None:
        script = RawServer([OK_JSON])
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)  # IPv4 only
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
                response = await http.get(f"http://localhost:{port}/")
                assert response.json() == {"ok": True}
                with pytest.raises(httpx.ConnectError, match="cannot connect"):
                    await http.get("http://localhost:9/")
        finally:
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def test_lean_transport_speaks_tls_and_verifies_the_certificate() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    script = RawServer([OK_JSON, OK_JSON])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_tls)
    base = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        async with httpx.AsyncClient(transport=LeanTransport(4, 60, tls=client_tls)) as http:
            assert (await http.get(base + "/a")).json() == {"ok": True}
            assert (await http.get(base + "/b")).json() == {"ok": True}
        assert script.connections == 1
        # The default context (certifi's CAs) refuses a certificate from an unknown CA.
        async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(base + "/c")
    finally:
        server.close()


async def test_lean_pool_waits_for_a_free_connection_and_times_out(raw_server: Any) -> None:
    _script, base = await raw_server([0.5, OK_JSON, OK_JSON])
    transport = LeanTransport(1, 60)
    async with httpx.AsyncClient(transport=transport) as http:
        slow = asyncio.ensure_future(http.get(base + "/slow"))
        await wait_until_async(lambda: transport.open_connections == 1, what="/slow to connect")
        with pytest.raises(httpx.PoolTimeout):
            await http.get(base + "/waits", timeout=httpx.Timeout(5, pool=0.1))
        waiting = asyncio.ensure_future(http.get(base + "/waits"))
        assert (await slow).status_code == 200
        assert (await waiting).status_code == 200
        assert transport.open_connections == 1


async def test_lean_transport_refuses_a_certificate_issued_for_another_host() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(server_tls)
    script = RawServer([OK_JSON])
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_tls)
    base = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)  # a trusted CA, but not this host's certificate
        async with httpx.AsyncClient(transport=LeanTransport(4, 60, tls=client_tls)) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(base + "/")
        assert script.requests == []
    finally:
        server.close()


@pytest.mark.parametrize(
    "headers",
    [
        {"x-note": "a\nX-Injected: 1"},
        {"x-note": "a\rX-Injected: 1"},
        {"x-note": "a\0b"},
        {"x-note\r\nX-Injected": "1"},
    ],
    ids=["lf-in-value", "cr-in-value", "nul-in-value", "crlf-in-name"],
)
async def test_lean_transport_sends_nothing_for_a_header_that_would_inject_a_line(
    raw_server: Any, headers: dict[str, str]
) -> None:
    script, base = await raw_server([OK_JSON])
    async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
        with pytest.raises(httpx.LocalProtocolError, match="line break or NUL"):
            await http.get(base + "/", headers=headers)
    assert script.requests == []


async def test_an_answer_with_both_chunked_and_a_length_is_read_as_chunked_and_not_reused(
    raw_server: Any,
) -> None:
    """RFC 9112 6.3: Transfer-Encoding wins, and the connection is closed after it — what a
    length-reading hop left in it could otherwise become the next request's answer."""
    both = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b'c\r\n{"ok": true}\r\n0\r\n\r\n'
    )
    script, base = await raw_server([both, OK_JSON])
    async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
        assert (await http.get(base + "/a")).json() == {"ok": True}
        assert (await http.get(base + "/b")).json() == {"ok": True}
    assert script.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: +12\r\n\r\n" + b'{"ok": true}',
        b"HTTP/1.1 200 OK\r\nContent-Length: 12, 12\r\n\r\n" + b'{"ok": true}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0xc\r\n"
        + b'{"ok": true}\r\n0\r\n\r\n',
        b"HTTP/1.1 200 OK\r\n Content-Length: 12\r\n\r\n" + b'{"ok": true}',
    ],
    ids=["signed-length", "listed-length", "hex-prefixed-chunk", "folded-header"],
)
async def test_lean_transport_refuses_framing_another_parser_could_read_differently(
    raw_server: Any, answer: bytes
) -> None:
    _script, base = await raw_server([answer])
    async with httpx.AsyncClient(transport=LeanTransport(4, 60)) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(base + "/")
