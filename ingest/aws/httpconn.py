"""A small HTTP/1.1 keep-alive client for one origin: the hot path's transport to DynamoDB.

aiohttp costs about 220 µs of CPU per request on the reference machine (its
request/response objects, cookie and header machinery); the hot path sends
thousands of identical-shaped POSTs per second to one host and needs none of
that. This client keeps a pool of persistent connections (plain or TLS) and
does just: write request bytes, read the status line, headers and a body
framed by Content-Length, chunked encoding, or connection close.

A response belongs to the request just sent, never to an earlier one: each
connection is its own :class:`asyncio.Protocol` with a buffer the pool can
see, so

- a connection goes back to the pool only if nothing is left in its buffer
  after the response's exact framing (bytes beyond Content-Length or after
  the last chunk mean the server's framing is not to be trusted);
- an idle connection is checked again before reuse: one that received bytes
  nobody asked for (a late duplicate answer) or that the server closed is
  discarded, so the next request never reads a previous answer and is never
  sent into a connection the server has finished with.

A request on a pooled connection that the server closed while it was being
sent (the remaining race of keep-alive) is retried once on a new connection,
only when not a single byte of a response was received.

Errors: an :class:`OSError` for anything that went wrong on the connection
(refused, reset, TLS) or in the response's framing (:class:`HttpError`), and
:class:`TimeoutError` past the request's deadline. Nothing else escapes
:meth:`HttpPool.post`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import cast

from ingest.core.errors import IngestError

__all__ = ["MAX_BODY_BYTES", "MAX_HEAD_BYTES", "HttpError", "HttpPool"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
"""Largest status line + headers accepted."""
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest body accepted (DynamoDB's largest answers, BatchGetItem's, are 16 MB)."""


class HttpError(IngestError, OSError):
    """The connection failed or the response was not valid HTTP/1.1 (an ``OSError`` too, so
    code that handles connection trouble handles it)."""

    retriable = True


class _Closed(HttpError):
    """The peer closed the connection while a response was awaited."""


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


