"""Raw readings, one page at a time: a lazy k-way merge over every shard of every bucket.

Buckets are disjoint time ranges, so the merged order is bucket by bucket; inside
a bucket the shards interleave and are merged on the timestamp with a heap. Each
shard is a :class:`PartitionStream` that fetches one DynamoDB page when its buffer
runs dry, following ``LastEvaluatedKey`` through empty pages (a page whose items
were all expired is empty and still continues).

Buckets are read in waves: the first wave is one bucket (all its shards at once);
when a wave runs out before the page is full, the next wave is twice as many
buckets, up to ``max_wave_partitions`` partitions. A dense range costs one wave; a
sparse month costs a handful. Every shard's first page in a wave is fetched
concurrently; the DynamoDB calls in flight are bounded by the reader's semaphore.

A page asks for ``limit + 1`` readings: the extra one tells whether a next page
exists and where it starts (see :mod:`queries.api.cursor` for why a timestamp is an
exact position).

With a cold tier (``TableReader.cold``), a bucket the archive holds is read whole
by :func:`queries.read.tiers.read_bucket` instead (hot and cold merged, one bucket at a
time) and spliced into the same ordered stream; ``Page.tiers`` says which tier
served each bucket the page covered.

With a cache (:mod:`queries.read.cache`), a closed bucket found there is sliced
instead of read (the same readings, so the same cursors: a cursor is a timestamp), and
a closed bucket the page read from end to end is kept. A page never reads more of a
closed bucket than it needs to fill the cache: a bucket the page stops inside is
simply not kept.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from ingest.storage.archive.manifest import Manifest
from ingest.storage.items import ReadingProjection, RegistryItem
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import follow, partition_query
from queries.read.cache import NO_TTL
from queries.read.closed import cached, closed_buckets, keep
from queries.read.packedread import read_packed_page
from queries.read.reader import ReadStats, TableReader
from queries.read.tiers import HOT, Tier, markers, min_ttl, read_bucket

__all__ = ["MAX_PAGE_ITEMS", "Page", "PartitionStream", "read_page"]


_ItemT = TypeVar("_ItemT", ReadingProjection, RegistryItem)


class PartitionStream(Generic[_ItemT]):
    """One partition's items in a key range, fetched a DynamoDB page at a time.

    Generic in the partition's item type (readings, or registry items): give it by the
    variable's annotation (``stream: PartitionStream[RegistryItem] = PartitionStream(...)``),
    not by subscripting the class, which would cost a call per stream.

    Args:
        reader: The table reader (semaphore, accounting).
        kwargs: Query arguments (see :func:`ingest.storage.reads.partition_query`).
        now_s: Items with a TTL at or before this epoch second are dropped.
    """

    __slots__ = ("buf", "done", "first_ttl", "kwargs", "now_s", "reader")

    def __init__(self, reader: TableReader, kwargs: dict[str, Any], now_s: int) -> None:
        self.reader = reader
        self.kwargs = kwargs
        self.now_s = now_s
        self.buf: deque[_ItemT] = deque()
        self.done = False
        self.first_ttl = NO_TTL  # the smallest ttl of the items kept so far

    async def fill(self, stats: ReadStats, limit: int | None = None) -> None:
        """Fetch pages until at least one item is buffered or the partition is exhausted.

        Args:
            stats: Accumulates read units.
            limit: Items per DynamoDB page from now on (``None``: keep the current one).
        """
        if limit is not None:
            self.kwargs["Limit"] = limit
        while not self.buf and not self.done:
            resp = await self.reader.call("query", stats, **self.kwargs)
            now_s = self.now_s
            expired = TableLayout.is_expired
            kept = [it for it in resp.get("Items", ()) if not expired(it, now_s)]
            self.first_ttl = min(self.first_ttl, min_ttl(kept))
            self.buf.extend(kept)
            self.done = not follow(self.kwargs, resp)


@dataclass(slots=True)
class Page:
    """A page of readings, in the requested order, and where the next one starts.

    Attributes:
        items: At most ``limit`` readings, merged in timestamp order (hot and cold alike).
        next_ts: The timestamp the next page starts at (inclusive), ``None`` at the end.
        tiers: Each bucket the page read, in reading order, and the tier that served it.
    """

    items: list[Reading]
    next_ts: int | None
    tiers: list[tuple[int, Tier]] = field(default_factory=list)


MAX_PAGE_ITEMS = 2_500
"""Most items one DynamoDB page may return here: bounds the memory of pages in flight."""


def _page_size(remaining: int, partitions: int) -> int:
    # Shards split a bucket's readings evenly (a hash of the timestamp): ask each partition
    # of the wave for a share with some margin, so one round usually fills the page without
    # over-reading; the wave's first pages hold about 1.25 x remaining items in all.
    share = max(10, math.ceil(remaining * 1.25 / partitions) + 2)
    return max(1, min(remaining, share, MAX_PAGE_ITEMS))


async def _merge_bucket(
    streams: list[PartitionStream[ReadingProjection]],
    sensor_id: str,
    out: list[Reading],
    want: int,
    stats: ReadStats,
    sign: int,
) -> None:
    heap = [(sign * int(s.buf[0]["sk"]["N"]), i) for i, s in enumerate(streams) if s.buf]
    heapq.heapify(heap)
    while heap and len(out) < want:
        _, i = heapq.heappop(heap)
        stream = streams[i]
        out.append(TableLayout.from_item(stream.buf.popleft(), sensor_id))
        if len(out) >= want:
            return
        if not stream.buf and not stream.done:
            # Refill for this stream's share of what the page still needs: what is left
            # in buffers when the page is full is read again by the next page.
            await stream.fill(stats, _page_size(want - len(out), len(streams)))
        if stream.buf:
            heapq.heappush(heap, (sign * int(stream.buf[0]["sk"]["N"]), i))


async def read_page(
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
    max_wave_partitions: int = 64,
) -> Page:
    """Up to ``limit`` unexpired readings of a sensor in [start_ms, end_ms], in order.

    Args:
        reader: The table reader.
        sensor_id: The sensor.
        start_ms: First timestamp (inclusive).
        end_ms: Last timestamp (inclusive).
        limit: Most readings returned.
        descending: Newest first.
        fields: Metric names to fetch (projection); ``None``: all.
        stats: Accumulates read units.
        now_s: The TTL reference time (default: now).
        max_wave_partitions: Most partitions whose first page is fetched in one wave.

    Returns:
        The page, with the timestamp where the next page starts.
    """
    layout = reader.layout
    now = reader.now_s() if now_s is None else now_s
    if layout.kind == "packed":
        items, nxt, served = await read_packed_page(
            reader,
            sensor_id,
            start_ms,
            end_ms,
            limit=limit,
            descending=descending,
            fields=fields,
            stats=stats,
            now_s=now,
        )
        return Page(items, nxt, served)
    buckets = layout.bucket_starts(start_ms, end_ms)
    if descending:
        buckets.reverse()
    want = limit + 1
    sign = -1 if descending else 1
    out: list[Reading] = []
    max_wave = max(1, max_wave_partitions // layout.shards)
    closed = closed_buckets(reader, buckets)
    hits = cached(reader, sensor_id, closed, fields=fields, now_s=now)
    pending = sorted(b for b in buckets if b not in hits)
    archived: dict[int, Manifest] = {}
    if pending:
        span_lo = max(start_ms, pending[0])
        span_hi = min(end_ms, pending[-1] + layout.bucket_ms - 1)
        archived = await markers(reader, sensor_id, span_lo, span_hi, stats)

    def whole(bucket: int) -> bool:
        # A closed bucket this read covers from end to end: what it reads is all of it.
        return bucket in closed and start_ms <= bucket and bucket + layout.bucket_ms - 1 <= end_ms

    tiers: list[tuple[int, Tier]] = []
    wave = 1
    pos = 0
    while pos < len(buckets) and len(out) < want:
        entry = hits.get(buckets[pos])
        if entry is not None:
            lo = max(start_ms, buckets[pos])
            hi = min(end_ms, buckets[pos] + layout.bucket_ms - 1)
            out += entry.between(lo, hi, descending=descending)[: want - len(out)]
            tiers.append((buckets[pos], cast(Tier, entry.tier)))
            pos += 1
            continue
        marker = archived.get(buckets[pos])
        if marker is not None:
            readings, tier, first_ttl = await read_bucket(
                reader,
                sensor_id,
                buckets[pos],
                marker,
                start_ms,
                end_ms,
                fields=fields,
                now_s=now,
                stats=stats,
                descending=descending,
            )
            if whole(buckets[pos]):
                ascending = readings[::-1] if descending else readings
                keep(reader, sensor_id, buckets[pos], ascending, tier, first_ttl, fields=fields)
            tiers.append((buckets[pos], tier))
            out += readings[: want - len(out)]
            pos += 1
            continue
        chunk: list[int] = []
        while (
            pos < len(buckets)
            and len(chunk) < wave
            and buckets[pos] not in archived
            and buckets[pos] not in hits
        ):
            chunk.append(buckets[pos])
            pos += 1
        size = _page_size(want - len(out), layout.shards * len(chunk))
        waves: list[list[PartitionStream[ReadingProjection]]] = []
        for bucket in chunk:
            lo = max(start_ms, bucket)
            hi = min(end_ms, bucket + layout.bucket_ms - 1)
            waves.append(
                [
                    PartitionStream(
                        reader,
                        partition_query(
                            reader.table,
                            pk,
                            lo,
                            hi,
                            descending=descending,
                            fields=fields,
                            now_s=now,
                            limit=size,
                        ),
                        now,
                    )
                    for pk in layout.partition_keys(sensor_id, bucket)
                ]
            )
        async with asyncio.TaskGroup() as tg:
            for streams in waves:
                for stream in streams:
                    tg.create_task(stream.fill(stats), name="page-fill")
        for bucket, streams in zip(chunk, waves, strict=True):
            tiers.append((bucket, HOT))
            first = len(out)
            await _merge_bucket(streams, sensor_id, out, want, stats, sign)
            if whole(bucket) and all(s.done and not s.buf for s in streams):
                # The page took every reading of a closed bucket: keep them.
                got = out[first:]
                if descending:
                    got.reverse()
                first_ttl = min(s.first_ttl for s in streams)
                keep(reader, sensor_id, bucket, got, HOT, first_ttl, fields=fields)
            if len(out) >= want:
                break
        wave = min(wave * 2, max_wave)
    if len(out) > limit:
        nxt = out[limit].ts_ms
        # The page covers the range up to (not including) the next page's first reading.
        if descending:
            tiers = [(b, t) for b, t in tiers if b + layout.bucket_ms - 1 > nxt]
        else:
            tiers = [(b, t) for b, t in tiers if b < nxt]
        return Page(out[:limit], nxt, tiers)
    return Page(out, None, tiers)
