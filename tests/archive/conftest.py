"""Fixtures of the archive tests: a table on moto DynamoDB and a bucket on moto S3.

* ``archive_env``: a fresh table (3-hour buckets, 4 shards, 2 days' retention) with
  its layout record, an S3 bucket, and open clients; see :class:`ArchiveEnv`.
* ``packed_env``: the same with the ``packed`` layout (15-minute windows): readings put
  are sealed as the write stage seals them, one set per window and put.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest_asyncio

from bench.servers import MotoServer
from ingest.archive.archiver import Archiver, ArchiveSettings
from ingest.aws.settings import AwsSettings
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.archive.store import S3Store
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Item, Reading, TableLayout
from ingest.storage.table import create_table
from ingest.storage.windows import WindowScheme, seal

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
BUCKET_MS = 3 * HOUR_MS
# A fixed "now" on a bucket boundary: 2026-11-22T12:00Z.
NOW_MS = 1_795_348_800_000
LAYOUT = TableLayout(bucket_ms=BUCKET_MS, shards=4, retention_days=2)
PACKED_LAYOUT = TableLayout(
    kind="packed", bucket_ms=BUCKET_MS, retention_days=2, window_ms=900_000, groups=4
)
HORIZON_MS = DAY_MS


def bucket_name(table: str) -> str:
    """An S3 bucket name (3-63 lowercase chars) derived from a table name."""
    return "arch-" + hashlib.sha1(table.encode()).hexdigest()[:20]


def ingest_items(layout: TableLayout, readings: list[Reading], sealed_ms: int) -> list[Item]:
    """The items an ingest writes for ``readings``: one per reading, or on a ``packed``
    table the sealed windows (one set of parts per sensor and window, sealed at
    ``sealed_ms``: a later set wins a timestamp), as the write stage seals them."""
    if layout.kind != "packed":
        return [layout.to_item(r) for r in readings]
    scheme = WindowScheme(layout)
    by_window: dict[tuple[str, int], list[Reading]] = {}
    for r in readings:
        by_window.setdefault((r.sensor_id, scheme.window_start(r.ts_ms)), []).append(r)
    return [scheme.part_item(p) for rs in by_window.values() for p in seal(scheme, rs, sealed_ms)]


async def seed_table_and_bucket(
    endpoint: str, table: str, bucket: str, layout: TableLayout, readings: list[Reading]
) -> int:
    """For a command under test: a table holding ``readings`` (registry included) and an
    empty archive bucket, on one moto endpoint. Returns the number of readings."""
    aws = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    async with DynamoClient(
        table=table, aws=AwsSettings(region="us-east-1", endpoint_url=endpoint, **aws)
    ) as client:
        await create_table(client, layout)
        await client.batch_write(ingest_items(layout, readings, NOW_MS))
        registry = SensorRegistry(client, Metrics())
        registry.observe(readings)
        await registry.flush()
    async with S3Store(bucket=bucket, aws=AwsSettings(endpoint_url=endpoint, **aws)) as store:
        await store.client.create_bucket(Bucket=bucket)
    return len(readings)


@dataclass
class ArchiveEnv:
    """A table and an archive bucket under test."""

    __test__ = False

    dynamo: DynamoClient
    store: S3Store
    layout: TableLayout
    endpoint: str
    seals: int = 0  # packed: sets sealed so far (a later put's set is sealed later)

    def items_of(self, readings: list[Reading], now_ms: int = NOW_MS) -> list[Item]:
        """The items the ingest writes for ``readings`` (see :func:`ingest_items`); on a
        packed table sealed after every earlier put's sets."""
        self.seals += 1
        return ingest_items(self.layout, readings, now_ms + self.seals)

    async def put(self, readings: list[Reading], *, now_ms: int = NOW_MS) -> SensorRegistry:
        """Write readings as a running ingest does: observed by a registry that read the
        archive policy at its start and whose clock says ``now_ms`` (so readings whose
        bucket may be archived by then are marked late), written (25 per call), then the
        registry flushed. Returns the registry."""
        registry = SensorRegistry(self.dynamo, Metrics(), wall_clock=lambda: now_ms / 1000)
        await registry.refresh_policy()
        registry.observe(readings)
        items = self.items_of(readings, now_ms)
        for i in range(0, len(items), 25):
            pending = items[i : i + 25]
            while pending:
                pending = await self.dynamo.batch_write(pending)
        await registry.flush()
        return registry

    def archiver(self, *, now_ms: int = NOW_MS, **settings: object) -> Archiver:
        """An archiver of this table at a fixed clock (horizon: one day)."""
        settings.setdefault("horizon_ms", HORIZON_MS)
        return Archiver(
            self.dynamo,
            self.store,
            self.layout,
            ArchiveSettings(**settings),  # type: ignore[arg-type]
            clock=lambda: now_ms / 1000,
        )

    async def count_items(self, sensor_id: str, bucket_start_ms: int) -> int:
        """The bucket's items (on a packed table: its readings, each timestamp once)."""
        from ingest.storage.reads import query_partition, read_packed

        if self.layout.kind == "packed":
            last = bucket_start_ms + self.layout.bucket_ms - 1
            scheme = WindowScheme(self.layout)
            return len(
                await read_packed(
                    self.dynamo.call, self.dynamo.table, scheme, sensor_id, bucket_start_ms, last, 0
                )
            )
        total = 0
        for pk in self.layout.partition_keys(sensor_id, bucket_start_ms):
            total += len(
                await query_partition(
                    self.dynamo, pk, bucket_start_ms, bucket_start_ms + self.layout.bucket_ms - 1
                )
            )
        return total


@contextlib.asynccontextmanager
async def open_archive_env(
    endpoint: str, table: str, layout: TableLayout
) -> AsyncIterator[ArchiveEnv]:
    """A fresh table with ``layout`` and its archive bucket on one moto endpoint, with open
    clients; the table is deleted on exit."""
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    async with contextlib.AsyncExitStack() as stack:
        dynamo = await stack.enter_async_context(
            DynamoClient(
                table=table, aws=AwsSettings(region="us-east-1", endpoint_url=endpoint, **creds)
            )
        )
        await create_table(dynamo, layout)
        stack.push_async_callback(dynamo.call, "delete_table", TableName=table)
        store = await stack.enter_async_context(
            S3Store(bucket=bucket_name(table), aws=AwsSettings(endpoint_url=endpoint, **creds))
        )
        await store.client.create_bucket(Bucket=store.bucket)
        yield ArchiveEnv(dynamo, store, layout, endpoint)


@pytest_asyncio.fixture
async def archive_env(moto_server: MotoServer, unique_name: str) -> AsyncIterator[ArchiveEnv]:
    async with open_archive_env(moto_server.endpoint_url, unique_name, LAYOUT) as env:
        yield env


@pytest_asyncio.fixture
async def packed_env(moto_server: MotoServer, unique_name: str) -> AsyncIterator[ArchiveEnv]:
    async with open_archive_env(moto_server.endpoint_url, unique_name, PACKED_LAYOUT) as env:
        yield env
