"""The archive step: closed buckets past the horizon → Parquet in S3 → verified → marked.

Each pass first records the archive policy in the table (horizon, bucket width,
settle time; :class:`ingest.storage.layout.ArchivePolicy`, beside the layout record),
which the ingest's registry reads to tell late readings; then it reads the late
marks (:func:`ingest.storage.registry.late_marks`) and, for each sensor (from the
registry) and each bucket the planner hands out or a late mark names:

1. For a bucket archived before (a late mark, or a corrupt object), read its
   object and verify it against the marker (its ETag is kept).
2. Query every shard of the bucket (:mod:`.exporter`; a ``packed`` table: its sealed
   windows, every set merged, a later set winning a timestamp), and merge: the object's
   readings and DynamoDB's, DynamoDB's winning a timestamp.
3. Re-read the marker (strongly consistent): if another run changed it since it
   was planned, leave the bucket (never overwrite its work with a part).
4. Nothing new (the merged content is the marked one): go to 7. Otherwise encode
   the readings as Parquet (off the event loop) and put the object at the
   bucket's one key (:mod:`.paths`), *conditionally*: replacing exactly the
   object of step 1 (S3 ``If-Match`` on its ETag), or creating it where there was
   none (``If-None-Match: *``). So the object at the key only ever grows — each
   replacement holds every timestamp of the one it replaces — and a run that
   lost a race never overwrites the winner's object. Then put its manifest.
5. Read the object back and compare size, SHA-256, row count and content
   checksum (:mod:`.verify`). A mismatch is reported and the object written
   again (once); if it still fails, the bucket is left unmarked.
6. Write the marker (:mod:`.manifest`) on the condition that it is still the one
   step 3 saw (absent, for a first archive): only now is the new content the
   bucket's archive.
7. With ``delete_archived``: note on the marker that a delete starts (``dx``),
   delete exactly the DynamoDB items this pass read and verified in the object,
   note ``del``. Then clear the bucket's late marks, each only if it was not
   marked again meanwhile (``t`` unchanged).

A late mark is handled only by a pass that starts ``settle`` after the mark's
time, so every reading counted in it is durable before the export (step 2)
reads the bucket; a reading written after the export marks the bucket again
with a newer time, and its mark survives step 7. For ``settle`` after the
policy was (re)recorded, ingest workers may still follow the old one: each
bucket archived then is marked by the archiver itself, and looked at again.

A ``packed`` table (decision 0008) is archived the same way, into the same objects (one
row per reading): only step 2 reads differently, and step 7 never deletes (its sealed
windows expire by TTL for free; ``delete_archived`` is refused, see
:data:`PACKED_NO_DELETE`). A late reading there is sealed as another set of its window
about a minute after it arrives (within the settle time), and its late mark makes a pass
archive the bucket again, merged with the object, exactly as on a ``reading`` table.

Crashes: before step 4's put nothing changed. Between the put and the marker
(6), the object holds more than its marker says; the next pass finds it does not
match the marker, checks it against the row count and checksum it carries in its
own metadata, and merges it (anything else is corrupt: archived again from
DynamoDB). The late marks are cleared last, so a crash anywhere leaves them for
the next pass, which finds nothing new, finishes the delete (``del`` absent) and
clears them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ingest.archive.deleter import delete_keys
from ingest.archive.exporter import export_bucket, export_packed_bucket
from ingest.archive.metrics import ArchiveMetrics, ArchiveReport
from ingest.archive.planner import (
    DAY_MS,
    DEFAULT_GRACE_MS,
    BucketTask,
    SensorPlan,
    SensorSpan,
    Window,
    archive_window,
    list_sensors,
    plan_sensor,
    validate_horizon,
)
from ingest.archive.verify import verify_object, verify_self, verify_stored
from ingest.core.errors import DynamoError
from ingest.storage.archive.errors import (
    ArchiveConfigError,
    ArchiveError,
    ObjectChanged,
    SourceError,
    VerifyError,
    single_archive_error,
)
from ingest.storage.archive.manifest import (
    Manifest,
    get_marker,
    mark_delete_started,
    mark_deleted,
    put_marker,
)
from ingest.storage.archive.parquet import content_checksum, encode
from ingest.storage.archive.paths import data_key, manifest_key
from ingest.storage.archive.store import S3Store, StoredObject
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import ArchivePolicy, Reading, TableLayout
from ingest.storage.registry import LateMark, clear_late_mark, late_marks, write_late_mark
from ingest.storage.table import read_archive_policy, write_archive_policy
from ingest.storage.windows import WindowScheme

__all__ = [
    "DEFAULT_SETTLE_MS",
    "PACKED_NO_DELETE",
    "PARQUET_CONTENT_TYPE",
    "ArchiveSettings",
    "Archiver",
]

log = logging.getLogger(__name__)

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
PACKED_NO_DELETE = (
    "--delete-archived is refused on a 'packed' table: its sealed windows expire by TTL "
    "for free, and deleting them early costs a write unit per started KB of each part "
    "(≈ 0.007 unit per reading, as much as sealing it) to save ≈ 4.4 B of storage per "
    "reading: at on-demand prices that pays only when more than ≈ 4 months of retention "
    "remain after archival (docs/archival.md, 'The packed layout'); run without it, or "
    "give the table a shorter retention"
)
DEFAULT_SETTLE_MS = 420_000
"""Seven minutes: the ingest's default write retry deadline (300 s) plus two minutes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveSettings:
    """How the archive runs.

    Args:
        horizon_ms: Archive a bucket once its end is this far in the past.
        delete_archived: Delete verified items early instead of waiting for their TTL.
        concurrency: Sensors worked on at once (one bucket at a time each).
        query_concurrency: DynamoDB Query calls in flight, across workers.
        grace_ms: How far past the retention to still look for items (TTL deletes lag).
        settle_ms: The longest a reading may take from the ingest's decode to durable
            (its write retries), plus clock skew between the machines (``None``: seven
            minutes, at most a quarter of the horizon). Late marks younger than this
            wait for a later pass; see the module docstring.
    """

    horizon_ms: int = 7 * DAY_MS
    delete_archived: bool = False
    concurrency: int = 4
    query_concurrency: int = 8
    grace_ms: int = DEFAULT_GRACE_MS
    settle_ms: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.query_concurrency < 1:
            raise ArchiveConfigError(
                f"concurrency must be >= 1, got {self.concurrency}/{self.query_concurrency}"
            )
        if self.settle_ms is not None and not 0 <= self.settle_ms <= max(0, self.horizon_ms // 4):
            raise ArchiveConfigError(
                f"settle_ms must be 0..{max(0, self.horizon_ms // 4)} (a quarter of the "
                f"horizon, or every reading would be marked late), got {self.settle_ms}"
            )

    @property
    def effective_settle_ms(self) -> int:
        """The settle time used (the default, capped at a quarter of the horizon)."""
        if self.settle_ms is not None:
            return self.settle_ms
        return max(0, min(DEFAULT_SETTLE_MS, self.horizon_ms // 4))


@dataclass(frozen=True, slots=True)
class _Pass:
    """What every bucket of one pass shares."""

    now_ms: int
    window: Window
    young_until_ms: int  # buckets archived before this are marked late by the archiver
    report: ArchiveReport
    queries: asyncio.Semaphore | None


@dataclass(frozen=True, slots=True)
class _Current:
    """The bucket's object as this run read it.

    Attributes:
        obj: Its bytes and ETag (a replace is conditional on it).
        readings: What it holds (``None``: corrupt).
        marked: It is the object the marker names (verified against it).
    """

    obj: StoredObject
    readings: list[Reading] | None
    marked: bool


def _merge(old: list[Reading], hot: list[Reading]) -> list[Reading]:
    """The object's readings and DynamoDB's, by timestamp; DynamoDB's win."""
    by_ts = {r.ts_ms: r for r in old}
    by_ts.update((r.ts_ms, r) for r in hot)
    return [by_ts[t] for t in sorted(by_ts)]


class Archiver:
    """Archives a table's closed buckets to S3.

    Args:
        dynamo: An open client of the readings table.
        store: An open S3 store.
        layout: The table's layout (read it from the table's layout record).
        settings: Horizon, early delete, concurrency, settle time.
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
        if layout.kind == "packed" and settings.delete_archived:
            raise ArchiveConfigError(PACKED_NO_DELETE)
        # A packed table's buckets are read from its sealed windows (docs/archival.md).
        self._scheme = WindowScheme(layout) if layout.kind == "packed" else None
        self.dynamo = dynamo
        self.store = store
        self.layout = layout
        self.settings = settings
        self.settle_ms = settings.effective_settle_ms
        self.metrics = metrics
        self._clock = clock
        # sensor id -> its clipped window of the last pass that finished every bucket
        # of it: the next pass reads markers only outside it (see plan_sensor).
        self._done: dict[str, Window] = {}

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @property
    def policy(self) -> ArchivePolicy:
        """The policy this archiver follows (and records in the table)."""
        return ArchivePolicy(
            horizon_ms=self.settings.horizon_ms,
            bucket_ms=self.layout.bucket_ms,
            settle_ms=self.settle_ms,
        )

    async def run_once(self, *, stop: asyncio.Event | None = None) -> ArchiveReport:
        """One pass over every sensor; per-bucket failures are in the report, not raised.

        Args:
            stop: When set, the pass ends after the buckets under way (``report.stopped``);
                what it did not reach is done by the next pass.

        Raises:
            StorageError: the S3 bucket is missing or not accessible.
            SourceError: the sensor registry, the late marks or the policy record cannot
                be read (or the policy written).
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

    async def record_policy(self, now_ms: int) -> ArchivePolicy:
        """Record this archiver's policy in the table unless it is already there.

        Returns:
            The recorded policy (``since_ms``: when it was first recorded).

        Raises:
            SourceError: the policy record cannot be read or written.
        """
        mine = self.policy
        try:
            stored = await read_archive_policy(self.dynamo)
            if stored is not None and stored.same_rules(mine):
                return stored
            if stored is not None and now_ms - stored.since_ms < DAY_MS:
                log.warning(
                    "the table's archive policy changes from %s (recorded %.1f h ago) to %s: "
                    "if another archiver of this table runs with other settings, both keep "
                    "rewriting it (give them the same horizon)",
                    stored,
                    (now_ms - stored.since_ms) / 3_600_000,
                    mine,
                )
            recorded = replace(mine, since_ms=now_ms)
            await write_archive_policy(self.dynamo, recorded)
        except DynamoError as exc:
            raise SourceError(
                f"cannot record the archive policy in table {self.dynamo.table!r}: {exc}",
                retriable=exc.retriable,
            ) from exc
        log.info("recorded the archive policy %s", recorded)
        return recorded

    async def _late_marks(self) -> dict[str, list[LateMark]]:
        try:
            marks = await late_marks(self.dynamo)
        except DynamoError as exc:
            raise SourceError(
                f"cannot read the late marks of table {self.dynamo.table!r}: {exc}",
                retriable=exc.retriable,
            ) from exc
        by_sensor: dict[str, list[LateMark]] = {}
        for m in marks:
            by_sensor.setdefault(m.sensor_id, []).append(m)
        return by_sensor

    async def _pass(self, stop: asyncio.Event | None) -> ArchiveReport:
        await self.store.check()
        now_ms = self._now_ms()
        policy = await self.record_policy(now_ms)
        window = archive_window(
            self.layout,
            now_ms=now_ms,
            horizon_ms=self.settings.horizon_ms,
            grace_ms=self.settings.grace_ms,
        )
        marks = await self._late_marks()
        sensors = await list_sensors(self.dynamo)
        report = ArchiveReport(sensors=len(sensors))
        # A sensor with late marks and no registry item yet (its registry update failed
        # or is on its way): only its marked buckets are looked at.
        registered = {s.sensor_id for s in sensors}
        work = [(s, True) for s in sensors]
        work += [(SensorSpan(sid), False) for sid in sorted(marks) if sid not in registered]
        shared = _Pass(
            now_ms=now_ms,
            window=window,
            young_until_ms=policy.since_ms + self.settle_ms,
            report=report,
            queries=asyncio.Semaphore(self.settings.query_concurrency),
        )
        pending = iter(work)

        async def worker() -> None:
            for sensor, in_registry in pending:  # shared iterator: one worker per sensor
                if stop is not None and stop.is_set():
                    report.stopped = True
                    return
                await self._sensor(
                    sensor,
                    marks.get(sensor.sensor_id, []),
                    in_registry=in_registry,
                    shared=shared,
                    stop=stop,
                )

        try:
            async with asyncio.TaskGroup() as tg:
                for i in range(min(self.settings.concurrency, len(work))):
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

    async def _plan(
        self,
        sensor: SensorSpan,
        marks: list[LateMark],
        *,
        in_registry: bool,
        shared: _Pass,
    ) -> SensorPlan:
        """The planner's tasks for the sensor, with its late marks that are due merged in."""
        sid, report = sensor.sensor_id, shared.report
        if in_registry:
            plan = await plan_sensor(
                self.dynamo,
                self.layout,
                sensor,
                shared.window,
                delete_archived=self.settings.delete_archived,
                known_done=self._done.get(sid),
            )
        else:
            plan = SensorPlan([], 0, Window(0, -1))
        tasks = {t.bucket_start_ms: t for t in plan.tasks}
        for mark in marks:
            bucket = mark.bucket_start_ms
            if bucket > shared.window.last_ms or mark.marked_at_ms + self.settle_ms > shared.now_ms:
                report.late_waiting += 1  # not archivable yet, or its readings may be in flight
                continue
            task = tasks.get(bucket)
            if task is None:
                task = BucketTask(sid, bucket, await get_marker(self.dynamo, sid, bucket))
                if plan.window.first_ms <= bucket <= plan.window.last_ms:
                    plan = replace(plan, skipped=plan.skipped - 1)  # not skipped after all
            tasks[bucket] = replace(task, late=(*task.late, mark))
        return replace(plan, tasks=[tasks[b] for b in sorted(tasks)])

    async def _sensor(
        self,
        sensor: SensorSpan,
        marks: list[LateMark],
        *,
        in_registry: bool,
        shared: _Pass,
        stop: asyncio.Event | None,
    ) -> None:
        sensor_id, report = sensor.sensor_id, shared.report
        try:
            plan = await self._plan(sensor, marks, in_registry=in_registry, shared=shared)
        except ArchiveError as exc:
            report.failed.append(f"{sensor_id}: planning failed: {exc}")
            return
        report.skipped += max(0, plan.skipped)
        complete = True
        for task in plan.tasks:
            if stop is not None and stop.is_set():
                report.stopped = True
                return
            try:
                await self._bucket(task, shared)
            except ArchiveError as exc:
                complete = False
                label = self.layout.bucket_label(task.bucket_start_ms)
                log.error("archive of %s bucket %s failed: %s", sensor_id, label, exc)
                report.failed.append(f"{sensor_id} bucket {label}: {exc}")
        if in_registry and complete and plan.window.first_ms <= plan.window.last_ms:
            self._done[sensor_id] = plan.window

    async def archive_bucket(
        self,
        task: BucketTask,
        *,
        now_ms: int | None = None,
        report: ArchiveReport | None = None,
        queries: asyncio.Semaphore | None = None,
    ) -> Manifest:
        """Archive (again, for a late or corrupt bucket) or finish the early delete of a bucket.

        Returns:
            The bucket's manifest (another run's, when it changed the marker meanwhile).

        Raises:
            ArchiveError: the bucket could not be archived; it is left as it was.
        """
        now_ms = self._now_ms() if now_ms is None else now_ms
        shared = _Pass(
            now_ms=now_ms,
            window=Window(0, -1),
            young_until_ms=0,
            report=report if report is not None else ArchiveReport(),
            queries=queries,
        )
        manifest, _ = await self._archive_task(task, shared)
        return manifest

    async def _bucket(self, task: BucketTask, shared: _Pass) -> None:
        _, handled = await self._archive_task(task, shared)
        if not handled:
            return  # another run changed the marker: the marks wait for the next pass
        for mark in task.late:
            try:
                cleared = await clear_late_mark(self.dynamo, mark, now_ms=shared.now_ms)
            except DynamoError as exc:
                raise SourceError(
                    f"late mark of {mark.sensor_id} could not be cleared: {exc}",
                    retriable=exc.retriable,
                ) from exc
            if cleared:
                shared.report.late += 1
            else:  # marked again since it was read: the next pass archives it again
                shared.report.late_waiting += 1

    async def _archive_task(self, task: BucketTask, shared: _Pass) -> tuple[Manifest, bool]:
        marker = task.marker
        if marker is None or not marker.rows:
            return await self._write(task, shared, None)  # no object expected
        obj = await self.store.get_object(marker.key)
        try:
            old = await verify_stored(self.store, marker, obj)
        except VerifyError as exc:
            return await self._write(
                task, shared, await self._unmarked(task, marker.key, obj, exc, shared)
            )
        assert obj is not None  # verified
        if not task.late:  # the planner's pending early delete
            await self._delete(marker, old, shared)
            return marker, True
        return await self._write(task, shared, _Current(obj, old, marked=True))

    async def _unmarked(
        self,
        task: BucketTask,
        key: str,
        obj: StoredObject | None,
        why: VerifyError | None,
        shared: _Pass,
    ) -> _Current | None:
        """The bucket's object when it is not the marked one (``None``: there is none).

        An object that holds what its own metadata says was put by a re-archive whose
        marker write did not happen (a crash, or another run that lost the race to
        mark): its readings are kept and merged. Anything else is corrupt: the bucket is
        archived again from DynamoDB.
        """
        if obj is None:
            if why is not None:
                log.error("%s; archiving the bucket again from DynamoDB", why)
                shared.report.corrupt.append(str(why))
            return None
        try:
            readings = await verify_self(self.store, key, obj, task.sensor_id)
        except VerifyError as exc:
            log.error("%s; archiving the bucket again from DynamoDB", why or exc)
            shared.report.corrupt.append(str(why or exc))
            return _Current(obj, None, marked=False)
        log.warning(
            "s3://%s/%s holds %d readings its marker does not name yet (a re-archive was "
            "interrupted before its marker): merging them",
            self.store.bucket,
            key,
            len(readings),
        )
        return _Current(obj, readings, marked=False)

    async def _write(
        self, task: BucketTask, shared: _Pass, current: _Current | None, *, again: bool = False
    ) -> tuple[Manifest, bool]:
        """Export the bucket, merge it with the current object, replace the object, mark.

        ``current`` is the bucket's object (``None``: none expected); its readings are
        ``None`` when it is corrupt (then DynamoDB alone). Returns the bucket's manifest
        and whether this run's work stands (False: another run changed the marker or the
        object meanwhile; both are left as they are, and a late mark waits).
        """
        sid, start, base, report = task.sensor_id, task.bucket_start_ms, task.marker, shared.report
        if shared.now_ms < shared.young_until_ms and not again:
            # The ingest may not know the policy yet: look at this bucket again later.
            try:
                await write_late_mark(self.dynamo, sid, start, shared.now_ms)
            except DynamoError as exc:
                raise SourceError(f"late mark of {sid}: {exc}", retriable=exc.retriable) from exc
        hot, shard_rows = await self._export(sid, start, shared.queries)
        # Another run (an overlapping cron job, a second archiver) may have archived the
        # bucket since this one was planned, and be deleting its items: what this export
        # saw can be a part. Such a run marks before it deletes, so a marker that appeared
        # (or changed) meanwhile means "leave it": never overwrite its object with a part.
        existing = await get_marker(self.dynamo, sid, start)
        if existing != base:
            return self._left(sid, start, existing, report)
        old = current.readings if current is not None else None
        readings = _merge(old, hot) if old else hot
        checksum = await asyncio.to_thread(content_checksum, readings)
        if base is not None and current is not None and current.marked:
            if checksum == base.content_sha256:
                # Nothing new (a redelivery, the archiver's own mark, a crash after the marker).
                if self.settings.delete_archived and (hot or base.deleted_at_ms is None):
                    await self._delete(base, hot, shared)
                return base, True
        elif base is not None and base.rows == 0 and checksum == base.content_sha256:
            return base, True  # still empty
        # Carried over: DynamoDB may lack readings that the base's object held.
        deleted_at = base.deleted_at_ms if base is not None else None
        delete_started = base.delete_started_ms if base is not None else None
        if not readings:
            if base is not None and base.rows:
                log.error(
                    "%s bucket %s: its archived object is unreadable and DynamoDB holds none "
                    "of its %d readings: they are lost",
                    sid,
                    self.layout.bucket_label(start),
                    base.rows,
                )
            manifest = Manifest(
                sensor_id=sid,
                bucket_start_ms=start,
                bucket_ms=self.layout.bucket_ms,
                rows=0,
                key="",
                content_sha256=checksum,
                archived_at_ms=shared.now_ms,
                deleted_at_ms=deleted_at,
                delete_started_ms=delete_started,
            )
            if not await put_marker(self.dynamo, manifest, expected=base):
                return self._left(sid, start, None, report)
            report.empty += 1
            return manifest, True
        if base is not None and base.rows and old is None and len(readings) < base.rows:
            log.error(
                "re-archiving %s bucket %s: DynamoDB holds %d readings, the corrupt archive "
                "held %d: %d readings are lost",
                sid,
                self.layout.bucket_label(start),
                len(readings),
                base.rows,
                base.rows - len(readings),
            )
        key = data_key(self.store.prefix, sid, start)
        metadata = {
            "sensor_id": sid,
            "bucket_start_ms": str(start),
            "bucket_ms": str(self.layout.bucket_ms),
            "rows": str(len(readings)),
            "content_sha256": checksum,
        }
        # Replace exactly the object this run read (or create it where there was none):
        # a run that lost a race never overwrites the winner's object.
        etag = current.obj.etag if current is not None else None
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
                shard_rows=shard_rows,
                archived_at_ms=shared.now_ms,
                deleted_at_ms=deleted_at,
                delete_started_ms=delete_started,
            )
            try:
                etag = await self.store.put(
                    key,
                    body,
                    content_type=PARQUET_CONTENT_TYPE,
                    metadata={"rows": str(len(readings)), "content-sha256": checksum},
                    if_match=etag,
                    if_absent=etag is None,
                )
            except ObjectChanged:
                if current is None and not again:
                    # An object where none was expected: an interrupted earlier run's (or
                    # one being written by another run): merge what it holds and try again.
                    found = await self.store.get_object(key)
                    unmarked = await self._unmarked(task, key, found, None, shared)
                    return await self._write(task, shared, unmarked, again=True)
                return self._left(sid, start, await get_marker(self.dynamo, sid, start), report)
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
        if not await put_marker(self.dynamo, manifest, expected=base):
            # The object holds more than the marker another run wrote: the next pass that
            # looks at the bucket merges it (it verifies by its own checksums).
            return self._left(sid, start, await get_marker(self.dynamo, sid, start), report)
        if base is None:
            report.archived += 1
        else:
            report.rearchived += 1
        report.rows += manifest.rows - len(old or [])
        report.bytes += manifest.object_bytes
        if self.settings.delete_archived:
            in_object = {r.ts_ms for r in verified}
            await self._delete(manifest, [r for r in hot if r.ts_ms in in_object], shared)
        return manifest, True

    async def _export(
        self, sid: str, start: int, queries: asyncio.Semaphore | None
    ) -> tuple[list[Reading], dict[str, int]]:
        """The bucket's readings in DynamoDB, ascending, each timestamp once, and how many
        each partition held (either layout: the same readings, so the same object)."""
        if self._scheme is not None:
            return await export_packed_bucket(self.dynamo, self._scheme, sid, start, limit=queries)
        by_pk = await export_bucket(self.dynamo, self.layout, sid, start, limit=queries)
        hot = sorted(
            (TableLayout.from_item(it) for items in by_pk.values() for it in items),
            key=lambda r: r.ts_ms,
        )
        return hot, {pk: len(items) for pk, items in by_pk.items()}

    def _left(
        self, sid: str, start: int, current: Manifest | None, report: ArchiveReport
    ) -> tuple[Manifest, bool]:
        """Another run archived the bucket meanwhile: leave its work as it is."""
        log.info(
            "%s bucket %s was archived by another run meanwhile: left as it is",
            sid,
            self.layout.bucket_label(start),
        )
        report.skipped += 1
        if current is None:
            current = Manifest(
                sensor_id=sid, bucket_start_ms=start, bucket_ms=0, rows=0, key="", content_sha256=""
            )
        return current, False

    async def _delete(self, manifest: Manifest, readings: list[Reading], shared: _Pass) -> None:
        """Delete the items of ``readings`` (all verified in the object), noting it on the marker."""
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
        if keys and manifest.delete_started_ms is None:
            # Before the first delete: the query API must stop trusting a hot count.
            await mark_delete_started(self.dynamo, manifest, shared.now_ms)
        deleted = await delete_keys(self.dynamo, keys)  # not `+= await`: workers share report
        shared.report.deleted += deleted
        await mark_deleted(self.dynamo, manifest, shared.now_ms)
