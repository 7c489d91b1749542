"""The archive step: closed buckets past the horizon → Parquet in S3 → verified → marked.

For each sensor (from the registry) and each bucket the planner hands out:

1. Query every shard of the bucket (:mod:`.exporter`).
2. Encode the readings as Parquet (off the event loop) and put the object, then
   its manifest, at deterministic keys (:mod:`.paths`): a re-run overwrites
   them with the same content.
3. Read the object back and compare size, SHA-256, row count and content
   checksum (:mod:`.verify`). A mismatch is reported and the bucket archived
   again (once); if it still fails, the bucket is left unmarked and nothing is
   deleted.
4. Write the marker item (:mod:`.manifest`): only now is the bucket archived.
5. With ``delete_archived``: delete exactly the verified readings' items
   (:mod:`.deleter`) and note it on the marker.

A crash anywhere before step 4 leaves no marker: the next run does the bucket
again. A crash between 4 and 5 leaves a marker without ``del``: the next run
with ``delete_archived`` verifies the object again and deletes then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.dynamo import DynamoClient
from ingest.layout import Reading, TableLayout

from .deleter import delete_keys
from .errors import ArchiveConfigError, ArchiveError, VerifyError, single_archive_error
from .exporter import export_bucket
from .manifest import Manifest, get_marker, mark_deleted, put_marker
from .metrics import ArchiveMetrics
from .parquet import content_checksum, encode
from .paths import data_key, manifest_key
from .planner import (
    DAY_MS,
    DEFAULT_GRACE_MS,
    BucketTask,
    SensorSpan,
    Window,
    archive_window,
    list_sensors,
    plan_sensor,
    validate_horizon,
)
from .store import S3Store
from .verify import verify_object

__all__ = ["ArchiveReport", "ArchiveSettings", "Archiver"]

log = logging.getLogger(__name__)

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveSettings:
    """How the archive runs.

    Args:
        horizon_ms: Archive a bucket once its end is this far in the past.
        delete_archived: Delete verified items early instead of waiting for their TTL.
        concurrency: Sensors worked on at once (one bucket at a time each).
        query_concurrency: DynamoDB Query calls in flight, across workers.
        grace_ms: How far past the retention to still look for items (TTL deletes lag).
    """

    horizon_ms: int = 7 * DAY_MS
    delete_archived: bool = False
    concurrency: int = 4
    query_concurrency: int = 8
    grace_ms: int = DEFAULT_GRACE_MS

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.query_concurrency < 1:
            raise ArchiveConfigError(
                f"concurrency must be >= 1, got {self.concurrency}/{self.query_concurrency}"
            )


@dataclass(slots=True)
class ArchiveReport:
    """What one pass did.

    Attributes:
        sensors: Sensors looked at.
        archived: Buckets archived and verified in this pass.
        empty: Buckets found empty (marked, no object).
        skipped: Buckets already archived.
        rows: Readings archived in this pass.
        bytes: Parquet bytes written in this pass (verified objects).
        deleted: Items deleted early in this pass.
        corrupt: Verification failures found (each was archived again).
        failed: Buckets that could not be archived, with the reason (left unmarked).
        stopped: The pass was stopped before it looked at every bucket (the rest is
            done by the next one).
    """

    sensors: int = 0
    archived: int = 0
    empty: int = 0
    skipped: int = 0
    rows: int = 0
    bytes: int = 0
    deleted: int = 0
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def ok(self) -> bool:
        """True when no bucket failed."""
        return not self.failed

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"{self.sensors} sensors: {self.archived} buckets archived ({self.rows} readings), "
            f"{self.empty} empty, {self.skipped} already archived, {self.deleted} items deleted, "
            f"{len(self.corrupt)} corrupt objects re-archived, {len(self.failed)} failed"
            + (" (stopped early)" if self.stopped else "")
        )


class Archiver:
    """Archives a table's closed buckets to S3.

    Args:
        dynamo: An open client of the readings table.
        store: An open S3 store.
        layout: The table's layout (read it from the table's layout record).
        settings: Horizon, early delete, concurrency.
        metrics: Where each pass is recorded (``None``: nowhere).
        clock: Epoch seconds (injected in tests).

    Raises:
        ArchiveConfigError: the horizon is too long for the table's retention.
    """

    def __init__(
        self,
        dynamo: DynamoClient,
        store: S3Store,
        layout: TableLayout,
        settings: ArchiveSettings,
        *,
        metrics: ArchiveMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        validate_horizon(layout, settings.horizon_ms)
        self.dynamo = dynamo
        self.store = store
        self.layout = layout
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        # sensor id -> its clipped window of the last pass that finished every bucket
        # of it: the next pass reads markers only outside it (see plan_sensor).
        self._done: dict[str, Window] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def run_once(self, *, stop: asyncio.Event | None = None) -> ArchiveReport:
        """One pass over every sensor; per-bucket failures are in the report, not raised.

        Args:
            stop: When set, the pass ends after the buckets under way (``report.stopped``);
                what it did not reach is done by the next pass.

        Raises:
            StorageError: the S3 bucket is missing or not accessible.
            SourceError: the sensor registry cannot be read.
        """
        t0 = time.perf_counter()
        try:
            report = await self._pass(stop)
        except ArchiveError as exc:
            if self.metrics is not None:
                self.metrics.observe_error(exc, time.perf_counter() - t0)
            raise
        if self.metrics is not None:
            self.metrics.observe_pass(report, time.perf_counter() - t0)
        return report

    async def _pass(self, stop: asyncio.Event | None) -> ArchiveReport:
        await self.store.check()
        now_ms = self._now_ms()
        window = archive_window(
            self.layout,
            now_ms=now_ms,
            horizon_ms=self.settings.horizon_ms,
            grace_ms=self.settings.grace_ms,
        )
        sensors = await list_sensors(self.dynamo)
        report = ArchiveReport(sensors=len(sensors))
        queries = asyncio.Semaphore(self.settings.query_concurrency)
        pending = iter(sensors)

        async def worker() -> None:
            for sensor in pending:  # shared iterator: each sensor goes to one worker
                if stop is not None and stop.is_set():
                    report.stopped = True
                    return
                await self._sensor(
                    sensor,
                    window_now=now_ms,
                    report=report,
                    queries=queries,
                    window=window,
                    stop=stop,
                )

        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(min(self.settings.concurrency, len(sensors))):
                    tg.create_task(worker(), name=f"archive-worker-{i}")
        except BaseExceptionGroup as eg:
            err = single_archive_error(eg)
            if err is None:
                raise
            raise err from eg
        log.info("archive pass: %s", report.summary())
        return report

    async def run_every(self, every_s: float, stop: asyncio.Event) -> None:
        """Run a pass every ``every_s`` seconds until ``stop`` is set.

        A pass's failure is logged and retried at the next pass; a missing S3 bucket
        at the start, or a configuration error, ends the loop with its error. Setting
        ``stop`` during a pass ends it after the buckets under way.
        """
        await self.store.check()
        while not stop.is_set():
            try:
                report = await self.run_once(stop=stop)
                for line in report.failed:
                    log.error("archive: %s", line)
            except ArchiveConfigError:
                raise
            except ArchiveError as exc:
                log.error("archive pass failed (retrying in %g s): %s", every_s, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)

    async def _sensor(
        self,
        sensor: SensorSpan,
        *,
        window_now: int,
        report: ArchiveReport,
        queries: asyncio.Semaphore,
        window: Window,
        stop: asyncio.Event | None,
    ) -> None:
        sensor_id = sensor.sensor_id
        try:
            plan = await plan_sensor(
                self.dynamo,
                self.layout,
                sensor,
                window,
                delete_archived=self.settings.delete_archived,
                known_done=self._done.get(sensor_id),
            )
        except ArchiveError as exc:
            report.failed.append(f"{sensor_id}: planning failed: {exc}")
            return
        report.skipped += plan.skipped
        complete = True
        for task in plan.tasks:
            if stop is not None and stop.is_set():
                report.stopped = True
                return
            try:
                await self.archive_bucket(task, now_ms=window_now, report=report, queries=queries)
            except ArchiveError as exc:
                complete = False
                label = self.layout.bucket_label(task.bucket_start_ms)
                log.error("archive of %s bucket %s failed: %s", sensor_id, label, exc)
                report.failed.append(f"{sensor_id} bucket {label}: {exc}")
        if complete and plan.window.first_ms <= plan.window.last_ms:
            self._done[sensor_id] = plan.window

    async def archive_bucket(
        self,
        task: BucketTask,
        *,
        now_ms: int | None = None,
        report: ArchiveReport | None = None,
        queries: asyncio.Semaphore | None = None,
    ) -> Manifest:
        """Archive (or, for an archived bucket, finish the early delete of) one bucket.

        Returns:
            The bucket's manifest.

        Raises:
            ArchiveError: the bucket could not be archived; it is left unmarked.
        """
        now_ms = self._now_ms() if now_ms is None else now_ms
        report = report if report is not None else ArchiveReport()
        if task.marker is not None:
            try:
                readings = await verify_object(self.store, task.marker)
            except VerifyError as exc:
                log.error("%s; archiving the bucket again from DynamoDB", exc)
                report.corrupt.append(str(exc))
            else:
                await self._delete(task.marker, readings, now_ms, report)
                return task.marker
        return await self._archive(task, now_ms, report, queries)

    async def _archive(
        self,
        task: BucketTask,
        now_ms: int,
        report: ArchiveReport,
        queries: asyncio.Semaphore | None,
    ) -> Manifest:
        sid, start = task.sensor_id, task.bucket_start_ms
        by_pk = await export_bucket(self.dynamo, self.layout, sid, start, limit=queries)
        # Another run (an overlapping cron job, a second archiver) may have archived the
        # bucket since this one was planned, and be deleting its items: what this export
        # saw can be a part. Such a run marks before it deletes, so a marker that appeared
        # (or changed) meanwhile means "leave it": never overwrite its object with a part.
        existing = await get_marker(self.dynamo, sid, start)
        if existing is not None and existing != task.marker:
            log.info(
                "%s bucket %s was archived by another run meanwhile: left as it is",
                sid,
                self.layout.bucket_label(start),
            )
            report.skipped += 1
            return existing
        readings = sorted(
            (TableLayout.from_item(it) for items in by_pk.values() for it in items),
            key=lambda r: r.ts_ms,
        )
        checksum = await asyncio.to_thread(content_checksum, readings)
        if not readings:
            manifest = Manifest(
                sensor_id=sid,
                bucket_start_ms=start,
                bucket_ms=self.layout.bucket_ms,
                rows=0,
                key="",
                content_sha256=checksum,
                archived_at_ms=now_ms,
            )
            await put_marker(self.dynamo, manifest)
            report.empty += 1
            return manifest
        if task.marker is not None and len(readings) < task.marker.rows:
            log.error(
                "re-archiving %s bucket %s: DynamoDB holds %d readings, the corrupt archive "
                "held %d: %d readings are lost",
                sid,
                self.layout.bucket_label(start),
                len(readings),
                task.marker.rows,
                task.marker.rows - len(readings),
            )
        key = data_key(self.store.prefix, sid, start)
        metadata = {
            "sensor_id": sid,
            "bucket_start_ms": str(start),
            "bucket_ms": str(self.layout.bucket_ms),
            "rows": str(len(readings)),
            "content_sha256": checksum,
        }
        for attempt in (1, 2):
            body = await asyncio.to_thread(encode, readings, metadata=metadata)
            manifest = Manifest(
                sensor_id=sid,
                bucket_start_ms=start,
                bucket_ms=self.layout.bucket_ms,
                rows=len(readings),
                key=key,
                content_sha256=checksum,
                object_sha256=hashlib.sha256(body).hexdigest(),
                object_bytes=len(body),
                min_ts_ms=readings[0].ts_ms,
                max_ts_ms=readings[-1].ts_ms,
                shard_rows={pk: len(items) for pk, items in by_pk.items()},
                archived_at_ms=now_ms,
            )
            await self.store.put(
                key,
                body,
                content_type=PARQUET_CONTENT_TYPE,
                metadata={"rows": str(len(readings)), "content-sha256": checksum},
            )
            await self.store.put(
                manifest_key(self.store.prefix, sid, start),
                manifest.to_json(),
                content_type="application/json",
            )
            try:
                verified = await verify_object(self.store, manifest)
                break
            except VerifyError as exc:
                report.corrupt.append(str(exc))
                if attempt == 2:
                    raise
                log.error("%s; archiving it again", exc)
        await put_marker(self.dynamo, manifest)
        report.archived += 1
        report.rows += manifest.rows
        report.bytes += manifest.object_bytes
        if self.settings.delete_archived:
            await self._delete(manifest, verified, now_ms, report)
        return manifest

    async def _delete(
        self, manifest: Manifest, readings: list[Reading], now_ms: int, report: ArchiveReport
    ) -> None:
        start, end = manifest.bucket_start_ms, manifest.bucket_start_ms + self.layout.bucket_ms
        keys: list[tuple[str, int]] = []
        for r in readings:
            if not start <= r.ts_ms < end:  # never delete outside the archived bucket
                raise VerifyError(
                    f"archived object {manifest.key} holds a reading at {r.ts_ms} outside its "
                    "bucket: not deleting anything",
                    key=manifest.key,
                )
            keys.append((self.layout.partition_key(manifest.sensor_id, r.ts_ms), r.ts_ms))
        deleted = await delete_keys(self.dynamo, keys)  # not `+= await`: workers share report
        report.deleted += deleted
        await mark_deleted(self.dynamo, manifest, now_ms)
