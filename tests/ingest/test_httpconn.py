"""The hot path's HTTP/1.1 pool against a raw asyncio server that frames responses every legal way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from ingest.httpconn import HttpError, HttpPool

Handler = Callable[[bytes, int], bytes | None]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Callable[[Handler], asyncio.Future[int]]]:
    servers: list[asyncio.Server] = []

    def start(handler: Handler) -> asyncio.Future[int]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            n = 0
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                    reply = handler(body, n)
                    n += 1
                    if reply is None:  # close without answering
                        break
                    writer.write(reply)
                    await writer.drain()
                    if reply.startswith(b"HTTP/1.0"):  # HTTP/1.0: the body ends at close
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        async def go() -> int:
            srv = await asyncio.start_server(serve, "127.0.0.1", 0)
            servers.append(srv)
            return int(srv.sockets[0].getsockname()[1])

        return asyncio.ensure_future(go())

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


async def test_content_length_and_keep_alive(
    server: Callable[[Handler], asyncio.Future[int]],
) -> None:
    port = await server(
        lambda body, n: b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + f"ok{n:02d}".encode()[:4]
    )
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    got = [await pool.post(HEAD, b"{}") for _ in range(3)]
    assert got == [(200, b"ok00"), (200, b"ok01"), (200, b"ok02")]  # one connection, reused
    await pool.close()
    await pool.close()


async def test_chunked_body(server: Callable[[Handler], asyncio.Future[int]]) -> None:
    reply = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
    port = await server(lambda body, n: reply)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=2, timeout_s=5)
    assert await pool.post(HEAD, b"{}") == (400, b"hello world")
    assert await pool.post(HEAD, b"{}") == (400, b"hello world")
    await pool.close()


async def test_http10_close_delimited(server: Callable[[Handler], asyncio.Future[int]]) -> None:
    port = await server(lambda body, n: b"HTTP/1.0 200 OK\r\n\r\n{}")
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    # No Content-Length: the body is what comes before the server closes; not reused.
    assert await pool.post(HEAD, b"{}") == (200, b"{}")
    assert await pool.post(HEAD, b"{}") == (200, b"{}")
    await pool.close()


async def test_stale_keep_alive_is_retried_once(
    server: Callable[[Handler], asyncio.Future[int]],
) -> None:
    # The server answers the first request, then closes the connection without answering the second
    # (as a server does with an idle keep-alive connection); the pool retries on a new connection.
    def handler(body: bytes, n: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if n == 0 else None

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"{}") == (200, b"ok")
    assert await pool.post(HEAD, b"{}") == (200, b"ok")
    await pool.close()


async def test_fresh_connection_closed_without_answer_is_an_error(
    server: Callable[[Handler], asyncio.Future[int]],
) -> None:
    port = await server(lambda body, n: None)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    with pytest.raises(HttpError, match="closed before a complete response"):
        await pool.post(HEAD, b"{}")
    await pool.close()


async def test_not_http_is_an_error(server: Callable[[Handler], asyncio.Future[int]]) -> None:
    port = await server(lambda body, n: b"SSH-2.0-OpenSSH\r\n\r\n")
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    with pytest.raises(HttpError, match=r"not an HTTP/1\.x response"):
        await pool.post(HEAD, b"{}")
    await pool.close()
