"""Which buckets to archive: closed, past the horizon, not yet archived (no Scan anywhere).

Sensors come from the registry partitions (Query), each with its first-seen and
last-seen reading times (``fs``, ``ls``; see :mod:`ingest.pipeline.registry`); a sensor's
archived buckets from its marker partition (one Query). A bucket ``[start,
start + bucket_ms)`` is archivable when ``start + bucket_ms <= now - horizon``:
it is closed. Readings that arrive for it later are marked late by the ingest's
registry, and the archiver archives such buckets again (see
:mod:`.archiver`). Buckets older than the retention plus ``grace_ms``
(DynamoDB deletes expired items within about 48 hours) are not looked at: their
items are gone.

A sensor's window is clipped to ``[bucket_start(fs), bucket_start(ls)]``: no
bucket outside it can hold one of its readings, so the work per pass grows with
the sensor's data span, not with the retention (with one-minute buckets and a
30-day retention the whole window is about 46,000 buckets per sensor). A clipped-out
bucket is never marked, only not looked at; a reading below ``fs`` (a backfill
not yet in the registry) is found by the first pass after the registry's next
flush lowers ``fs``. Registry items without ``fs`` (written before it existed)
or with ``fs = 0`` keep the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.core.errors import DynamoError
from ingest.storage.archive.errors import ArchiveConfigError, SourceError
from ingest.storage.archive.manifest import Manifest, query_markers
from ingest.storage.dynamo import DynamoClient
from ingest.storage.items import NumberValue
from ingest.storage.layout import TableLayout
from ingest.storage.registry import LateMark, registry_items

__all__ = [
    "DAY_MS",
    "DEFAULT_GRACE_MS",
    "BucketTask",
    "SensorPlan",
    "SensorSpan",
    "Window",
    "archive_window",
    "clip_window",
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
        marker: Its marker when already archived (without ``late``: only the early
            delete is pending).
        late: Late marks of the bucket to handle: it is archived again (merged with
            its object, if any) and the marks are cleared.
    """

    sensor_id: str
    bucket_start_ms: int
    marker: Manifest | None = None
    late: tuple[LateMark, ...] = ()


@dataclass(frozen=True, slots=True)
class Window:
    """Bucket starts to consider, inclusive: ``first_ms`` to ``last_ms`` (empty if last < first)."""

    first_ms: int
    last_ms: int


@dataclass(frozen=True, slots=True)
class SensorSpan:
    """A sensor as the registry knows it.

    Attributes:
        sensor_id: The sensor.
        first_seen_ms: Its lowest reading timestamp ever seen (``None``: unknown, an
            item from before the registry recorded it; 0 means unknown too).
        last_seen_ms: Its highest reading timestamp seen (``None``: unknown).
    """

    sensor_id: str
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None


def clip_window(layout: TableLayout, window: Window, span: SensorSpan) -> Window:
    """The part of ``window`` whose buckets can hold the sensor's readings.

    ``[bucket_start(fs), bucket_start(ls)]`` intersected with the window; an unknown
    (or zero) ``fs`` or an unknown ``ls`` leaves that side of the window as it is.
    """
    first, last = window.first_ms, window.last_ms
    if span.first_seen_ms:  # None or 0: unknown, look at everything
        first = max(first, layout.bucket_start(span.first_seen_ms))
    if span.last_seen_ms is not None:
        last = min(last, layout.bucket_start(span.last_seen_ms))
    return Window(first, last)


def validate_horizon(layout: TableLayout, horizon_ms: int) -> None:
    """Check that archival happens before the first item of a bucket can expire.

    A bucket becomes archivable ``horizon`` after its end; its first reading expires
    ``retention`` after the bucket's start. So ``horizon + bucket width`` must stay
    below the retention, with room left for the archive to run.

    Raises:
        ArchiveConfigError: the horizon is negative or too long for the retention.

    Either layout: a ``packed`` table's sealed windows expire at their window's end plus
    the retention, later than a ``reading`` table's first item of the bucket, so the same
    bound holds.
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


def _number(value: NumberValue | None) -> int | None:
    return int(value["N"]) if value is not None else None


async def list_sensors(client: DynamoClient) -> list[SensorSpan]:
    """Every sensor in the registry with its first/last seen times (Query per partition).

    Sorted by sensor id. Strongly consistent reads, so a registry update that
    finished before the pass started is seen.
    """
    sensors: dict[str, SensorSpan] = {}
    try:
        async for it in registry_items(client, ("fs", "ls"), consistent=True):
            sid = it["sid"]["S"]
            sensors[sid] = SensorSpan(sid, _number(it.get("fs")), _number(it.get("ls")))
    except DynamoError as exc:
        raise SourceError(
            f"cannot list sensors in table {client.table!r}: {exc}", retriable=exc.retriable
        ) from exc
    return [sensors[sid] for sid in sorted(sensors)]


@dataclass(frozen=True, slots=True)
class SensorPlan:
    """A sensor's work in one pass.

    Attributes:
        tasks: Unarchived buckets; with ``delete_archived`` also archived, non-empty
            buckets whose items were not deleted yet.
        skipped: Buckets already done.
        window: The sensor's clipped window (empty if ``last_ms < first_ms``).
    """

    tasks: list[BucketTask]
    skipped: int
    window: Window


def _count(window: Window, bucket_ms: int) -> int:
    return max(0, (window.last_ms - window.first_ms) // bucket_ms + 1)


async def plan_sensor(
    client: DynamoClient,
    layout: TableLayout,
    sensor: SensorSpan,
    window: Window,
    *,
    delete_archived: bool,
    known_done: Window | None = None,
) -> SensorPlan:
    """A sensor's work in the window (clipped to its data span).

    Args:
        client: The table's client.
        layout: The table's layout.
        sensor: The sensor, with its first/last seen times.
        window: The pass's archivable window.
        delete_archived: Also hand out archived buckets whose items are not deleted.
        known_done: Buckets this process already saw done (a previous pass's clipped
            window, every bucket of it marked, and deleted with ``delete_archived``):
            counted as skipped without reading their markers, so a pass reads only
            the markers of buckets that closed (or came into the span) since.

    Raises:
        SourceError: the marker Query failed.
    """
    sensor_id, bw = sensor.sensor_id, layout.bucket_ms
    window = clip_window(layout, window, sensor)
    if window.last_ms < window.first_ms:
        return SensorPlan([], 0, window)
    ranges = [window]
    skipped = 0
    if known_done is not None and known_done.first_ms <= known_done.last_ms:
        covered = Window(
            max(window.first_ms, known_done.first_ms), min(window.last_ms, known_done.last_ms)
        )
        if covered.first_ms <= covered.last_ms:
            skipped = _count(covered, bw)
            ranges = [
                r
                for r in (
                    Window(window.first_ms, covered.first_ms - bw),
                    Window(covered.last_ms + bw, window.last_ms),
                )
                if r.first_ms <= r.last_ms
            ]
    tasks: list[BucketTask] = []
    for part in ranges:
        markers = await query_markers(client, sensor_id, part.first_ms, part.last_ms)
        for start in range(part.first_ms, part.last_ms + 1, bw):
            marker = markers.get(start)
            if marker is None:
                tasks.append(BucketTask(sensor_id, start))
            elif delete_archived and marker.rows and marker.deleted_at_ms is None:
                tasks.append(BucketTask(sensor_id, start, marker))
            else:
                skipped += 1
    return SensorPlan(tasks, skipped, window)
