"""Replaying dead letters: re-publish them to the broker, safely beside a running service.

A replay never reads a file the service may still append to, and never changes
one in place. It runs in three steps (files as in :mod:`ingest.pipeline.deadletters`):

1. **Seal.** Under the spool lock (the service takes it for every append), each
   active ``deadletters-DAY.jsonl`` holding a letter to replay is renamed to
   ``deadletters-DAY.<run>.jsonl`` (``<run>``: time, pid and random, unique) and
   the directory fsync'ed. The lock makes the rename fall between two appends; the
   service's next dead letter creates a new active file. A sealed file is never
   appended to again.
2. **Publish.** For each sealed file (this run's, and those an earlier run left:
   interrupted, or with letters its ``--reason`` did not select) the replay takes
   an ``flock`` on the file itself without waiting: a file another replay holds is
   skipped (that replay publishes it), so two replays at once never publish a
   letter twice. Each selected letter is published (QoS 1) and, once the broker's
   PUBACK is in, its byte offset is appended to ``<sealed>.progress``; letters
   already listed there are not published again.
3. **Finish.** A sealed file whose every letter is listed in its progress becomes
   ``<sealed>.replayed`` (a hard link then an unlink, so an existing name is never
   replaced; the names are unique anyway), its progress is removed, the directory
   fsync'ed. A file with letters the filter left stays sealed, its progress kept:
   ``deadletters list`` shows only the letters not yet replayed.

Every letter is thus either still in the spool or re-published, exactly once per
replay. **At least once across a crash:** a replay killed between a PUBACK and
the progress record of that letter publishes it again on the next run. The record
is written right after each PUBACK (a process crash repeats at most that one
letter per file) and fsync'ed every :data:`PROGRESS_FSYNC_EVERY` letters and at
the end (a power loss repeats at most those). A repeated letter overwrites its
own item (deterministic keys), except a reading without ``ts``, which takes the
time it is received again. Running ``replay`` again resumes an interrupted run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from ingest.core.errors import DeadLetterError
from ingest.mqtt.client import MqttConnection, MqttSettings
from ingest.storage.spool import (
    ACTIVE_NAME,
    DeadLetter,
    TornLine,
    fsync_dir,
    iter_dead_letters,
    progress_path,
    read_progress,
    scan_letters,
    scan_line,
    spool_files,
    spool_lock,
)

__all__ = ["PROGRESS_FSYNC_EVERY", "ReplayReport", "replay"]

log = logging.getLogger(__name__)

PROGRESS_FSYNC_EVERY = 100
"""Progress records are fsync'ed after this many letters (and at the end of each file)."""

_CHUNK = 1000
"""Letters read from a file per call into a thread."""

_NO_HARD_LINKS = {errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.EMLINK}


@dataclass
class ReplayReport:
    """What a replay did (filled in as it goes, so an interrupted one tells too)."""

    replayed: int = 0
    """Letters re-published (or that would be, in a dry run)."""
    left: int = 0
    """Letters the filter did not select, or without a topic: still in the spool."""
    done_before: int = 0
    """Letters an earlier replay (interrupted, or filtered) had re-published: not sent again."""
    torn: list[TornLine] = field(default_factory=list)
    """Lines skipped: not dead letters (a write cut short, or damage)."""
    busy: list[Path] = field(default_factory=list)
    """Sealed files another replay was on: left to it."""
    sealed: list[Path] = field(default_factory=list)
    """Active files this replay sealed."""
    finished: list[Path] = field(default_factory=list)
    """``.replayed`` files this replay made."""

    def summary(self, *, dry_run: bool = False) -> str:
        parts = [f"{'would replay' if dry_run else 'replayed'} {self.replayed} dead letters"]
        if self.left:
            parts.append(f"{self.left} left in the spool (not selected, or without a topic)")
        if self.done_before:
            parts.append(f"{self.done_before} already replayed by an earlier run")
        if self.torn:
            where = ", ".join(f"{t.path.name}:{t.offset}" for t in self.torn[:5])
            more = f" and {len(self.torn) - 5} more" if len(self.torn) > 5 else ""
            parts.append(f"{len(self.torn)} torn lines skipped ({where}{more})")
        if self.busy:
            parts.append(f"{len(self.busy)} files left to a concurrent replay")
        return "; ".join(parts)


