"""The sensor registry, read side: list sensors (Query, never Scan), one sensor, latest reading.

Registry items live in ``REGISTRY_PARTITIONS`` fixed partitions (see
:mod:`ingest.storage.layout`). A list page reads the partitions in order, each as a
:class:`~queries.read.pages.PartitionStream`: all partitions' first pages at once
(each sized for an even share of the page, since ids hash evenly), then
refills in order where a partition had more. The cursor is the partition and
the last sort key returned.

The registry is written coalesced (at most once per sensor per
``registry_interval_s``), so its "last seen" may lag the table by that much;
:func:`latest_reading` therefore reads the table itself, newest first, starting
from the registry's last-seen time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ingest.storage.items import NumberValue, RegistryItem
from ingest.storage.layout import parse_number, registry_key, registry_partition_keys
from queries.read.pages import PartitionStream, read_page
from queries.read.reader import ReadStats, TableReader, reading_json

__all__ = [
    "MAX_SCANNED_PER_PAGE",
    "SensorPage",
    "get_sensor",
    "latest_reading",
    "list_sensors",
    "sensor_json",
]


MAX_SCANNED_PER_PAGE = 10_000
"""Most registry entries one filtered list page examines (a narrow key scope over a
large registry returns a short page and a cursor rather than reading it all)."""


def _number(value: NumberValue | None) -> float | int | None:
    return None if value is None or "N" not in value else parse_number(value["N"])


def sensor_json(item: RegistryItem) -> dict[str, Any]:
    """A registry item as the API's sensor object."""
    latest = {name: _number(v) for name, v in item.get("m", {}).get("M", {}).items() if "N" in v}
    return {
        "sensor_id": item["sid"]["S"],
        "last_seen": _number(item.get("ls")),
        "readings": _number(item.get("n")),
        "latest": latest,
    }


@dataclass(slots=True)
class SensorPage:
    """A page of registry items and the position after the last one.

    Attributes:
        items: Registry items (with a ``sid``), in partition then sort-key order.
        next_position: ``(partition index, last sort key)`` to resume after; ``None`` at the end.
    """

    items: list[RegistryItem]
    next_position: tuple[int, int] | None


async def list_sensors(
    reader: TableReader,
    *,
    limit: int,
    after: tuple[int, int] | None,
    stats: ReadStats,
    keep: Callable[[str], bool] | None = None,
) -> SensorPage:
    """One page of the sensor registry.

    Args:
        reader: The table reader.
        limit: Most sensors returned.
        after: Resume after this ``(partition index, sort key)`` (from a previous page).
        stats: Accumulates read units.
        keep: Only sensors whose id passes (an API key's scope); ``None``: all. With a
            filter, at most :data:`MAX_SCANNED_PER_PAGE` entries are examined: the page
            may be short, with a position to resume from.

    Raises:
        ValueError: ``after`` names no registry partition (the API checks cursors first).
    """
    partitions = registry_partition_keys()
    if after is not None and not 0 <= after[0] < len(partitions):
        raise ValueError(f"after: no registry partition {after[0]} (0..{len(partitions) - 1})")
    first = after[0] if after is not None else 0
    want = limit + 1
    size = max(10, min(want, math.ceil(want * 1.25 / (len(partitions) - first)) + 2))
    streams: list[tuple[int, PartitionStream[RegistryItem]]] = []
    for p in range(first, len(partitions)):
        kwargs: dict[str, Any] = {
            "TableName": reader.table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "pk"},
            "ExpressionAttributeValues": {":pk": {"S": partitions[p]}},
            "Limit": size,
        }
        if after is not None and p == after[0]:
            kwargs["ExclusiveStartKey"] = {"pk": {"S": partitions[p]}, "sk": {"N": str(after[1])}}
        stream: PartitionStream[RegistryItem] = PartitionStream(reader, kwargs, now_s=0)
        streams.append((p, stream))
    async with asyncio.TaskGroup() as tg:
        for _, stream in streams:
            tg.create_task(stream.fill(stats), name="registry-fill")
    out: list[tuple[int, RegistryItem]] = []
    scanned = 0
    for p, stream in streams:
        while len(out) < want:
            if not stream.buf:
                await stream.fill(stats, None if keep is None else size * 4)
                if not stream.buf:
                    break
            item = stream.buf.popleft()
            scanned += 1
            if "sid" in item and (keep is None or keep(item["sid"]["S"])):
                out.append((p, item))
            elif keep is not None and scanned >= MAX_SCANNED_PER_PAGE and len(out) <= limit:
                # Resume after this (skipped) entry next time.
                return SensorPage([it for _, it in out], (p, int(item["sk"]["N"])))
        if len(out) >= want:
            break
    if len(out) > limit:
        p, last = out[limit - 1]
        return SensorPage([it for _, it in out[:limit]], (p, int(last["sk"]["N"])))
    return SensorPage([it for _, it in out], None)


async def get_sensor(
    reader: TableReader, sensor_id: str, *, stats: ReadStats
) -> RegistryItem | None:
    """The sensor's registry item (one GetItem), or ``None`` when unknown."""
    pk, sk = registry_key(sensor_id)
    resp = await reader.call(
        "get_item", stats, TableName=reader.table, Key={"pk": {"S": pk}, "sk": {"N": str(sk)}}
    )
    item: RegistryItem | None = resp.get("Item")
    return item


async def latest_reading(
    reader: TableReader,
    sensor_id: str,
    last_seen_ms: int,
    *,
    now_ms: int,
    future_ms: int,
    max_range_ms: int,
    fields: tuple[str, ...] | None,
    stats: ReadStats,
) -> dict[str, Any] | None:
    """The newest unexpired reading of a sensor, as a reading object, or ``None``.

    Searches newest first in two steps: ``[last_seen, now + future_ms]`` (where the
    newest reading is, unless the registry lags or that reading expired), then
    below ``last_seen``, where readings are dense if the sensor lived recently.
    Never older than the retention (those readings are expired) nor longer than
    ``max_range_ms`` in all.
    """
    hi = max(now_ms + future_ms, last_seen_ms)
    lo = max(0, hi - max_range_ms, now_ms - reader.layout.retention_ms - 1_000)
    spans = [(max(lo, last_seen_ms), hi)]
    if lo < last_seen_ms:
        spans.append((lo, last_seen_ms - 1))
    for first, last in spans:
        page = await read_page(
            reader, sensor_id, first, last, limit=1, descending=True, fields=fields, stats=stats
        )
        if page.items:
            return reading_json(page.items[0])
    return None
