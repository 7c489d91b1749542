"""Sealed windows and staging items of the ``packed`` layout: items to readings and back.

Decision 0008. A **sealed window** is one sensor's readings over a fixed window of time
(``window_ms``, dividing the bucket), written once the window has closed, as one or a
few **parts**, each a packed blob (:mod:`ingest.storage.packed`). A **staging item** is
one worker's readings of one sensor group since its last staging write, per sensor a
packed blob, so that dashboards see the last seconds before a window is sealed.

Parts and sets. Sealing a window's readings (deduplicated: the last write of a
timestamp wins, whole; sorted) gives one **set** of parts: the readings split by count
so that each blob fits :data:`MAX_PART_BYTES` (one part unless the sensor is hot).
Every part is named by a 64-bit hash of its blob, and carries its set's id (a hash of
the set's part names), its set's size and when it was sealed. So the same readings
always give the same items under the same keys (a retry, a restart that rebuilt the
window from the journal, a second region), writing a part again overwrites it, and two
different parts never collide: no write needs a condition, and none can lose another's
readings, whatever the concurrency (two workers of a shared subscription, Global
Tables' last writer wins). Readings that reach a window after it was sealed (late
ones, a redelivery after a seal) are sealed as another set.

Readers merge every set of a window (:func:`merge_parts`: sets in the order they were
sealed, a later set winning a timestamp, whole). A window needs **compaction** when it
has more than one set or an incomplete one (:func:`needs_compaction`); compaction
writes the merge as one new set (sealed at the latest of its inputs' times, so two
compactors of the same parts write the same items) and then deletes the parts it
replaced: a crash between the two leaves duplicates, which readers remove.

Item of a part (keys from :mod:`ingest.storage.layout`)::

    pk   S  "{sensor_id}#{bucket}"          sk N  window start · 2**64 + hash of the blob
    ttl  N  window end + retention (epoch s) n  N  readings in the part
    t0   N  first timestamp                 t1 N  last timestamp (skip without decoding)
    set  N  the set's id                    k  N  parts in the set
    w    N  when the set was sealed (ms)    b  B  the packed blob

Staging item::

    pk   S  "#stage#{group}#{hour}"         sk N  flush ms · 2**24 + worker hash · 16 + index
    ttl  N  one day after the flush         n  N  readings
    b    B  u8 version (2), then a journal blob (ingest.storage.journal): the rows of the
            group's readings since the worker's last staging write, in write order

Staging holds rows, not packed windows: a staging write carries a few readings of each
of the group's sensors, and the window codec's fixed cost per window (≈ 100 µs, numpy)
made staging 10,000 sensors every 10 s cost more CPU than the whole decode stage, for
more bytes (≈ 39 B per reading in 3-reading windows, against ≈ 22 B as rows compressed
across the group's sensors). The codec runs once per window, at the seal. (Version 1,
packed windows one after the other, was never released.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ingest.storage.items import StageItem, WindowPartItem
from ingest.storage.journal import JournalDecodeError, decode_journal, encode_journal
from ingest.storage.layout import (
    Reading,
    TableLayout,
    binary_value,
    round_sk,
    stage_pk,
    window_of_sk,
    window_sk,
)
from ingest.storage.packed import (
    PackedDecodeError,
    check_version,
    decode_window,
    encode_window,
)

__all__ = [
    "MAX_PART_BYTES",
    "SEAL_GRACE_MS",
    "STAGE_TTL_S",
    "STAGE_VERSION",
    "Part",
    "WindowScheme",
    "decode_stage",
    "encode_stage",
    "merge_parts",
    "needs_compaction",
    "parse_part_item",
    "seal",
]

MAX_PART_BYTES: Final = 350 * 1024
"""Largest blob of one part: DynamoDB's item limit is 400 KB with keys and names."""
STAGE_VERSION: Final = 2
STAGE_TTL_S: Final = 86_400
SEAL_GRACE_MS: Final = 60_000
"""How long after a window's end (or its last reading, if later) a worker seals it."""
_HOUR_MS: Final = 3_600_000


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a sensor's window: where it goes and what it holds."""

    sensor_id: str
    window_start_ms: int
    part: int
    blob: bytes
    n: int
    first_ms: int
    last_ms: int
    set_id: int
    set_size: int
    sealed_ms: int

    def readings(self) -> list[Reading]:
        """The part's readings, sorted by time (decoded from the blob)."""
        return decode_window(self.blob)


