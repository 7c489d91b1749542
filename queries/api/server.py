"""Serving the app with uvicorn: in the foreground (``iot-ingest serve``) or inside a running loop.

:func:`serve_forever` is the command's body: it opens the DynamoDB client, reads
the table's layout (a missing table fails here, with a plain message, before any
port is opened), then runs uvicorn until SIGINT/SIGTERM. :func:`run` runs it on
the event loop uvicorn's ``loop="uvloop"`` factory makes.

:class:`ApiServer` runs the app inside an already running loop (tests, the demo):
an async context manager whose socket listens before ``__aenter__`` returns, and
which returns only once the app's startup completed (no sleep, no polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.core.lifecycle import StartClose
from queries.api.app import create_app, open_cold_tier, table_client
from queries.api.settings import ServeSettings
from queries.read.reader import TableReader

__all__ = ["ApiServer", "run", "serve_forever"]


def _config(app: ASGIApp, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        lifespan="on",
        log_config=None,  # the CLI's logging setup applies
        log_level=log_level.lower(),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


async def serve_forever(
    settings: ServeSettings, *, host: str, port: int, log_level: str = "INFO"
) -> None:
    """Read the table's layout (and check the archive bucket), then serve until a stop signal.

    Both are checked before the server starts, so a missing table or an archive
    bucket the server may not read ends the command with one clear error.

    Raises:
        TableError: the table does not exist or has no layout record.
        StorageError: the archive bucket is missing, unreachable or not readable.
    """
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(table_client(settings))
        reader = await TableReader.load(client, concurrency=settings.query_concurrency)
        if settings.s3_bucket is not None:
            reader.cold = await stack.enter_async_context(open_cold_tier(settings))
        app = create_app(settings, reader=reader)
        server = uvicorn.Server(_config(app, host, port, log_level))
        await server.serve()


class _Terminated(Exception):
    """SIGTERM arrived: a requested, clean stop."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def run(settings: ServeSettings, *, host: str, port: int, log_level: str = "INFO") -> None:
    """Run :func:`serve_forever` on a uvloop event loop (uvicorn's ``loop="uvloop"``).

    SIGTERM and SIGINT stop the server gracefully. uvicorn re-raises the signal it
    caught once it has shut down; for SIGTERM that lands in a handler here, so the
    command returns normally (exit status 0) instead of dying by the signal.
    """
    factory = _config(_no_app, host, port, log_level).get_loop_factory()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve_forever(settings, host=host, port=port, log_level=log_level))
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    # Only there to ask uvicorn's config for its uvloop factory; never served.
    raise RuntimeError("not an app")


class _StartupProbe:
    """Wraps an app; sets an event when its lifespan startup completes or fails."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = asyncio.Event()
        self.failed: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def probe(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                self.failed = str(message.get("message", "startup failed"))
                self.started.set()
            elif message["type"] == "lifespan.startup.complete":
                self.started.set()
            await send(message)

        await self.app(scope, receive, probe)


class ApiServer(StartClose):
    """The app served by uvicorn on a loopback port, inside the running event loop.

    Args:
        app: The ASGI app (see :func:`queries.api.app.create_app`).
        host: Address to listen on.
        port: Port (0: a free one; see :attr:`url`).
        log_level: uvicorn's log level.
    """

    def __init__(
        self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "WARNING"
    ) -> None:
        self._probe = _StartupProbe(app)
        self._host = host
        self._port = port
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening socket."""
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen, and return once uvicorn serves (raises if its startup failed)."""
        if self._closed or self._server is not None:
            raise RuntimeError("ApiServer is single-use; create a new one")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(128)  # connections queue in the backlog until uvicorn accepts them
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        self._server = uvicorn.Server(_config(self._probe, self._host, self._port, self._log_level))
        self._server.config.lifespan = "on"
        self._task = asyncio.create_task(self._serve(sock), name="api-server")
        started = asyncio.create_task(self._probe.started.wait(), name="api-server-started")
        try:
            await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            started.cancel()
            await self.aclose()
            raise
        started.cancel()
        if self._probe.failed is not None or self._task.done():
            self._closed = True
            self._server.should_exit = True
            reason = self._probe.failed
            try:
                await self._task
            except Exception as exc:
                reason = reason or str(exc)
            raise RuntimeError(f"the API server did not start: {reason or 'it exited'}")

    async def _serve(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            await self._server.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits the process when the app's startup fails; here that would
            # escape the event loop, so it becomes an ordinary error of this task.
            raise RuntimeError(f"uvicorn exited with status {exc.code}") from None
        finally:
            sock.close()

    async def aclose(self) -> None:
        """Stop serving (graceful, bounded by uvicorn's shutdown timeout); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
