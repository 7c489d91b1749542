"""The hot path's HTTP/1.1 pool against a raw asyncio server that frames responses every legal way."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import uvloop

from ingest.aws.httpconn import HttpError, HttpPool

Reply = bytes | list[bytes | float] | None
Handler = Callable[[bytes, int], Reply]
"""Given a request body and its number on its connection: the reply (parts written in
order, a float part sleeps that many seconds, HALF_CLOSE ends the server's sending side),
or None to close without answering."""
HALF_CLOSE = b"<half-close>"


class CraftedServer:
    """Starts loopback HTTP servers; records every request body and connection they see."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.connections = 0
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __call__(self, handler: Handler) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            self._writers.add(writer)
            n = 0
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(length)
                    self.bodies.append(body)
                    reply = handler(body, n)
                    n += 1
                    if reply is None:  # close without answering
                        break
                    for part in [reply] if isinstance(reply, bytes) else reply:
                        if isinstance(part, float):
                            await asyncio.sleep(part)
                        elif part is HALF_CLOSE:
                            writer.write_eof()  # keeps reading: sees any request sent after
                        else:
                            writer.write(part)
                            await writer.drain()
                    last = reply if isinstance(reply, bytes) else b""
                    if last.startswith(b"HTTP/1.0"):  # HTTP/1.0: the body ends at close
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        self._servers.append(srv)
        return int(srv.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        for s in self._servers:
            s.close()
        for w in self._writers:
            w.close()  # the handlers see EOF and end
        await asyncio.gather(*self._handlers)
        for s in self._servers:
            await s.wait_closed()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[CraftedServer]:
    crafted = CraftedServer()
    yield crafted
    await crafted.aclose()


def ok(body: bytes) -> bytes:
    """A well-framed 200 whose body is ``body``."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


async def test_content_length_and_keep_alive(
    server: CraftedServer,
) -> None:
    port = await server(
        lambda body, n: b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n" + f"ok{n:02d}".encode()[:4]
    )
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    got = [await pool.post(HEAD, b"{}") for _ in range(3)]
    assert got == [(200, b"ok00"), (200, b"ok01"), (200, b"ok02")]  # one connection, reused
    await pool.aclose()
    await pool.aclose()


async def test_chunked_body(server: CraftedServer) -> None:
    reply = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
    port = await server(lambda body, n: reply)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=2, timeout_s=5)
    assert await pool.post(HEAD, b"{}") == (400, b"hello world")
    assert await pool.post(HEAD, b"{}") == (400, b"hello world")
    await pool.aclose()


async def test_http10_close_delimited(server: CraftedServer) -> None:
    port = await server(lambda body, n: b"HTTP/1.0 200 OK\r\n\r\n{}")
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    # No Content-Length: the body is what comes before the server closes; not reused.
    assert await pool.post(HEAD, b"{}") == (200, b"{}")
    assert await pool.post(HEAD, b"{}") == (200, b"{}")
    await pool.aclose()


async def test_stale_keep_alive_is_retried_once(
    server: CraftedServer,
) -> None:
    # The server answers the first request, then closes the connection without answering the second
    # (as a server does with an idle keep-alive connection); the pool retries on a new connection.
    def handler(body: bytes, n: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if n == 0 else None

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"{}") == (200, b"ok")
    assert await pool.post(HEAD, b"{}") == (200, b"ok")
    await pool.aclose()


async def test_fresh_connection_closed_without_answer_is_an_error(
    server: CraftedServer,
) -> None:
    port = await server(lambda body, n: None)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    with pytest.raises(HttpError, match="closed before a complete response"):
        await pool.post(HEAD, b"{}")
    await pool.aclose()


async def test_not_http_is_an_error(server: CraftedServer) -> None:
    port = await server(lambda body, n: b"SSH-2.0-OpenSSH\r\n\r\n")
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    with pytest.raises(HttpError, match=r"not an HTTP/1\.x response"):
        await pool.post(HEAD, b"{}")
    await pool.aclose()


# -- a response is matched to its request (issue #11, item 9) ------------------------------


def echo(body: bytes) -> bytes:
    return ok(b"answer to " + body)


async def test_extra_bytes_after_a_response_are_never_read_as_the_next_answer(
    server: CraftedServer,
) -> None:
    # The first answer comes with a second, unsolicited response right behind it (in the
    # same write): what is left over after Content-Length makes the connection unusable.
    def handler(body: bytes, n: int) -> Reply:
        return echo(body) + ok(b"stale") if body == b"r1" else echo(body)

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"r1") == (200, b"answer to r1")
    assert await pool.post(HEAD, b"r2") == (200, b"answer to r2")
    assert await pool.post(HEAD, b"r3") == (200, b"answer to r3")
    assert server.bodies == [b"r1", b"r2", b"r3"]
    assert server.connections == 2  # the poisoned one was dropped, the next one reused
    await pool.aclose()


async def test_late_duplicate_response_on_an_idle_connection_is_discarded(
    server: CraftedServer,
) -> None:
    # The server answers, then (while the connection sits idle in the pool) answers again.
    def handler(body: bytes, n: int) -> Reply:
        return [echo(body), 0.05, ok(b"late duplicate")] if body == b"r1" else echo(body)

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"r1") == (200, b"answer to r1")
    await asyncio.sleep(0.3)  # the duplicate arrives while idle
    assert await pool.post(HEAD, b"r2") == (200, b"answer to r2")
    assert server.bodies == [b"r1", b"r2"]
    assert server.connections == 2
    await pool.aclose()


async def test_content_length_shorter_than_the_body_poisons_the_connection(
    server: CraftedServer,
) -> None:
    # Content-Length says 2 but 12 bytes follow: the 10 extra must not start the next answer.
    def handler(body: bytes, n: int) -> Reply:
        if body == b"r1":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 "
        return echo(body)

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"r1") == (200, b"ok")
    assert await pool.post(HEAD, b"r2") == (200, b"answer to r2")
    await pool.aclose()


async def test_bytes_after_the_last_chunk_poison_the_connection(server: CraftedServer) -> None:
    def handler(body: bytes, n: int) -> Reply:
        if body == b"r1":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{}"
        return echo(body)

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"r1") == (200, b"ok")
    assert await pool.post(HEAD, b"r2") == (200, b"answer to r2")
    await pool.aclose()


async def test_a_connection_the_server_finished_is_not_sent_another_request(
    server: CraftedServer,
) -> None:
    # The server answers and then closes its side: the next request goes to a new
    # connection at once, so the server sees each request exactly once (not first on the
    # dead connection, then again after the stale-connection retry).
    def handler(body: bytes, n: int) -> Reply:
        return [echo(body), HALF_CLOSE]

    port = await server(handler)
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"r1") == (200, b"answer to r1")
    await asyncio.sleep(0.2)
    assert await pool.post(HEAD, b"r2") == (200, b"answer to r2")
    assert server.bodies == [b"r1", b"r2"]
    await pool.aclose()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            r"shorter than its Content-Length \(2 of 10 bytes\)",
            id="truncated-body",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            "bad Content-Length",
            id="two-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}", "bad Content-Length", id="negative"
        ),
        pytest.param(b"HTTP/1.1 2x0 OK\r\n\r\n", r"not an HTTP/1\.x response", id="bad-status"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Le", "before a complete response header", id="cut-head"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
            "header section over 65536 bytes",
            id="huge-head",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "bad chunk size",
            id="bad-chunk",
        ),
    ],
)
async def test_malformed_responses_are_http_errors(
    server: CraftedServer, reply: bytes, error: str
) -> None:
    port = await server(lambda body, n: [reply, HALF_CLOSE])
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    with pytest.raises(HttpError, match=error):
        await pool.post(HEAD, b"{}")
    assert pool._idle == deque()  # the connection is not kept
    await pool.aclose()


async def test_interim_1xx_answers_are_skipped(server: CraftedServer) -> None:
    port = await server(lambda body, n: b"HTTP/1.1 100 Continue\r\n\r\n" + echo(body))
    pool = HttpPool("127.0.0.1", port, tls=None, max_connections=1, timeout_s=5)
    assert await pool.post(HEAD, b"r1") == (200, b"answer to r1")
    assert await pool.post(HEAD, b"r2") == (200, b"answer to r2")
    assert server.connections == 1
    await pool.aclose()


async def test_tls_to_a_plain_server_is_an_os_error() -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(plain, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = HttpPool(
        "127.0.0.1", port, tls=ssl.create_default_context(), max_connections=1, timeout_s=5
    )
    try:
        with pytest.raises(ssl.SSLError, match=r"WRONG_VERSION_NUMBER|wrong version"):
            await pool.post(HEAD, b"{}")
    finally:
        await pool.aclose()
        srv.close()
        await srv.wait_closed()


@pytest.mark.parametrize(
    "scenario",
    [
        test_content_length_and_keep_alive,
        test_chunked_body,
        test_http10_close_delimited,
        test_stale_keep_alive_is_retried_once,
        test_fresh_connection_closed_without_answer_is_an_error,
        test_extra_bytes_after_a_response_are_never_read_as_the_next_answer,
        test_late_duplicate_response_on_an_idle_connection_is_discarded,
        test_a_connection_the_server_finished_is_not_sent_another_request,
        test_interim_1xx_answers_are_skipped,
    ],
    ids=lambda f: f.__name__.removeprefix("test_"),
)
def test_on_uvloop(scenario: Callable[[CraftedServer], Awaitable[None]]) -> None:
    """The service runs on uvloop, whose transports are not asyncio's: the same scenarios."""

    async def go() -> None:
        crafted = CraftedServer()
        try:
            await scenario(crafted)
        finally:
            await crafted.aclose()

    uvloop.run(go())
