"""Dead letters: every refused message or reading, kept durably with its reason.

The spool is JSONL under ``{data_dir}/deadletters/``, one file per UTC day.
Entries are appended in groups and fsync'ed before the messages they belong
to may be acknowledged: a dead letter is as durable as a table write. When
the disk refuses (full, read-only), the spool reports it loudly — log,
metric, readiness false — and keeps retrying; nothing is acknowledged that
was not kept.

A slow disk is watched too: every group's append + fsync is timed
(``iot_ingest_deadletter_write_seconds``; the write in progress shows its age
in ``iot_ingest_deadletter_write_pending_seconds``). Past
:data:`SLOW_WRITE_S` it is logged at WARNING; still pending past
:data:`STALLED_WRITE_S`, the spool is unhealthy (readiness false, logged at
ERROR) until the write returns. Its messages wait, unacknowledged, meanwhile.

Each line::

    {"time_ms": ..., "stage": "decode"|"write", "reason": "...", "topic": "...",
     "payload": "<text>" | "payload_b64": "<base64>", "index": N}

For a refused reading inside a batch the payload is that reading alone (as a
one-reading message), so replaying it does not re-send its valid neighbours.

Files and the one lock (``{data_dir}/deadletters/``; :mod:`ingest.pipeline.replay` reads
and rotates them)::

    deadletters-YYYY-MM-DD.jsonl            active: the service appends here
    deadletters-YYYY-MM-DD.<run>.jsonl      sealed by a replay run: never appended to
    deadletters-YYYY-MM-DD.<run>.jsonl.progress   offsets of its letters already replayed
    deadletters-YYYY-MM-DD.<run>.jsonl.replayed   every letter of it replayed
    .lock                                   the spool lock (``flock``)

Every append takes the spool lock exclusively, so a replay can rotate (rename)
an active file between two appends and never in the middle of one; readers take
it shared to see whole groups only.

A write is all or nothing. When a write or an fsync fails (disk full, EIO), every
file of the group is truncated back to its size before the group, and fsync'ed,
before the failure is reported: the retry then appends the group whole, once,
and no torn line is left behind. A new file (and a new directory) is made durable
by an fsync of its directory before its first letter counts as kept. A file that
a crash left ending in a torn line (a process killed mid-write: its message was
never acknowledged) is sealed with a line end before the next append, so the new
letter is not glued to the fragment. Readers (:func:`iter_dead_letters`, replay)
skip a torn or undecodable line and report it (:class:`TornLine`, file and byte
offset) and keep every whole letter around it, even one glued to a fragment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from ingest.core.metrics import Metrics
from ingest.pipeline.acks import AckTracker, Pending
from ingest.storage.items import JournalItem, KeyedItem, ReadingItem
from ingest.storage.journal import parse_journal_item
from ingest.storage.layout import JOURNAL_PREFIX
from ingest.storage.spool import (
    DeadLetter,
    fsync_dir,
    make_dirs,
    open_for_append,
    reading_message,
    reading_payload,
    spool_lock,
    write_all,
)

__all__ = ["SLOW_WRITE_S", "STALLED_WRITE_S", "DeadLetterSpool"]

log = logging.getLogger(__name__)

SLOW_WRITE_S = 1.0
"""A spool write (append + fsync of one group) slower than this is logged at WARNING.

A healthy local disk appends and syncs a group in milliseconds; a second means
the device or its queue is in trouble.
"""

STALLED_WRITE_S = 5.0
"""A spool write still pending after this long makes the spool unhealthy (readiness false).

The default cap of a DynamoDB write retry's backoff (``write_retry_max_ms``):
past it, dead letters wait longer than any single table retry would.
"""


# -- the spool's files ---------------------------------------------------------------

"""Names the service appends to; any other ``deadletters-*.jsonl`` is sealed."""
"""How every line :meth:`DeadLetter.to_json` writes begins.

