"""The read path's access to the table: Query on key ranges, read-unit accounting, TTL filter.

Uses ``Query`` on key ranges only (never Scan), follows ``LastEvaluatedKey``
(a page may be empty and still continue) and drops items whose TTL has passed
(DynamoDB deletes expired items only eventually): server-side with a filter
expression (no bytes sent for them) and again client-side (a clock-skew guard;
the filter saves transfer, not read units).

:class:`TableReader` is what the HTTP API uses: it knows the table's layout (read
from the layout record at start), bounds the DynamoDB calls in flight with one
semaphore shared by every request, and adds each call's consumed read units to
a per-request :class:`ReadStats`. :func:`read_range` and :func:`query_partition`
are the simple whole-range reads used by tests and checks.

:meth:`TableReader.call` is the one way the API reaches DynamoDB (the archive
marker Query of :mod:`queries.read.tiers` included), so it is where a request's calls
are counted and capped: :class:`ReadStats` refuses the call past the request's
budget with :class:`~queries.errors.TooManyCalls` (a 422) before making it. The
budget is ``max_calls_per_sensor`` per sensor the request reads; by default
:data:`PAGES_PER_PARTITION` times the :func:`legal_fanout` (a Query per partition
of the widest legal range, plus the marker Query: 129 for 1-day buckets, 4 shards
and 31 days), so a legal request fits unless its partitions need more than 16
DynamoDB pages each on average (about 40,000 readings per partition and bucket:
a sensor at 1 Hz read over 31 days needs about 1,200 calls).

Expressions use placeholders only: metric names and sensor ids never become part
of an expression's text.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ingest.core.errors import DynamoError, TableError
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import LAYOUT_PK, Reading, TableLayout
from ingest.storage.table import read_layout
from queries.errors import TooManyCalls, wrap_read_error
from queries.read.cache import BucketCache, CacheKey

if TYPE_CHECKING:
    from ingest.storage.archive.store import S3Store

__all__ = [
    "PAGES_PER_PARTITION",
    "ReadStats",
    "TableReader",
    "default_calls_per_sensor",
    "legal_fanout",
    "reading_json",
]


_CONNECTION_RETRY_PAUSES_S = (0.02, 0.1)
"""A read whose connection failed is sent again on a new one after these pauses: a
pooled connection the server closed while idle (Node's servers close idle keep-alive
connections after 5 s; NAT gateways drop idle flows) fails the next request sent on it
before any byte of it is read, so sending it again is safe (reads are idempotent)."""


@dataclass(slots=True)
class ReadStats:
    """What one API request cost in DynamoDB: reported in response headers.

    Attributes:
        read_units: Consumed read capacity units (``ReturnConsumedCapacity=TOTAL``, summed).
        calls: DynamoDB calls made (Query and GetItem), counted as they start.
        items_scanned: Items DynamoDB read before filters (what read units pay for).
        cold_objects: S3 archive objects read (``None``: no cold tier configured, and
            no ``X-Cold-Objects`` header).
        max_calls_per_sensor: The request's call budget per sensor (``None``: no cap).
        sensors: Sensors the request reads (the budget is per sensor).
    """

    read_units: float = 0.0
    calls: int = 0
    items_scanned: int = 0
    cold_objects: int | None = None
    max_calls_per_sensor: int | None = None
    sensors: int = 1

    def count_call(self) -> None:
        """Count a DynamoDB call about to be made.

        Raises:
            TooManyCalls: the request's budget is spent (the call is not made).
        """
        cap = self.max_calls_per_sensor
        if cap is not None and self.calls >= cap * self.sensors:
            raise TooManyCalls(per_sensor=cap, sensors=self.sensors)
        self.calls += 1

    def add(self, resp: dict[str, Any]) -> None:
        """Account for one DynamoDB response (its call was counted by :meth:`count_call`)."""
        consumed = resp.get("ConsumedCapacity")
        if isinstance(consumed, dict):
            self.read_units += float(consumed.get("CapacityUnits", 0.0) or 0.0)
        self.items_scanned += int(resp.get("ScannedCount", resp.get("Count", 0)) or 0)

    def headers(self) -> dict[str, str]:
        """Response headers: ``X-Read-Units``, ``X-DynamoDB-Calls`` (and ``X-Cold-Objects``
        with a cold tier)."""
        units = f"{self.read_units:.4f}".rstrip("0").rstrip(".")
        headers = {"X-Read-Units": units, "X-DynamoDB-Calls": str(self.calls)}
        if self.cold_objects is not None:
            headers["X-Cold-Objects"] = str(self.cold_objects)
        return headers


def reading_json(reading: Reading) -> dict[str, Any]:
    """A reading as the API's reading object: ``ts`` and the metrics by the names sent."""
    return {"ts": reading.ts_ms, **reading.metrics}


PAGES_PER_PARTITION = 16
"""The default call budget, in DynamoDB pages per partition of the widest legal range."""


