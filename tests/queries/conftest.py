"""Fixtures for the queries tests: a filled test table and the API served over real HTTP.

* ``make_table(layout=None)``: a fresh table (the test's unique name) on the
  parametrized DynamoDB-API server, created with its layout record; see
  :class:`~tests.queries.harness.TestTable` to fill it.
* ``serve_api(table, endpoint=None, client_cls=DynamoClient, clock_ms=None, **limits)``: the app
  (reading the layout record like ``serve`` does) on a loopback port; ``await api.get(path, **params)`` ->
  ``(status, headers, json)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import TableLayout
from ingest.storage.table import create_table
from queries.api.app import create_app
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings
from queries.read.reader import TableReader
from tests.queries.harness import HOUR_MS, Api, TestTable, dynamo_client


@pytest_asyncio.fixture
async def make_table(
    dynamodb_endpoint: str, unique_name: str
) -> AsyncIterator[Callable[..., Awaitable[TestTable]]]:
    """Factory of fresh tables with a layout record; deleted after the test."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make(layout: TableLayout | None = None) -> TestTable:
            nonlocal count
            count += 1
            name = unique_name if count == 1 else f"{unique_name}-{count}"
            client = await stack.enter_async_context(dynamo_client(name, dynamodb_endpoint))
            layout = layout or TableLayout(bucket_ms=HOUR_MS, shards=4, retention_days=30)
            await create_table(client, layout)
            stack.push_async_callback(client.call, "delete_table", TableName=name)
            return TestTable(client, layout, dynamodb_endpoint)

        yield make


@pytest_asyncio.fixture
async def serve_api() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """Factory: serve the API for a test table; ``await serve_api(table, max_points=...)``."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(
            table: TestTable,
            *,
            endpoint: str | None = None,
            client_cls: type[DynamoClient] = DynamoClient,
            clock_ms: Callable[[], int] | None = None,
            **limits: Any,
        ) -> Api:
            client = await stack.enter_async_context(
                dynamo_client(table.name, endpoint or table.endpoint, client_cls)
            )
            settings = ServeSettings(table=table.name, **limits)
            reader = await TableReader.load(client, concurrency=settings.query_concurrency)
            server = await stack.enter_async_context(
                ApiServer(
                    create_app(
                        settings, reader=reader, **({"clock_ms": clock_ms} if clock_ms else {})
                    )
                )
            )
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Api(server.url, session, reader)

        yield serve
