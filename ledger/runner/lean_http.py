"""A lean HTTP/1.1 keep-alive transport for httpx, for the runner's hot path.

Each request is written as one buffer on a pooled asyncio stream and its answer parsed
directly; a request carrying a ``SendGate`` (``ledger.runner.send_gate``) gets its connection
at once and its bytes are written at the gate's instant, with the rest of its wave, in one
event-loop callback. It implements only what talking to an API needs — HTTP/1.1 over TCP or
TLS, keep-alive, ``Content-Length`` and chunked bodies, connect / write / read / pool timeouts —
and raises httpx's own exceptions, so ``httpx.AsyncClient`` (and everything that classifies its
errors) works unchanged on top of it. Proxies are not supported: with a proxy configured the
runner uses httpx's own pool (``new_http_client``).

Why it exists (issue 15: keep it only if the numbers say so). Dispatch lag — the slot to the
request written to its socket — of 1,000 runs due at once, prepared 5 s ahead, on the
OpenRouter simulator; p50 and p99 in ms, median [min-max] of 3 paired rounds whose order
alternates (``python -m tests.benchmarks.bench_scheduler --n 1000 --lead 5 --memory 0
--interval 40 --transport lean --transport aiohttp --rounds 3``; 2 shared cores, load average
8-13 throughout; every wave prepared before its slot):

    transport                   pool    p50                 p99
    lean (this module)          cold       7 [6-23]            28 [27-42]
    lean (this module)          warm       8 [5-23]            16 [13-53]
    aiohttp (httpx-aiohttp 0.2) cold    1308 [1068-1352]     1343 [1134-1408]
    aiohttp (httpx-aiohttp 0.2) warm    1249 [1065-1390]     1298 [1136-1477]

With the bench's default 20 s interval (load 6-15), adding httpx's own transport (httpcore
1.0, one pool of 1,024 connections), cold pool p99: lean 25 [19-84], aiohttp 1619 [1207-1784],
httpx 8608 [4461-58102] — with a wave this size httpx's pool writes nothing for over 4 s,
runs time out, and in 2 of 3 rounds its warm wave never started. A transport that cannot hold
a request waits at the gate and then sends (``SendGate.wait``): with aiohttp the last of 1,000
leaves 1.1-1.5 s after the slot, warm pool or cold — about 1.2 ms of event loop per request,
one after another, where this module writes the whole wave in one callback. The bar to delete
this module: a maintained transport within 2x of its p99 and at most 250 ms. Its security
properties — the server's certificate and host name verified, no header injection, no response
smuggling — are tested in ``tests/runner/test_lean_http.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import ssl
import time
from asyncio import staggered
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from ledger.runner.send_gate import gate_of

__all__ = ["LeanTransport"]

MAX_HEAD_BYTES: Final = 64 * 1024  # status line + headers of one answer
_FORBIDDEN: Final = re.compile(rb"[\r\n\0]")  # in a header: an injected line
_NO_BODY_STATUS: Final = frozenset({204, 304})


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def reusable(self, now: float, expiry: float) -> bool:
        """Not expired, not closed by the server, and nothing unread (a stale answer, or a
        408 the server sent before closing, must never become the next request's answer)."""
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and not getattr(self.reader, "_buffer", b"")
            and not self.writer.is_closing()
        )

    # The connection as a ``send_gate.Writable``: what a held request is written to.
    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def is_closing(self) -> bool:
        """Closed by either side (the server may close an idle connection while a request
        waits for its instant)."""
        return self.writer.is_closing() or self.reader.at_eof()

    def close(self, *, abort: bool = False) -> None:
        """Close; ``abort`` drops unsent data and skips TLS's goodbye (after a failure)."""
        with contextlib.suppress(Exception):
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()


