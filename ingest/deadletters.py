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

Files and the one lock (``{data_dir}/deadletters/``; :mod:`ingest.replay` reads
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
import base64
import binascii
import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ingest.acks import AckTracker, Pending
from ingest.layout import Item, TableLayout
from ingest.metrics import Metrics

__all__ = [
    "ACTIVE_NAME",
    "SLOW_WRITE_S",
    "STALLED_WRITE_S",
    "DeadLetter",
    "DeadLetterSpool",
    "TornLine",
    "fsync_dir",
    "iter_dead_letters",
    "progress_path",
    "read_progress",
    "scan_letters",
    "scan_line",
    "spool_files",
    "spool_lock",
]

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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message or reading."""

    time_ms: int
    stage: str
    reason: str
    topic: str
    payload: bytes
    index: int | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "time_ms": self.time_ms,
            "stage": self.stage,
            "reason": self.reason,
            "topic": self.topic,
        }
        try:
            doc["payload"] = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            doc["payload_b64"] = base64.b64encode(self.payload).decode()
        if self.index is not None:
            doc["index"] = self.index
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, line: bytes) -> DeadLetter:
        """Parse one spool line; raises ``ValueError`` (or ``KeyError``/``TypeError``) if it is not one."""
        doc = orjson.loads(line)
        if not isinstance(doc, dict):
            raise TypeError(f"a dead letter is a JSON object, not {type(doc).__name__}")
        if "payload_b64" in doc:
            payload = base64.b64decode(doc["payload_b64"], validate=True)
        else:
            payload = str(doc.get("payload", "")).encode()
        return cls(
            time_ms=int(doc["time_ms"]),
            stage=str(doc["stage"]),
            reason=str(doc["reason"]),
            topic=str(doc["topic"]),
            payload=payload,
            index=doc.get("index"),
        )


def _reading_payload(item: Item) -> bytes:
    r = TableLayout.from_item(item)
    return orjson.dumps({"sensor_id": r.sensor_id, "ts": r.ts_ms, **r.metrics, **r.tags})


# -- the spool's files ---------------------------------------------------------------

LOCK_NAME = ".lock"
ACTIVE_NAME = re.compile(r"deadletters-\d{4}-\d{2}-\d{2}\.jsonl")
"""Names the service appends to; any other ``deadletters-*.jsonl`` is sealed."""
_LETTER_START = b'{"time_ms":'
"""How every line :meth:`DeadLetter.to_json` writes begins.

Inside a JSON string a quote is escaped, so this can only start an object: a
reader splits an undecodable line at it to recover a letter glued to a fragment.
"""


@dataclass(frozen=True, slots=True)
class TornLine:
    """A spool line that is not a dead letter (a write cut short, or damage): skipped."""

    path: Path
    offset: int
    length: int
    error: str

    def __str__(self) -> str:
        return f"{self.path}:{self.offset} ({self.length} bytes): {self.error}"


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (files created, renamed, removed) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; returns the parents to fsync, top first."""
    missing: list[Path] = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
    return [d.parent for d in reversed(missing)]


@contextlib.contextmanager
def spool_lock(directory: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold the spool lock (``flock`` on ``{directory}/.lock``); blocks until it is free.

    Exclusive for the service's appends and a replay's renames; shared for readers,
    who then see only whole groups. ``flock`` locks belong to an open file, so two
    holders in one process exclude each other too, and a crashed holder's lock goes
    with it. A reader without write access to a spool nobody has locked yet reads
    without it (nothing can be writing).
    """
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except PermissionError:
        if not shared:
            raise
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def spool_files(directory: Path) -> list[Path]:
    """The spool's letter files (active and sealed), oldest first (sealed before active)."""
    return sorted(directory.glob("deadletters-*.jsonl"))


def progress_path(path: Path) -> Path:
    """The sidecar listing the offsets of ``path``'s letters already replayed."""
    return path.with_name(path.name + ".progress")


def read_progress(path: Path) -> set[int]:
    """Offsets of ``path``'s letters already replayed (a torn last record is ignored)."""
    try:
        data = progress_path(path).read_bytes()
    except FileNotFoundError:
        return set()
    return _parse_progress(data)


def _parse_progress(data: bytes) -> set[int]:
    end = data.rfind(b"\n") + 1
    return {int(line) for line in data[:end].split() if line.isdigit()}


def scan_letters(f: BinaryIO, path: Path, end: int) -> Iterator[tuple[int, DeadLetter | TornLine]]:
    """Each letter from ``f``'s position up to byte ``end``, with its offset; torn lines too."""
    offset = f.tell()
    while offset < end:
        line = f.readline(end - offset)
        if not line:
            break
        yield from scan_line(line, path, offset)
        offset += len(line)


def scan_line(line: bytes, path: Path, start: int) -> list[tuple[int, DeadLetter | TornLine]]:
    """The letters of one spool line (at byte ``start`` of ``path``), or why it is torn.

    A line is torn when it has no line end (a write cut short: the last line
    only) or does not decode. An undecodable line is split where a letter begins,
    so a whole letter glued to a fragment (by a writer that did not roll back a
    failed write) is still returned, and only the fragment is reported.
    """
    if not line.endswith(b"\n"):
        return [(start, TornLine(path, start, len(line), "no line end: a write cut short"))]
    if not line.strip():
        return []
    try:
        return [(start, DeadLetter.from_json(line))]
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        error: Exception = exc
    cuts = [m.start() for m in re.finditer(re.escape(_LETTER_START), line) if m.start() > 0]
    if not cuts:
        return [(start, TornLine(path, start, len(line), f"not a dead letter: {error}"))]
    out: list[tuple[int, DeadLetter | TornLine]] = []
    for a, b in zip([0, *cuts], [*cuts, len(line)], strict=True):
        piece = line[a:b]
        try:
            out.append((start + a, DeadLetter.from_json(piece)))
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            out.append(
                (start + a, TornLine(path, start + a, len(piece), f"not a dead letter: {exc}"))
            )
    return out


def iter_dead_letters(
    directory: Path, *, torn: list[TornLine] | None = None
) -> Iterator[tuple[Path, DeadLetter]]:
    """Every dead letter still in the spool (not yet replayed), oldest file first.

    A torn or undecodable line is skipped: appended to ``torn`` when given (the
    caller reports it), else logged at WARNING. The files are opened and their
    sizes taken under the shared spool lock, so a group being appended is either
    seen whole or not at all, and a file a replay renames meanwhile is still read
    once.
    """
    if not directory.is_dir():
        return
    snapshot: list[tuple[Path, BinaryIO, int, set[int]]] = []
    try:
        with spool_lock(directory, shared=True):
            for path in spool_files(directory):
                try:
                    opened: BinaryIO = path.open("rb")
                except FileNotFoundError:
                    continue
                size = os.fstat(opened.fileno()).st_size
                snapshot.append((path, opened, size, read_progress(path)))
        for path, f, size, done in snapshot:
            for offset, entry in scan_letters(f, path, size):
                if isinstance(entry, TornLine):
                    if torn is None:
                        log.warning("dead-letter spool: skipped a torn line at %s", entry)
                    else:
                        torn.append(entry)
                elif offset not in done:
                    yield path, entry
    finally:
        for _, f, _, _ in snapshot:
            f.close()


def _open_for_append(path: Path) -> tuple[int, bool]:
    """Open ``path`` to append (creating it); returns the descriptor and whether it is new."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o640), True
    except FileExistsError:
        return os.open(path, flags), False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:  # a device that takes nothing and says nothing
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


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

    async def put_item(self, item: Item, pendings: list[Pending], reason: str) -> None:
        """Dead-letter an item the writer could not write (completes every waiting message)."""
        topic = pendings[0].topic if pendings else ""
        entry = DeadLetter(int(time.time() * 1000), "write", reason, topic, _reading_payload(item))
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
                    fd, created = _open_for_append(path)
                    opened.append((fd, path, -1))
                    st = os.fstat(fd)
                    if created or (st.st_dev, st.st_ino) not in self._durable_files:
                        # New (or new to this process, in case an earlier fsync of it failed).
                        fsync_dir(self.directory)
                        self._durable_files.add((st.st_dev, st.st_ino))
                    good, seal = self._good_size(fd, path)
                    opened[-1] = (fd, path, good)
                    data = (b"\n" if seal else b"") + b"".join(lines)
                    _write_all(fd, data)
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
