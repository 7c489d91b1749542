"""Which buckets to archive: closed, past the horizon, not yet archived (no Scan anywhere).

Sensors come from the registry partitions (Query); a sensor's archived buckets
from its marker partition (one Query). A bucket ``[start, start + bucket_ms)`` is
archivable when ``start + bucket_ms <= now - horizon``: it is closed and the
ingest service no longer accepts readings for it (keep the horizon longer than
the ingest's ``max_past_ms``). Buckets older than the retention plus
``grace_ms`` (DynamoDB deletes expired items within about 48 hours) are not
looked at: their items are gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingest.dynamo import DynamoClient
from ingest.errors import WriteError
from ingest.layout import TableLayout, registry_partition_keys

from .errors import ArchiveConfigError, SourceError
from .manifest import Manifest, query_markers

__all__ = [
    "DAY_MS",
    "BucketTask",
    "Window",
    "archive_window",
    "list_sensors",
    "plan_sensor",
    "validate_horizon",
]

DAY_MS = 86_400_000
DEFAULT_GRACE_MS = 2 * DAY_MS


@dataclass(frozen=True, slots=True)
class BucketTask:
    """One sensor's bucket to work on.

    Attributes:
        sensor_id: The sensor.
        bucket_start_ms: The bucket's start.
        marker: Its marker when already archived (then only the early delete is pending).
    """

    sensor_id: str
    bucket_start_ms: int
    marker: Manifest | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """Bucket starts to consider, inclusive: ``first_ms`` to ``last_ms`` (empty if last < first)."""

    first_ms: int
    last_ms: int


def validate_horizon(layout: TableLayout, horizon_ms: int) -> None:
    """Check that archival happens before the first item of a bucket can expire.

    A bucket becomes archivable ``horizon`` after its end; its first reading expires
    ``retention`` after the bucket's start. So ``horizon + bucket width`` must stay
    below the retention, with room left for the archive to run.

    Raises:
        ArchiveConfigError: the horizon is negative or too long for the retention.
    """
    if horizon_ms <= 0:
        raise ArchiveConfigError(f"--horizon-days must be > 0, got {horizon_ms / DAY_MS:g}")
    if horizon_ms + layout.bucket_ms >= layout.retention_ms:
        limit = (layout.retention_ms - layout.bucket_ms) / DAY_MS
        raise ArchiveConfigError(
            f"--horizon-days {horizon_ms / DAY_MS:g} is too long: the table keeps readings "
            f"{layout.retention_days} days and a bucket is {layout.bucket_ms / DAY_MS:g} days "
            f"wide, so items would expire before they are archived; use a horizon below "
            f"{limit:g} days (leave room for the archive's run interval)"
        )


def archive_window(
    layout: TableLayout, *, now_ms: int, horizon_ms: int, grace_ms: int = DEFAULT_GRACE_MS
) -> Window:
    """The bucket starts that are archivable now and may still hold items."""
    last = layout.bucket_start(now_ms - horizon_ms) - layout.bucket_ms
    first = layout.bucket_start(max(0, now_ms - layout.retention_ms - grace_ms))
    return Window(first, last)


async def list_sensors(client: DynamoClient) -> list[str]:
    """Every sensor id in the registry (Query on its partitions, sorted)."""
    sensors: set[str] = set()
    for pk in registry_partition_keys():
        kwargs: dict[str, Any] = {
            "TableName": client.table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "pk", "#sid": "sid"},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ProjectionExpression": "#sid",
        }
        while True:
            try:
                resp = await client.call("query", **kwargs)
            except WriteError as exc:
                raise SourceError(
                    f"cannot list sensors in table {client.table!r}: {exc}", retriable=exc.retriable
                ) from exc
            sensors.update(it["sid"]["S"] for it in resp.get("Items", []) if "sid" in it)
            last = resp.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
    return sorted(sensors)


async def plan_sensor(
    client: DynamoClient,
    layout: TableLayout,
    sensor_id: str,
    window: Window,
    *,
    delete_archived: bool,
) -> tuple[list[BucketTask], int]:
    """A sensor's work in the window, and how many buckets are already done.

    Returns:
        The tasks (unarchived buckets; with ``delete_archived`` also archived, non-empty
        buckets whose items were not deleted yet), and the count of buckets skipped.
    """
    if window.last_ms < window.first_ms:
        return [], 0
    markers = await query_markers(client, sensor_id, window.first_ms, window.last_ms)
    tasks: list[BucketTask] = []
    done = 0
    for start in range(window.first_ms, window.last_ms + 1, layout.bucket_ms):
        marker = markers.get(start)
        if marker is None:
            tasks.append(BucketTask(sensor_id, start))
        elif delete_archived and marker.rows and marker.deleted_at_ms is None:
            tasks.append(BucketTask(sensor_id, start, marker))
        else:
            done += 1
    return tasks, done
