"""Read one sensor's bucket from DynamoDB: every shard with Query (never Scan).

A ``reading`` table's bucket is its shards' items (:func:`export_bucket`); a ``packed``
table's is its sealed windows (:func:`export_packed_bucket`: the bucket's one partition,
every set of every window merged by the storage layer's
:func:`~ingest.storage.reads.packed_windows`, a later set winning a timestamp), so the
archive gets the same one row per reading either way.
"""

from __future__ import annotations

import asyncio

from ingest.core.errors import DynamoError
from ingest.storage.archive.errors import SourceError, single_archive_error
from ingest.storage.dynamo import DynamoClient
from ingest.storage.items import ReadingItem
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.packed import PackedDecodeError
from ingest.storage.reads import merge_staged, packed_windows, query_partition
from ingest.storage.windows import WindowScheme

__all__ = ["export_bucket", "export_packed_bucket"]


async def export_bucket(
    client: DynamoClient,
    layout: TableLayout,
    sensor_id: str,
    bucket_start_ms: int,
    *,
    limit: asyncio.Semaphore | None = None,
) -> dict[str, list[ReadingItem]]:
    """Every item of a sensor's bucket, expired or not, by shard partition key.

    Expired items still present are archived too: they are real readings that
    DynamoDB has not deleted yet.

    Args:
        client: The table's client.
        layout: The table's layout.
        sensor_id: The sensor.
        bucket_start_ms: The bucket's start.
        limit: Bounds the Query calls in flight (shared by the archiver's workers).

    Raises:
        SourceError: a Query failed.
    """
    end_ms = bucket_start_ms + layout.bucket_ms - 1
    sem = limit or asyncio.Semaphore(layout.shards)

    async def one(pk: str) -> list[ReadingItem]:
        async with sem:
            try:
                return await query_partition(client, pk, bucket_start_ms, end_ms)
            except DynamoError as exc:
                raise SourceError(
                    f"Query of partition {pk!r} in table {client.table!r} failed: {exc}",
                    retriable=exc.retriable,
                ) from exc

    pks = layout.partition_keys(sensor_id, bucket_start_ms)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = {pk: tg.create_task(one(pk), name=f"archive-query-{pk}") for pk in pks}
    except BaseExceptionGroup as eg:
        err = single_archive_error(eg)
        if err is None:
            raise
        raise err from eg
    return {pk: t.result() for pk, t in tasks.items()}


async def export_packed_bucket(
    client: DynamoClient,
    scheme: WindowScheme,
    sensor_id: str,
    bucket_start_ms: int,
    *,
    limit: asyncio.Semaphore | None = None,
) -> tuple[list[Reading], dict[str, int]]:
    """Every reading of a sensor's bucket in a ``packed`` table, ascending, each timestamp
    once, and the readings per partition key (one: a packed bucket has no shards).

    Parts past their TTL that DynamoDB has not deleted yet are read too (real readings,
    as :func:`export_bucket` keeps expired items). Staging items are not read: a bucket
    is archived long after its windows were sealed (the settle time covers the seal of a
    late reading, see docs/archival.md).

    Raises:
        SourceError: the Query failed, or a part is corrupt (its window cannot be read).
    """
    layout = scheme.layout
    end_ms = bucket_start_ms + layout.bucket_ms - 1
    pk = layout.window_pk(sensor_id, bucket_start_ms)
    sem = limit or asyncio.Semaphore(1)
    async with sem:
        try:
            # now_ms=0: no part counts as expired (the archive wants what is still there).
            windows = await packed_windows(
                client.call, client.table, scheme, sensor_id, bucket_start_ms, end_ms, 0
            )
        except DynamoError as exc:
            raise SourceError(
                f"Query of partition {pk!r} in table {client.table!r} failed: {exc}",
                retriable=exc.retriable,
            ) from exc
        except PackedDecodeError as exc:
            raise SourceError(
                f"a sealed window of partition {pk!r} in table {client.table!r} is "
                f"unreadable: {exc}; the bucket is left unarchived"
            ) from exc
    readings = merge_staged(windows, [], bucket_start_ms, end_ms)
    return readings, {pk: len(readings)}
