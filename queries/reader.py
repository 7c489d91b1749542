"""The read path: every shard of every bucket in a range, queried concurrently, merged in order.

Uses ``Query`` on key ranges only (never Scan), follows ``LastEvaluatedKey``
(a page may be empty and still continue) and drops items whose TTL has passed
(DynamoDB deletes expired items only eventually).
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any

from ingest.dynamo import DynamoClient
from ingest.layout import Item, Reading, TableLayout

__all__ = ["query_partition", "read_range"]


async def query_partition(
    client: DynamoClient, pk: str, start_ms: int, end_ms: int, *, descending: bool = False
) -> list[Item]:
    """All items of one partition with start_ms <= sk <= end_ms, in sk order."""
    items: list[Item] = []
    kwargs: dict[str, Any] = {
        "TableName": client.table,
        "KeyConditionExpression": "#pk = :pk AND #sk BETWEEN :a AND :b",
        "ExpressionAttributeNames": {"#pk": "pk", "#sk": "sk"},
        "ExpressionAttributeValues": {
            ":pk": {"S": pk},
            ":a": {"N": str(start_ms)},
            ":b": {"N": str(end_ms)},
        },
        "ScanIndexForward": not descending,
    }
    while True:
        resp = await client.call("query", **kwargs)
        items += resp.get("Items", [])
        last = resp.get("LastEvaluatedKey")
        if not last:
            return items
        kwargs["ExclusiveStartKey"] = last


async def read_range(
    client: DynamoClient,
    layout: TableLayout,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    *,
    now_s: float | None = None,
) -> list[Reading]:
    """Every unexpired reading of a sensor in [start_ms, end_ms], ascending by timestamp."""
    pks = [
        pk
        for bucket in layout.bucket_starts(start_ms, end_ms)
        for pk in layout.partition_keys(sensor_id, bucket)
    ]
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(query_partition(client, pk, start_ms, end_ms), name=f"query-{pk}")
            for pk in pks
        ]
    merged = heapq.merge(*(t.result() for t in tasks), key=lambda it: int(it["sk"]["N"]))
    return [TableLayout.from_item(it) for it in merged if not TableLayout.is_expired(it, now_s)]
