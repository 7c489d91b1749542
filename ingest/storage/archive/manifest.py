"""Manifests of archived buckets: a JSON object in S3 and a marker item in DynamoDB.

The marker item says "this sensor's bucket is archived and verified". It lives in
the readings table under a partition key no sensor id can produce (sensor ids
never contain ``#``), one partition per sensor, so the planner and the query API
find a sensor's archived buckets with one Query::

    pk   S  "#archive#{sensor_id}"
    sk   N  bucket start, epoch ms
    n    N  readings archived (0: the bucket was empty; no object)
    key  S  data object key                        (absent when n = 0)
    cs   S  content checksum (SHA-256 hex, see ingest.storage.archive.parquet)
    os   S  SHA-256 hex of the object's bytes      (absent when n = 0)
    at   N  when it was archived, epoch ms
    dx   N  when an early delete of its items started, epoch ms (absent: none started)
    del  N  when its items were deleted early, epoch ms (absent: not deleted)

Markers have no ``ttl``: they describe the archive, which outlives the table's
retention. The marker is written only after the object was read back and
verified; a crash before that leaves no marker, and the next run archives the
bucket again (same key, same content). A re-archive (late readings, or a
corrupt object) replaces the marker only if it is still the one it started
from (:func:`put_marker` with ``expected``), so overlapping runs never replace
each other's work; a first archive only if there is none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ingest.core.errors import DynamoError
from ingest.storage.archive.errors import SourceError
from ingest.storage.dynamo import DynamoClient, Queryable
from ingest.storage.items import ArchiveMarkerItem
from ingest.storage.layout import marker_pk, marker_sensor_id
from ingest.storage.reads import query_pages

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "get_marker",
    "mark_delete_started",
    "mark_deleted",
    "put_marker",
    "query_markers",
]

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """What was archived for one sensor's bucket.

    Attributes:
        sensor_id: The sensor.
        bucket_start_ms: The bucket's start (epoch ms).
        bucket_ms: The bucket's width.
        rows: Readings archived.
        key: Data object key (``""`` when ``rows == 0``).
        content_sha256: Checksum of the readings (independent of the encoding).
        object_sha256: SHA-256 of the object's bytes (``""`` when ``rows == 0``).
        object_bytes: The object's size.
        min_ts_ms: First reading's timestamp (0 when empty).
        max_ts_ms: Last reading's timestamp (0 when empty).
        shard_rows: Readings per shard partition key.
        archived_at_ms: When it was archived.
        deleted_at_ms: When the items were deleted early (None: not deleted).
        delete_started_ms: When an early delete of the items started (None: none).
    """

    sensor_id: str
    bucket_start_ms: int
    bucket_ms: int
    rows: int
    key: str
    content_sha256: str
    object_sha256: str = ""
    object_bytes: int = 0
    min_ts_ms: int = 0
    max_ts_ms: int = 0
    shard_rows: dict[str, int] = field(default_factory=dict)
    archived_at_ms: int = 0
    deleted_at_ms: int | None = None
    delete_started_ms: int | None = None

    @property
    def items_removed(self) -> bool:
        """True once an early delete of the bucket's items has started (or finished)."""
        return self.deleted_at_ms is not None or self.delete_started_ms is not None

    def to_json(self) -> bytes:
        """The S3 manifest document."""
        return orjson.dumps({"format": FORMAT_VERSION, **asdict(self)}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        doc = orjson.loads(data)
        doc.pop("format", None)
        return cls(**doc)

    def to_marker(self) -> ArchiveMarkerItem:
        """The DynamoDB marker item (see module docstring)."""
        item: ArchiveMarkerItem = {
            "pk": {"S": marker_pk(self.sensor_id)},
            "sk": {"N": str(self.bucket_start_ms)},
            "n": {"N": str(self.rows)},
            "cs": {"S": self.content_sha256},
            "at": {"N": str(self.archived_at_ms)},
            "bw": {"N": str(self.bucket_ms)},
        }
        if self.rows:
            item["key"] = {"S": self.key}
            item["os"] = {"S": self.object_sha256}
            item["sz"] = {"N": str(self.object_bytes)}
        if self.delete_started_ms is not None:
            item["dx"] = {"N": str(self.delete_started_ms)}
        if self.deleted_at_ms is not None:
            item["del"] = {"N": str(self.deleted_at_ms)}
        return item

    @classmethod
    def from_marker(cls, item: ArchiveMarkerItem) -> Manifest:
        """The manifest summary a marker item holds (no per-shard counts)."""
        return cls(
            sensor_id=marker_sensor_id(item["pk"]["S"]),
            bucket_start_ms=int(item["sk"]["N"]),
            bucket_ms=int(item.get("bw", {"N": "0"})["N"]),
            rows=int(item["n"]["N"]),
            key=item.get("key", {"S": ""})["S"],
            content_sha256=item["cs"]["S"],
            object_sha256=item.get("os", {"S": ""})["S"],
            object_bytes=int(item.get("sz", {"N": "0"})["N"]),
            archived_at_ms=int(item["at"]["N"]),
            deleted_at_ms=int(item["del"]["N"]) if "del" in item else None,
            delete_started_ms=int(item["dx"]["N"]) if "dx" in item else None,
        )


def _source_error(exc: DynamoError, action: str) -> SourceError:
    return SourceError(f"DynamoDB {action} failed: {exc}", retriable=exc.retriable)


def _unchanged(expected: Manifest | None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A condition that holds while the marker is still ``expected`` (absent for ``None``)."""
    if expected is None:
        return "attribute_not_exists(#pk)", {"#pk": "pk"}, {}
    names = {"#at": "at", "#cs": "cs", "#dx": "dx", "#del": "del"}
    values: dict[str, Any] = {
        ":at": {"N": str(expected.archived_at_ms)},
        ":cs": {"S": expected.content_sha256},
    }
    parts = ["#at = :at", "#cs = :cs"]
    for attr, value in (("dx", expected.delete_started_ms), ("del", expected.deleted_at_ms)):
        if value is None:
            parts.append(f"attribute_not_exists(#{attr})")
        else:
            parts.append(f"#{attr} = :{attr}")
            values[f":{attr}"] = {"N": str(value)}
    return " AND ".join(parts), names, values


async def put_marker(
    client: DynamoClient, manifest: Manifest, *, expected: Manifest | None = None
) -> bool:
    """Write the marker (the bucket is archived and verified) if it is still ``expected``.

    Args:
        client: The table's client.
        manifest: The new marker's content.
        expected: The marker this write replaces (``None``: there must be none).

    Returns:
        False when the marker changed meanwhile (another run): nothing was written.
    """
    condition, names, values = _unchanged(expected)
    kwargs: dict[str, Any] = {"ConditionExpression": condition, "ExpressionAttributeNames": names}
    if values:
        kwargs["ExpressionAttributeValues"] = values
    try:
        await client.call("put_item", TableName=client.table, Item=manifest.to_marker(), **kwargs)
    except DynamoError as exc:
        if "ConditionalCheckFailed" in str(exc):
            return False
        raise _source_error(exc, f"marker write for {manifest.sensor_id}") from exc
    return True


async def _set_on_marker(client: DynamoClient, manifest: Manifest, attr: str, ms: int) -> None:
    try:
        await client.call(
            "update_item",
            TableName=client.table,
            Key={
                "pk": {"S": marker_pk(manifest.sensor_id)},
                "sk": {"N": str(manifest.bucket_start_ms)},
            },
            UpdateExpression="SET #d = :d",
            ConditionExpression="attribute_exists(#pk)",
            ExpressionAttributeNames={"#d": attr, "#pk": "pk"},
            ExpressionAttributeValues={":d": {"N": str(ms)}},
        )
    except DynamoError as exc:
        raise _source_error(exc, f"marker update for {manifest.sensor_id}") from exc


async def mark_delete_started(client: DynamoClient, manifest: Manifest, started_ms: int) -> None:
    """Record on the marker that an early delete starts: DynamoDB may now lack readings."""
    await _set_on_marker(client, manifest, "dx", started_ms)


async def mark_deleted(client: DynamoClient, manifest: Manifest, deleted_at_ms: int) -> None:
    """Record on the marker that the bucket's items were deleted early."""
    await _set_on_marker(client, manifest, "del", deleted_at_ms)


async def get_marker(client: DynamoClient, sensor_id: str, bucket_start_ms: int) -> Manifest | None:
    """One bucket's marker (strongly consistent read), or ``None``."""
    try:
        resp = await client.call(
            "get_item",
            TableName=client.table,
            Key={"pk": {"S": marker_pk(sensor_id)}, "sk": {"N": str(bucket_start_ms)}},
            ConsistentRead=True,
        )
    except DynamoError as exc:
        raise _source_error(exc, f"marker read for {sensor_id}") from exc
    item = resp.get("Item")
    return Manifest.from_marker(item) if item else None


async def query_markers(
    client: Queryable, sensor_id: str, first_bucket_ms: int, last_bucket_ms: int
) -> dict[int, Manifest]:
    """A sensor's markers with first_bucket_ms <= bucket start <= last_bucket_ms, by bucket start."""
    kwargs: dict[str, Any] = {
        "TableName": client.table,
        "KeyConditionExpression": "#pk = :pk AND #sk BETWEEN :a AND :b",
        "ExpressionAttributeNames": {"#pk": "pk", "#sk": "sk"},
        "ExpressionAttributeValues": {
            ":pk": {"S": marker_pk(sensor_id)},
            ":a": {"N": str(first_bucket_ms)},
            ":b": {"N": str(last_bucket_ms)},
        },
        "ConsistentRead": True,
    }
    out: dict[int, Manifest] = {}
    try:
        async for resp in query_pages(client.call, kwargs):
            for item in resp.get("Items", []):
                m = Manifest.from_marker(item)
                out[m.bucket_start_ms] = m
    except DynamoError as exc:
        raise _source_error(exc, f"marker query for {sensor_id}") from exc
    return out
