"""Reads a sensor's readings into downsampled series, page by page, never the whole range at once.

Every shard of every bucket in the windows' span is a job; a pool of workers (at
most the reader's concurrency per sensor, and the reader's semaphore across all
requests) queries them, and each DynamoDB page is folded into the per-metric
:class:`~queries.read.series.SeriesAccumulator` as it arrives. Order does not matter
to the accumulators, so no merge is needed: memory is the windows plus the pages
in flight (at most ``MAX_PAGE_ITEMS`` items each).

With a cold tier, buckets the archive holds are left out of the pool and read
afterwards one at a time by :func:`queries.read.tiers.read_bucket` (hot and cold
merged: one bucket of one sensor in memory); ``SensorSeries.tiers`` says which
tier served each bucket of the windows' span.

With a cache (:mod:`queries.read.cache`), closed buckets are taken from it, or read
whole (even where the windows cover only part of one) and kept; they are folded one
bucket at a time, in order, after the shard jobs of the open buckets, so a series
served from the cache sums exactly as the one that filled it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from ingest.storage.archive.manifest import Manifest
from ingest.storage.items import ReadingProjection
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import partition_query, query_pages
from queries.read.cache import CacheEntry
from queries.read.closed import cached, closed_buckets, read_closed
from queries.read.pages import MAX_PAGE_ITEMS
from queries.read.params import Agg
from queries.read.reader import ReadStats, TableReader
from queries.read.rollread import fold_packed_series
from queries.read.series import SeriesAccumulator, WindowGrid
from queries.read.tiers import HOT, Tier, markers, read_bucket

__all__ = ["MAX_METRICS", "SensorSeries", "read_series"]

MAX_METRICS = 64
"""Most metrics in one sensor's series when no ``fields`` are given (others are omitted)."""
_FILLERS = 4  # closed buckets read whole at once per sensor (each fans out over its shards)


@dataclass(slots=True)
class SensorSeries:
    """One sensor's downsampled metrics.

    Attributes:
        metrics: Accumulator per metric name.
        omitted: Metric names seen beyond :data:`MAX_METRICS` (not aggregated).
        tiers: Each bucket of the windows' span, ascending, and the tier that served it.
    """

    metrics: dict[str, SeriesAccumulator] = field(default_factory=dict)
    omitted: set[str] = field(default_factory=set)
    tiers: list[tuple[int, Tier]] = field(default_factory=list)

    def accumulator(
        self, name: str, grid: WindowGrid, aggs: tuple[Agg, ...]
    ) -> SeriesAccumulator | None:
        """The metric's accumulator, made if new; None past :data:`MAX_METRICS` (the
        name is noted in ``omitted``)."""
        acc = self.metrics.get(name)
        if acc is None:
            if len(self.metrics) >= MAX_METRICS:
                self.omitted.add(name)
                return None
            acc = self.metrics[name] = SeriesAccumulator(grid, aggs)
        return acc

    def fold(
        self,
        items: Sequence[ReadingProjection],
        grid: WindowGrid,
        aggs: tuple[Agg, ...],
        now_s: int,
    ) -> None:
        """Fold one DynamoDB page of items into the accumulators (expired items dropped)."""
        columns: dict[str, tuple[list[int], list[float]]] = {}
        expired = TableLayout.is_expired
        for it in items:
            metrics = it.get("m")
            if metrics is None or expired(it, now_s):
                continue
            ts = int(it["sk"]["N"])
            for name, value in metrics["M"].items():
                number = value.get("N")
                if number is None:
                    continue
                col = columns.get(name)
                if col is None:
                    col = columns[name] = ([], [])
                col[0].append(ts)
                col[1].append(float(number))
        self._add(columns, grid, aggs)

    def fold_readings(
        self, readings: list[Reading], grid: WindowGrid, aggs: tuple[Agg, ...]
    ) -> None:
        """Fold readings (an archived bucket, hot and cold merged) into the accumulators."""
        columns: dict[str, tuple[list[int], list[float]]] = {}
        for r in readings:
            for name, value in r.metrics.items():
                col = columns.get(name)
                if col is None:
                    col = columns[name] = ([], [])
                col[0].append(r.ts_ms)
                col[1].append(float(value))
        self._add(columns, grid, aggs)

    def _add(
        self,
        columns: dict[str, tuple[list[int], list[float]]],
        grid: WindowGrid,
        aggs: tuple[Agg, ...],
    ) -> None:
        for name, (ts_list, values) in columns.items():
            acc = self.accumulator(name, grid, aggs)
            if acc is None:
                continue
            acc.add(np.array(ts_list, dtype=np.int64), np.array(values, dtype=np.float64))


