"""Tiered reads: archived buckets read from DynamoDB (hot) and the S3 archive (cold), merged.

With a cold tier configured (``TableReader.cold``, from ``serve --s3-bucket``),
the raw pages (:mod:`queries.read.pages`) and the series (:mod:`queries.read.sampler`) ask
for the sensor's archive markers in the range first (one Query,
:func:`ingest.storage.archive.reader.archive_markers`, made through
:meth:`~queries.read.reader.TableReader.call` so it is counted and capped like the rest). A bucket without a marker (or
with an empty one) is read as before, hot only. A marked bucket is read here, one
sensor-bucket at a time (:func:`read_bucket`):

1. its hot readings in the wanted sub-range, every shard, TTL-expired items
   dropped (the bucket is held in memory: one bucket of one sensor);
2. the bucket's hot count, compared with the marker's ``rows``: the readings read
   when the sub-range covers the whole bucket, otherwise a ``Select=COUNT``
   Query of the whole bucket (no items transferred);
3. when the hot tier may lack archived readings
   (:func:`ingest.storage.archive.reader.hot_is_complete` is false: fewer hot readings
   than archived, an early delete started, or the bucket old enough for TTL), the
   bucket's cold readings in the sub-range (:func:`ingest.storage.archive.reader.read_cold`,
   only this bucket's objects) are merged in by timestamp; the hot reading wins
   where both hold one, so every timestamp appears once.

On a ``packed`` table (decision 0008) the hot tier of a bucket is its one partition of
sealed windows (every set merged, a later set winning a timestamp) and the staging
readings not sealed yet, through the storage layer's
:func:`~ingest.storage.reads.packed_windows`, :func:`~ingest.storage.reads.packed_staged`
and :func:`~ingest.storage.reads.merge_staged`. It is read whole, whatever the
sub-range: the bucket's hot count is its readings, not its items (a part holds hundreds,
a reading may be in two sets), and a whole bucket is a few read units (a day of a 1 Hz
sensor: 16). The rules after that are the same.

Both tiers come out as :class:`~ingest.storage.layout.Reading` objects: the hot items
parsed by :meth:`~ingest.storage.layout.TableLayout.from_item`, the archived readings as
:func:`~ingest.storage.archive.reader.read_cold` decodes them (numbers in the form the
table gives back), so no archived value goes through a number string on its way out.
An archive failure is translated once, here, into the read path's errors
(``ArchiveReadFailed``, ``ArchiveUnavailable`` when retriable).

A sensor has at most one reading per millisecond, so the merged stream still has
strictly increasing timestamps and the raw cursors (a timestamp) stay exact.

Each bucket a response covers gets a tier: ``hot`` (DynamoDB only), ``cold``
(read from the archive, nothing from DynamoDB) or ``hot+cold`` (both contributed
readings). Every archive object fetched counts in the request's ``cold_objects``
(``X-Cold-Objects`` header).
"""

from __future__ import annotations

import asyncio
import functools
import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from ingest.storage.archive.errors import ArchiveError
from ingest.storage.archive.manifest import Manifest
from ingest.storage.archive.reader import archive_markers, hot_is_complete, read_cold
from ingest.storage.items import Item, ReadingProjection
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import (
    merge_staged,
    packed_staged,
    packed_windows,
    partition_query,
    query_pages,
)
from ingest.storage.windows import WindowScheme
from queries.errors import ArchiveReadFailed, ArchiveUnavailable, ReadFailed
from queries.read.cache import NO_TTL
from queries.read.reader import ReadStats, TableReader

if TYPE_CHECKING:
    pass

__all__ = [
    "BOTH",
    "COLD",
    "HOT",
    "Tier",
    "markers",
    "min_ttl",
    "read_bucket",
    "read_hot_bucket",
    "tiers_json",
]

Tier = Literal["hot", "cold", "hot+cold"]
HOT: Tier = "hot"
COLD: Tier = "cold"
BOTH: Tier = "hot+cold"


async def markers(
    reader: TableReader, sensor_id: str, start_ms: int, end_ms: int, stats: ReadStats
) -> dict[int, Manifest]:
    """The sensor's non-empty archived buckets overlapping [start_ms, end_ms] (none: no cold tier).

    Raises:
        ReadFailed: the marker Query failed (raised by :meth:`TableReader.call`).
        TooManyCalls: the request's call budget is spent.
    """
    if reader.cold is None or end_ms < start_ms:
        return {}
    # Through the reader like every other call: the semaphore, the read units, the budget.
    found = await archive_markers(
        _ReaderCalls(reader, stats), reader.layout, sensor_id, start_ms, end_ms
    )
    return {b: m for b, m in found.items() if m.rows > 0}