Inside a JSON string a quote is escaped, so this can only start an object: a
reader splits an undecodable line at it to recover a letter glued to a fragment.
"""


class DeadLetterSpool:
    """Appends dead letters to the spool and completes their messages once durable.

    Args:
        directory: Spool directory (created if missing).
        acks: Ack tracker to complete messages.
        metrics: Metrics.
        max_pending: Bound of the queue in front of the spool.
        on_kept: Called with each group of entries once it is on disk.
        slow_write_s: A write slower than this is logged at WARNING.
        stalled_write_s: A write pending longer than this makes the spool unhealthy.
    """

    def __init__(
        self,
        directory: Path,
        *,
        acks: AckTracker,
        metrics: Metrics,
        max_pending: int = 10_000,
        on_kept: Callable[[list[DeadLetter]], None] | None = None,
        slow_write_s: float = SLOW_WRITE_S,
        stalled_write_s: float = STALLED_WRITE_S,
    ) -> None:
        self.directory = directory
        self._acks = acks
        self._m = metrics
        self._queue: asyncio.Queue[tuple[DeadLetter, list[Pending]]] = asyncio.Queue(max_pending)
        self.healthy = True
        self.last_error: str | None = None
        self._on_kept = on_kept
        self._slow_write_s = slow_write_s
        self._stalled_write_s = stalled_write_s
        self._write_started: float | None = None
        self._sizes: dict[Path, tuple[int, int, int]] = {}  # path: device, inode, size we left
        self._durable_files: set[tuple[int, int]] = set()  # device, inode: directory fsync'ed
        self._unsynced_dirs: list[Path] = []  # created by this spool, parent not fsync'ed yet
        metrics.deadletter_write_pending.set_function(self.pending_s)

    def pending_s(self) -> float:
        """Seconds the write in progress has taken so far (0.0 when none is)."""
        started = self._write_started
        return 0.0 if started is None else time.monotonic() - started

    async def put(self, entry: DeadLetter, pendings: list[Pending]) -> None:
        """Queue an entry; each of ``pendings`` is completed by one unit once it is on disk."""
        await self._queue.put((entry, pendings))

    async def put_item(self, item: KeyedItem, pendings: list[Pending], reason: str) -> None:
        """Dead-letter an item the writer could not write (completes every waiting message).

        A ``packed`` table's journal item becomes one letter per reading, each with its
        own message's topic (its ``pendings`` are one per reading, in order).
        """
        now_ms = int(time.time() * 1000)
        # The partition key tells the kind, which no type can: the casts say so.
        if item["pk"]["S"].startswith(JOURNAL_PREFIX):
            readings = parse_journal_item(cast(JournalItem, item)).readings
            for r, p in zip(readings, pendings, strict=True):
                letter = DeadLetter(now_ms, "write", reason, p.topic, reading_message(r))
                await self._queue.put((letter, [p]))
            return
        topic = pendings[0].topic if pendings else ""
        entry = DeadLetter(now_ms, "write", reason, topic, reading_payload(cast(ReadingItem, item)))
        await self._queue.put((entry, pendings))

    def _path(self, time_ms: int) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(time_ms // 1000))
        return self.directory / f"deadletters-{day}.jsonl"

    def _prepare(self) -> None:
        """Create the spool directory if missing, each new directory made durable in its parent."""
        self._unsynced_dirs += [
            d for d in make_dirs(self.directory) if d not in self._unsynced_dirs
        ]
        while self._unsynced_dirs:  # kept until done: a failed fsync is tried again
            fsync_dir(self._unsynced_dirs[0])
            del self._unsynced_dirs[0]

    def _append(self, entries: list[DeadLetter]) -> None:
        """Append ``entries`` to their day files and fsync them: all of it, or none of it."""
        self._prepare()  # nothing to do unless the directory is gone, or its fsync failed
        by_path: dict[Path, list[bytes]] = {}
        for e in entries:
            by_path.setdefault(self._path(e.time_ms), []).append(e.to_json() + b"\n")
        with spool_lock(self.directory):
            opened: list[tuple[int, Path, int]] = []  # descriptor, path, size before the group
            try:
                for path, lines in by_path.items():
                    fd, created = open_for_append(path)
                    opened.append((fd, path, -1))
                    st = os.fstat(fd)
                    if created or (st.st_dev, st.st_ino) not in self._durable_files:
                        # New (or new to this process, in case an earlier fsync of it failed).
                        fsync_dir(self.directory)
                        self._durable_files.add((st.st_dev, st.st_ino))
                    good, seal = self._good_size(fd, path)
                    opened[-1] = (fd, path, good)
                    data = (b"\n" if seal else b"") + b"".join(lines)
                    write_all(fd, data)
                    os.fsync(fd)
            except OSError:
                self._roll_back(opened)
                raise
            else:
                for fd, path, _ in opened:
                    st = os.fstat(fd)
                    self._sizes[path] = (st.st_dev, st.st_ino, st.st_size)
            finally:
                for fd, _, _ in opened:
                    os.close(fd)

    def _good_size(self, fd: int, path: Path) -> tuple[int, bool]:
        """The file's size before this group, and whether its tail must be sealed first.

        Bytes past the size this spool last left (a failed write whose roll-back
        failed too) are cut off. A tail without a line end that is not ours (a
        crash mid-write: that message was never acknowledged) gets one, so the
        fragment stays a line of its own that readers skip and report.
        """
        st = os.fstat(fd)
        known = self._sizes.get(path)
        if known is not None and known[:2] == (st.st_dev, st.st_ino):
            if st.st_size > known[2]:
                log.warning(
                    "dead-letter spool: cutting %d bytes a failed write left in %s",
                    st.st_size - known[2],
                    path,
                )
                os.ftruncate(fd, known[2])
                os.fsync(fd)
                self._m.deadletter_rollbacks.inc()
                return known[2], False
            if st.st_size == known[2]:
                return known[2], False
        self._sizes[path] = (st.st_dev, st.st_ino, st.st_size)
        if st.st_size == 0 or os.pread(fd, 1, st.st_size - 1) == b"\n":
            return st.st_size, False
        log.warning(
            "dead-letter spool: %s ends in a torn line (a crash mid-write; its message was "
            "not acknowledged and is redelivered); sealing it with a line end",
            path,
        )
        return st.st_size, True

    def _roll_back(self, opened: list[tuple[int, Path, int]]) -> None:
        """Truncate each file of a failed group back to its size before it, and fsync."""
        for fd, path, good in opened:
            if good < 0:
                continue
            try:
                left = os.fstat(fd).st_size - good
                if left > 0:
                    os.ftruncate(fd, good)
                os.fsync(fd)
            except OSError as exc:  # the next write cuts it (see _good_size)
                log.error(
                    "dead-letter spool: cannot truncate %s back to %d bytes (%s); "
                    "the next write does it first",
                    path,
                    good,
                    exc,
                )
            else:
                if left > 0:
                    log.warning(
                        "dead-letter spool: removed %d bytes of a failed write from %s", left, path
                    )
                    self._m.deadletter_rollbacks.inc()

    async def _write(self, entries: list[DeadLetter]) -> None:
        """Append and fsync ``entries`` in a thread, watching how long the disk takes.

        Returns once they are on disk (raises the disk's ``OSError``); the caller
        completes their messages only then, however long that is.
        """
        started = self._write_started = time.monotonic()
        append = asyncio.create_task(
            asyncio.to_thread(self._append, entries), name="deadletter-append"
        )
        try:
            # Wake at the two thresholds only, then wait for the disk without polling.
            for threshold_s in (self._slow_write_s, self._stalled_write_s, None):
                timeout_s = (
                    None
                    if threshold_s is None
                    else max(0.0, started + threshold_s - time.monotonic())
                )
                await asyncio.wait({append}, timeout=timeout_s)
                if append.done():
                    break
                elapsed = time.monotonic() - started
                if threshold_s == self._slow_write_s:
                    log.warning(
                        "dead-letter spool write slow: %.1f s so far for %d entries in %s; "
                        "their messages stay unacknowledged until the disk returns",
                        elapsed,
                        len(entries),
                        self.directory,
                    )
                else:
                    self.healthy = False
                    self.last_error = (
                        f"{self.directory}: write + fsync pending for {elapsed:.1f} s "
                        f"(stall limit {self._stalled_write_s:g} s): the disk is too slow"
                    )
                    log.error(
                        "dead-letter spool stalled: %s; not ready until it returns",
                        self.last_error,
                    )
            append.result()
        finally:
            if not append.done():  # cancelled: the thread finishes on its own, nothing is acked
                append.cancel()
            elapsed = time.monotonic() - started
            self._write_started = None
            self._m.deadletter_write_seconds.observe(elapsed)
        if elapsed >= self._slow_write_s:
            log.warning(
                "dead-letter spool write took %.1f s for %d entries in %s",
                elapsed,
                len(entries),
                self.directory,
            )

    async def run(self) -> None:
        """The spool task: append queued entries in groups, fsync, then complete messages."""
        try:  # at start, so the first dead letter does not pay for it
            await asyncio.to_thread(self._prepare)
        except OSError as exc:  # the first write reports it (readiness false) and retries
            log.warning("dead-letter spool %s not ready yet: %s", self.directory, exc)
        attempt = 0
        while True:
            first = await self._queue.get()
            group = [first]
            while not self._queue.empty() and len(group) < 1000:
                group.append(self._queue.get_nowait())
            entries = [e for e, _ in group]
            while True:
                try:
                    await self._write(entries)
                except OSError as exc:
                    self.healthy = False
                    self.last_error = f"{self.directory}: {exc}"
                    self._m.deadletter_errors.inc()
                    log.error(
                        "dead-letter spool cannot write (%s); not acknowledging, retrying", exc
                    )
                    await asyncio.sleep(min(5.0, 0.1 * 2**attempt))
                    attempt += 1
                    continue
                break
            if not self.healthy:
                log.warning("dead-letter spool writable again")
            self.healthy, self.last_error, attempt = True, None, 0
            done: list[Pending] = []
            for entry, pendings in group:
                self._m.dead_letters.labels(entry.stage).inc()
                done += pendings
            for _ in group:
                self._queue.task_done()
            if done:
                self._acks.done(done)
            if self._on_kept is not None:
                self._on_kept(entries)

    async def drain(self) -> None:
        """Wait until every queued entry is on disk."""
        await self._queue.join()
