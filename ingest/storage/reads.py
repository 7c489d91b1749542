"""Reads of the table: the one pager, and whole-range reads (one Query per partition).

Every paged Query in the project goes through :func:`query_pages` (or :func:`follow`, for
a reader that fetches one page at a time): a page may be empty and still continue, and
only a page without ``LastEvaluatedKey`` ends the Query. The API reads through
:class:`queries.read.reader.TableReader` (accounting, limits) by passing its ``call``;
the whole-range reads below serve the archiver's export, the checks and the tests.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from ingest.storage.dynamo import Queryable
from ingest.storage.layout import Item, Reading, TableLayout

__all__ = ["Caller", "follow", "partition_query", "query_pages", "query_partition", "read_range"]

Caller = Callable[..., Awaitable[dict[str, Any]]]
"""``call(operation, **kwargs) -> response``: a DynamoDB client's ``call``, or a reader's."""


def follow(kwargs: dict[str, Any], resp: dict[str, Any]) -> bool:
    """Point the Query ``kwargs`` at the page after ``resp``; ``False`` if ``resp`` was the last."""
    last = resp.get("LastEvaluatedKey")
    if not last:
        return False
    kwargs["ExclusiveStartKey"] = last
    return True


async def query_pages(call: Caller, kwargs: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Every page of one Query, in order, following ``LastEvaluatedKey``.

    ``kwargs`` is advanced before each page is yielded, so a caller that stops early holds
    the arguments of the next page.
    """
    while True:
        resp = await call("query", **kwargs)
        more = follow(kwargs, resp)
        yield resp
        if not more:
            return


def partition_query(
    table: str,
    pk: str,
    start_ms: int,
    end_ms: int,
    *,
    descending: bool = False,
    fields: Sequence[str] | None = None,
    now_s: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Query arguments for one partition's items with start_ms <= sk <= end_ms.

    Args:
        table: Table name.
        pk: The partition key.
        start_ms: First timestamp (inclusive).
        end_ms: Last timestamp (inclusive).
        descending: Newest first.
        fields: Metric names to fetch (a projection of ``m``); ``None``: every attribute.
        now_s: Filter out items whose TTL is at or before this epoch second.
        limit: Items DynamoDB evaluates per page (before the TTL filter).
    """
    names = {"#pk": "pk", "#sk": "sk"}
    values: dict[str, Any] = {
        ":pk": {"S": pk},
        ":a": {"N": str(start_ms)},
        ":b": {"N": str(end_ms)},
    }
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :pk AND #sk BETWEEN :a AND :b",
        "ScanIndexForward": not descending,
    }
    if now_s is not None:
        names["#ttl"] = "ttl"
        values[":now"] = {"N": str(now_s)}
        kwargs["FilterExpression"] = "attribute_not_exists(#ttl) OR #ttl > :now"
    if fields is not None:
        names["#ttl"] = "ttl"
        names["#m"] = "m"
        paths = ["#sk", "#ttl"]
        for i, name in enumerate(fields):
            names[f"#f{i}"] = name
            paths.append(f"#m.#f{i}")
        kwargs["ProjectionExpression"] = ", ".join(paths)
    kwargs["ExpressionAttributeNames"] = names
    kwargs["ExpressionAttributeValues"] = values
    if limit is not None:
        kwargs["Limit"] = limit
    return kwargs


async def query_partition(
    client: Queryable, pk: str, start_ms: int, end_ms: int, *, descending: bool = False
) -> list[Item]:
    """All items of one partition with start_ms <= sk <= end_ms, in sk order (TTL not applied)."""
    items: list[Item] = []
    kwargs = partition_query(client.table, pk, start_ms, end_ms, descending=descending)
    async for resp in query_pages(client.call, kwargs):
        items += resp.get("Items", [])
    return items


async def read_range(
    client: Queryable,
    layout: TableLayout,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    *,
    now_s: float | None = None,
) -> list[Reading]:
    """Every unexpired reading of a sensor in [start_ms, end_ms], ascending by timestamp.

    Reads the whole range into memory: for checks and tests. The HTTP API pages
    (:mod:`queries.read.pages`) or aggregates as it reads (:mod:`queries.read.sampler`).
    """
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