class _ReaderCalls:
    """:meth:`TableReader.call` for one request, in the shape of the client that
    :func:`ingest.storage.archive.reader.archive_markers` calls (``table`` and ``call``).

    Its failures are the read path's (``ReadFailed``, ``TooManyCalls``): they pass
    through ``archive_markers``, which wraps only the DynamoDB client's own errors.
    """

    __slots__ = ("_reader", "_stats")

    def __init__(self, reader: TableReader, stats: ReadStats) -> None:
        self._reader = reader
        self._stats = stats

    @property
    def table(self) -> str:
        return self._reader.table

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        return await self._reader.call(operation, self._stats, **kwargs)


async def _shard_readings(
    reader: TableReader, sensor_id: str, kwargs: dict[str, object], stats: ReadStats, now_s: int
) -> tuple[list[Reading], int]:
    """The partition's unexpired readings, and the smallest ``ttl`` among them."""
    readings: list[Reading] = []
    expired, parse = TableLayout.is_expired, TableLayout.from_item
    first_ttl = NO_TTL
    async for resp in query_pages(functools.partial(reader.call, stats=stats), kwargs):
        kept: list[ReadingProjection] = [
            it for it in resp.get("Items", ()) if not expired(it, now_s)
        ]
        first_ttl = min(first_ttl, min_ttl(kept))
        readings += [parse(it, sensor_id) for it in kept]
    return readings, first_ttl


async def _shards_readings(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    lo: int,
    hi: int,
    *,
    fields: Sequence[str] | None,
    now_s: int,
    stats: ReadStats,
) -> tuple[list[Reading], int]:
    """A ``reading`` table's unexpired readings of a bucket in [lo, hi], every shard read at
    once, merged ascending, and the smallest ``ttl`` among them."""
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(
                _shard_readings(
                    reader,
                    sensor_id,
                    partition_query(reader.table, pk, lo, hi, fields=fields, now_s=now_s),
                    stats,
                    now_s,
                ),
                name="bucket-shard",
            )
            for pk in reader.layout.partition_keys(sensor_id, bucket)
        ]
    readings = list(heapq.merge(*(t.result()[0] for t in tasks), key=lambda r: r.ts_ms))
    return readings, min(t.result()[1] for t in tasks)


def min_ttl(items: Sequence[Item]) -> int:
    """The smallest ``ttl`` of the items (:data:`~queries.read.cache.NO_TTL` when none has one)."""
    # Of any partition a PartitionStream reads (readings, the registry): the general type.
    return min((int(it["ttl"]["N"]) for it in items if "ttl" in it), default=NO_TTL)


async def _shard_count(reader: TableReader, kwargs: dict[str, object], stats: ReadStats) -> int:
    kwargs["Select"] = "COUNT"
    total = 0
    async for resp in query_pages(functools.partial(reader.call, stats=stats), kwargs):
        total += int(resp.get("Count", 0) or 0)
    return total


def _project(reading: Reading, fields: Sequence[str] | None) -> Reading:
    """An archived reading with only the metrics wanted, in ``fields`` order (as a
    projection of the hot tier gives them)."""
    if fields is None:
        return reading
    metrics = reading.metrics
    return Reading(
        reading.sensor_id, reading.ts_ms, {k: metrics[k] for k in fields if k in metrics}
    )


def _archive_error(exc: ArchiveError) -> ReadFailed:
    if exc.retriable:
        return ArchiveUnavailable(f"archive read failed, try again later: {exc}")
    return ArchiveReadFailed(f"archive read failed: {exc}")


async def _packed_hot(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    *,
    fields: Sequence[str] | None,
    now_s: int,
    stats: ReadStats,
) -> tuple[list[Reading], int]:
    """A ``packed`` table's whole bucket from DynamoDB: its sealed windows and staged
    readings merged (each timestamp once), ascending, parts past their TTL left out; and
    the smallest ``ttl`` of the parts read (a part's is its window's end + retention)."""
    layout = reader.layout
    scheme = WindowScheme(layout)
    call = functools.partial(reader.call, stats=stats)
    last = bucket + layout.bucket_ms - 1
    now_ms = now_s * 1000
    async with asyncio.TaskGroup() as tg:
        sealed = tg.create_task(
            packed_windows(call, reader.table, scheme, sensor_id, bucket, last, now_ms),
            name="tier-windows",
        )
        staged = tg.create_task(
            packed_staged(call, reader.table, scheme, sensor_id, last, now_ms),
            name="tier-staged",
        )
    windows = sealed.result()
    readings = [_project(r, fields) for r in merge_staged(windows, staged.result(), bucket, last)]
    first_ttl = (
        (min(windows) + layout.window_ms + layout.retention_ms) // 1000 if windows else NO_TTL
    )
    return readings, first_ttl