def _run_id() -> str:
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}"


def _selected(dl: DeadLetter, reason_filter: str | None) -> bool:
    return not reason_filter or reason_filter in dl.reason


def _has_selected(path: Path, reason_filter: str | None) -> bool:
    """Whether ``path`` holds a letter to replay (a peek without the lock: see :func:`_seal`)."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not reason_filter:
                return size > 0
            return any(
                isinstance(e, DeadLetter) and _selected(e, reason_filter)
                for _, e in scan_letters(f, path, size)
            )
    except FileNotFoundError:  # sealed by another replay meanwhile
        return False


def _seal(directory: Path, run_id: str, reason_filter: str | None) -> list[Path]:
    """Rename the active files holding a selected letter to sealed names, under the lock.

    The peek is made without the lock, so the service is not held while a large
    file is read; a letter appended after it is sealed along with the file and
    replayed too (or left, if not selected).
    """
    todo = [
        p
        for p in spool_files(directory)
        if ACTIVE_NAME.fullmatch(p.name) and _has_selected(p, reason_filter)
    ]
    sealed: list[Path] = []
    with spool_lock(directory):
        for path in todo:
            target = path.with_name(f"{path.stem}.{run_id}.jsonl")
            if not path.exists() or target.exists():  # sealed meanwhile; never replace a file
                continue
            path.rename(target)
            sealed.append(target)
        for orphan in directory.glob("*.jsonl.progress"):  # a finish cut short by a crash
            letters = orphan.with_name(orphan.name.removesuffix(".progress"))
            if not letters.exists() and letters.with_name(letters.name + ".replayed").exists():
                orphan.unlink()
        if sealed:
            fsync_dir(directory)
    return sealed


class _SealedFile:
    """One sealed file while this replay holds its ``flock``; blocking methods (run in threads)."""

    def __init__(self, path: Path, f: BinaryIO) -> None:
        self.path = path
        self._f = f
        self.size = os.fstat(f.fileno()).st_size
        self.done = self._open_progress()
        self._unsynced = 0

    @classmethod
    def claim(cls, path: Path) -> _SealedFile | Literal["busy", "gone"]:
        """Lock ``path`` without waiting: "busy" if another replay holds it."""
        try:
            f = path.open("rb")
        except FileNotFoundError:
            return "gone"
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                return "busy"
            try:  # the holder before us may have finished it (renamed it away)
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                return "gone"
            return cls(path, f)
        except BaseException:
            f.close()
            raise

    def _open_progress(self) -> set[int]:
        """Open the progress (if any: it is created by the first record) and read it."""
        self._progress: int | None = None
        try:
            self._progress = os.open(
                progress_path(self.path), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
            )
        except FileNotFoundError:
            return set()
        size = os.fstat(self._progress).st_size
        data = os.pread(self._progress, size, 0) if size else b""
        whole = data.rfind(b"\n") + 1
        if whole < size:  # a record torn by a crash: that letter is published again
            os.ftruncate(self._progress, whole)
        return read_progress(self.path)

    def read(self, offset: int) -> tuple[list[tuple[int, DeadLetter | TornLine]], int]:
        """The entries of the next :data:`_CHUNK` lines from byte ``offset``; the offset after."""
        self._f.seek(offset)
        out: list[tuple[int, DeadLetter | TornLine]] = []
        for _ in range(_CHUNK):
            if offset >= self.size:
                break
            line = self._f.readline(self.size - offset)
            if not line:
                break
            out += scan_line(line, self.path, offset)
            offset += len(line)
        return out, offset

    def record(self, offset: int) -> None:
        """Note that the letter at ``offset`` was re-published (its PUBACK is in)."""
        if self._progress is None:
            path = progress_path(self.path)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._progress = os.open(path, flags, 0o640)
            fsync_dir(self.path.parent)
        os.write(self._progress, b"%d\n" % offset)
        self.done.add(offset)
        self._unsynced += 1
        if self._unsynced >= PROGRESS_FSYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        if self._unsynced and self._progress is not None:
            os.fsync(self._progress)
            self._unsynced = 0

    def finish(self) -> Path:
        """Every letter is re-published: become ``.replayed`` (never replacing a file)."""
        self.sync()
        target = self.path.with_name(self.path.name + ".replayed")
        with spool_lock(self.path.parent):  # readers see it before or after, not between
            try:
                os.link(self.path, target)
            except FileExistsError:
                if not os.path.samefile(self.path, target):  # not ours: a crash between link
                    raise DeadLetterError(  # and unlink leaves the same file under both names
                        f"{target} exists and is another file: not replacing it; "
                        f"{self.path} stays in the spool (move one of them away)"
                    ) from None
                os.unlink(self.path)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                if target.exists():  # no hard links here: only this flock's holder makes it
                    raise DeadLetterError(f"{target} exists: not replacing it") from exc
                os.rename(self.path, target)
            else:
                os.unlink(self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(progress_path(self.path))
            fsync_dir(self.path.parent)
        return target

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sync()
        if self._progress is not None:
            os.close(self._progress)
        self._f.close()  # releases the flock


async def _replay_file(
    sealed: _SealedFile,
    conn: MqttConnection,
    report: ReplayReport,
    *,
    reason_filter: str | None,
    topic_override: str | None,
) -> None:
    left = 0
    offset = 0
    torn: list[TornLine] = []
    while True:
        entries, offset = await asyncio.to_thread(sealed.read, offset)
        if not entries:
            break
        for at, entry in entries:
            if isinstance(entry, TornLine):
                torn.append(entry)
                continue
            if at in sealed.done:
                report.done_before += 1
                continue
            topic = topic_override or entry.topic
            if not _selected(entry, reason_filter) or not topic:
                left += 1
                continue
            await conn.publish(topic, entry.payload, qos=1)
            await asyncio.to_thread(sealed.record, at)
            report.replayed += 1
    report.left += left
    if left:
        await asyncio.to_thread(sealed.sync)
        report.torn += torn
        return
    target = await asyncio.to_thread(sealed.finish)
    report.finished.append(target)
    report.torn += [dataclasses.replace(t, path=target) for t in torn]  # where they are now


async def replay(
    directory: Path,
    settings: MqttSettings,
    *,
    reason_filter: str | None = None,
    topic_override: str | None = None,
    dry_run: bool = False,
    report: ReplayReport | None = None,
) -> ReplayReport:
    """Re-publish dead letters (QoS 1, waiting for each PUBACK) to the broker.

    Safe while the service runs and beside another replay (see the module's
    docstring). It connects with a clean session of its own (the client id of
    ``settings`` plus ``-replay-<random>``), so it never takes over the service's
    session. Torn lines are skipped and listed in the report. Letters without
    a topic (nothing to publish to) stay, unless ``topic_override`` is given.

    Args:
        directory: The spool (``{data_dir}/deadletters``).
        settings: The broker to publish to.
        reason_filter: Only letters whose reason contains this text.
        topic_override: Publish to this topic instead of each letter's own.
        dry_run: Count, publish and change nothing.
        report: Filled in as the replay goes (pass one to know what an interrupted
            replay did); a new one when None.

    Returns:
        The report.
    """
    report = report if report is not None else ReplayReport()
    if dry_run:

        def count() -> None:
            for _, dl in iter_dead_letters(directory, torn=report.torn):
                if _selected(dl, reason_filter) and (topic_override or dl.topic):
                    report.replayed += 1
                else:
                    report.left += 1

        await asyncio.to_thread(count)
        return report
    if not await asyncio.to_thread(directory.is_dir):
        return report
    # A session of its own: with the service's client id the broker would hand the
    # replay the running service's session (taking the service offline meanwhile).
    own = dataclasses.replace(
        settings,
        client_id=f"{settings.client_id[:48]}-replay-{secrets.token_hex(4)}",
        clean_start=True,
        session_expiry_s=0,
    )
    async with MqttConnection(own) as conn:
        report.sealed += await asyncio.to_thread(_seal, directory, _run_id(), reason_filter)
        paths = await asyncio.to_thread(spool_files, directory)
        for path in paths:
            if ACTIVE_NAME.fullmatch(path.name):
                continue  # created after the seal: the next replay's
            claimed = await asyncio.to_thread(_SealedFile.claim, path)
            if claimed == "busy":
                report.busy.append(path)
                continue
            if claimed == "gone":
                continue
            try:
                await _replay_file(
                    claimed,
                    conn,
                    report,
                    reason_filter=reason_filter,
                    topic_override=topic_override,
                )
            finally:
                await asyncio.to_thread(claimed.close)
    return report
