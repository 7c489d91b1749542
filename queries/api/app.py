"""The ASGI app: the ``/v1`` API, the Grafana endpoint, the OpenAPI document and the dashboard.

``create_app(settings)`` opens the DynamoDB client and reads the table's layout
record in the app's lifespan; tests and the demo may hand in a ready
:class:`~queries.read.reader.TableReader` instead. With ``settings.s3_bucket`` the
lifespan also opens the archive's S3 store (checking the bucket) and gives it to
the reader as its cold tier (:mod:`queries.read.tiers`). Errors become JSON bodies
(``{"error": {"code", "message", "parameter", "allowed"}}``) with their status;
every response carries security headers, and the page's Content-Security-Policy
allows only the app's own scripts, styles and API (no CDN, no inline code).

Middleware, outermost first: security headers; CORS (only when origins are
configured: closed by default, no CORS header at all); access control (API keys,
scopes, rate limits: :mod:`queries.api.auth`). CORS sits outside the access control so
preflight requests need no key and a 401 or 429 still reaches the calling page.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.storage.archive.store import S3Store
from ingest.storage.dynamo import DynamoClient
from queries.api import grafana, routes
from queries.api.auth import AccessControl
from queries.api.cursor import CursorCodec
from queries.api.metricnames import MetricNames
from queries.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from queries.api.metrics import QueryMetrics
from queries.api.openapi import openapi_document
from queries.api.ratelimit import RateLimiter
from queries.api.responses import JSONResponse
from queries.api.settings import ServeSettings
from queries.errors import QueryError, ReadUnavailable
from queries.read.cache import BucketCache, Closure
from queries.read.reader import ReadStats, TableReader

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "STATIC_DIR",
    "SecurityHeaders",
    "create_app",
    "open_cold_tier",
    "table_client",
]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _SECURITY_HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_response(request: Request, exc: QueryError) -> JSONResponse:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    stats = getattr(request.state, "stats", None)
    if isinstance(stats, ReadStats):
        headers.update(stats.headers())
    if isinstance(exc, ReadUnavailable):
        headers["Retry-After"] = "1"
    if exc.status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def _on_query_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryError)
    return _error_response(request, exc)


def _first_query_error(exc: BaseException) -> QueryError | None:
    if isinstance(exc, QueryError):
        return exc
    if isinstance(exc, ExceptionGroup):
        for inner in exc.exceptions:
            found = _first_query_error(inner)
            if found is not None:
                return found
    return None


async def _on_exception_group(request: Request, exc: Exception) -> Response:
    # A failed read inside a task group (shard fan-out) arrives wrapped in a group.
    found = _first_query_error(exc)
    if found is None:
        raise exc
    return _error_response(request, found)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = f"{request.method} {request.url.path}: {exc.detail}; see /openapi.json"
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _on_internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the exception after this response is sent.
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "internal error: see the server's log"}},
        status_code=500,
        headers={"Cache-Control": "no-store"},
    )


def _middleware(settings: ServeSettings) -> list[Middleware]:
    stack = [Middleware(SecurityHeaders)]
    if settings.cors_origins:
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept"],
                expose_headers=[
                    "X-Read-Units",
                    "X-DynamoDB-Calls",
                    "X-Cold-Objects",
                    "Retry-After",
                ],
                allow_credentials=False,  # keys travel in headers, never cookies
                max_age=600,
            )
        )
    limiter = RateLimiter(settings.rate_limit) if settings.rate_limit is not None else None
    stack.append(Middleware(AccessControl, auth=settings.auth, limiter=limiter))
    return stack


def table_client(settings: ServeSettings) -> DynamoClient:
    """The DynamoDB client of the served table (open it with ``async with``)."""
    return DynamoClient(
        table=settings.table,
        max_connections=settings.query_concurrency,
        aws=settings.aws,
    )


@asynccontextmanager
async def open_cold_tier(settings: ServeSettings) -> AsyncIterator[S3Store]:
    """The archive bucket as the cold tier, checked readable (closed on exit).

    Raises:
        StorageError: the bucket is missing, unreachable, or this role may not read it
            (the query role's S3 permissions are in ``deploy/iam/query-archive.json``).
    """
    async with S3Store(
        bucket=settings.s3_bucket or "",
        prefix=settings.s3_prefix or "archive",
        max_connections=settings.query_concurrency,
        aws=settings.aws.with_endpoint(settings.s3_endpoint),
    ) as store:
        await store.check()
        log.info("cold tier: s3://%s/%s/", store.bucket, store.prefix)
        yield store


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def create_app(
    settings: ServeSettings,
    *,
    reader: TableReader | None = None,
    clock_ms: Callable[[], int] = _wall_clock_ms,
) -> Starlette:
    """Build the app.

    Args:
        settings: Table, limits.
        reader: A ready reader (its client stays the caller's); ``None``: the app opens
            a DynamoDB client and reads the layout record during its lifespan startup.
            With ``settings.s3_bucket`` and a reader without a cold store, the lifespan
            opens the archive's store and sets it as the reader's ``cold`` (closing it
            at shutdown).
        clock_ms: Now in epoch ms, read once per request (relative times such as
            ``now-1h``, defaulted ranges); tests inject a fixed or stepped clock.
    """
    if settings.auth is None:
        log.warning(
            "query API authentication is OFF: anyone who can reach this server reads every "
            "sensor (configure API keys for anything but a local demo)"
        )
    index_html = (STATIC_DIR / "index.html").read_bytes()
    openapi_json = orjson.dumps(openapi_document(settings))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if reader is None:
                client = await stack.enter_async_context(table_client(settings))
                app.state.reader = await TableReader.load(
                    client, concurrency=settings.query_concurrency
                )
                layout = app.state.reader.layout
                log.info(
                    "serving table %s (buckets of %d ms, %d shards)",
                    settings.table,
                    layout.bucket_ms,
                    layout.shards,
                )
            table_reader: TableReader = app.state.reader
            if settings.s3_bucket is not None and table_reader.cold is None:
                table_reader.cold = await stack.enter_async_context(open_cold_tier(settings))
                stack.callback(setattr, table_reader, "cold", None)
            if settings.cache_max_bytes > 0 and table_reader.cache is None:
                table_reader.cache = BucketCache(
                    settings.cache_max_bytes, Closure(settings.late_allowance_ms)
                )
                stack.callback(setattr, table_reader, "cache", None)
                log.info(
                    "closed-bucket cache: %d bytes, buckets cached %.3g h after their end",
                    settings.cache_max_bytes,
                    settings.late_allowance_ms / 3_600_000,
                )
            yield

    async def index(_: Request) -> Response:
        return Response(index_html, media_type="text/html; charset=utf-8")

    async def openapi(_: Request) -> Response:
        return Response(openapi_json, media_type="application/json")

    def current_cache() -> BucketCache | None:
        current: TableReader | None = getattr(app.state, "reader", None)
        return None if current is None else current.cache

    query_metrics = QueryMetrics(current_cache)

    async def metrics(_: Request) -> Response:
        return Response(query_metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        layout = request.app.state.reader.layout
        body: dict[str, Any] = {
            "status": "ok",
            "table": settings.table,
            "layout": {"bucket_ms": layout.bucket_ms, "shards": layout.shards},
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *routes.routes,
            *grafana.routes,
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        middleware=_middleware(settings),
        exception_handlers={
            QueryError: _on_query_error,
            ExceptionGroup: _on_exception_group,
            HTTPException: _on_http_error,
            Exception: _on_internal_error,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.clock_ms = clock_ms
    app.state.metric_names = MetricNames()
    if settings.cursor_keys:
        app.state.cursors = CursorCodec(settings.cursor_keys)
    else:
        # One key per process: cursors die with it (a restart, another replica).
        app.state.cursors = CursorCodec.random()
        log.info("page cursors: signed with a random per-process key (see --cursor-key-file)")
    if reader is not None:
        app.state.reader = reader
    return app