class LeanTransport(httpx.AsyncBaseTransport):
    """Pooled HTTP/1.1 connections per origin: at most ``max_connections`` requests in flight,
    each on a connection of its own, and at most as many connections open (idle ones to
    another origin are closed to make room)."""

    def __init__(
        self, max_connections: int, keepalive_expiry: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._open = 0
        self._slots = asyncio.Semaphore(max_connections)
        self._tls = tls  # default: httpx's (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR)
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        head = _request_head(request, body)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no connection free in time", request=request) from None
        try:
            conn = self._take_idle(origin) or await self._connect(origin, request, timeouts)
            try:
                status, headers, content, keep = await self._exchange(
                    conn, head, body, request, timeouts
                )
            except BaseException:
                self._discard(conn, abort=True)
                raise
            if keep and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(origin, deque()).append(conn)
            else:
                self._discard(conn)
        finally:
            self._slots.release()
        return httpx.Response(
            status,
            headers=headers,
            stream=httpx.ByteStream(content),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._idle.values():
            while pool:
                self._discard(pool.popleft())

    # ------------------------------------------------------------------ connections

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool and not pool[0].reusable(now, self._expiry):  # the oldest, expired first
            self._discard(pool.popleft())
        while pool:
            conn = pool.pop()  # the most recently used: the least likely to have timed out
            if conn.reusable(now, self._expiry):
                return conn
            self._discard(conn)
        return None

    def _discard(self, conn: _Connection, *, abort: bool = False) -> None:
        conn.close(abort=abort)
        self._open -= 1

    def _make_room(self) -> None:
        """Close an idle connection (to another origin) when the limit is reached."""
        for pool in self._idle.values():
            if self._open < self._max:
                return
            while pool and self._open >= self._max:
                self._discard(pool.popleft())

    async def _connect(
        self, origin: tuple[str, str, int], request: httpx.Request, timeouts: dict[str, float]
    ) -> _Connection:
        self._make_room()
        self._open += 1  # counted while connecting, so concurrent connects see the limit
        try:
            return await self._open_connection(origin, request, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            raise

    async def _open_connection(
        self, origin: tuple[str, str, int], request: httpx.Request, timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            if self._tls is None:
                self._tls = httpx.create_ssl_context()
                self._tls.set_alpn_protocols(["http/1.1"])
            tls = self._tls
        try:
            async with asyncio.timeout(timeout):
                sock = await _happy_eyeballs(host, port)
                reader, writer = await asyncio.open_connection(
                    sock=sock,
                    ssl=tls,
                    server_hostname=host if tls else None,
                    limit=MAX_HEAD_BYTES,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return _Connection(reader, writer)

    # ------------------------------------------------------------------ one exchange

    async def _exchange(
        self,
        conn: _Connection,
        head: bytes,
        body: bytes,
        request: httpx.Request,
        timeouts: dict[str, float],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        try:
            gate = gate_of(request.extensions)
            held = gate.hold(conn, head + body) if gate is not None else None
            if held is not None:  # prepared ahead: written with its wave at the slot's instant
                written_at = await held
            else:
                conn.writer.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.writer.write(body)
                written_at = time.time()
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
            trace = request.extensions.get("trace")
            if trace is not None:  # httpcore's hook, for measurements (bench_scheduler)
                info = {"request": request, "written_at": written_at}
                await trace("http11.send_request_body.complete", info)
        except TimeoutError:
            raise httpx.WriteTimeout("sending the request timed out", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(f"{type(exc).__name__}: {exc}", request=request) from exc
        try:
            return await _read_response(conn.reader, request, timeouts.get("read"))
        except TimeoutError:
            raise httpx.ReadTimeout("waiting for the answer timed out", request=request) from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise httpx.RemoteProtocolError(
                f"the server's answer is incomplete or malformed ({type(exc).__name__})",
                request=request,
            ) from exc
        except OSError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc


def _request_head(request: httpx.Request, body: bytes) -> bytes:
    url = request.url
    target = url.raw_path or b"/"
    lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
    has_length = False
    for name, value in request.headers.raw:
        if _FORBIDDEN.search(name) or _FORBIDDEN.search(value):
            raise httpx.LocalProtocolError(
                f"header {name.decode('latin-1')!r} holds a line break or NUL; not sent",
                request=request,
            )
        lower = name.lower()
        if lower == b"transfer-encoding":
            continue  # the body is sent whole, with its length
        if lower == b"content-length":
            has_length = True
        lines.append(name + b": " + value)
    if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


HAPPY_EYEBALLS_DELAY: Final = 0.25  # RFC 8305: the next address after 250 ms


async def _happy_eyeballs(host: str, port: int) -> socket.socket:
    """A connected socket to ``host``: its addresses tried in turn, alternating IPv6 and IPv4,
    each started 250 ms after the previous unless that one failed sooner; the first to connect
    wins (RFC 8305). A host whose IPv6 silently drops packets connects over IPv4 after 250 ms.
    (uvloop's ``create_connection`` has no ``happy_eyeballs_delay``; this works on both.)"""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} has no address")
    families: dict[int, list[Any]] = {}
    for info in infos:
        families.setdefault(info[0], []).append(info)
    ordered = [
        info
        for group in itertools.zip_longest(*families.values())
        for info in group
        if info is not None
    ]

    def attempt(info: Any) -> Callable[[], Awaitable[socket.socket]]:
        async def connect() -> socket.socket:
            family, kind, proto, _name, address = info
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            return sock

        return connect

    sock, _index, errors = await staggered.staggered_race(
        [attempt(info) for info in ordered], HAPPY_EYEBALLS_DELAY
    )
    if sock is None:
        failures = "; ".join(str(e) for e in errors if e is not None)
        raise OSError(f"cannot connect to {host}:{port}: {failures}")
    return sock  # type: ignore[no-any-return]


class _Reads:
    """Reads from one answer, each bounded by ``timeout`` (httpx's ``read`` timeout is the
    longest wait for the next bytes, not for the whole answer)."""

    __slots__ = ("reader", "timeout")

    def __init__(self, reader: asyncio.StreamReader, timeout: float | None) -> None:
        self.reader = reader
        self.timeout = timeout

    async def until(self, separator: bytes) -> bytes:
        async with asyncio.timeout(self.timeout):
            return await self.reader.readuntil(separator)

    async def exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            async with asyncio.timeout(self.timeout):
                data = await self.reader.read(min(size, _READ_STEP))
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), size)
            parts.append(data)
            size -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def to_end(self) -> bytes:
        parts: list[bytes] = []
        while True:
            async with asyncio.timeout(self.timeout):
                data = await self.reader.read(_READ_STEP)
            if not data:
                return b"".join(parts)
            parts.append(data)


_READ_STEP: Final = 64 * 1024
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def _decimal(value: bytes) -> int:
    if not value or not value.isdigit():
        raise ValueError(f"not a decimal number: {value[:20]!r}")
    return int(value)


async def _read_response(
    raw: asyncio.StreamReader, request: httpx.Request, timeout: float | None
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    reader = _Reads(raw, timeout)
    while True:
        head = await reader.until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise ValueError("not an HTTP/1.x status line")
        status = _decimal(rest[:3])
        if not 100 <= status <= 599:
            raise ValueError("status code out of range")
        if status >= 200 or status == 101:
            break  # 1xx interim answers (100 Continue) are skipped
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    encoding: bytes | None = None
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ValueError("malformed header line")
        value = value.strip()
        lower = name.lower()
        headers.append((name, value))
        if lower == b"content-length":
            length = _decimal(value)
        elif lower == b"transfer-encoding":
            encoding = value.lower()
        elif lower == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                close = True
            elif b"keep-alive" in tokens:
                close = False
    if request.method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200:
        return status, headers, b"", not close
    if encoding is not None:
        # Transfer-Encoding wins over Content-Length; both at once: no reuse (RFC 9112 6.3).
        if encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
            return status, headers, await _read_chunked(reader), not close and length is None
        return status, headers, await reader.to_end(), False
    if length is not None:
        return status, headers, await reader.exactly(length), not close
    return status, headers, await reader.to_end(), False  # until the server closes


async def _read_chunked(reader: _Reads) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.until(b"\r\n")
        digits = line.split(b";", 1)[0].strip()
        if not digits or not _HEX.issuperset(digits):
            raise ValueError(f"bad chunk size {digits[:20]!r}")
        size = int(digits, 16)
        if size == 0:
            while (await reader.until(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.exactly(size))
        if await reader.exactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