@dataclass(frozen=True, slots=True)
class WindowScheme:
    """Items of a ``packed`` table, from its layout (window width, staging groups).

    Args:
        layout: The table's layout (``kind="packed"``; bucket, retention, window, groups).
    """

    layout: TableLayout

    def __post_init__(self) -> None:
        if self.layout.kind != "packed":
            raise ValueError(f"a window scheme needs a packed layout, got {self.layout.kind!r}")

    @property
    def window_ms(self) -> int:
        return self.layout.window_ms

    @property
    def groups(self) -> int:
        return self.layout.groups

    def window_start(self, ts_ms: int) -> int:
        return ts_ms - ts_ms % self.window_ms

    def staged_since(self, now_ms: int) -> int:
        """The earliest timestamp a reader must look for in staging items at ``now_ms``.

        Readings of windows that ended before it are sealed by a healthy worker; newer
        ones may be only in staging. A worker that cannot seal (DynamoDB failing) keeps
        its windows open, and readers see their readings once they are sealed: a later
        visibility, never a loss (the journal holds them).
        """
        return self.window_start(now_ms - SEAL_GRACE_MS - self.layout.stage_ms) - self.window_ms

    def window_starts(self, start_ms: int, end_ms: int) -> list[int]:
        """Starts of every window overlapping [start_ms, end_ms], ascending."""
        if end_ms < start_ms:
            return []
        return list(range(self.window_start(start_ms), end_ms + 1, self.window_ms))

    def part_item(self, part: Part) -> WindowPartItem:
        """The item of one part, in DynamoDB wire format."""
        end_ms = part.window_start_ms + self.window_ms
        return {
            "pk": {"S": self.layout.window_pk(part.sensor_id, part.window_start_ms)},
            "sk": {"N": str(window_sk(part.window_start_ms, part.part))},
            "ttl": {"N": str((end_ms + self.layout.retention_ms) // 1000)},
            "n": {"N": str(part.n)},
            "t0": {"N": str(part.first_ms)},
            "t1": {"N": str(part.last_ms)},
            "set": {"N": str(part.set_id)},
            "k": {"N": str(part.set_size)},
            "w": {"N": str(part.sealed_ms)},
            "b": {"B": part.blob},
        }

    def stage_item(self, group: int, sk: int, flush_ms: int, blob: bytes, n: int) -> StageItem:
        """A staging item of one group holding ``blob`` (:func:`encode_stage`, ``n``
        readings; ``sk`` from :meth:`stage_sk`)."""
        return {
            "pk": {"S": stage_pk(group, flush_ms - flush_ms % _HOUR_MS)},
            "sk": {"N": str(sk)},
            "ttl": {"N": str(flush_ms // 1000 + STAGE_TTL_S)},
            "n": {"N": str(n)},
            "b": {"B": blob},
        }

    @staticmethod
    def stage_sk(flush_ms: int, worker: str, index: int = 0) -> int:
        """A staging item's sort key: the flush's millisecond, 20 bits of the worker's id and
        the item's index among the flush's items of one group (< 16)."""
        return round_sk(flush_ms, worker, index)


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest())


def _dedupe(readings: Iterable[Reading]) -> list[Reading]:
    """Sorted by time, the last of each timestamp kept (the order given is write order)."""
    latest: dict[int, Reading] = {}
    for r in readings:
        latest[r.ts_ms] = r
    return [latest[t] for t in sorted(latest)]


def _split(rs: list[Reading]) -> list[tuple[list[Reading], bytes]]:
    """Equal-count chunks of ``rs`` (sorted, unique) whose blobs each fit MAX_PART_BYTES.

    The chunk count grows from the size estimate until every chunk fits, so the same
    readings always give the same chunks.
    """
    blob = encode_window(rs)
    if len(blob) <= MAX_PART_BYTES:
        return [(rs, blob)]
    k = math.ceil(len(blob) / MAX_PART_BYTES) - 1
    while True:
        k += 1
        size = math.ceil(len(rs) / k)
        chunks = [rs[i : i + size] for i in range(0, len(rs), size)]
        blobs = [encode_window(c) for c in chunks]
        if all(len(b) <= MAX_PART_BYTES for b in blobs):
            return list(zip(chunks, blobs, strict=True))
        if size == 1:
            raise ValueError(f"one reading of {rs[0].sensor_id!r} is over {MAX_PART_BYTES} B")


def seal(scheme: WindowScheme, readings: Iterable[Reading], sealed_ms: int) -> list[Part]:
    """One set of parts holding one sensor's window: ``readings`` in write order,
    deduplicated, sealed at ``sealed_ms`` (epoch ms; orders this set among the window's).

    Raises:
        ValueError: No readings, several sensors, or readings of several windows.
    """
    rs = _dedupe(readings)
    start = _one_window(scheme, rs)
    chunks = _split(rs)
    names = [_hash64(b) for _, b in chunks]
    set_id = _hash64(b"".join(n.to_bytes(8, "big") for n in names))
    sensor = rs[0].sensor_id
    return [
        Part(
            sensor, start, name, b, len(c), c[0].ts_ms, c[-1].ts_ms, set_id, len(chunks), sealed_ms
        )
        for name, (c, b) in zip(names, chunks, strict=True)
    ]


def _one_window(scheme: WindowScheme, rs: list[Reading]) -> int:
    if not rs:
        raise ValueError("a window part holds at least one reading")
    sensors = {r.sensor_id for r in rs}
    if len(sensors) > 1:
        raise ValueError(f"a window holds one sensor's readings, got {sorted(sensors)[:3]}")
    start = scheme.window_start(rs[0].ts_ms)
    if scheme.window_start(rs[-1].ts_ms) != start:
        raise ValueError(f"readings from {rs[0].ts_ms} to {rs[-1].ts_ms} span several windows")
    return start


def parse_part_item(item: WindowPartItem, sensor_id: str) -> Part:
    """A part's item (wire format) as its :class:`Part` (the blob is decoded lazily).

    Raises:
        PackedDecodeError: Not a part's item.
    """
    try:
        start, part = window_of_sk(int(item["sk"]["N"]))
        return Part(
            sensor_id,
            start,
            part,
            binary_value(item["b"]),
            int(item["n"]["N"]),
            int(item["t0"]["N"]),
            int(item["t1"]["N"]),
            int(item["set"]["N"]),
            int(item["k"]["N"]),
            int(item["w"]["N"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PackedDecodeError(f"not a sealed window's item: {exc!r}") from exc


def merge_parts(parts: Iterable[Part]) -> list[Reading]:
    """The readings of a window's parts, each timestamp once: sets in the order they were
    sealed (then by id), a later set winning a timestamp, whole.

    Raises:
        PackedDecodeError: A blob is corrupt, or holds another sensor's readings or
            another count than its item says.
    """
    ordered = sorted(parts, key=lambda p: (p.sealed_ms, p.set_id, p.first_ms))
    decoded: list[Reading] = []
    for p in ordered:
        rs = p.readings()
        if len(rs) != p.n or rs[0].sensor_id != p.sensor_id:
            raise PackedDecodeError(
                f"part {p.part} of {p.sensor_id!r}'s window {p.window_start_ms} is corrupt: "
                f"it says {p.n} readings of {p.sensor_id!r}, its blob holds {len(rs)} "
                f"of {rs[0].sensor_id!r}"
            )
        decoded += rs
    return _dedupe(decoded)


def needs_compaction(parts: Sequence[Part]) -> bool:
    """Whether a window's parts are anything but one complete set."""
    sets = {p.set_id for p in parts}
    return len(sets) > 1 or any(len({q.part for q in parts}) != p.set_size for p in parts[:1])


def encode_stage(readings: Sequence[Reading]) -> bytes:
    """A staging blob: the readings' rows (any sensors, in write order)."""
    return bytes((STAGE_VERSION,)) + encode_journal(readings)


def decode_stage(
    blob: bytes | bytearray | memoryview, sensor_id: str | None = None
) -> list[Reading]:
    """The readings of a staging blob in write order (only ``sensor_id``'s when given).

    Raises:
        PackedDecodeError: Not a well-formed staging blob of a known version.
    """
    data = memoryview(blob)
    check_version(data, STAGE_VERSION, "staging item")
    try:
        rows = decode_journal(data[1:])
    except JournalDecodeError as exc:
        raise PackedDecodeError(f"staging item is corrupt: {exc}") from exc
    return rows if sensor_id is None else [r for r in rows if r.sensor_id == sensor_id]
