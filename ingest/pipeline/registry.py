"""The sensor registry: one small item per sensor, so dashboards list sensors without a Scan.

Observations are coalesced in memory and written at most once per sensor per
``registry_interval_s``: last seen (``ls``), latest metric values (``m``),
readings counted (``n``) and first seen (``fs``, the lowest reading timestamp
ever observed). The latest values only move forward in time (a condition on
``ls``), so a late backfill never replaces a newer reading; its count still
adds up. ``fs`` only moves backward; the archive planner
(:mod:`ingest.archive.planner`) reads ``[fs, ls]`` to look only at the buckets
that can hold the sensor's readings.

How ``fs`` is kept without an extra write per flush:

* Every update carries ``fs = if_not_exists(fs, :batch_min)``, so a new
  sensor's item is created with its first-seen time in the same UpdateItem.
* Each process remembers a per-sensor *floor* (the stored ``fs`` as last seen
  by it). While a flush's lowest timestamp is at or above the floor — steady
  traffic — nothing more happens. Otherwise (first flush of the sensor in this
  process, or a backfill) the update returns the item (``ALL_NEW``) and, when
  the batch goes below the stored value, one conditional update lowers it
  (``SET fs = :min`` if ``fs > :min``: concurrent workers only ever lower it).
* Items written before ``fs`` existed get ``fs = 0`` ("unknown, look at
  everything"): the main update's condition refuses to set ``fs`` on an item
  that has ``ls`` but no ``fs``, and the fallback marks it 0. A first-seen
  time made up from today's traffic would make the archiver skip older buckets.
* An update that failed with a retriable error (throttling, 5xx, connection)
  is put back for the next flush, so a backfill's ``fs`` is not lost to a blip
  (the count may then be added twice; it is an estimate). A refused one is
  logged and dropped.

Write cost: a sensor this process has already written is written again only
after ``refresh_s`` (config ``registry_refresh_s``, default 5 minutes) unless
its first-seen time must go down; its counts and latest values wait in memory
meanwhile. So the registry costs at most one UpdateItem per active sensor per
refresh period, however often the sensor reports (one per sensor per
``registry_interval_s`` made it 22 % of the table's write units on the gateway
benchmark). "Last seen" in the registry may lag by up to ``refresh_s`` plus
``registry_interval_s``; the query API's ``/latest`` reads the table from there
on, so it still finds the newest reading. The drain at shutdown writes everything.

Late readings (see docs/archival.md, "Late readings"): the archiver records its
policy (horizon, bucket width, settle time) beside the layout record; the
registry reads it at start and at most every ``policy_refresh_s`` (10 s) at a
flush. A reading whose bucket may already be archived — its bucket ends at or
before ``now + settle + lookahead - horizon`` — is counted under its sensor and
bucket, and each flush writes one *late mark* item per such (sensor, bucket)
(``#late#{p}``, see :mod:`ingest.storage.layout`): ``t`` = the flush time, ``n`` += the
readings. The archiver re-archives marked buckets and clears a mark only if its
``t`` is unchanged, from an export that started ``settle`` after ``t``. In
steady traffic no reading is late and this costs one comparison per reading (a
threshold recomputed at every flush and after every registry write; it looks
``lookahead_s`` ahead, at most a quarter of the horizon). Before the policy was
read once (the first moments of a start, or DynamoDB unreachable), readings
are not classified one by one: each sensor's lowest and highest timestamps
seen meanwhile are kept, and once the policy is known every bucket of that span
below the threshold is marked (a superset), unless the sensor was last seen a settle
time before the policy was first recorded (``since_ms``): those readings were durable
before it existed, so the archiver's first export under it, which starts later, holds
them (a ``packed`` table's later seals mark themselves, :mod:`ingest.pipeline.packing`):
a history replayed a settle time before the first archiver pass marks nothing. A mark
that failed retriably is
retried with the next flush; one refused is logged as an error.

What the archiver relies on is durable before the acknowledgement. The planner
only looks at sensors in the registry, between their first-seen time and now,
and at buckets marked late; a crash between a PUBACK and the next periodic
flush would otherwise leave acknowledged readings where no archiver pass ever
looks. So a message whose readings need a registry write — a sensor this process
knows no stored first-seen time for (a new sensor: floors of the sensors already
in the registry are loaded at start), a reading below that first-seen time (a
backfill), or a late reading — *holds* its acknowledgement: it gets one more
outstanding unit per such write (:meth:`SensorRegistry.observe`), and the
registry flushes within ``hold_delay_s`` of the first hold instead of waiting
for its period, completing the units once the writes are durable. Steady
traffic of known sensors holds nothing (one dictionary lookup per reading).

Expressions use placeholders only; no input text is ever spliced into one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ingest.core.errors import DynamoError
from ingest.core.metrics import Metrics
from ingest.pipeline.acks import AckTracker, Pending
from ingest.storage.dynamo import TableClient, is_condition_failure
from ingest.storage.items import AttributeValue, ItemKey, RegistryItem
from ingest.storage.layout import (
    ArchivePolicy,
    Reading,
    format_number,
    registry_key,
)
from ingest.storage.registry import write_late_mark
from ingest.storage.table import read_archive_policy

__all__ = ["SensorRegistry"]

log = logging.getLogger(__name__)

_UPDATE = "SET #sid = :sid, #ls = :ls, #m = :m, #fs = if_not_exists(#fs, :fs) ADD #n :n"
# A new item, or a newer reading on an item that already has ``fs`` (an item
# from before ``fs`` existed must not get one made up from this flush).
_CONDITION = "attribute_not_exists(#ls) OR (#ls <= :ls AND attribute_exists(#fs))"
_UNKNOWN_FS = 0
"""``fs`` of items older than the attribute: the planner then looks at the whole window."""
_NEVER = -(2**63)
"""The late threshold while no archive policy is recorded: no reading is late."""


class _Pending:
    """One sensor's observations since the last flush (``seen_ms``: the wall-clock time of
    the last message that brought one)."""

    __slots__ = ("count", "last_ts", "metrics", "min_ts", "seen_ms")

    def __init__(
        self, ts_ms: int, count: int, metrics: dict[str, float | int], seen_ms: int
    ) -> None:
        self.last_ts = ts_ms
        self.min_ts = ts_ms
        self.count = count
        self.metrics = metrics
        self.seen_ms = seen_ms

    def merge(self, other: _Pending) -> None:
        """Fold an older pending entry (one that failed to flush) into this one."""
        self.count += other.count
        self.min_ts = min(self.min_ts, other.min_ts)
        self.seen_ms = max(self.seen_ms, other.seen_ms)
        if other.last_ts > self.last_ts:
            self.last_ts, self.metrics = other.last_ts, other.metrics


class SensorRegistry:
    """Coalesces per-sensor observations and flushes them as UpdateItem calls.

    Args:
        client: DynamoDB client of the table.
        metrics: Metrics.
        concurrency: Parallel UpdateItem calls during a flush.
        refresh_s: Least time between two writes of one sensor's item by this process
            (0: every flush), unless its first-seen time must go down.
        clock: Monotonic clock (injected in tests).
        wall_clock: Epoch seconds, for the late threshold and the marks (injected in tests).
        policy_refresh_s: Least time between two reads of the archive policy.
        lookahead_s: How far ahead the late threshold looks (it is recomputed at every
            flush and registry write; capped at a quarter of the horizon).
        acks: Completes the units of messages that held their acknowledgement for a
            registry write (``None``: observations never hold, as in tools and tests).
        floors: The stored first-seen time of the sensors already in the registry
            (:func:`known_sensors`), so that their readings hold nothing.
        hold_delay_s: How long the first held message waits for others to join its flush.
    """

    def __init__(
        self,
        client: TableClient,
        metrics: Metrics,
        *,
        concurrency: int = 8,
        refresh_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        policy_refresh_s: float = 10.0,
        lookahead_s: float = 60.0,
        acks: AckTracker | None = None,
        floors: dict[str, int] | None = None,
        hold_delay_s: float = 0.02,
    ) -> None:
        self._client = client
        self._acks = acks
        self._hold_delay_s = hold_delay_s
        # ("fs", sensor id) or ("late", (sensor id, bucket)) -> messages waiting for that write
        self._holds: dict[tuple[str, Any], list[Pending]] = {}
        self._urgent = asyncio.Event()
        self._m = metrics
        self._concurrency = concurrency
        self._seen: dict[str, _Pending] = {}
        # sensor id -> the stored ``fs`` as this process last learned it (it only goes down)
        self._floors: dict[str, int] = dict(floors or {})
        self._refresh_s = refresh_s
        self._clock = clock
        # sensor id -> when this process last wrote its item (monotonic seconds)
        self._written_at: dict[str, float] = {}
        self._wall = wall_clock
        self._policy_refresh_s = policy_refresh_s
        self._lookahead_ms = round(lookahead_s * 1000)
        self._policy: ArchivePolicy | None = None
        self._policy_read_at: float | None = None  # monotonic; None: never read
        self._late_before = _NEVER
        # (sensor id, bucket start) -> late readings seen since the last flush
        self._late: dict[tuple[str, int], int] = {}
        # sensor id -> (lowest, highest timestamp, last seen wall ms) seen before the policy
        # was first read
        self._unclassified: dict[str, tuple[int, int, int]] = {}

    @property
    def archive_policy(self) -> ArchivePolicy | None:
        """The archive policy as last read from the table (``None``: none recorded, or not yet)."""
        return self._policy

    @property
    def late_pending(self) -> int:
        """Late (sensor, bucket) marks waiting for the next flush."""
        return len(self._late)

    def observe(self, readings: list[Reading], pending: Pending | None = None) -> None:
        """Note one message's readings; hold its acknowledgement for what must be durable.

        Call it before any unit of ``pending`` can complete (right after the message
        is tracked): each registry write the message must wait for adds one unit.
        """
        seen = self._seen
        late_before = self._late_before
        now_ms = int(self._wall() * 1000)
        floors = self._floors if pending is not None and self._acks is not None else None
        holds: set[tuple[str, Any]] | None = None
        for r in readings:
            ts = r.ts_ms
            sid = r.sensor_id
            if ts < late_before:  # its bucket may be archived already: mark it
                key = self._note_late(sid, ts)
                if floors is not None:
                    (holds := holds or set()).add(("late", key))
            if floors is not None:
                floor = floors.get(sid)
                if floor is None or ts < floor:  # new to us, or a backfill: fs first
                    (holds := holds or set()).add(("fs", sid))
            entry = seen.get(sid)
            if entry is None:
                seen[sid] = _Pending(ts, 1, r.metrics, now_ms)
                continue
            entry.count += 1
            entry.seen_ms = now_ms
            if ts >= entry.last_ts:
                entry.last_ts = ts
                entry.metrics = r.metrics
            elif ts < entry.min_ts:
                entry.min_ts = ts
        if holds:
            assert pending is not None
            pending.remaining += len(holds)
            for h in holds:
                self._holds.setdefault(h, []).append(pending)
            self._urgent.set()

    @property
    def held(self) -> int:
        """Registry writes that acknowledgements are waiting for."""
        return len(self._holds)

    def _release(self, done: list[Pending]) -> None:
        if done and self._acks is not None:
            self._acks.done(done)

    def _note_late(self, sensor_id: str, ts_ms: int) -> tuple[str, int]:
        policy = self._policy
        assert policy is not None  # the threshold is above _NEVER only with a policy
        key = (sensor_id, ts_ms - ts_ms % policy.bucket_ms)
        late = self._late
        late[key] = late.get(key, 0) + 1
        return key

    def _update_threshold(self) -> None:
        policy = self._policy
        if policy is None:
            self._late_before = _NEVER
            return
        lookahead = min(self._lookahead_ms, policy.horizon_ms // 4)
        self._late_before = policy.late_before(int(self._wall() * 1000), lookahead)

    async def refresh_policy(self, *, force: bool = False) -> ArchivePolicy | None:
        """Read the archive policy from the table (at most every ``policy_refresh_s``).

        A failed read is logged and retried at the next flush; until the first read
        succeeds, each sensor's timestamp span is kept so that nothing goes unmarked.
        """
        now = self._clock()
        if (
            not force
            and self._policy_read_at is not None
            and now - self._policy_read_at < self._policy_refresh_s
        ):
            return self._policy
        try:
            policy = await read_archive_policy(self._client)
        except (DynamoError, ValueError, KeyError, TypeError) as exc:  # also a malformed record
            log.warning("cannot read the archive policy (retrying at the next flush): %s", exc)
            return self._policy
        first = self._policy_read_at is None
        changed = policy != self._policy
        self._policy_read_at = now
        if changed:
            log.info("archive policy: %s", policy or "none recorded (no archiver ran yet)")
        self._policy = policy
        self._update_threshold()
        if first or changed:
            # What was observed since the last flush was classified under the old policy
            # (or not at all): look at it again under this one.
            self._stash_unclassified(self._seen)
            self._classify_unclassified()
        return policy

    def _stash_unclassified(self, pending: dict[str, _Pending]) -> None:
        spans = self._unclassified
        for sid, entry in pending.items():
            lo, hi, seen = entry.min_ts, entry.last_ts, entry.seen_ms
            old = spans.get(sid)
            spans[sid] = (
                (lo, hi, seen)
                if old is None
                else (min(lo, old[0]), max(hi, old[1]), max(seen, old[2]))
            )

    def _classify_unclassified(self) -> None:
        """Mark the buckets below the threshold of what was seen unclassified, but not what
        was durable before the policy was recorded (seen a settle time before its
        ``since_ms``): the archiver's first export under it runs later and holds that."""
        spans, self._unclassified = self._unclassified, {}
        policy = self._policy
        if policy is None:
            return
        bw, late_before, late = policy.bucket_ms, self._late_before, self._late
        durable_before = policy.since_ms - policy.settle_ms
        for sid, (lo, hi, seen) in spans.items():
            if seen < durable_before:
                continue
            last = min(hi - hi % bw, late_before - bw)
            for bucket in range(lo - lo % bw, last + 1, bw):
                late.setdefault((sid, bucket), 0)

    def __len__(self) -> int:
        return len(self._seen)

    def first_seen_floor(self, sensor_id: str) -> int | None:
        """The sensor's stored first-seen time as this process knows it (``None``: not yet)."""
        return self._floors.get(sensor_id)

    async def flush(self, *, everything: bool = False) -> int:
        """Write pending observations; return the number of sensors fully updated.

        Sensors written less than ``refresh_s`` ago wait (unless ``everything``, or
        their first-seen time must go down). The late marks collected since the last
        flush are written in any case (one UpdateItem per sensor and bucket), after the
        archive policy is read again when due. Updates that failed with a retriable
        error (throttling, 5xx, connection) are kept for the next flush.
        """
        if not everything or self._policy_read_at is None:  # a drain: no extra read
            await self.refresh_policy()
        self._update_threshold()
        pending, self._seen = self._seen, {}
        holds, self._holds = self._holds, {}
        if self._policy_read_at is None:  # policy never read: keep the spans to classify
            self._stash_unclassified(pending)
        if not everything and self._refresh_s > 0:
            pending = self._due(pending, holds)
        marks, self._late = self._late, {}
        if not pending and not marks:
            self._carry(holds)
            return 0
        written_at = self._clock()
        marked_at_ms = int(self._wall() * 1000)
        sem = asyncio.Semaphore(self._concurrency)
        retry: dict[str, _Pending] = {}
        retry_marks: dict[tuple[str, int], int] = {}

        async def one(sid: str, entry: _Pending) -> None:
            async with sem:
                again = await self._update(sid, entry)
                self._update_threshold()  # a slow flush must not leave it stale
                if again is not None:
                    retry[sid] = again

        async def mark(key: tuple[str, int], count: int) -> None:
            async with sem:
                if not await self._mark(key, count, marked_at_ms):
                    retry_marks[key] = count

        async with asyncio.TaskGroup() as tg:
            for sid, entry in pending.items():
                tg.create_task(one(sid, entry), name=f"registry-{sid}")
            for key, count in marks.items():
                tg.create_task(mark(key, count), name=f"registry-late-{key[0]}")
        for key, count in retry_marks.items():
            self._late[key] = self._late.get(key, 0) + count
        # Holds complete with the write that made their part durable; the others wait on.
        released: list[Pending] = []
        for hold, waiting in holds.items():
            kind, what = hold
            failed = what in retry_marks if kind == "late" else what in retry
            if (
                failed
                or (kind == "late" and what not in marks)
                or (kind == "fs" and what not in pending)
            ):
                self._holds.setdefault(hold, []).extend(waiting)
            else:
                released += waiting
        self._release(released)
        if self._holds:
            self._urgent.set()
        for sid, entry in retry.items():  # with the next flush
            newer = self._seen.get(sid)
            if newer is None:
                self._seen[sid] = entry
            else:
                newer.merge(entry)
        for sid in pending.keys() - retry.keys():
            self._written_at[sid] = written_at
        done = len(pending) - len(retry)
        self._m.registry_updates.inc(done)
        return done

    def _carry(self, holds: dict[tuple[str, Any], list[Pending]]) -> None:
        for hold, waiting in holds.items():
            self._holds.setdefault(hold, []).extend(waiting)

    def _due(
        self, pending: dict[str, _Pending], holds: dict[tuple[str, Any], list[Pending]]
    ) -> dict[str, _Pending]:
        """Split off the sensors to write now; the others go back to wait in memory."""
        due: dict[str, _Pending] = {}
        since = self._clock() - self._refresh_s
        written_at, floors, seen = self._written_at, self._floors, self._seen
        for sid, entry in pending.items():
            last = written_at.get(sid)
            floor = floors.get(sid)
            # Due: never written by this process, written long enough ago, or below the
            # first-seen floor. (A floor stays unknown only where the server returns no
            # attributes, e.g. the bench sink: then the refresh write learns it.)
            if (
                last is None
                or last <= since
                or (floor is not None and entry.min_ts < floor)
                or ("fs", sid) in holds
            ):
                due[sid] = entry
            else:
                seen[sid] = entry  # nothing was observed since the swap: no merge needed
        return due

    async def _mark(self, key: tuple[str, int], count: int, marked_at_ms: int) -> bool:
        """Write one late mark; False when it must be retried with the next flush."""
        sid, bucket = key
        try:
            await write_late_mark(self._client, sid, bucket, marked_at_ms, count)
        except DynamoError as exc:
            if exc.retriable:
                log.warning("late mark of %s bucket %d failed (retrying): %s", sid, bucket, exc)
                return False
            log.error(
                "late mark of %s bucket %d refused: %d late readings may stay out of the "
                "archive: %s",
                sid,
                bucket,
                count,
                exc,
            )
        return True

    async def _call(self, **kwargs: Any) -> dict[str, Any]:
        return await self._client.call("update_item", TableName=self._client.table, **kwargs)

    async def _update(self, sid: str, entry: _Pending) -> _Pending | None:
        """Write one sensor's observations; return what to retry with the next flush."""
        pk, sk = registry_key(sid)
        key: ItemKey = {"pk": {"S": pk}, "sk": {"N": str(sk)}}
        floor = self._floors.get(sid)
        learn = floor is None or entry.min_ts < floor
        values: dict[str, AttributeValue] = {
            ":sid": {"S": sid},
            ":ls": {"N": str(entry.last_ts)},
            ":m": {"M": {k: {"N": format_number(v)} for k, v in entry.metrics.items()}},
            ":n": {"N": str(entry.count)},
            ":fs": {"N": str(entry.min_ts)},
        }
        names = {"#sid": "sid", "#ls": "ls", "#m": "m", "#n": "n", "#fs": "fs"}
        stored: RegistryItem | None = None
        try:
            resp = await self._call(
                Key=key,
                UpdateExpression=_UPDATE,
                ConditionExpression=_CONDITION,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW" if learn else "NONE",
            )
            stored = resp.get("Attributes")
        except DynamoError as exc:
            if not is_condition_failure(exc):
                return self._failed(sid, entry, "update", exc)
            # ``ls`` is newer (a backfill), or the item predates ``fs``: count, and make
            # sure ``fs`` exists (0, "unknown", on an old item).
            try:
                resp = await self._call(
                    Key=key,
                    UpdateExpression="SET #fs = if_not_exists(#fs, :z) ADD #n :n",
                    ExpressionAttributeNames={"#fs": "fs", "#n": "n"},
                    ExpressionAttributeValues={":z": {"N": str(_UNKNOWN_FS)}, ":n": values[":n"]},
                    ReturnValues="ALL_NEW" if learn else "NONE",
                )
            except DynamoError as exc2:
                return self._failed(sid, entry, "count update", exc2)
            stored = resp.get("Attributes")
            if stored is not None and int(stored.get("ls", {"N": "0"})["N"]) <= entry.last_ts:
                await self._set_latest(sid, key, values)  # it failed only for the missing fs
        if stored is None or "fs" not in stored:
            # Nothing returned (a server that returns no attributes, like the bench sink):
            # the update went through, so trust that ``fs`` is at most this flush's lowest.
            if learn and stored is None:
                self._floors[sid] = entry.min_ts
            return None
        stored_fs = int(stored["fs"]["N"])
        if entry.min_ts >= stored_fs:
            self._floors[sid] = stored_fs
            return None
        lowered = await self._lower_fs(sid, key, entry.min_ts)
        if lowered is None:  # refused (logged): the floor stays as it was
            return None
        if not lowered:  # only the lowering is outstanding: retry it (and nothing else)
            again = _Pending(entry.last_ts, 0, entry.metrics, entry.seen_ms)
            again.min_ts = entry.min_ts
            return again
        self._floors[sid] = entry.min_ts
        return None

    async def _set_latest(self, sid: str, key: ItemKey, values: dict[str, AttributeValue]) -> None:
        try:
            await self._call(
                Key=key,
                UpdateExpression="SET #sid = :sid, #ls = :ls, #m = :m",
                ConditionExpression="#ls <= :ls",
                ExpressionAttributeNames={"#sid": "sid", "#ls": "ls", "#m": "m"},
                ExpressionAttributeValues={k: values[k] for k in (":sid", ":ls", ":m")},
            )
        except DynamoError as exc:
            if is_condition_failure(exc):
                return  # a newer reading's flush got there first
            log.warning("registry latest-values update for %s failed: %s", sid, exc)

    async def _lower_fs(self, sid: str, key: ItemKey, min_ts: int) -> bool | None:
        """Lower the stored first-seen time to ``min_ts``.

        Returns:
            True when the stored value is now at or below ``min_ts``, False after a
            retriable failure, None when DynamoDB refused the update (logged).
        """
        try:
            await self._call(
                Key=key,
                UpdateExpression="SET #fs = :fs",
                ConditionExpression="#fs > :fs",
                ExpressionAttributeNames={"#fs": "fs"},
                ExpressionAttributeValues={":fs": {"N": str(min_ts)}},
            )
        except DynamoError as exc:
            if is_condition_failure(exc):
                return True  # another worker lowered it at least as far
            log.warning("registry first-seen update for %s failed: %s", sid, exc)
            return False if exc.retriable else None
        return True

    @staticmethod
    def _failed(sid: str, entry: _Pending, what: str, exc: DynamoError) -> _Pending | None:
        if exc.retriable:
            log.warning("registry %s for %s failed (retrying next flush): %s", what, sid, exc)
            return entry
        log.warning("registry %s for %s refused, dropped: %s", what, sid, exc)
        return None

    async def run(self, interval_s: float) -> None:
        """Read the archive policy, then flush every ``interval_s`` until cancelled."""
        try:
            await self.refresh_policy(force=True)
        except Exception:
            log.exception("reading the archive policy failed")
        while True:
            try:
                async with asyncio.timeout(interval_s):
                    await self._urgent.wait()
                await asyncio.sleep(self._hold_delay_s)  # let the other held messages join
            except TimeoutError:
                pass
            self._urgent.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("sensor registry flush failed")
                if self._holds:  # held acknowledgements: retry soon, not in a period
                    await asyncio.sleep(min(interval_s, 1.0))
                    self._urgent.set()


"""A cleared mark's item expires (TTL, free) a day later; until then it is skipped."""
