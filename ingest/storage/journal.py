"""The journal of the ``packed`` layout: what made a flush of readings durable.

Decision 0008: a worker of a ``packed`` table acknowledges a message once its readings
are in a journal item, one item per flush holding every sensor's readings since the
last flush, and reads its journal back only when it restarts (to rebuild the windows it
had not sealed yet). So the journal is written often, in few bytes, and almost never
read: rows, not columns. Decision 0007 measured it: the rows as orjson writes
:class:`~ingest.storage.layout.Reading`, in one zstd frame at level 1, are 21–23 B per
reading for flushes of 100–1,000 readings, ≈ 1.1 µs per reading to encode; the grouped
columnar form halves the bytes only from 1,000 readings per flush and costs 4.6 µs per
reading at 100.

Item (keys from :func:`ingest.storage.layout.journal_pk`)::

    pk   S  "#journal#{worker}"
    sk   N  the flush's sequence number (:class:`JournalSequence`): increasing per worker
    ttl  N  epoch seconds when DynamoDB may delete it (free: TTL deletes are not billed)
    n    N  readings in it (a check on the blob, and a count without decoding)
    b    B  the blob

Blob, version 1::

    u8     format version (1)
    zstd   one frame, level 1, content size and checksum in its header: the UTF-8 JSON
           array of the readings, each {"sensor_id", "ts_ms", "metrics", "tags"}

Exactness: orjson writes the shortest text that parses back to the same float64 (-0.0
and subnormals included) and every int in [-2**63, 2**64 - 1], the domain the payload
decoder keeps; NaN and infinities never reach here (the decoder refuses them). A blob
that is not exactly this (another version, a broken frame, JSON of another shape, a
count that differs from ``n``) raises :class:`JournalDecodeError`: a journal is never
replayed into other readings.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ingest.storage.items import JournalItem, StringValue
from ingest.storage.layout import SENSOR_ID_PATTERN, Reading, binary_value, journal_pk
from ingest.storage.packed import (
    PackedDecodeError,
    PackedVersionError,
    check_version,
    inflate_frame,
)

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "JOURNAL_VERSION",
    "MAX_JOURNAL_BLOB_BYTES",
    "JournalDecodeError",
    "JournalEntry",
    "JournalSequence",
    "decode_journal",
    "encode_journal",
    "journal_blobs",
    "journal_items",
    "parse_journal_item",
]

JOURNAL_VERSION: Final = 1
MAX_JOURNAL_BLOB_BYTES: Final = 300 * 1024
"""Largest blob in one journal item: DynamoDB's item limit is 400 KB, keys and attribute
names included; a flush that encodes larger is split into several items."""

_LEVEL: Final = 1
_compressor = zstd.ZstdCompressor(
    options={
        zstd.CompressionParameter.compression_level: _LEVEL,
        zstd.CompressionParameter.checksum_flag: 1,
    }
)
_FIELDS: Final = frozenset({"sensor_id", "ts_ms", "metrics", "tags"})
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class JournalDecodeError(PackedDecodeError):
    """A journal item that is not a well-formed journal of a known version."""


def encode_journal(readings: Sequence[Reading]) -> bytes:
    """The blob of one journal item holding ``readings`` (in their order)."""
    content = orjson.dumps(readings)
    return bytes((JOURNAL_VERSION,)) + _compressor.compress(
        content, zstd.ZstdCompressor.FLUSH_FRAME
    )


def decode_journal(blob: bytes | bytearray | memoryview) -> list[Reading]:
    """The readings of a journal blob, in the order they were written.

    Raises:
        PackedVersionError: A format version this reader does not know.
        JournalDecodeError: Not a well-formed version 1 journal blob.
    """
    data = memoryview(blob)
    try:
        check_version(data, JOURNAL_VERSION, "journal")
        content = inflate_frame(data[1:], "journal item")
    except PackedVersionError:
        raise
    except PackedDecodeError as exc:
        raise JournalDecodeError(str(exc)) from exc
    try:
        rows = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise JournalDecodeError(f"journal item is corrupt: not JSON ({exc})") from exc
    if not isinstance(rows, list):
        raise JournalDecodeError("journal item is corrupt: not a JSON array of readings")
    return [_reading(row, i) for i, row in enumerate(rows)]


def _reading(row: Any, i: int) -> Reading:
    if not isinstance(row, dict) or row.keys() != _FIELDS:
        raise JournalDecodeError(f"journal item is corrupt: reading {i} is not a reading")
    sensor, ts, metrics, tags = row["sensor_id"], row["ts_ms"], row["metrics"], row["tags"]
    if not isinstance(sensor, str) or not SENSOR_ID_PATTERN.fullmatch(sensor):
        raise JournalDecodeError(f"journal item is corrupt: reading {i} has a bad sensor id")
    if type(ts) is not int or not _INT_MIN <= ts < 2**63:
        raise JournalDecodeError(f"journal item is corrupt: reading {i} has a bad timestamp")
    if not isinstance(metrics, dict) or not all(_is_metric(v) for v in metrics.values()):
        raise JournalDecodeError(f"journal item is corrupt: reading {i} has a bad metric")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise JournalDecodeError(f"journal item is corrupt: reading {i} has a bad tag")
    return Reading(sensor, ts, metrics, tags)


def _is_metric(v: object) -> bool:
    t = type(v)
    return t is float or (t is int and _INT_MIN <= v <= _INT_MAX)  # type: ignore[operator]


class JournalSequence:
    """Sort keys of one worker's journal items: strictly increasing, also across restarts.

    A key is ``epoch_ms · 1000 + k``: the flush's wall-clock millisecond and a counter,
    so a worker restarted later (or on another machine with the same client id) writes
    after everything it wrote before, as long as it does not write over 1,000 flushes a
    millisecond or its clock does not step back further than its last run lasted.

    Args:
        floor: A key already used (the journal's last, read at start): every key
            given out is above it.
    """

    __slots__ = ("_last",)

    def __init__(self, floor: int = 0) -> None:
        self._last = floor

    def next(self, now_ms: int) -> int:
        """A key above every key given out before (and above ``floor``)."""
        sk = max(now_ms * 1000, self._last + 1)
        self._last = sk
        return sk


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journal item, read back: its sort key and readings."""

    sk: int
    readings: list[Reading]


def journal_items(
    worker: str, sk: int, readings: Sequence[Reading], ttl_s: int
) -> list[tuple[int, JournalItem]]:
    """The journal items holding one flush, as (sort key, item) pairs.

    A flush whose blob would exceed :data:`MAX_JOURNAL_BLOB_BYTES` is split into halves
    until each fits; the parts take the keys ``sk, sk + 1, …``: the caller reserves them
    (``JournalSequence.next`` once per part).
    """
    pk: StringValue = {"S": journal_pk(worker)}
    out: list[tuple[int, JournalItem]] = []
    for k, (blob, n) in enumerate(journal_blobs(readings)):
        item: JournalItem = {
            "pk": pk,
            "sk": {"N": str(sk + k)},
            "ttl": {"N": str(ttl_s)},
            "n": {"N": str(n)},
            "b": {"B": blob},
        }
        out.append((sk + k, item))
    return out


def journal_blobs(readings: Sequence[Reading]) -> list[tuple[bytes, int]]:
    """``readings`` as blobs of at most :data:`MAX_JOURNAL_BLOB_BYTES` each, with their
    counts: one blob, or halves (recursively) until each fits, in order.

    Raises:
        ValueError: One reading alone encodes larger.
    """
    blob = encode_journal(readings)
    if len(blob) <= MAX_JOURNAL_BLOB_BYTES or len(readings) <= 1:
        if len(blob) > MAX_JOURNAL_BLOB_BYTES:
            raise ValueError(
                f"one reading encodes to {len(blob)} bytes, above {MAX_JOURNAL_BLOB_BYTES}"
            )
        return [(blob, len(readings))]
    half = len(readings) // 2
    return journal_blobs(readings[:half]) + journal_blobs(readings[half:])


def parse_journal_item(item: JournalItem) -> JournalEntry:
    """A journal item (wire format; ``b`` as bytes) as its entry.

    Raises:
        JournalDecodeError: The item is not a journal item, or its count disagrees.
    """
    try:
        sk, n, blob = int(item["sk"]["N"]), int(item["n"]["N"]), binary_value(item["b"])
    except (KeyError, TypeError, ValueError) as exc:
        raise JournalDecodeError(f"not a journal item: {exc!r}") from exc
    readings = decode_journal(blob)
    if len(readings) != n:
        raise JournalDecodeError(
            f"journal item {sk} is corrupt: it says {n} readings, its blob holds {len(readings)}"
        )
    return JournalEntry(sk, readings)
