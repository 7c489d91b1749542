"""A slow disk for the chaos suite: an in-memory FUSE file system whose writes and fsyncs sleep.

The kernel routes every ``write(2)``, ``fsync(2)``, ``open``, ``mkdir`` … under the mount
point to this process through ``/dev/fuse``; nothing in the code under test is patched.
A write or fsync is answered only after the delay in the control file has passed, so
the caller is blocked in the kernel exactly as on a disk whose device is slow. Files
live in memory (this is an emulated device, not a cache over a real one) and
disappear with the mount.

It speaks the FUSE kernel protocol directly (``linux/fuse.h``, protocol 7.31: the
structures below) with no library: only root, ``/dev/fuse`` and the ``fuse`` file
system are needed (the full-disk test needs root as well).

Run::

    python -m tests.chaos.slowdisk MOUNTPOINT CONTROL_FILE

``CONTROL_FILE`` holds ``{"write_delay_s": 0, "fsync_delay_s": 3}`` (JSON); it is
re-read on every write and fsync, so a test changes the delays while the disk is in
use. Each delayed answer is logged to ``CONTROL_FILE`` with the suffix ``.log``, one
``{"op": "fsync", "delay_s": …, "answered": <time.monotonic()>}`` line (the clock is
system-wide, so a test compares it with its own). The process prints ``mounted``
once the mount is up and unmounts on SIGTERM.
Delayed requests are answered from their own threads, so lookups and reads of
other files are not held behind a slow fsync (as a device queue would not be).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# -- protocol constants (linux/fuse.h) -----------------------------------------------------

KERNEL_MAJOR, KERNEL_MINOR = 7, 31
MAX_WRITE = 128 * 1024
BUFFER = MAX_WRITE + 64 * 1024

LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
MKNOD, MKDIR, UNLINK, RMDIR, RENAME = 8, 9, 10, 11, 12
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 14, 15, 16, 17, 18, 20
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 25, 26, 27, 28, 29, 30
ACCESS, CREATE, INTERRUPT, DESTROY, BATCH_FORGET, RENAME2 = 34, 35, 36, 38, 42, 45

FATTR_MODE, FATTR_SIZE = 1 << 0, 1 << 3
FUSE_BIG_WRITES = 1 << 5
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr (88 bytes)
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid, generation, entry/attr valid (+ attr)
ATTR_OUT = struct.Struct("<QII")  # attr_valid, nsec, dummy (+ attr)
OPEN_OUT = struct.Struct("<QII")  # fh, open_flags, padding
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # 64 bytes
READ_IN = struct.Struct("<QQII")  # fh, offset, size, flags (rest ignored)
WRITE_IN = struct.Struct("<QQIIQII")  # 40 bytes, then the data
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
KSTATFS = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")

ROOT = 1


@dataclass
class Node:
    ino: int
    mode: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)

    def attr(self) -> bytes:
        s, ns = divmod(self.mtime_ns, 1_000_000_000)
        nlink = 2 if stat.S_ISDIR(self.mode) else 1
        size = len(self.data)
        return ATTR.pack(
            self.ino, size, (size + 511) // 512, s, s, s, ns, ns, ns, self.mode, nlink, 0, 0, 0,
            4096, 0,
        )  # fmt: skip


class SlowDisk:
    """The file system: a tree of :class:`Node` under one lock, served from ``/dev/fuse``."""

    def __init__(self, fd: int, control: Path) -> None:
        self.fd = fd
        self.control = control
        self.answers = control.with_suffix(".log")
        self.lock = threading.Lock()
        self.nodes = {ROOT: Node(ROOT, stat.S_IFDIR | 0o755)}
        self.next_ino = ROOT + 1

    # -- replies -------------------------------------------------------------------------

    def reply(self, unique: int, payload: bytes = b"", error: int = 0) -> None:
        msg = OUT_HEADER.pack(OUT_HEADER.size + len(payload), -error, unique) + payload
        try:
            os.write(self.fd, msg)
        except OSError as exc:  # the request was interrupted, or the mount is gone
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                raise

    def entry(self, node: Node) -> bytes:
        return ENTRY_OUT.pack(node.ino, 0, 0, 0, 0, 0) + node.attr()  # no kernel caching

    def delay(self, key: str) -> float:
        try:
            return float(json.loads(self.control.read_text()).get(key, 0))
        except (OSError, ValueError):
            return 0.0

    def later(self, op: str, seconds: float, unique: int, work: Callable[[], bytes]) -> None:
        """Answer after ``seconds`` from a thread (``work()`` returns the payload)."""

        def run() -> None:
            time.sleep(seconds)
            with self.lock:
                payload = work()
                line = {"op": op, "delay_s": seconds, "answered": time.monotonic()}
                with self.answers.open("a") as f:
                    f.write(json.dumps(line) + "\n")
            self.reply(unique, payload)

        threading.Thread(target=run, daemon=True).start()

    # -- requests ------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, BUFFER)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                if exc.errno == errno.ENODEV:  # unmounted
                    return
                raise
            _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(buf)
            body = buf[IN_HEADER.size :]
            if opcode in NO_REPLY:
                continue
            if opcode == DESTROY:
                self.reply(unique)
                return
            try:
                self.handle(opcode, unique, nodeid, body)
            except OSError as exc:
                self.reply(unique, error=exc.errno or errno.EIO)

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "no such node") from None

    def child(self, parent: int, name: bytes) -> Node:
        ino = self.node(parent).children.get(name)
        if ino is None:
            raise OSError(errno.ENOENT, "no such file")
        return self.node(ino)

    def make(self, parent: int, name: bytes, mode: int) -> Node:
        directory = self.node(parent)
        if name in directory.children:
            raise OSError(errno.EEXIST, "exists")
        node = Node(self.next_ino, mode)
        self.next_ino += 1
        self.nodes[node.ino] = node
        directory.children[name] = node.ino
        return node

    def handle(self, opcode: int, unique: int, nodeid: int, body: bytes) -> None:
        if opcode == INIT:
            major, minor, readahead, _flags = struct.unpack_from("<IIII", body)
            assert major == KERNEL_MAJOR, f"kernel speaks FUSE {major}.{minor}"
            out = INIT_OUT.pack(
                KERNEL_MAJOR, KERNEL_MINOR, readahead, FUSE_BIG_WRITES, 16, 12, MAX_WRITE, 1,
                0, 0, 0,
            )  # fmt: skip
            self.reply(unique, out)
            return
        if opcode == WRITE:
            _fh, offset, size, *_ = WRITE_IN.unpack_from(body)
            data = body[WRITE_IN.size : WRITE_IN.size + size]

            def write() -> bytes:
                node = self.node(nodeid)
                end = offset + len(data)
                if len(node.data) < offset:
                    node.data.extend(b"\0" * (offset - len(node.data)))
                node.data[offset:end] = data
                node.mtime_ns = time.time_ns()
                return struct.pack("<II", len(data), 0)

            self.later("write", self.delay("write_delay_s"), unique, write)
            return
        if opcode in (FSYNC, FSYNCDIR):
            self.later("fsync", self.delay("fsync_delay_s"), unique, lambda: b"")
            return
        with self.lock:
            self.reply(unique, self.answer(opcode, nodeid, body))

    def answer(self, opcode: int, nodeid: int, body: bytes) -> bytes:
        name = body.split(b"\0", 1)[0]
        if opcode == LOOKUP:
            return self.entry(self.child(nodeid, name))
        if opcode == GETATTR:
            return ATTR_OUT.pack(0, 0, 0) + self.node(nodeid).attr()
        if opcode == SETATTR:
            valid, _, _, size, *_rest = SETATTR_IN.unpack_from(body)
            node = self.node(nodeid)
            if valid & FATTR_SIZE:
                del node.data[size:]
                node.data.extend(b"\0" * (size - len(node.data)))
            if valid & FATTR_MODE:
                node.mode = stat.S_IFMT(node.mode) | (SETATTR_IN.unpack_from(body)[11] & 0o7777)
            return ATTR_OUT.pack(0, 0, 0) + node.attr()
        if opcode == MKDIR:
            mode, _umask = struct.unpack_from("<II", body)
            name = body[8:].split(b"\0", 1)[0]
            return self.entry(self.make(nodeid, name, stat.S_IFDIR | (mode & 0o7777)))
        if opcode == MKNOD:
            mode, *_ = struct.unpack_from("<IIII", body)
            name = body[16:].split(b"\0", 1)[0]
            return self.entry(self.make(nodeid, name, stat.S_IFREG | (mode & 0o7777)))
        if opcode == CREATE:
            _flags, mode, *_ = struct.unpack_from("<IIII", body)
            name = body[16:].split(b"\0", 1)[0]
            node = self.make(nodeid, name, stat.S_IFREG | (mode & 0o7777))
            return self.entry(node) + OPEN_OUT.pack(node.ino, 0, 0)
        if opcode in (UNLINK, RMDIR):
            directory = self.node(nodeid)
            ino = directory.children.pop(name, None)
            if ino is None:
                raise OSError(errno.ENOENT, "no such file")
            del self.nodes[ino]
            return b""
        if opcode in (RENAME, RENAME2):
            (newdir,) = struct.unpack_from("<Q", body)
            names = body[16 if opcode == RENAME2 else 8 :].split(b"\0")
            ino = self.child(nodeid, names[0]).ino
            del self.node(nodeid).children[names[0]]
            self.node(newdir).children[names[1]] = ino
            return b""
        if opcode in (OPEN, OPENDIR):
            return OPEN_OUT.pack(self.node(nodeid).ino, 0, 0)
        if opcode == READ:
            _, offset, size, _ = READ_IN.unpack_from(body)
            return bytes(self.node(nodeid).data[offset : offset + size])
        if opcode == READDIR:
            _, offset, size, _ = READ_IN.unpack_from(body)
            node = self.node(nodeid)
            names = [(b".", node.ino), (b"..", ROOT), *node.children.items()]
            out = bytearray()
            for i, (entry_name, ino) in enumerate(names[offset:], start=offset + 1):
                kind = stat.S_IFMT(self.nodes[ino].mode) >> 12
                record = DIRENT.pack(ino, i, len(entry_name), kind) + entry_name
                record += b"\0" * (-len(record) % 8)
                if len(out) + len(record) > size:
                    break
                out += record
            return bytes(out)
        if opcode == STATFS:
            return KSTATFS.pack(1 << 20, 1 << 19, 1 << 19, 1 << 16, 1 << 15, 4096, 255, 4096, 0)
        if opcode in (RELEASE, RELEASEDIR, FLUSH, ACCESS):
            return b""
        raise OSError(errno.ENOSYS, "not implemented")


def _mount(target: Path) -> int:
    """Open ``/dev/fuse`` and mount it on ``target``; returns the descriptor."""
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0"
    if libc.mount(b"slowdisk", str(target).encode(), b"fuse.slowdisk", 0, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")
    return fd


def _unmount(target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(str(target).encode(), 2)  # MNT_DETACH


def main(argv: list[str]) -> int:
    target, control = Path(argv[0]), Path(argv[1])
    fd = _mount(target)
    disk = SlowDisk(fd, control)

    def stop(*_: object) -> None:
        _unmount(target)  # the kernel then ends the serving loop (ENODEV)

    signal.signal(signal.SIGTERM, stop)
    print("mounted", flush=True)
    try:
        disk.serve()
    finally:
        _unmount(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
