"""The dead-letter spool's on-disk format: JSON lines in daily files, torn-line recovery, replay progress, the lock.

Written by :class:`ingest.pipeline.deadletters.DeadLetterSpool`; read by ``iot-ingest deadletters``
and the simulator's checks.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ingest.storage.items import ReadingItem
from ingest.storage.layout import Reading, TableLayout

__all__ = [
    "ACTIVE_NAME",
    "LOCK_NAME",
    "DeadLetter",
    "TornLine",
    "fsync_dir",
    "iter_dead_letters",
    "make_dirs",
    "open_for_append",
    "progress_path",
    "read_progress",
    "reading_message",
    "reading_payload",
    "scan_letters",
    "scan_line",
    "spool_files",
    "spool_lock",
    "write_all",
]

log = logging.getLogger(__name__)


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


def reading_payload(item: ReadingItem) -> bytes:
    """A ``reading`` table's item as a one-reading message (what replay publishes)."""
    return reading_message(TableLayout.from_item(item))


def reading_message(r: Reading) -> bytes:
    """A reading as a one-reading message, with its sensor id and timestamp."""
    return orjson.dumps({"sensor_id": r.sensor_id, "ts": r.ts_ms, **r.metrics, **r.tags})


LOCK_NAME = ".lock"


ACTIVE_NAME = re.compile(r"deadletters-\d{4}-\d{2}-\d{2}\.jsonl")


_LETTER_START = b'{"time_ms":'


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


def open_for_append(path: Path) -> tuple[int, bool]:
    """Open ``path`` to append (creating it); returns the descriptor and whether it is new."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o640), True
    except FileExistsError:
        return os.open(path, flags), False


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n == 0:  # a device that takes nothing and says nothing
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]
