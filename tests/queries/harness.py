"""Helpers of the queries tests: a test table to fill, the API over real HTTP."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import aiohttp

from ingest.aws.settings import AwsSettings
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.dynamo import DynamoClient, put_all
from ingest.storage.layout import Item, Reading, TableLayout
from queries.read.params import AGGREGATIONS
from queries.read.reader import TableReader


def dynamo_client(
    table: str, endpoint: str, client_cls: type[DynamoClient] = DynamoClient
) -> DynamoClient:
    """A client of ``table`` at a local DynamoDB-API endpoint, with dummy credentials."""
    return client_cls(
        table=table,
        aws=AwsSettings(
            region="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ),
    )


HOUR_MS = 3_600_000


@dataclass
class TestTable:
    """A table under test: its client and layout, and ways to fill it."""

    __test__ = False  # not a test class for pytest

    client: DynamoClient
    layout: TableLayout
    endpoint: str

    @property
    def name(self) -> str:
        return self.client.table

    async def put_items(self, items: list[Item]) -> None:
        """Write items, 25 per BatchWriteItem, resending what comes back unprocessed."""
        await put_all(self.client, items)

    async def put(self, readings: list[Reading]) -> None:
        """Write readings through the table layout (one item each)."""
        await self.put_items([self.layout.to_item(r) for r in readings])

    async def register(self, readings: list[Reading]) -> None:
        """Record readings in the sensor registry, as the ingest service does."""
        registry = SensorRegistry(self.client, Metrics())
        registry.observe(readings)
        await registry.flush()


@dataclass
class Api:
    """The app on a loopback port, and an HTTP client for it."""

    url: str
    session: aiohttp.ClientSession
    reader: TableReader

    async def get(self, path: str, **params: Any) -> tuple[int, Any, Any]:
        """GET ``path`` with query ``params``; return (status, headers, decoded JSON)."""
        query = {k: str(v) for k, v in params.items() if v is not None}
        async with self.session.get(self.url + path, params=query) as resp:
            return resp.status, resp.headers, await resp.json()

    async def post(self, path: str, body: Any) -> tuple[int, Any, Any]:
        """POST JSON ``body`` to ``path``; return (status, headers, decoded JSON)."""
        async with self.session.post(self.url + path, json=body) as resp:
            return resp.status, resp.headers, await resp.json()


class RecordingClient(DynamoClient):
    """A DynamoDB client that keeps every response (to see the pages DynamoDB returned)
    and counts the calls started (``started``: cancelled ones included)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.responses: list[tuple[str, dict[str, Any]]] = []
        self.started = 0

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.started += 1
        resp = await super().call(operation, **kwargs)
        self.responses.append((operation, resp))
        return resp


def expired(item: Item, now_s: float) -> Item:
    """The item with a TTL in the past (DynamoDB has not deleted it yet)."""
    return {**item, "ttl": {"N": str(int(now_s) - 3600)}}


def ms_now() -> int:
    """Now, epoch milliseconds."""
    return time.time_ns() // 1_000_000


def reference(
    points: list[tuple[int, float]], start: int, end: int, step: int
) -> tuple[list[int], dict[str, list[Any]]]:
    """Windows [k*step, (k+1)*step) overlapping [start, end], aggregated the obvious way."""
    first = start // step
    last = end // step
    windows: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for ts, v in points:
        k = ts // step
        if first <= k <= last:
            windows[k].append((ts, v))
    starts = [k * step for k in range(first, last + 1)]
    out: dict[str, list[Any]] = {a: [] for a in AGGREGATIONS}
    for k in range(first, last + 1):
        w = sorted(windows.get(k, []))
        values = [v for _, v in w]
        out["count"].append(len(w))
        if not w:
            for a in ("avg", "min", "max", "sum", "first", "last"):
                out[a].append(None)
            continue
        out["sum"].append(math.fsum(values))
        out["avg"].append(math.fsum(values) / len(values))
        out["min"].append(min(values))
        out["max"].append(max(values))
        out["first"].append(w[0][1])
        out["last"].append(w[-1][1])
    return starts, out


def assert_close(got: list[Any], want: list[Any], what: str) -> None:
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None or (isinstance(g, float) and math.isnan(g)), f"{what}[{i}]: {g}"
        else:
            assert g is not None, f"{what}[{i}]: None, want {w}"
            assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-6), f"{what}[{i}]: {g} != {w}"