class _Conn(asyncio.Protocol):
    """One connection: what arrived (``buf``), whether the peer is done (``eof``)."""

    __slots__ = ("_waiter", "buf", "eof", "error", "transport")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_BODY_BYTES + MAX_HEAD_BYTES:
            # Bounded memory whatever the server sends (even into an idle connection).
            self.error = HttpError(f"server sent more than {MAX_BODY_BYTES} bytes")
            assert self.transport is not None
            self.transport.abort()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too: nothing more will be sent on it

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- for the pool -----------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Idle and clean: nothing unread, not closed by either side."""
        return (
            not self.buf
            and not self.eof
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            raise HttpError("connection closed before the request was sent")
        self.transport.write(data)

    async def _more(self) -> None:
        """Wait for more bytes; raise HttpError if the peer is done."""
        if self.eof:
            detail = f": {self.error}" if self.error is not None else ""
            raise _Closed(f"connection closed mid-response{detail}")
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def read_until(self, sep: bytes, limit: int) -> bytes:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            end = i + len(sep) if i >= 0 else len(self.buf)
            if end > limit:
                raise HttpError(f"response line or header section over {limit} bytes")
            if i >= 0:
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            start = max(0, len(self.buf) - len(sep) + 1)
            await self._more()

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_to_eof(self) -> bytes:
        while not self.eof:
            await self._more()
        if isinstance(self.error, HttpError):
            raise self.error
        out = bytes(self.buf)
        self.buf.clear()
        return out


class HttpPool:
    """Persistent connections to one origin.

    Args:
        host: Host to connect to.
        port: Port.
        tls: SSL context for https, or None.
        max_connections: Connections open at most (requests beyond wait).
        timeout_s: Deadline of one request (connect, send, receive).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        max_connections: int,
        timeout_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self._tls = tls
        self._idle: deque[_Conn] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._timeout_s = timeout_s
        self._closed = False
        self.discarded = 0
        """Connections dropped for unsolicited bytes or a framing mismatch (a server fault)."""

    async def aclose(self) -> None:
        """Close every idle connection; safe to call twice."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Conn:
        _, conn = await asyncio.get_running_loop().create_connection(
            _Conn,
            self.host,
            self.port,
            ssl=self._tls,
            server_hostname=self.host if self._tls else None,
        )
        return conn

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable:
                return conn
            if conn.buf:
                self._discard(conn, f"{len(conn.buf)} unsolicited bytes on an idle connection")
            else:
                conn.close()  # closed by the server while idle: the usual end of keep-alive
        return None

    def _discard(self, conn: _Conn, why: str) -> None:
        self.discarded += 1
        log.warning("HTTP connection to %s:%d discarded: %s", self.host, self.port, why)
        conn.close()

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """Send ``head`` (request line and headers, ending with CRLF CRLF) and ``body``.

        Returns:
            (HTTP status, response body).

        Raises:
            HttpError: The response was not valid HTTP/1.1, or the connection closed early.
            OSError: The connection failed (refused, reset, TLS).
            TimeoutError: No complete response within ``timeout_s``.
        """
        if self._closed:
            raise HttpError("HTTP pool is closed")
        async with self._slots:
            async with asyncio.timeout(self._timeout_s):
                for attempt in (0, 1):
                    conn = self._take_idle()
                    reused = conn is not None
                    try:
                        if conn is None:
                            conn = await self._connect()
                        conn.send(head + body if len(body) < 65536 else head)
                        if len(body) >= 65536:
                            conn.send(body)
                        status, data, keep = await _response(conn, reused and attempt == 0)
                    except _StaleConnection:
                        assert conn is not None
                        conn.close()
                        continue
                    except BaseException as exc:
                        if conn is not None:
                            conn.close()
                        if isinstance(exc, OSError | TimeoutError) or not isinstance(
                            exc, Exception
                        ):
                            raise
                        # ValueError (a bad certificate name…), RuntimeError (a closed
                        # transport under uvloop): still the connection's failure.
                        raise HttpError(f"{type(exc).__name__}: {exc}") from exc
                    if conn.buf:
                        self._discard(conn, f"{len(conn.buf)} bytes beyond the response's framing")
                    elif keep and not self._closed and conn.reusable:
                        self._idle.append(conn)
                    else:
                        conn.close()
                    return status, data
        raise HttpError("server closed the connection twice before answering")  # pragma: no cover


async def _response(conn: _Conn, may_be_stale: bool) -> tuple[int, bytes, bool]:
    """Read one response: (status, body, whether the connection may be kept)."""
    while True:
        try:
            head = await conn.read_until(b"\r\n\r\n", MAX_HEAD_BYTES)
        except _Closed as exc:
            if may_be_stale and not conn.buf:
                raise _StaleConnection from exc
            raise HttpError(f"connection closed before a complete response header ({exc})") from exc
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(parts[1])
        if not 100 <= status < 200 or status == 101:
            break
        may_be_stale = False  # an interim 1xx answer: the final one follows
    keep = parts[0] == b"HTTP/1.1"
    length = -1
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length >= 0 and int(value) != length):
                raise HttpError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            v = value.strip().lower()
            keep = v == b"keep-alive" or (keep and v != b"close")
    if status in (204, 304):
        return status, b"", keep
    if chunked:
        # With both headers the framing is ambiguous (RFC 9112 §6.3): read it chunked, then close.
        return status, await _read_chunked(conn), keep and length < 0
    if length >= 0:
        if length > MAX_BODY_BYTES:
            raise HttpError(f"response body of {length} bytes (over {MAX_BODY_BYTES})")
        try:
            return status, await conn.read_exactly(length), keep
        except _Closed as exc:
            raise HttpError(
                f"response shorter than its Content-Length ({len(conn.buf)} of {length} bytes)"
            ) from exc
    return status, await conn.read_to_eof(), False


async def _read_chunked(conn: _Conn) -> bytes:
    out = bytearray()
    while True:
        size_line = await conn.read_until(b"\r\n", MAX_HEAD_BYTES)
        size_text = size_line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(f"bad chunk size: {size_text[:40]!r}") from None
        if size == 0:
            while (await conn.read_until(b"\r\n", MAX_HEAD_BYTES)) != b"\r\n":
                pass  # trailers
            return bytes(out)
        if size < 0 or len(out) + size > MAX_BODY_BYTES:
            raise HttpError(f"chunked body over {MAX_BODY_BYTES} bytes")
        out += await conn.read_exactly(size)
        if await conn.read_exactly(2) != b"\r\n":
            raise HttpError("chunk not followed by CRLF")