def legal_fanout(layout: TableLayout, max_range_ms: int) -> int:
    """DynamoDB calls the widest legal read of one sensor needs at the least.

    ``reading``: one Query per partition (shard) of every bucket a range of
    ``max_range_ms`` touches when it does not start on a bucket boundary, plus the
    archive-marker Query. ``packed``: one Query per chunk of windows
    (:data:`queries.read.packedread.WINDOWS_PER_QUERY`) of every bucket touched, plus
    the staging items of two UTC hours and the archive-marker Query.
    """
    buckets = -(-max_range_ms // layout.bucket_ms) + 1
    if layout.kind == "packed":
        chunk_ms = layout.window_ms * 4  # WINDOWS_PER_QUERY (a module above this one)
        return buckets * -(-layout.bucket_ms // chunk_ms) + 3
    return buckets * layout.shards + 1


def default_calls_per_sensor(layout: TableLayout, max_range_ms: int) -> int:
    """The default ``max_calls_per_sensor``: :data:`PAGES_PER_PARTITION` x the legal fan-out."""
    return PAGES_PER_PARTITION * legal_fanout(layout, max_range_ms)


class TableReader:
    """Reads for the HTTP API: one table, its layout, a bound on calls in flight.

    Args:
        client: An open DynamoDB client of the table.
        layout: The table's layout (use :meth:`load` to read it from the table).
        concurrency: DynamoDB calls in flight at once, across every request.
        cold: The S3 archive of the table (the cold tier, see :mod:`queries.read.tiers`);
            ``None``: hot reads only.
        cache: The cache of closed buckets (:mod:`queries.read.cache`); ``None``: every
            read goes to DynamoDB (and the archive).
    """

    def __init__(
        self,
        client: DynamoClient,
        layout: TableLayout,
        *,
        concurrency: int = 16,
        cold: S3Store | None = None,
        cache: BucketCache | None = None,
    ) -> None:
        self.client = client
        self.layout = layout
        self.concurrency = concurrency
        self.cold = cold
        self.cache = cache
        self._sem = asyncio.Semaphore(concurrency)

    def new_stats(self, *, max_calls_per_sensor: int | None = None) -> ReadStats:
        """A request's accounting (counting cold objects when there is a cold tier), with
        its call budget per sensor (``None``: no cap)."""
        return ReadStats(
            cold_objects=None if self.cold is None else 0,
            max_calls_per_sensor=max_calls_per_sensor,
        )

    @classmethod
    async def load(
        cls, client: DynamoClient, *, concurrency: int = 16, cold: S3Store | None = None
    ) -> TableReader:
        """Read the table's layout record (``pk="#layout"``) and return a reader using it.

        Raises:
            TableError: the table does not exist or has no layout record.
        """
        layout = await read_layout(client)
        if layout is None:
            raise TableError(
                f"table {client.table!r} has no layout record (pk={LAYOUT_PK!r}): it was not "
                "created by iot-ingest; run `iot-ingest table create` or the ingest service first"
            )
        return cls(client, layout, concurrency=concurrency, cold=cold)

    @property
    def table(self) -> str:
        """The table's name."""
        return self.client.table

    async def call(self, operation: str, stats: ReadStats, **kwargs: Any) -> dict[str, Any]:
        """One DynamoDB read, counted against the request's budget, bounded by the shared
        semaphore, its cost added to ``stats``.

        Raises:
            TooManyCalls: the request's call budget is spent (nothing is sent).
            ReadFailed: DynamoDB refused the read (``ReadUnavailable`` when retriable; a
                connection that failed is tried twice more first, each try counted).
        """
        async with self._sem:
            for pause in (*_CONNECTION_RETRY_PAUSES_S, None):
                # Counted once it has a slot, so a call cancelled while waiting never counts.
                stats.count_call()
                try:
                    resp = await self.client.call(
                        operation, ReturnConsumedCapacity="TOTAL", **kwargs
                    )
                    break
                except DynamoError as exc:
                    if pause is None or exc.cause != "connection":
                        raise wrap_read_error(exc) from exc
                await asyncio.sleep(pause)
        stats.add(resp)
        return resp

    def cache_key(self, sensor_id: str, bucket: int, fields: Sequence[str] | None) -> CacheKey:
        """The cache key of one sensor's bucket read with ``fields``: the table, its layout
        parameters, the archive read with it, the sensor, the bucket, the projection."""
        layout = self.layout
        cold = self.cold
        return CacheKey(
            table=self.table,
            layout=(layout.bucket_ms, layout.shards, layout.kind),
            archive=None if cold is None else f"{cold.bucket}/{cold.prefix}",
            sensor_id=sensor_id,
            bucket=bucket,
            fields=None if fields is None else tuple(fields),
        )

    def now_s(self) -> int:
        """The current epoch second, as the TTL filter compares it."""
        return math.floor(time.time())
