"""The sensor registry's items: per-sensor summaries and late marks, as the archiver and the read path read them.

The ingest stage that writes the summaries is :class:`ingest.pipeline.registry.SensorRegistry`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ingest.core.errors import DynamoError
from ingest.storage.dynamo import TableClient, is_condition_failure
from ingest.storage.items import LateMarkItem, RegistryItem
from ingest.storage.layout import (
    late_mark_key,
    late_partition_keys,
    registry_partition_keys,
)
from ingest.storage.reads import query_pages

__all__ = [
    "LateMark",
    "clear_late_mark",
    "known_sensor_ids",
    "known_sensors",
    "late_marks",
    "registry_items",
    "write_late_mark",
]


async def registry_items(
    client: TableClient, names: tuple[str, ...], *, consistent: bool = False
) -> AsyncIterator[RegistryItem]:
    """Every registry item with a sensor id, projected to ``names`` (``sid`` always).

    A paged Query on each registry partition, never a Scan; errors are the client's
    (:class:`~ingest.core.errors.DynamoError`).
    """
    fields = ("sid", *(n for n in names if n != "sid"))
    async for it in _partition_items(client, registry_partition_keys(), fields, consistent):
        if "sid" in it:
            yield it


async def _partition_items(
    client: TableClient,
    pks: list[str],
    fields: tuple[str, ...],
    consistent: bool,
) -> AsyncIterator[Any]:
    """Every item of the partitions ``pks``, projected to ``fields`` (paged Queries), of
    their kind (registry items, late marks): the caller types them."""
    placeholders = {f"#a{i}": name for i, name in enumerate(fields)}
    for pk in pks:
        kwargs: dict[str, Any] = {
            "TableName": client.table,
            "KeyConditionExpression": "#pk = :pk",
            "ProjectionExpression": ", ".join(placeholders),
            "ExpressionAttributeNames": {"#pk": "pk", **placeholders},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        if consistent:
            kwargs["ConsistentRead"] = True
        async for resp in query_pages(client.call, kwargs):
            for it in resp.get("Items", []):
                yield it


@dataclass(frozen=True, slots=True)
class LateMark:
    """A sensor's bucket that received readings after it may have been archived.

    Attributes:
        sensor_id: The sensor.
        bucket_start_ms: The bucket.
        marked_at_ms: When it was last marked (epoch ms, the marking process's clock).
        readings: Late readings counted (an estimate: retried flushes may count twice).
    """

    sensor_id: str
    bucket_start_ms: int
    marked_at_ms: int
    readings: int = 0


async def write_late_mark(
    client: TableClient,
    sensor_id: str,
    bucket_start_ms: int,
    marked_at_ms: int,
    count: int = 0,
) -> None:
    """Mark a sensor's bucket late (create the mark, or move its ``t`` and add ``count``).

    Raises:
        DynamoError: the write failed (the client's error).
    """
    pk, sk = late_mark_key(sensor_id, bucket_start_ms)
    await client.call(
        "update_item",
        TableName=client.table,
        Key={"pk": {"S": pk}, "sk": {"N": str(sk)}},
        UpdateExpression="SET #sid = :sid, #b = :b, #t = :t ADD #n :n REMOVE #ttl",
        ExpressionAttributeNames={"#sid": "sid", "#b": "b", "#t": "t", "#n": "n", "#ttl": "ttl"},
        ExpressionAttributeValues={
            ":sid": {"S": sensor_id},
            ":b": {"N": str(bucket_start_ms)},
            ":t": {"N": str(marked_at_ms)},
            ":n": {"N": str(count)},
        },
    )


async def late_marks(client: TableClient) -> list[LateMark]:
    """Every late mark (a strongly consistent, paged Query per partition; never a Scan).

    Raises:
        DynamoError: a Query failed (the client's error).
    """
    out = []
    it: LateMarkItem
    async for it in _partition_items(client, late_partition_keys(), ("sid", "b", "t", "n"), True):
        if "sid" in it and "b" in it and "t" in it:
            n = int(it["n"]["N"]) if "n" in it else 0
            out.append(LateMark(it["sid"]["S"], int(it["b"]["N"]), int(it["t"]["N"]), n))
    return out


_CLEARED_TTL_S = 86_400


async def clear_late_mark(
    client: TableClient, mark: LateMark, *, now_ms: int | None = None
) -> bool:
    """Clear a late mark if it is still as read (``t`` unchanged).

    The item is not deleted (that would need ``dynamodb:DeleteItem``, which no role
    of deploy/iam/ has): ``t`` and ``n`` are removed and a ``ttl`` a day ahead lets
    DynamoDB delete it for free; :func:`late_marks` skips it meanwhile, and a new
    mark (:func:`write_late_mark`) removes the ``ttl`` again.

    Returns:
        True when cleared (or already cleared); False when it was marked again since.

    Raises:
        DynamoError: the update failed for another reason.
    """
    pk, sk = late_mark_key(mark.sensor_id, mark.bucket_start_ms)
    now = time.time() * 1000 if now_ms is None else now_ms
    try:
        await client.call(
            "update_item",
            TableName=client.table,
            Key={"pk": {"S": pk}, "sk": {"N": str(sk)}},
            UpdateExpression="REMOVE #t, #n SET #ttl = :ttl",
            ConditionExpression="attribute_not_exists(#t) OR #t = :t",
            ExpressionAttributeNames={"#t": "t", "#n": "n", "#ttl": "ttl"},
            ExpressionAttributeValues={
                ":t": {"N": str(mark.marked_at_ms)},
                ":ttl": {"N": str(int(now // 1000) + _CLEARED_TTL_S)},
            },
        )
    except DynamoError as exc:
        if is_condition_failure(exc):
            return False
        raise
    return True


async def known_sensor_ids(client: TableClient) -> set[str]:
    """Every sensor id in the registry (8 paged Queries, never a Scan)."""
    return set(await known_sensors(client))


async def known_sensors(client: TableClient) -> dict[str, int]:
    """Every sensor in the registry with its stored first-seen time (8 paged Queries).

    The decoder admits these without counting them against
    ``max_new_sensors_per_minute``, so a restart does not look like a flood; the
    registry starts from their first-seen times, so their readings hold no
    acknowledgement (see the module's docstring). An item without ``fs`` (older
    than the attribute) gets 0.
    """
    return {
        it["sid"]["S"]: int(it.get("fs", {"N": "0"})["N"])
        async for it in registry_items(client, ("fs",))
    }
