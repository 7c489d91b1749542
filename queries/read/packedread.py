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
The archive tier does not hold ``packed`` tables yet: no markers are read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from ingest.storage.layout import Reading
from ingest.storage.reads import Caller, merge_staged, packed_staged, packed_windows
from ingest.storage.windows import WindowScheme
from queries.read.reader import ReadStats, TableReader
from queries.read.tiers import HOT, Tier

__all__ = ["WINDOWS_PER_QUERY", "read_packed_page", "read_packed_range"]

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
    staged = await packed_staged(call, reader.table, scheme, sensor_id, end_ms, now_ms)
    want = limit + 1
    out: list[Reading] = []
    tiers: dict[int, Tier] = {}
    bucket_ms = reader.layout.bucket_ms
    for lo, hi in _spans(reader, start_ms, end_ms, descending):
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


async def read_packed_range(
    reader: TableReader,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    *,
    fields: Sequence[str] | None,
    stats: ReadStats,
    now_s: int | None = None,
) -> list[Reading]:
    """Every reading of a sensor in [start_ms, end_ms], ascending (for series)."""
    scheme = WindowScheme(reader.layout)
    now_ms = (reader.now_s() if now_s is None else now_s) * 1000
    call: Caller = functools.partial(reader.call, stats=stats)
    table = reader.table
    async with asyncio.TaskGroup() as tg:  # concurrent, bounded by the reader's semaphore
        staged = tg.create_task(packed_staged(call, table, scheme, sensor_id, end_ms, now_ms))
        spans = [
            tg.create_task(packed_windows(call, table, scheme, sensor_id, lo, hi, now_ms))
            for lo, hi in _spans(reader, start_ms, end_ms, False)
        ]
    windows: dict[int, list[Reading]] = {}
    for task in spans:
        windows.update(task.result())
    return [_project(r, fields) for r in merge_staged(windows, staged.result(), start_ms, end_ms)]
