"""The write stage of a ``packed`` table: journal, open windows, staging, seals (decision 0008).

receive → inbox → decode → **journal batch** → write queue → writers → acks
                              └→ **open windows** → staging items (every ``stage_ms``)
                                                  → sealed windows (window end + grace)

- :class:`JournalPlacer` takes the decoder's readings: each goes into the flush's
  journal batch (the writers put it as one journal item, and its messages are
  acknowledged when that item is durable, as a ``reading`` table's batch) and into its
  open window in memory. A journal batch is flushed every ``flush_interval_ms``, or as
  soon as it holds ``max_messages`` messages, so that a broker's in-flight cap (AWS IoT
  Core: 100 per connection) never waits for the interval.
- :class:`OpenWindows` holds, per sensor and window, the readings not yet sealed: the
  ones staged since in their staging blobs (rows compressed across a sensor group,
  ≈ 22 B a reading, shared), the fresh ones as readings.
- :class:`WindowWriter` (a background task) writes every ``stage_ms`` the fresh
  readings as staging items (one per sensor group, for dashboards) and seals the windows
  whose end plus :data:`~ingest.storage.windows.SEAL_GRACE_MS` has passed, as one set
  of content-addressed parts each; after a seal it advances the journal's checkpoint.
  Its writes are retried until they succeed: the readings are durable in the journal
  already, so a failing write delays visibility, never loses anything. On start it
  reads its journal back from the checkpoint into the open windows (:meth:`recover`);
  on stop it seals every open window (:meth:`seal_all`), so a worker that never comes back
  leaves nothing that only its journal holds.

Two edges, both at least once: a reading goes into its open window when it is decoded,
so one whose journal write is given up (dead-lettered with its message after
``write_retry_deadline_s``) is still sealed, and a replay of the letter rewrites the same
timestamp; and the seal at stop runs inside the shutdown deadline: what it cannot seal
in time stays in the journal for the worker's next start (same client id), and a worker
that never starts again leaves those readings in staging items only, for a day (its
``iot_ingest_window_oldest_seconds`` says how far back that reaches).

A seal of an hour the rollup pass may have rolled up already (a late set:
:func:`~ingest.storage.compaction.rollups_may_lack`) marks that sensor-hour stale
(``#stale#{sensor}``) once its parts and seal log are durable; series read a stale hour
as readings, and the pass that rolls it up again clears the mark. One PutItem per sensor
and hour sealed late; none in the normal course.

A seal in a bucket that an archive may hold already (below the archive policy's late
threshold, the one the registry marks late readings by) marks that bucket late again
once its parts and seal log are durable, before the checkpoint moves. The registry's
mark at decode time is cleared by the first archive pass a settle time later; a seal
held up longer than that (DynamoDB failing for minutes) would otherwise land after
that pass and never be archived. It costs one UpdateItem per sensor and late bucket
sealed (backfills only, with an archiver), and a policy read per seal round (at most
every ``_POLICY_REFRESH_MS``).

The checkpoint (``#journal#{worker}``, sort key 0) is the receipt time of the oldest
reading still only in open windows: every journal item at or after it (a journal
item's key is its flush's millisecond · 1000, never before its readings arrived) holds
everything that a restart needs; older ones are left to their TTL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TypeVar

from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.pipeline.acks import Pending
from ingest.pipeline.batcher import MAX_BATCH_ITEMS, Batch
from ingest.storage.compaction import rollups_may_lack, seal_log_items
from ingest.storage.dynamo import TableClient
from ingest.storage.items import CheckpointItem, Item, JournalItem, StageItem, WindowPartItem
from ingest.storage.journal import (
    MAX_JOURNAL_BLOB_BYTES,
    JournalSequence,
    journal_items,
    parse_journal_item,
)
from ingest.storage.layout import ArchivePolicy, Reading, journal_pk, sensor_group
from ingest.storage.packed import PackedError
from ingest.storage.reads import key_query, query_pages
from ingest.storage.registry import write_late_mark
from ingest.storage.rollups import HOUR_MS, stale_mark_item
from ingest.storage.table import read_archive_policy
from ingest.storage.windows import SEAL_GRACE_MS, WindowScheme, decode_stage, encode_stage, seal

__all__ = [
    "CHECKPOINT_SK",
    "Decoded",
    "JournalPlacer",
    "OpenWindows",
    "Staged",
    "WindowWriter",
    "adopt_journal",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_SK = 0
"""The sort key of a journal's checkpoint item (journal items' keys are epoch ms · 1000)."""
_MAX_FLUSH_READINGS = 10_000
"""Readings in one journal batch before it is flushed whatever its age (≈ 220 KB)."""
_STAGE_ITEMS_PER_GROUP = 16
_SLICE = 64
"""Windows sealed between two yields to the event loop (≈ 20 ms of work)."""
_STAGE_SLICE = 8
"""Staging blobs (one per group, usually) encoded between two yields to the event loop."""
_WRITES_IN_FLIGHT = 4
"""BatchWriteItem calls of one staging or sealing round at once."""
_POLICY_REFRESH_MS = 10_000
"""Least time between two reads of the archive policy by the sealer (as the registry's)."""


class JournalPlacer:
    """Readings into journal batches (for the acknowledgements) and open windows.

    The decode stage's placer for a ``packed`` table; :meth:`add` returns a full batch
    (one journal item, or a few when the flush is large) for the write queue.

    Args:
        worker: The worker's id (its MQTT client id: the journal's partition).
        windows: The open windows the readings also go to.
        flush_interval_ms: Age after which a partial batch is due.
        max_messages: Messages in one batch before it is flushed at once (keep it below
            the broker's in-flight cap: half the Receive Maximum).
        ttl_s: How long a journal item is kept (seconds; DynamoDB's TTL removes it).
        sequence: The journal's sort keys (its floor read at start).
        now_ms: Clock (injected in tests).
    """

    __slots__ = (
        "_messages",
        "_now_ms",
        "_opened",
        "_pendings",
        "_readings",
        "_seq",
        "_windows",
        "_worker",
        "flush_interval_ms",
        "max_messages",
        "ttl_s",
    )

    def __init__(
        self,
        *,
        worker: str,
        windows: OpenWindows,
        flush_interval_ms: int,
        max_messages: int,
        ttl_s: int,
        sequence: JournalSequence,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._worker = worker
        self._windows = windows
        self.flush_interval_ms = flush_interval_ms
        self.max_messages = max(1, max_messages)
        self.ttl_s = ttl_s
        self._seq = sequence
        self._now_ms = now_ms
        self._readings: list[Reading] = []
        self._pendings: list[Pending] = []
        self._messages = 0
        self._opened = 0.0

    def __len__(self) -> int:
        return len(self._readings)

    def add(self, reading: Reading, pending: Pending, received_ms: int) -> Batch | None:
        """Add a reading of the message ``pending``; a batch when this one filled it."""
        readings = self._readings
        if not readings:
            self._opened = time.monotonic()
        if not self._pendings or self._pendings[-1] is not pending:
            self._messages += 1
        readings.append(reading)
        self._pendings.append(pending)
        self._windows.add(reading, received_ms)
        if self._messages >= self.max_messages or len(readings) >= _MAX_FLUSH_READINGS:
            return self.take()
        return None

    def take(self) -> Batch | None:
        """The open batch as journal items (each with one pending per reading it holds)."""
        readings, pendings = self._readings, self._pendings
        if not readings:
            return None
        self._readings, self._pendings, self._messages = [], [], 0
        now_ms = self._now_ms()
        sk = self._seq.next(now_ms)
        items = journal_items(self._worker, sk, readings, now_ms // 1000 + self.ttl_s)
        for _ in items[1:]:
            self._seq.next(0)  # the split's further keys sk + 1, … are taken
        batch: Batch = []
        start = 0
        for _, item in items:
            n = int(item["n"]["N"])
            batch.append((item, pendings[start : start + n]))
            start += n
        return batch

    def due_in_s(self) -> float | None:
        """Seconds until the open batch is due for a flush (None when empty)."""
        if not self._readings:
            return None
        return max(0.0, self._opened + self.flush_interval_ms / 1000 - time.monotonic())


class Staged:
    """One staging blob of a group (:func:`~ingest.storage.windows.encode_stage`), shared
    by the open windows whose readings it holds; decoded again only at their seal."""

    __slots__ = ("blob", "n")

    def __init__(self, blob: bytes, n: int) -> None:
        self.blob = blob
        self.n = n


@dataclass(slots=True)
class _Window:
    """One sensor's readings of one window, not sealed yet: staged (in shared staging
    blobs) and fresh (since the last staging write), in write order."""

    staged: list[Staged] = field(default_factory=list)
    fresh: list[Reading] = field(default_factory=list)
    first_received_ms: int = 0
    last_received_ms: int = 0
    n: int = 0

    def absorb(self, older: _Window) -> None:
        """Put ``older``'s readings before this one's (a failed seal coming back)."""
        self.staged[:0] = older.staged
        self.fresh[:0] = older.fresh
        self.first_received_ms = min(self.first_received_ms, older.first_received_ms)
        self.n += older.n


Decoded = dict[int, dict[tuple[str, int], list[Reading]]]
"""Staging blobs decoded during one seal round: per blob, its readings per window."""


class OpenWindows:
    """The worker's unsealed windows, per (sensor, window start).

    A window's readings stay in memory as the staging blobs they were written in (rows
    compressed across the group: ≈ 22 B a reading, shared by the group's windows) plus
    the few fresh since; a blob is freed once every window in it is sealed.

    Args:
        scheme: The table's windows (width, groups).
    """

    def __init__(self, scheme: WindowScheme) -> None:
        self.scheme = scheme
        self._open: dict[tuple[str, int], _Window] = {}
        self._sealing: dict[tuple[str, int], list[_Window]] = {}
        self.readings = 0

    def __len__(self) -> int:
        return len(self._open)

    def add(self, reading: Reading, received_ms: int) -> None:
        key = (reading.sensor_id, self.scheme.window_start(reading.ts_ms))
        w = self._open.get(key)
        if w is None:
            w = self._open[key] = _Window(first_received_ms=received_ms)
        w.fresh.append(reading)
        w.last_received_ms = max(w.last_received_ms, received_ms)
        w.n += 1
        self.readings += 1

    def fresh(self, skip: AbstractSet[tuple[str, int]] = frozenset()) -> list[tuple[str, int]]:
        """The windows with readings not staged yet (but those in ``skip``)."""
        return [k for k, w in self._open.items() if w.fresh and k not in skip]

    def stage(self, keys: Iterable[tuple[str, int]]) -> Iterator[tuple[int, Staged]]:
        """Encode the fresh readings of the windows ``keys`` as staging blobs, per sensor
        group (each at most 300 KB: a hot group gets several), and keep them as the
        windows' staged readings. Yields (group, blob) pairs to write, encoding one
        group at a time; consume it to the end.
        """
        by_group: dict[int, list[tuple[_Window, list[Reading]]]] = {}
        n_groups = self.scheme.groups
        for key in keys:
            w = self._open.get(key)
            if w is None or not w.fresh:
                continue
            by_group.setdefault(sensor_group(key[0], n_groups), []).append((w, w.fresh))
            w.fresh = []
        for group, entries in by_group.items():
            for staged, windows in _stage_blobs(entries):
                for w in windows:
                    w.staged.append(staged)
                yield group, staged

    def due(self, now_ms: int, *, everything: bool = False) -> list[tuple[str, int]]:
        """The windows to seal at ``now_ms``: ended (and last written) ``SEAL_GRACE_MS`` ago."""
        width = self.scheme.window_ms
        return [
            key
            for key, w in self._open.items()
            if everything or max(key[1] + width, w.last_received_ms) + SEAL_GRACE_MS <= now_ms
        ]

    def begin_seal(self, key: tuple[str, int], decoded: Decoded) -> list[Reading]:
        """Take a window out for sealing (its readings, in write order).

        ``decoded`` caches the staging blobs decoded in this round (windows of one
        period share them). Readings arriving meanwhile open the window anew;
        :meth:`end_seal` either forgets the taken ones (sealed) or puts them back in
        front (failed). Call :meth:`end_seal` whatever happens, also when this raises.
        """
        w = self._open.pop(key)
        self._sealing.setdefault(key, []).append(w)
        out: list[Reading] = []
        for staged in w.staged:
            windows = decoded.get(id(staged))
            if windows is None:
                windows = decoded[id(staged)] = self._by_window(staged)
            out += windows.get(key, ())
        out += w.fresh
        return out

    def _by_window(self, staged: Staged) -> dict[tuple[str, int], list[Reading]]:
        start = self.scheme.window_start
        out: dict[tuple[str, int], list[Reading]] = {}
        for r in decode_stage(staged.blob):
            out.setdefault((r.sensor_id, start(r.ts_ms)), []).append(r)
        return out

    def end_seal(self, key: tuple[str, int], *, sealed: bool) -> None:
        taken = self._sealing.pop(key)
        for w in taken:
            if sealed:
                self.readings -= w.n
                continue
            newer = self._open.get(key)
            if newer is not None:
                newer.absorb(w)
            else:
                self._open[key] = w

    def checkpoint_ms(self, now_ms: int) -> int:
        """The receipt time of the oldest reading not sealed yet (``now_ms`` if none)."""
        firsts = [w.first_received_ms for w in self._open.values()]
        firsts += [w.first_received_ms for ws in self._sealing.values() for w in ws]
        return min(firsts, default=now_ms)

    def oldest_s(self, now_ms: int) -> float:
        return max(0.0, (now_ms - self.checkpoint_ms(now_ms)) / 1000)


def _stage_blobs(
    entries: list[tuple[_Window, list[Reading]]],
) -> list[tuple[Staged, list[_Window]]]:
    """One group's fresh readings as staging blobs that each fit an item, with the
    windows each holds: one blob, or halves until each fits (a window's readings split
    too when one window alone is too large)."""
    rows = [r for _, rs in entries for r in rs]
    blob = encode_stage(rows)
    if len(blob) <= MAX_JOURNAL_BLOB_BYTES + 1 or len(rows) <= 1:
        return [(Staged(blob, len(rows)), [w for w, _ in entries])]
    if len(entries) == 1:
        w, rs = entries[0]
        half = len(rs) // 2
        return _stage_blobs([(w, rs[:half])]) + _stage_blobs([(w, rs[half:])])
    half = len(entries) // 2
    return _stage_blobs(entries[:half]) + _stage_blobs(entries[half:])


def _chunks(items: Sequence[Item], size: int) -> Iterator[Sequence[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class WindowWriter:
    """Stages and seals a worker's open windows, and keeps its journal's checkpoint.

    Args:
        client: The table.
        windows: The worker's open windows.
        worker: The worker's id (the journal's partition).
        journal_ttl_s: The journal's TTL (the checkpoint item's too).
        metrics: Metrics.
        backoff: Retry backoff of every write.
        now_ms: Clock (injected in tests).
        sleep: Injected for tests.
    """

    def __init__(
        self,
        *,
        client: TableClient,
        windows: OpenWindows,
        worker: str,
        journal_ttl_s: int,
        metrics: Metrics,
        backoff: Backoff,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self.windows = windows
        self.scheme = windows.scheme
        self._worker = worker
        self._journal_ttl_s = journal_ttl_s
        self._m = metrics
        self._backoff = backoff
        self._now_ms = now_ms
        self._sleep = sleep
        self._checkpoint: int | None = None
        self._log_ms = 0
        self._policy: ArchivePolicy | None = None
        self._policy_read_ms: int | None = None
        self.healthy = True

    # -- start ---------------------------------------------------------------

    async def recover(self) -> JournalSequence:
        """Read the journal back from its checkpoint into the open windows.

        Returns the journal's sequence, above every key the journal holds. Raises what
        the reads raise (the service's start retries what waiting can heal).
        """
        pk = journal_pk(self._worker)
        table = self._client.table
        got = await self._client.call(
            "get_item",
            TableName=table,
            Key={"pk": {"S": pk}, "sk": {"N": str(CHECKPOINT_SK)}},
            ConsistentRead=True,
        )
        checkpoint: CheckpointItem | None = got.get("Item")
        start_ms = int(checkpoint["from"]["N"]) if checkpoint is not None else 0
        kwargs = key_query(table, pk, max(start_ms * 1000, CHECKPOINT_SK + 1), consistent=True)
        last, items, readings = CHECKPOINT_SK, 0, 0
        item: JournalItem
        async for page in query_pages(self._client.call, kwargs):
            for item in page.get("Items", []):
                entry = parse_journal_item(item)
                received_ms = entry.sk // 1000
                for r in entry.readings:
                    self.windows.add(r, received_ms)
                last, items, readings = entry.sk, items + 1, readings + len(entry.readings)
        if items:
            log.info(
                "journal: %d readings of %d items since %d put back into %d open windows",
                readings,
                items,
                start_ms,
                len(self.windows),
            )
        else:
            last = await self._last_journal_sk(pk)
        self._m.journal_recovered.inc(readings)
        self._checkpoint = start_ms
        return JournalSequence(last)

    async def _last_journal_sk(self, pk: str) -> int:
        kwargs = key_query(self._client.table, pk, CHECKPOINT_SK + 1, consistent=True)
        resp = await self._client.call(
            "query", **kwargs, ScanIndexForward=False, Limit=1, ProjectionExpression="sk"
        )
        found = resp.get("Items", [])
        return int(found[0]["sk"]["N"]) if found else CHECKPOINT_SK

    # -- the loop --------------------------------------------------------------

    async def run(self) -> None:
        """Stage every ``stage_ms``, seal what is due, until cancelled."""
        interval_s = self.scheme.layout.stage_ms / 1000
        while True:
            await self._sleep(interval_s)
            await self.step()

    async def step(self, *, everything: bool = False) -> None:
        """One round: staging items for the fresh readings, then the due seals, then the
        checkpoint (``everything``: seal every open window, as a stop does).

        The encoding runs in slices of :data:`_SLICE` windows with the event loop let
        go between them, and the writes go out :data:`_WRITES_IN_FLIGHT` at a time, so a
        round over 10,000 sensors does not hold up the decoder and the acknowledgements.
        """
        now = self._now_ms()
        due = self.windows.due(now, everything=everything)
        await self._stage(now, self.windows.fresh(set(due)))
        await self._seal(due, now)
        await self._advance_checkpoint(self._now_ms())
        self._m.windows_open.set(len(self.windows))
        self._m.window_oldest_seconds.set(self.windows.oldest_s(self._now_ms()))

    async def seal_all(self) -> None:
        """Seal every open window (the stop protocol; readers then need no journal)."""
        await self.step(everything=True)

    async def _stage(self, now_ms: int, keys: list[tuple[str, int]]) -> None:
        staged: list[tuple[int, Staged]] = []
        for group, blob in self.windows.stage(keys):
            staged.append((group, blob))
            if len(staged) % _STAGE_SLICE == 0:
                await asyncio.sleep(0)
        items: list[StageItem] = []
        index: dict[int, int] = {}
        for group, blob in staged:
            i = index[group] = index.get(group, -1) + 1
            # 16 items per group and millisecond; a hotter group takes the next ms.
            flush_ms = now_ms + i // _STAGE_ITEMS_PER_GROUP
            sk = WindowScheme.stage_sk(flush_ms, self._worker, i % _STAGE_ITEMS_PER_GROUP)
            items.append(self.scheme.stage_item(group, sk, flush_ms, blob.blob, blob.n))
        if not items:
            return
        gate = asyncio.Semaphore(_WRITES_IN_FLIGHT)
        async with asyncio.TaskGroup() as tg:
            for batch in _chunks(items, MAX_BATCH_ITEMS):
                await gate.acquire()
                tg.create_task(self._put_released(batch, "stage", gate))
        self._m.stage_items.inc(len(items))

    async def _put_released(
        self, items: Sequence[Item], what: str, gate: asyncio.Semaphore
    ) -> None:
        try:
            await self._put(items, what)
        finally:
            gate.release()

    async def _seal(self, due: list[tuple[str, int]], now_ms: int) -> None:
        """Seal the windows ``due``: their parts in batches, each window forgotten once
        every part of it is durable (put back if the round is cancelled first).

        Sensor group by sensor group: a staging blob holds one group's readings, so the
        blobs decoded for a group are dropped before the next (decoding a whole period's
        blobs at once held every reading of the period as objects: 1.4 GB at 10,000
        sensors, measured).
        """
        gate = asyncio.Semaphore(_WRITES_IN_FLIGHT)
        keys: list[tuple[str, int]] = []
        items: list[WindowPartItem] = []
        decoded: Decoded = {}
        groups = self.scheme.groups
        due = sorted(due, key=lambda k: sensor_group(k[0], groups))
        group = -1
        async with asyncio.TaskGroup() as tg:
            for i, key in enumerate(due):
                if (g := sensor_group(key[0], groups)) != group:
                    group, decoded = g, {}
                try:
                    parts = seal(self.scheme, self.windows.begin_seal(key, decoded), now_ms)
                except (ValueError, PackedError):
                    log.exception("window %s of %r could not be sealed", key[1], key[0])
                    self.windows.end_seal(key, sealed=False)
                    continue
                keys.append(key)
                items += [self.scheme.part_item(p) for p in parts]
                if len(items) >= MAX_BATCH_ITEMS or i == len(due) - 1:
                    await gate.acquire()
                    tg.create_task(self._write_seals(keys, items, gate))
                    keys, items = [], []
                if i % _SLICE == _SLICE - 1:
                    await asyncio.sleep(0)
            if keys:  # the last window could not be sealed: write the ones before it
                await gate.acquire()
                tg.create_task(self._write_seals(keys, items, gate))

    async def _write_seals(
        self, keys: list[tuple[str, int]], items: list[WindowPartItem], gate: asyncio.Semaphore
    ) -> None:
        """Write one batch of parts, then the seal log of its windows (which compaction
        reads to find the windows sealed more than once)."""
        sealed = False
        try:
            await self._put(items, "seal")
            sealed = True
            self._m.sealed_parts.inc(len(items))
            periods: dict[int, list[str]] = {}
            for sensor, start in keys:
                periods.setdefault(start, []).append(sensor)
            # A millisecond of its own per batch: batches of one round must not share a key.
            self._log_ms = max(self._now_ms(), self._log_ms + 1)
            log_items = [
                it
                for start, sensors in periods.items()
                for it in seal_log_items(self.scheme, start, self._worker, self._log_ms, sensors)
            ]
            await self._put(log_items, "seal log")
            await self._mark_stale(keys, self._log_ms)
            await self._mark_late(keys)
        finally:
            gate.release()
            for key in keys:
                self.windows.end_seal(key, sealed=sealed)

    async def _mark_stale(self, keys: list[tuple[str, int]], sealed_ms: int) -> None:
        """Mark stale the hours of these sealed windows that the rollups may already cover
        (the module docstring): series read them as readings until the next rollup pass."""
        width, scheme = self.scheme.window_ms, self.scheme
        hours = {
            (sensor, h)
            for sensor, w in keys
            for h in range(w - w % HOUR_MS, w + width, HOUR_MS)
            if rollups_may_lack(scheme, h, sealed_ms)
        }
        marks = [stale_mark_item(scheme.layout, s, h, sealed_ms) for s, h in sorted(hours)]
        if marks:
            await self._put(marks, "stale mark")

    async def _mark_late(self, keys: list[tuple[str, int]]) -> None:
        """Mark late the buckets of these sealed windows that an archive may hold already
        (the module docstring): after their seal, before the checkpoint moves past them."""
        policy = await self._archive_policy()
        if policy is None:
            return
        threshold = policy.late_before(self._now_ms())
        bw = policy.bucket_ms
        for sensor, bucket in sorted({(s, w - w % bw) for s, w in keys if w < threshold}):
            await self._retrying("late mark", functools.partial(self._write_mark, sensor, bucket))

    async def _write_mark(self, sensor: str, bucket: int) -> None:
        await write_late_mark(self._client, sensor, bucket, self._now_ms())

    async def _archive_policy(self) -> ArchivePolicy | None:
        now = self._now_ms()
        if self._policy_read_ms is None or now - self._policy_read_ms >= _POLICY_REFRESH_MS:
            self._policy = await self._retrying(
                "archive policy read", lambda: read_archive_policy(self._client)
            )
            self._policy_read_ms = now
        return self._policy

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it succeeds (retried with backoff, whatever it raises: nothing
        this stage writes may be lost, the journal holds it meanwhile)."""
        attempt = 0
        while True:
            try:
                got = await call()
            except Exception as exc:
                if attempt == 0 or attempt % 10 == 0:
                    log.warning("%s failed, retrying: %s", what, exc)
                self._m.window_write_retries.labels(what).inc()
                self.healthy = False
                await self._sleep(self._backoff.delay_s(attempt))
                attempt += 1
            else:
                self.healthy = True
                return got

    async def _advance_checkpoint(self, now_ms: int) -> None:
        at = self.windows.checkpoint_ms(now_ms)
        if self._checkpoint is not None and at <= self._checkpoint:
            return
        item: CheckpointItem = {
            "pk": {"S": journal_pk(self._worker)},
            "sk": {"N": str(CHECKPOINT_SK)},
            "from": {"N": str(at)},
            "ttl": {"N": str(now_ms // 1000 + self._journal_ttl_s)},
        }
        await self._put([item], "checkpoint")
        self._checkpoint = at

    async def _put(self, items: Sequence[Item], what: str) -> None:
        """Write ``items`` until every one is durable: errors retried by :meth:`_retrying`,
        what DynamoDB leaves unprocessed sent again after a backoff."""
        for chunk in _chunks(items, MAX_BATCH_ITEMS):
            attempt = 0
            left: Sequence[Item] = chunk
            while left := await self._retrying(
                what, functools.partial(self._client.batch_write, left)
            ):
                self._m.window_write_retries.labels("unprocessed").inc()
                await self._sleep(self._backoff.delay_s(attempt))
                attempt += 1


async def adopt_journal(
    client: TableClient, scheme: WindowScheme, worker: str, *, journal_ttl_s: int
) -> int:
    """Seal what a worker that is gone for good left only in its journal; the readings
    read back.

    Reads the worker's journal from its checkpoint, seals every window of it (as the
    worker's own stop would have) and moves the checkpoint on. For a worker that will
    not start again (scaled down, its stop cut short by the deadline): run on a live
    worker's journal, it would move that worker's checkpoint past readings it has not
    sealed yet.
    """
    windows = OpenWindows(scheme)
    writer = WindowWriter(
        client=client,
        windows=windows,
        worker=worker,
        journal_ttl_s=journal_ttl_s,
        metrics=Metrics(),
        backoff=Backoff(base_ms=50, cap_ms=5_000),
    )
    await writer.recover()
    readings = windows.readings
    await writer.seal_all()
    return readings
