"""An in-process cache of closed buckets: readings no write can change any more, LRU in bytes.

A dashboard refreshing a 24 h chart every few seconds reads the same past buckets
again and again. This cache keeps, per (sensor, bucket, projection), the readings of
buckets that are **closed**: no reading can land in them any more.

When is a bucket closed? The ingest accepts a reading whose timestamp is at most
``max_past_ms`` before the moment it decodes it (``ingest.pipeline.codec``: older ones
are dead-lettered, and a replayed dead letter is validated again), and a reading it
accepts is durable within the *settle time* (its write retry deadline, two registry
flushes and a minute of clock skew: the archiver's own margin, decision 0005). So a
bucket ``[b, b + width)`` can still be written until ``b + width + max_past_ms +
settle``, and is closed from then on (:meth:`Closure.is_closed`). A bucket the archive
holds is no exception: late readings are archived *again* (decision 0005), so an
archived bucket changes until the same moment. The open bucket, and every bucket
inside the late-readings allowance, is read from DynamoDB on every request. With the
ingest's default ``max_past_ms`` (the retention less a day) almost nothing is closed:
the cache pays off where ``max_past_ms`` is short (a fleet that does not backfill), see
docs/operations.md.

What an entry holds is what an uncached read of the whole bucket returns: the
readings in timestamp order (only the metrics of ``fields``, when the request
projects), and the tier that served it. Its key is everything that decides that
content: the table, its layout parameters, the archive (bucket and prefix, or none),
the sensor, the bucket start and the projection. TTL still applies: an entry is used
only while no reading in it has expired (``now < `` its smallest ``ttl``), and is
dropped after that, so a cached bucket never outlives what DynamoDB would return.

Memory is bounded in bytes (``max_bytes``): each entry's size is an estimate from
``sys.getsizeof`` of every object it holds (readings, their metric dicts and values,
each distinct metric name once; small numbers that Python shares are counted per
reading: an over-estimate), and the least recently used entries are evicted until a
new one fits. Entries keep no tags (the API never returns them) and intern metric
names. An entry larger than
the whole bound is not kept. Counters (hits, misses, evictions, bytes) are read by
the API's ``/metrics`` (:mod:`queries.api.metrics`).

Only ``reading`` tables are cached: the ``packed`` layout's reads
(:mod:`queries.read.packedread`) do not go through it.

The cache holds no lock: the event loop runs one request's code at a time, and two
requests missing the same bucket at once both read it (the second ``put`` replaces
the first's equal entry).
"""

from __future__ import annotations

import bisect
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ingest.storage.layout import Reading, TableLayout

__all__ = [
    "NO_TTL",
    "BucketCache",
    "CacheEntry",
    "CacheKey",
    "Closure",
    "compact",
    "reading_bytes",
]

NO_TTL = 2**62
"""The ``valid_until_s`` of an entry whose readings carry no ``ttl``."""


