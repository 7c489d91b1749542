"""Read one sensor's bucket from DynamoDB: every shard with Query (never Scan)."""

from __future__ import annotations

import asyncio

from ingest.core.errors import DynamoError
from ingest.storage.archive.errors import SourceError, single_archive_error
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Item, TableLayout
from ingest.storage.reads import query_partition

__all__ = ["export_bucket"]


async def export_bucket(
    client: DynamoClient,
    layout: TableLayout,
    sensor_id: str,
    bucket_start_ms: int,
    *,
    limit: asyncio.Semaphore | None = None,
) -> dict[str, list[Item]]:
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

    async def one(pk: str) -> list[Item]:
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