async def read_bucket(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    marker: Manifest,
    lo: int,
    hi: int,
    *,
    fields: Sequence[str] | None,
    now_s: int,
    stats: ReadStats,
    descending: bool = False,
) -> tuple[list[Reading], Tier, int]:
    """One archived bucket's readings with lo <= ts <= hi, hot and cold merged, in order.

    Args:
        reader: The table reader (its ``cold`` store must be set).
        sensor_id: The sensor.
        bucket: The bucket's start.
        marker: The bucket's archive marker.
        lo: First timestamp (inclusive), inside the bucket or before it.
        hi: Last timestamp (inclusive), inside the bucket or after it.
        fields: Metric names wanted (``None``: all).
        now_s: The TTL reference time.
        stats: Accumulates read units and cold objects.
        descending: Newest first.

    Returns:
        The readings (the metrics in ``fields``), which tier served them, and the smallest
        ``ttl`` of the hot readings read (:data:`~queries.read.cache.NO_TTL`: none).

    Raises:
        ReadFailed: DynamoDB or the archive failed.
    """
    layout = reader.layout
    store = reader.cold
    assert store is not None, "read_bucket needs a cold tier"
    last = bucket + layout.bucket_ms - 1
    lo, hi = max(lo, bucket), min(hi, last)
    if layout.kind == "packed":
        whole, first_ttl = await _packed_hot(
            reader, sensor_id, bucket, fields=fields, now_s=now_s, stats=stats
        )
        hot = [r for r in whole if lo <= r.ts_ms <= hi]
        return await _with_cold(
            reader,
            sensor_id,
            bucket,
            marker,
            lo,
            hi,
            hot,
            len(whole),
            first_ttl,
            fields=fields,
            now_s=now_s,
            stats=stats,
            descending=descending,
        )
    pks = layout.partition_keys(sensor_id, bucket)
    hot, first_ttl = await _shards_readings(
        reader, sensor_id, bucket, lo, hi, fields=fields, now_s=now_s, stats=stats
    )
    if lo == bucket and hi == last:
        hot_total = len(hot)
    else:
        async with asyncio.TaskGroup() as tg:
            counts = [
                tg.create_task(
                    _shard_count(
                        reader, partition_query(reader.table, pk, bucket, last, now_s=now_s), stats
                    ),
                    name="tier-count",
                )
                for pk in pks
            ]
        hot_total = sum(t.result() for t in counts)
    return await _with_cold(
        reader,
        sensor_id,
        bucket,
        marker,
        lo,
        hi,
        hot,
        hot_total,
        first_ttl,
        fields=fields,
        now_s=now_s,
        stats=stats,
        descending=descending,
    )


async def _with_cold(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    marker: Manifest,
    lo: int,
    hi: int,
    hot: list[Reading],
    hot_total: int,
    first_ttl: int,
    *,
    fields: Sequence[str] | None,
    now_s: int,
    stats: ReadStats,
    descending: bool,
) -> tuple[list[Reading], Tier, int]:
    """The hot readings of [lo, hi] (ascending), completed from the archive when the hot
    tier may lack archived readings (``hot_total``: the whole bucket's hot count)."""
    layout, store = reader.layout, reader.cold
    assert store is not None, "read_bucket needs a cold tier"
    if hot_is_complete(marker, layout, hot_total, now_s * 1000):
        if descending:
            hot.reverse()
        return hot, HOT, first_ttl

    def counted(_key: str) -> None:
        stats.cold_objects = (stats.cold_objects or 0) + 1

    try:
        cold = await read_cold(
            store, layout, sensor_id, lo, hi, buckets=[bucket], concurrency=2, on_get=counted
        )
    except ArchiveError as exc:
        raise _archive_error(exc) from exc
    by_ts = {r.ts_ms: _project(r, fields) for r in cold}
    added = len(by_ts.keys() - {r.ts_ms for r in hot})
    by_ts.update((r.ts_ms, r) for r in hot)
    merged = [by_ts[t] for t in sorted(by_ts, reverse=descending)]
    if not hot:
        tier = COLD
    elif added:
        tier = BOTH
    else:
        tier = HOT
    return merged, tier, first_ttl


async def read_hot_bucket(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    *,
    fields: Sequence[str] | None,
    now_s: int,
    stats: ReadStats,
) -> tuple[list[Reading], int]:
    """A whole bucket's unexpired readings from DynamoDB, every shard, ascending, and the
    smallest ``ttl`` among them (:data:`~queries.read.cache.NO_TTL`: none). A ``packed``
    table: its sealed windows and staged readings, merged."""
    layout = reader.layout
    if layout.kind == "packed":
        return await _packed_hot(reader, sensor_id, bucket, fields=fields, now_s=now_s, stats=stats)
    last = bucket + layout.bucket_ms - 1
    return await _shards_readings(
        reader, sensor_id, bucket, bucket, last, fields=fields, now_s=now_s, stats=stats
    )


def tiers_json(tiers: Sequence[tuple[int, Tier]]) -> list[dict[str, object]]:
    """The response's ``tiers`` field: which tier served each bucket covered."""
    return [{"bucket_start": b, "tier": t} for b, t in tiers]
