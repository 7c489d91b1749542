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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ingest.storage.dynamo import Queryable
from ingest.storage.items import ReadingItem, StageItem, WindowPartItem
from ingest.storage.layout import (
    WINDOW_PART_SPACE,
    Reading,
    TableLayout,
    binary_value,
    sensor_group,
    stage_pk,
    window_sk,
)
from ingest.storage.windows import Part, WindowScheme, decode_stage, merge_parts, parse_part_item

__all__ = [
    "Caller",
    "bucket_spans",
    "follow",
    "key_query",
    "merge_staged",
    "packed_staged",
    "packed_windows",
    "partition_query",
    "query_pages",
    "query_partition",
    "read_packed",
    "read_range",
]

_HOUR_MS = 3_600_000

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


def key_query(
    table: str, pk: str, lo: int | None = None, hi: int | None = None, *, consistent: bool = False
) -> dict[str, Any]:
    """Query arguments for one partition's items, with ``lo <= sk`` (and ``sk <= hi``)
    when given: the table's own items (windows, staging, logs, rollups), whole."""
    values: dict[str, Any] = {":pk": {"S": pk}}
    condition = "pk = :pk"
    if lo is not None and hi is not None:
        condition += " AND sk BETWEEN :a AND :b"
        values.update({":a": {"N": str(lo)}, ":b": {"N": str(hi)}})
    elif lo is not None:
        condition += " AND sk >= :a"
        values[":a"] = {"N": str(lo)}
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": condition,
        "ExpressionAttributeValues": values,
    }
    if consistent:
        kwargs["ConsistentRead"] = True
    return kwargs


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
) -> list[ReadingItem]:
    """All items of one reading partition with start_ms <= sk <= end_ms, in sk order (TTL
    not applied)."""
    items: list[ReadingItem] = []
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
    Either layout (a ``packed`` table through :func:`read_packed`).
    """
    if layout.kind == "packed":
        now_ms = None if now_s is None else int(now_s * 1000)
        return await read_packed(
            client.call, client.table, WindowScheme(layout), sensor_id, start_ms, end_ms, now_ms
        )
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


async def read_packed(
    call: Caller,
    table: str,
    scheme: WindowScheme,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    now_ms: int | None = None,
) -> list[Reading]:
    """Every reading of a sensor in [start_ms, end_ms] of a ``packed`` table, ascending,
    each timestamp once.

    The sealed windows of the range (:func:`packed_windows`, one Query per bucket) and,
    when the range reaches the part that may not be sealed yet, the staging items of the
    sensor's group written since then (:func:`packed_staged`), merged by
    :func:`merge_staged`.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    layout = scheme.layout
    async with asyncio.TaskGroup() as tg:
        sealed = [
            tg.create_task(
                packed_windows(call, table, scheme, sensor_id, lo, hi, now),
                name=f"windows-{sensor_id}-{lo}",
            )
            for lo, hi in bucket_spans(layout, start_ms, end_ms)
        ]
        staging = tg.create_task(packed_staged(call, table, scheme, sensor_id, end_ms, now))
    windows: dict[int, list[Reading]] = {}
    for task in sealed:
        windows.update(task.result())
    return merge_staged(windows, staging.result(), start_ms, end_ms)


def bucket_spans(layout: TableLayout, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    return [
        (max(start_ms, b), min(end_ms, b + layout.bucket_ms - 1))
        for b in layout.bucket_starts(start_ms, end_ms)
    ]


def merge_staged(
    windows: Mapping[int, Sequence[Reading]], staged: Sequence[Reading], start_ms: int, end_ms: int
) -> list[Reading]:
    """Sealed windows' readings and staged readings as one ascending list in
    [start_ms, end_ms], each timestamp once: of two readings with one timestamp the later
    write wins, whole (sets in seal order, then staging items in flush order)."""
    latest: dict[int, Reading] = {}
    for start in sorted(windows):
        for r in windows[start]:
            latest[r.ts_ms] = r
    for r in staged:
        latest[r.ts_ms] = r
    return [latest[t] for t in sorted(latest) if start_ms <= t <= end_ms]


async def packed_windows(
    call: Caller,
    table: str,
    scheme: WindowScheme,
    sensor_id: str,
    start_ms: int,
    end_ms: int,
    now_ms: int,
) -> dict[int, list[Reading]]:
    """The sealed windows overlapping [start_ms, end_ms] (within one bucket: one Query),
    each window's sets merged (:func:`~ingest.storage.windows.merge_parts`); window
    start → its readings (the whole window: callers clip). Parts past their TTL at
    ``now_ms`` are left out."""
    kwargs = key_query(
        table,
        scheme.layout.window_pk(sensor_id, start_ms),
        window_sk(scheme.window_start(start_ms), 0),
        window_sk(scheme.window_start(end_ms), WINDOW_PART_SPACE - 1),
    )
    parts: dict[int, list[Part]] = {}
    item: WindowPartItem
    async for page in query_pages(call, kwargs):
        for item in page.get("Items", []):
            ttl = item.get("ttl")
            if ttl is None or int(ttl["N"]) * 1000 > now_ms:
                p = parse_part_item(item, sensor_id)
                parts.setdefault(p.window_start_ms, []).append(p)
    return {start: merge_parts(ps) for start, ps in parts.items()}


async def packed_staged(
    call: Caller, table: str, scheme: WindowScheme, sensor_id: str, end_ms: int, now_ms: int
) -> list[Reading]:
    """A sensor's readings in its group's staging items that may not be sealed yet at
    ``now_ms`` (flushed since :meth:`WindowScheme.staged_since`), in flush order; none
    when the range ends before that (one Query per UTC hour of staging, usually one)."""
    since_ms = scheme.staged_since(now_ms)
    if end_ms < since_ms:
        return []
    group = sensor_group(sensor_id, scheme.groups)
    out: list[Reading] = []
    hour = since_ms - since_ms % _HOUR_MS
    item: StageItem
    while hour <= now_ms:
        kwargs = key_query(table, stage_pk(group, hour), max(since_ms, 0) * 2**24)
        async for page in query_pages(call, kwargs):
            for item in page.get("Items", []):
                out += decode_stage(binary_value(item["b"]), sensor_id)
        hour += _HOUR_MS
    return out