@dataclass(frozen=True, slots=True)
class Closure:
    """When a bucket can no longer be written to.

    Attributes:
        late_allowance_ms: How long after a bucket's end a reading can still land in it:
            the ingest's ``max_past_ms`` plus its settle time.
    """

    late_allowance_ms: int

    def __post_init__(self) -> None:
        if self.late_allowance_ms < 0:
            raise ValueError(f"late_allowance_ms must be >= 0, got {self.late_allowance_ms}")

    def is_closed(self, layout: TableLayout, bucket: int, now_ms: int) -> bool:
        """True when no reading can land in the bucket starting at ``bucket`` any more."""
        return bucket + layout.bucket_ms + self.late_allowance_ms <= now_ms


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Everything that decides a cached bucket's content."""

    table: str
    layout: tuple[int, int, str]  # bucket_ms, shards, kind
    archive: str | None  # "bucket/prefix" of the cold tier, None without one
    sensor_id: str
    bucket: int
    fields: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One closed bucket's readings, ascending, as an uncached read of the whole bucket
    returns them.

    Attributes:
        readings: The readings, in timestamp order.
        tier: The tier that served them (``hot``, ``cold`` or ``hot+cold``).
        valid_until_s: The smallest ``ttl`` among them: the entry is used while the
            TTL clock is below it.
        nbytes: The entry's estimated size.
    """

    readings: tuple[Reading, ...]
    tier: str
    valid_until_s: int
    nbytes: int
    _ts: list[int] = field(repr=False, compare=False)

    def between(self, lo: int, hi: int, *, descending: bool = False) -> list[Reading]:
        """The readings with ``lo <= ts <= hi``, in the order asked for."""
        i = bisect.bisect_left(self._ts, lo)
        j = bisect.bisect_right(self._ts, hi)
        out = list(self.readings[i:j])
        if descending:
            out.reverse()
        return out


_NO_TAGS: dict[str, str] = {}
"""The tags of every cached reading: the API never returns tags, so none are kept (one
shared empty dict, never written to)."""


def reading_bytes(reading: Reading) -> int:
    """Estimated bytes one cached reading holds: the object, its timestamp, its metric
    dict and values, its list slots (the entry's and the timestamp index's); metric names
    are counted once per entry (:func:`compact`)."""
    metrics = reading.metrics
    size = 16 + sys.getsizeof(reading) + sys.getsizeof(reading.ts_ms) + sys.getsizeof(metrics)
    for v in metrics.values():
        size += sys.getsizeof(v)
    return size


def compact(readings: Sequence[Reading]) -> tuple[list[Reading], int]:
    """The readings as the cache keeps them (metric names interned, no tags), and their
    estimated size: :func:`reading_bytes` each, plus each distinct metric name once."""
    out: list[Reading] = []
    names: dict[str, str] = {}
    size = 0
    for r in readings:
        metrics = {names.setdefault(k, sys.intern(k)): v for k, v in r.metrics.items()}
        kept = Reading(r.sensor_id, r.ts_ms, metrics, _NO_TAGS)
        out.append(kept)
        size += reading_bytes(kept)
    return out, size + sum(sys.getsizeof(k) for k in names)


def _entry_bytes(key: CacheKey, readings_bytes: int) -> int:
    # The entry, its key, and its two lists' headers.
    return 400 + sys.getsizeof(key.sensor_id) + readings_bytes


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class BucketCache:
    """LRU cache of closed buckets, bounded in bytes.

    Args:
        max_bytes: The bound on the entries' estimated size (at least 1).
        closure: When a bucket is closed.
        clock_ms: Epoch ms now, for :meth:`is_closed` (tests and benchmarks inject one).
    """

    def __init__(
        self,
        max_bytes: int,
        closure: Closure,
        *,
        clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.max_bytes = max_bytes
        self.closure = closure
        self._clock_ms = clock_ms
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expired = 0
        self.too_large = 0

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[CacheKey]:
        """The keys cached, least recently used first."""
        return list(self._entries)

    def is_closed(self, layout: TableLayout, bucket: int) -> bool:
        """True when the bucket can no longer change (now, by the cache's clock)."""
        return self.closure.is_closed(layout, bucket, self._clock_ms())

    def get(self, key: CacheKey, now_s: int) -> CacheEntry | None:
        """The entry of ``key`` if cached and still whole at TTL time ``now_s`` (a hit,
        moved to the most recently used end), else ``None`` (a miss)."""
        entry = self._entries.get(key)
        if entry is not None and now_s >= entry.valid_until_s:
            self._drop(key, entry)
            self.expired += 1
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(
        self, key: CacheKey, readings: Sequence[Reading], tier: str, valid_until_s: int
    ) -> CacheEntry:
        """Keep a closed bucket's readings (ascending); evict the least recently used
        entries until it fits. Returns the entry (not kept when it is larger than the
        whole bound)."""
        kept, size = compact(readings)
        nbytes = _entry_bytes(key, size)
        entry = CacheEntry(tuple(kept), tier, valid_until_s, nbytes, [r.ts_ms for r in kept])
        old = self._entries.get(key)
        if old is not None:
            self._drop(key, old)
        if nbytes > self.max_bytes:
            self.too_large += 1
            return entry
        while self.bytes + nbytes > self.max_bytes and self._entries:
            victim, gone = next(iter(self._entries.items()))
            self._drop(victim, gone)
            self.evictions += 1
        self._entries[key] = entry
        self.bytes += nbytes
        return entry

    def _drop(self, key: CacheKey, entry: CacheEntry) -> None:
        del self._entries[key]
        self.bytes -= entry.nbytes

    def clear(self) -> None:
        """Forget every entry (counters are kept)."""
        self._entries.clear()
        self.bytes = 0
