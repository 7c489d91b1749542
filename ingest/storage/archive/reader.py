"""The cold tier: a sensor's archived readings in a time range, for the query API.

How the query API merges tiers (hot = DynamoDB, cold = S3):

1. ``markers = await archive_markers(dynamo, layout, sensor_id, start_ms, end_ms)``:
   the sensor's archived buckets in the range, with their reading counts.
2. Read the hot tier as today (TTL-expired items filtered out).
3. For each archived bucket that DynamoDB may no longer hold whole
   (:func:`hot_is_complete` is false: an early delete started, a reading may
   have expired, or the hot readings are fewer than ``marker.rows``), read that
   bucket's cold readings (:func:`read_cold`) and :func:`merge_tiers`: by
   timestamp, hot wins where both hold a reading, so there are no duplicates.
   Other archived buckets need no S3 read at all; buckets without a marker are
   hot only. (A count alone is not enough: late readings written after the
   archive can make up for deleted ones.)

Streams-consumer parts (``part-….s-….parquet``, see :mod:`.streams`) are read
by :func:`read_cold` as well; a reading in both kinds of object is returned once.

:func:`read_cold` gives each metric in the form the table gives it back
(:func:`~ingest.storage.layout.stored_number`: the archive's float64 ``22.0`` is the
``22`` that DynamoDB holds), so a cold reading equals its hot copy without a detour
through a number string.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable, Iterable

from ingest.storage.archive.errors import VerifyError, single_archive_error
from ingest.storage.archive.manifest import Manifest, query_markers
from ingest.storage.archive.parquet import decode
from ingest.storage.archive.paths import date_prefix, parse_key, sensor_prefix
from ingest.storage.archive.store import S3Store
from ingest.storage.dynamo import Queryable
from ingest.storage.layout import Reading, TableLayout, stored_number

__all__ = ["archive_markers", "archived_buckets", "hot_is_complete", "merge_tiers", "read_cold"]


async def archive_markers(
    dynamo: Queryable, layout: TableLayout, sensor_id: str, start_ms: int, end_ms: int
) -> dict[int, Manifest]:
    """The sensor's archived buckets overlapping [start_ms, end_ms], by bucket start (one Query)."""
    return await query_markers(dynamo, sensor_id, layout.bucket_start(start_ms), end_ms)


async def archived_buckets(
    dynamo: Queryable, layout: TableLayout, sensor_id: str, start_ms: int, end_ms: int
) -> set[int]:
    """Starts of the sensor's archived buckets overlapping [start_ms, end_ms]."""
    return set(await archive_markers(dynamo, layout, sensor_id, start_ms, end_ms))


def hot_is_complete(marker: Manifest, layout: TableLayout, hot_count: int, now_ms: int) -> bool:
    """True when DynamoDB still holds every reading the marker's object holds.

    Nothing removes an archived reading from DynamoDB but TTL (never before the
    bucket's start plus the retention), an early delete (``dx``/``del`` on the
    marker) and a hand-made delete (seen as fewer hot readings than archived).
    Late readings only add to the hot tier, so the count alone would be fooled by
    as many late readings as deleted ones.

    Args:
        marker: The bucket's archive marker.
        layout: The table's layout (retention).
        hot_count: The bucket's live readings in DynamoDB.
        now_ms: The TTL reference time, epoch ms.
    """
    return (
        not marker.items_removed
        and now_ms < marker.bucket_start_ms + layout.retention_ms
        and hot_count >= marker.rows
    )


def _decode_stored(data: bytes, sensor_id: str) -> list[Reading]:
    """The object's readings, each metric as the table holds it (CPU-bound: in a thread)."""
    readings = decode(data, sensor_id)
    for r in readings:
        r.metrics = {k: stored_number(v) for k, v in r.metrics.items()}
    return readings


async def read_cold(
    store: S3Store,
    layout: TableLayout,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    *,
    buckets: Iterable[int] | None = None,
    concurrency: int = 8,
    on_get: Callable[[str], None] | None = None,
) -> list[Reading]:
    """A sensor's archived readings with start_ms <= ts <= end_ms, ascending, each ts once.

    Lists the sensor's objects from the first bucket's date on (one paged LIST)
    and reads those whose bucket overlaps the range, ``concurrency`` at a time,
    decoding off the event loop.

    Args:
        store: The archive's S3 store.
        layout: The table's layout (for the bucket width).
        sensor_id: The sensor.
        start_ms: First timestamp (inclusive).
        end_ms: Last timestamp (inclusive).
        buckets: Only these bucket starts (e.g. where the hot tier is incomplete).
        concurrency: Objects fetched at once.
        on_get: Called with each object key fetched (e.g. to count S3 GETs).

    Raises:
        VerifyError: an object is unreadable (corrupt): re-run the archive.
        StorageError: S3 failed.

    Both come alone (the first, when several fetches failed), not in an exception group.
    """
    if end_ms < start_ms:
        return []
    wanted = None if buckets is None else set(buckets)
    first_bucket = layout.bucket_start(start_ms)
    last_date = date_prefix(store.prefix, sensor_id, end_ms)
    start_after = date_prefix(store.prefix, sensor_id, first_bucket)[:-1]  # sorts before the date
    keys: list[str] = []
    async for key in store.keys(sensor_prefix(store.prefix, sensor_id), start_after=start_after):
        if key.rpartition("/")[0] + "/" > last_date:
            break
        name = parse_key(key)
        if name is None:
            continue
        b = name.bucket_start_ms
        if b + layout.bucket_ms <= start_ms or b > end_ms:
            continue
        if wanted is not None and b not in wanted:
            continue
        keys.append(key)
    sem = asyncio.Semaphore(concurrency)

    async def one(key: str) -> list[Reading]:
        async with sem:
            if on_get is not None:
                on_get(key)
            data = await store.get(key)
        if data is None:  # deleted between LIST and GET (a re-archive): nothing to add
            return []
        try:
            readings = await asyncio.to_thread(_decode_stored, data, sensor_id)
        except Exception as exc:
            raise VerifyError(
                f"archived object s3://{store.bucket}/{key} is unreadable ({exc}): "
                "re-run `iot-ingest archive` to re-archive it while the items still exist",
                key=key,
            ) from exc
        return [r for r in readings if start_ms <= r.ts_ms <= end_ms]

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(k), name=f"cold-read-{k}") for k in keys]
    except BaseExceptionGroup as group:
        # The caller speaks the archive's errors: one of them, not the task group's wrapper.
        found = single_archive_error(group)
        if found is None:
            raise
        raise found from group
    merged = heapq.merge(*(t.result() for t in tasks), key=lambda r: r.ts_ms)
    out: list[Reading] = []
    for r in merged:
        if not out or out[-1].ts_ms != r.ts_ms:
            out.append(r)
    return out


def merge_tiers(hot: Iterable[Reading], cold: Iterable[Reading]) -> list[Reading]:
    """Hot and cold readings of one sensor, ascending; hot wins where both hold a timestamp."""
    by_ts = {r.ts_ms: r for r in cold}
    by_ts.update((r.ts_ms, r) for r in hot)
    return [by_ts[t] for t in sorted(by_ts)]
