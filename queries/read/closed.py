"""Closed buckets through the cache (:mod:`queries.read.cache`): found there, or read whole and kept.

The raw pages (:mod:`queries.read.pages`) and the series (:mod:`queries.read.sampler`)
look up every closed bucket of their range first (:func:`cached`), so the archive-marker
Query covers only the buckets still to read, and a range served wholly from the cache
makes no DynamoDB call at all (``X-Read-Units: 0``). A closed bucket not found is read
whole by :func:`read_closed` (hot, or hot and cold merged when the archive holds it)
and kept (:func:`keep`); the open bucket and the buckets still inside the late-readings
allowance are read as before, on every request.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.storage.archive.manifest import Manifest
from ingest.storage.layout import Reading
from queries.read.cache import CacheEntry
from queries.read.reader import ReadStats, TableReader
from queries.read.tiers import HOT, read_bucket, read_hot_bucket

__all__ = ["cached", "closed_buckets", "keep", "read_closed"]


def closed_buckets(reader: TableReader, buckets: Sequence[int]) -> set[int]:
    """The buckets that can no longer change (none without a cache)."""
    cache = reader.cache
    if cache is None:
        return set()
    return {b for b in buckets if cache.is_closed(reader.layout, b)}


def cached(
    reader: TableReader,
    sensor_id: str,
    closed: set[int],
    *,
    fields: Sequence[str] | None,
    now_s: int,
) -> dict[int, CacheEntry]:
    """The entries of the closed buckets found in the cache (each lookup a hit or a miss)."""
    cache = reader.cache
    if cache is None:
        return {}
    found: dict[int, CacheEntry] = {}
    for bucket in sorted(closed):
        entry = cache.get(reader.cache_key(sensor_id, bucket, fields), now_s)
        if entry is not None:
            found[bucket] = entry
    return found


def keep(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    readings: Sequence[Reading],
    tier: str,
    first_ttl: int,
    *,
    fields: Sequence[str] | None,
) -> CacheEntry:
    """Keep a closed bucket's whole content (readings ascending); returns its entry."""
    assert reader.cache is not None, "keep needs a cache"
    key = reader.cache_key(sensor_id, bucket, fields)
    return reader.cache.put(key, readings, tier, first_ttl)


async def read_closed(
    reader: TableReader,
    sensor_id: str,
    bucket: int,
    marker: Manifest | None,
    *,
    fields: Sequence[str] | None,
    now_s: int,
    stats: ReadStats,
) -> CacheEntry:
    """Read a closed bucket whole (with its archive marker: hot and cold merged) and keep it.

    Raises:
        ReadFailed: DynamoDB or the archive failed (nothing is kept).
        TooManyCalls: the request's call budget is spent.
    """
    if marker is None:
        readings, first_ttl = await read_hot_bucket(
            reader, sensor_id, bucket, fields=fields, now_s=now_s, stats=stats
        )
        tier: str = HOT
    else:
        last = bucket + reader.layout.bucket_ms - 1
        readings, tier, first_ttl = await read_bucket(
            reader, sensor_id, bucket, marker, bucket, last, fields=fields, now_s=now_s, stats=stats
        )
    return keep(reader, sensor_id, bucket, readings, tier, first_ttl, fields=fields)
