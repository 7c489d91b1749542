"""The read path on a ``packed`` table (decision 0008): pages and series from sealed windows.

A sensor's readings are in its sealed windows (one item per window part, one Query per
bucket and chunk of windows) and, for the last minutes, in its staging group's items.
A page walks the windows in order, :data:`WINDOWS_PER_QUERY` at a time, and stops when
it is full, so a page of the newest readings reads the newest windows only; the staging
readings are fetched once per request, only when the range reaches the part that may
not be sealed yet. Every read goes through :meth:`TableReader.call` (the request's call
budget, the semaphore, read units).

Each timestamp is served once whatever the table holds twice (a window sealed in
several sets, a reading both staged and sealed): :func:`ingest.storage.reads.merge_staged`.

With a cold tier (``serve --s3-bucket``), the sensor's archive markers in the range are
read first (one Query, :func:`queries.read.tiers.markers`), as on a ``reading`` table: a
bucket the archive holds is read whole by :func:`queries.read.tiers.read_bucket` (its
sealed windows, and its archived readings where DynamoDB may lack some: a part past its
TTL), merged without duplicates, and its tier reported; other buckets as above.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from ingest.storage.layout import Reading
from ingest.storage.reads import Caller, merge_staged, packed_staged, packed_windows
from ingest.storage.windows import WindowScheme
from queries.read.reader import ReadStats, TableReader
from queries.read.tiers import HOT, Tier, markers, read_bucket

__all__ = ["WINDOWS_PER_QUERY", "read_packed_page", "read_packed_tiered"]

WINDOWS_PER_QUERY = 4
"""Windows one Query of a page asks for (an hour at the default 15-minute window;
:func:`queries.read.reader.legal_fanout` counts with it)."""


def _project(r: Reading, fields: Sequence[str] | None) -> Reading:
    if fields is None:
        return r
    return Reading(r.sensor_id, r.ts_ms, {k: v for k, v in r.metrics.items() if k in fields}, {})


def _spans(
    reader: TableReader, start_ms: int, end_ms: int, descending: bool
) -> list[tuple[int, int]]:
    """[lo, hi] spans of at most WINDOWS_PER_QUERY windows inside one bucket, in read order."""
    layout = reader.layout
    step = layout.window_ms * WINDOWS_PER_QUERY
    spans: list[tuple[int, int]] = []
    for bucket in layout.bucket_starts(start_ms, end_ms):
        lo = max(start_ms, bucket)
        hi = min(end_ms, bucket + layout.bucket_ms - 1)
        first = lo - (lo - bucket) % step
        spans += [(max(lo, a), min(hi, a + step - 1)) for a in range(first, hi + 1, step)]
    return spans[::-1] if descending else spans


async def read_packed_page(
    reader: TableReader,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    *,
    limit: int,
    descending: bool = False,
    fields: Sequence[str] | None = None,
    stats: ReadStats,
    now_s: int | None = None,
) -> tuple[list[Reading], int | None, list[tuple[int, Tier]]]:
    """Up to ``limit`` readings of a sensor in [start_ms, end_ms], in order, the timestamp
    the next page starts at (``None`` at the end) and the buckets read
    (:func:`queries.read.pages.read_page` makes them a page)."""
    scheme = WindowScheme(reader.layout)
    now_ms = (reader.now_s() if now_s is None else now_s) * 1000
    call: Caller = functools.partial(reader.call, stats=stats)
    archived = await markers(reader, sensor_id, start_ms, end_ms, stats)
    staged = await packed_staged(call, reader.table, scheme, sensor_id, end_ms, now_ms)
    want = limit + 1
    out: list[Reading] = []
    tiers: dict[int, Tier] = {}
    bucket_ms = reader.layout.bucket_ms
    for lo, hi in _spans(reader, start_ms, end_ms, descending):
        bucket = lo - lo % bucket_ms
        marker = archived.get(bucket)
        if marker is not None:
            if bucket in tiers:
                continue  # read whole at its first span
            got, tiers[bucket], _ = await read_bucket(
                reader,
                sensor_id,
                bucket,
                marker,
                start_ms,
                end_ms,
                fields=fields,
                now_s=now_ms // 1000,
                stats=stats,
                descending=descending,
            )
            out += got[: want - len(out)]
            if len(out) >= want:
                break
            continue
        windows = await packed_windows(call, reader.table, scheme, sensor_id, lo, hi, now_ms)
        tiers.setdefault(lo - lo % bucket_ms, HOT)
        got = merge_staged(windows, [r for r in staged if lo <= r.ts_ms <= hi], lo, hi)
        if descending:
            got.reverse()
        out += (_project(r, fields) for r in got[: want - len(out)])
        if len(out) >= want:
            break
    served = list(tiers.items())
    if len(out) > limit:
        return out[:limit], out[limit].ts_ms, served
    return out, None, served


async def _read_hot_range(
    reader: TableReader,
    sensor_id: str,
    ranges: Sequence[tuple[int, int]],
    *,
    fields: Sequence[str] | None,
    stats: ReadStats,
    now_s: int | None = None,
) -> list[Reading]:
    """Every hot reading of a sensor in the (disjoint, ascending) ranges, ascending."""
    if not ranges:
        return []
    scheme = WindowScheme(reader.layout)
    now_ms = (reader.now_s() if now_s is None else now_s) * 1000
    call: Caller = functools.partial(reader.call, stats=stats)
    table = reader.table
    end_ms = ranges[-1][1]
    async with asyncio.TaskGroup() as tg:  # concurrent, bounded by the reader's semaphore
        staged = tg.create_task(packed_staged(call, table, scheme, sensor_id, end_ms, now_ms))
        spans = [
            tg.create_task(packed_windows(call, table, scheme, sensor_id, lo, hi, now_ms))
            for a, b in ranges
            for lo, hi in _spans(reader, a, b, False)
        ]
    windows: dict[int, list[Reading]] = {}
    for task in spans:
        windows.update(task.result())
    merged = merge_staged(windows, staged.result(), ranges[0][0], end_ms)
    return [_project(r, fields) for r in merged if any(a <= r.ts_ms <= b for a, b in ranges)]


async def read_packed_tiered(
    reader: TableReader,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    *,
    fields: Sequence[str] | None,
    stats: ReadStats,
    now_s: int | None = None,
) -> tuple[list[Reading], list[tuple[int, Tier]]]:
    """Every reading of a sensor in [start_ms, end_ms], ascending, with the buckets the
    archive holds read by :func:`queries.read.tiers.read_bucket` (hot and cold merged,
    each timestamp once); and each bucket of the range with the tier that served it.

    Without a cold tier (or archived buckets in the range) the same as
    the hot read of the range, every bucket ``hot``.
    """
    now = reader.now_s() if now_s is None else now_s
    layout = reader.layout
    buckets = layout.bucket_starts(start_ms, end_ms)
    archived = await markers(reader, sensor_id, start_ms, end_ms, stats)
    hot_ranges: list[tuple[int, int]] = []
    for b in buckets:
        if b in archived:
            continue
        lo, hi = max(start_ms, b), min(end_ms, b + layout.bucket_ms - 1)
        if hot_ranges and hot_ranges[-1][1] + 1 == lo:
            hot_ranges[-1] = (hot_ranges[-1][0], hi)  # adjacent hot buckets: one range
        else:
            hot_ranges.append((lo, hi))
    readings = await _read_hot_range(
        reader, sensor_id, hot_ranges, fields=fields, stats=stats, now_s=now
    )
    served: dict[int, Tier] = {}
    for b in sorted(archived):
        got, served[b], _ = await read_bucket(
            reader,
            sensor_id,
            b,
            archived[b],
            start_ms,
            end_ms,
            fields=fields,
            now_s=now,
            stats=stats,
        )
        readings += got
    if archived:
        readings.sort(key=lambda r: r.ts_ms)  # buckets are disjoint: each timestamp once
    return readings, [(b, served.get(b, HOT)) for b in buckets]
