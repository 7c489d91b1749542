"""A small HTTP/1.1 keep-alive client for one origin: the hot path's transport to DynamoDB.

aiohttp costs about 220 µs of CPU per request on the reference machine (its
request/response objects, cookie and header machinery); the hot path sends
thousands of identical-shaped POSTs per second to one host and needs none of
that. This client keeps a pool of persistent connections (plain or TLS) and
does just: write request bytes, read the status line, headers and a body
framed by Content-Length, chunked encoding, or connection close.

A request on a pooled connection that the server had closed (the usual race
of keep-alive) is retried once on a new connection, only when not a single
byte of a response was received.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

__all__ = ["HttpError", "HttpPool"]


class HttpError(OSError):
    """The connection failed or the response was not valid HTTP/1.1."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


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

    async def close(self) -> None:
        """Close every idle connection; safe to call twice."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._tls, server_hostname=self.host if self._tls else None
        )
        return _Conn(reader, writer)

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """Send ``head`` (request line and headers, ending with CRLF CRLF) and ``body``.

        Returns:
            (HTTP status, response body).
        """
        if self._closed:
            raise HttpError("HTTP pool is closed")
        async with self._slots:
            async with asyncio.timeout(self._timeout_s):
                for attempt in (0, 1):
                    reused = bool(self._idle)
                    conn = self._idle.pop() if reused else await self._connect()
                    try:
                        conn.writer.write(head + body if len(body) < 65536 else head)
                        if len(body) >= 65536:
                            conn.writer.write(body)
                        status, data, keep = await self._response(
                            conn.reader, reused and attempt == 0
                        )
                    except _StaleConnection:
                        conn.close()
                        continue
                    except BaseException:
                        conn.close()
                        raise
                    if keep and not self._closed:
                        self._idle.append(conn)
                    else:
                        conn.close()
                    return status, data
        raise HttpError("server closed the connection twice before answering")  # pragma: no cover

    async def _response(
        self, reader: asyncio.StreamReader, may_be_stale: bool
    ) -> tuple[int, bytes, bool]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if may_be_stale and not exc.partial:
                raise _StaleConnection from exc
            raise HttpError("connection closed before a complete response header") from exc
        except ConnectionResetError as exc:
            if may_be_stale:
                raise _StaleConnection from exc
            raise
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(parts[1])
        keep = parts[0] == b"HTTP/1.1"
        length = -1
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                keep = v == b"keep-alive" or (keep and v != b"close")
        if chunked:
            return status, await _read_chunked(reader), keep
        if length >= 0:
            return status, await reader.readexactly(length), keep
        return status, await reader.read(), False


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before answering."""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
