"""Spool test kit: dead letters to write, a disk that fails on demand, torn spool files.

:class:`Disk` patches ``os.write``/``os.fsync`` for descriptors under one directory
only (the OS boundary the spool calls): a disk of a given capacity answers a write
larger than its free space with a short write and the next one with ``ENOSPC``, as
the kernel does; an fsync can fail with ``EIO``. It records every fsync'ed path.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ingest.storage.spool import DeadLetter

TOPIC = "sensors/dev-1/telemetry"
DAY_MS = 1_763_780_000_000  # 2025-11-22
FILE = "deadletters-2025-11-22.jsonl"


def letter(i: int, time_ms: int = DAY_MS) -> DeadLetter:
    return DeadLetter(time_ms, "decode", f"payload is not valid JSON: #{i}", TOPIC, b"{bad %d" % i)


class Disk:
    """Faults for the files under ``root``: a capacity (bytes, None: unbounded), fsync errors.

    Also records the path of every descriptor fsync'ed (files and directories).
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root)
        self.capacity: int | None = None
        self.fsync_errors = 0
        self.fsyncs: list[str] = []
        self.short_writes = 0
        real_write, real_fsync = os.write, os.fsync

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.capacity is None or not self._ours(fd):
                return real_write(fd, data)
            free = self.capacity - self._used()
            if free <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if len(data) > free:
                self.short_writes += 1
            return real_write(fd, bytes(data[:free]))

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if self.fsync_errors and path.startswith(self.root) and not os.path.isdir(path):
                self.fsync_errors -= 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)
            self.fsyncs.append(path)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)

    def _ours(self, fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)

    def _used(self) -> int:
        return sum(p.stat().st_size for p in Path(self.root).rglob("*") if p.is_file())


def torn_spool(directory: Path) -> tuple[Path, list[DeadLetter], list[tuple[int, int]]]:
    """A day file as the spool left it before the roll-back, after a write cut short by
    ENOSPC and its retry: three whole letters, a fragment of the fourth glued to the
    whole retry (4 and 5), then a line that is not JSON at all, then two more.

    Returns the path, the letters a reader must find, and (offset, length) of the torn parts.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    whole = [letter(i).to_json() + b"\n" for i in range(8)]
    fragment = letter(3).to_json()[:33]
    garbage = b"\x00\x00\x00 not a letter\n"
    data = b"".join(whole[:3]) + fragment + b"".join(whole[3:6]) + garbage + b"".join(whole[6:])
    path.write_bytes(data)
    at_fragment = len(b"".join(whole[:3]))
    at_garbage = at_fragment + len(fragment) + len(b"".join(whole[3:6]))
    return path, [letter(i) for i in range(8)], [(at_fragment, 33), (at_garbage, len(garbage))]