async def read_series(
    reader: TableReader,
    sensor_id: str,
    grid: WindowGrid,
    aggs: tuple[Agg, ...],
    *,
    fields: Sequence[str] | None,
    stats: ReadStats,
    now_s: int | None = None,
) -> SensorSeries:
    """Aggregate a sensor's unexpired readings in the grid's windows.

    Args:
        reader: The table reader.
        sensor_id: The sensor.
        grid: The windows (the read covers all of them).
        aggs: The aggregations wanted.
        fields: Metric names (projection); ``None``: every metric (up to ``MAX_METRICS``).
        stats: Accumulates read units.
        now_s: The TTL reference time (default: now).
    """
    layout = reader.layout
    now = reader.now_s() if now_s is None else now_s
    first_ms, last_ms = grid.origin_ms, grid.end_ms - 1
    buckets = layout.bucket_starts(first_ms, last_ms)
    if layout.kind == "packed":
        series = SensorSeries()
        if fields is not None:
            for name in fields:
                series.metrics[name] = SeriesAccumulator(grid, aggs)
        by_bucket = await fold_packed_series(  # rollups, then readings (hot + cold)
            series, reader, sensor_id, grid, aggs, fields=fields, stats=stats, now_s=now
        )
        series.tiers = [(b, by_bucket.get(b, HOT)) for b in buckets]
        return series
    closed = closed_buckets(reader, buckets)
    hits = cached(reader, sensor_id, closed, fields=fields, now_s=now)
    pending = [b for b in buckets if b not in hits]
    archived: dict[int, Manifest] = {}
    if pending:
        span_lo = max(first_ms, pending[0])
        span_hi = min(last_ms, pending[-1] + layout.bucket_ms - 1)
        archived = await markers(reader, sensor_id, span_lo, span_hi, stats)
    jobs: deque[tuple[str, int, int]] = deque(
        (pk, max(first_ms, bucket), min(last_ms, bucket + layout.bucket_ms - 1))
        for bucket in pending
        if bucket not in archived and bucket not in closed
        for pk in layout.partition_keys(sensor_id, bucket)
    )
    to_fill: deque[int] = deque(b for b in pending if b in closed)
    filled: dict[int, CacheEntry] = {}
    series = SensorSeries()
    if fields is not None:
        for name in fields:
            series.metrics[name] = SeriesAccumulator(grid, aggs)

    async def worker() -> None:
        while jobs:
            pk, lo, hi = jobs.popleft()
            kwargs = partition_query(
                reader.table, pk, lo, hi, fields=fields, now_s=now, limit=MAX_PAGE_ITEMS
            )
            async for resp in query_pages(functools.partial(reader.call, stats=stats), kwargs):
                series.fold(resp.get("Items", []), grid, aggs, now)

    async def filler() -> None:
        # Closed buckets not cached yet: each read whole (every shard at once) and kept.
        while to_fill:
            bucket = to_fill.popleft()
            filled[bucket] = await read_closed(
                reader,
                sensor_id,
                bucket,
                archived.get(bucket),
                fields=fields,
                now_s=now,
                stats=stats,
            )

    async with asyncio.TaskGroup() as tg:
        for i in range(min(len(jobs), reader.concurrency)):
            tg.create_task(worker(), name=f"series-{sensor_id}-{i}")
        for i in range(min(len(to_fill), _FILLERS)):
            tg.create_task(filler(), name=f"series-fill-{sensor_id}-{i}")
    served: dict[int, Tier] = {}
    # Whole buckets folded one at a time, in order (the same sums, hit or miss).
    for bucket in buckets:
        entry = hits.get(bucket) or filled.get(bucket)
        if entry is not None:
            series.fold_readings(list(entry.readings), grid, aggs)
            served[bucket] = cast(Tier, entry.tier)
            continue
        marker = archived.get(bucket)
        if marker is None:
            continue
        readings, served[bucket], _ = await read_bucket(
            reader,
            sensor_id,
            bucket,
            marker,
            first_ms,
            last_ms,
            fields=fields,
            now_s=now,
            stats=stats,
        )
        series.fold_readings(readings, grid, aggs)
    series.tiers = [(b, served.get(b, HOT)) for b in buckets]
    return series
