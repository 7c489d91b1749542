"""The binary attribute of a packed item: one sensor's readings over a window, exactly.

Decision 0007 measured the encoding: the project's own column transforms in one zstd
frame (3.6–4.7 B/reading on the simulator's data at sensor precision, a few tenths of a
µs per reading). This module is that codec: :func:`encode_window` and
:func:`decode_window`, pure functions over bytes, no I/O.

What a window holds. The readings of one sensor, sorted by timestamp, one per
timestamp: **the last write of a timestamp wins, whole** (the later reading replaces the
earlier one, metrics and tags, as the ``reading`` layout's PutItem overwrite does;
InfluxDB merges the field sets instead, which would make a packed and a reading table
disagree). "Last" is the order of the readings given: a caller that merges items
(compaction) gives them in write order. Apart from that, the bytes depend only on the
readings, not on their order, nor on the insertion order of their metrics and tags, so
a retry or a second region rebuilding the same window writes the same blob (with the
same zstd library: zstd promises the same decoded bytes across versions, not the same
compressed ones; constraints.txt pins it).

Domain. Timestamps are int64 ms. A metric is an ``int`` in [-2**63, 2**64 - 1] (what
the payload decoder keeps exact) or a finite ``float``; each comes back as the same
type and value, floats bit for bit (-0.0, subnormals, any exponent). NaN, infinities,
larger ints, bools and other types are refused (:class:`PackedEncodeError`), as is a
window of several sensors or none. Metrics may come and go between readings; tags are
strings.

Layout, version 1 (integers little-endian; varint = unsigned LEB128)::

    u8      format version (1)
    zstd    one frame, level 3, content size and checksum in its header, no dictionary:
      u8      flags: bit 0 tags section, bit 1 missing section; other bits 0
      varint  n readings (≥ 1), varint m metric columns
      sensor  varint length, UTF-8
      names   m × (varint length, UTF-8), columns ordered by (name, mode)
      heads   the timestamps', then each column's: u8 mode, u8 decimals, u8 byte width,
              zigzag varint first value, varint exceptions
      missing (bit 1) per column: varint a = readings without it; if 16·a > n a bitmap
              of the readings with it (⌈n/8⌉ bytes, most significant bit first), else
              a varints: the first absent index, then the gaps to the next
      tags    (bit 0) varint keys (sorted); per key: varint length, UTF-8 name, varint
              distinct values, each (varint length, UTF-8), varint runs, per run
              (varint length, varint value: 0 = absent, i = the i-th distinct value)
      bodies  the timestamps' n − 1 deltas; per column its p present values: p − 1
              deltas (modes 1, 3, 4) or XORs of the bits (mode 2); deltas zigzagged;
              at the byte width (0 = all zero, 1, 2, 4, 8), byte-shuffled (every
              value's first byte, then every second byte …); mode 3 then its e
              exceptions: e × u32 index among the present values, e × f64 bits

    modes   1 int64: deltas, wrapping (the timestamps' mode)
            2 float64: XOR with the previous value's bits
            3 float64: k / 10**decimals, k as int64 deltas; a value that is not such a
              decimal bit for bit (-0.0, more digits, huge) is an exception
            4 uint64 (ints from 2**63 to 2**64 - 1): deltas, wrapping

A metric whose values have several types (``3``, then ``3.5``) is several columns of
one name, each present where its type is. Decimal mode is chosen when ``k / 10**d``
reproduces at least 15/16 of a column bit for bit, as the decoder computes it; else XOR.

Two places where version 1 differs from the draft in decision 0007: the flags and
counts live inside the frame, so that zstd's checksum covers every byte but the
version (a flipped bit is an error, not another window), and the sensor id is stored
(a blob says whose readings it holds; 10 bytes or so per item). Mode 4 and the
int/float types are new: the draft stored ints as float64.

Refusals. A blob that is empty, of another version, truncated, with bytes after its
frame, failing its checksum, or whose content is not a well-formed version 1 window
raises :class:`PackedDecodeError` (:class:`PackedVersionError` for a version this
reader does not know); it never decodes into other readings. Errors::

    IngestError (ingest.core.errors)
    └── PackedError
        ├── PackedEncodeError    readings outside the domain: the value and what to do
        └── PackedDecodeError    not a well-formed blob of a known version
            └── PackedVersionError   a version this reader does not know
"""

from __future__ import annotations

import bisect
import itertools
import operator
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ingest.core.errors import IngestError
from ingest.storage.layout import Reading

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "FORMAT_VERSION",
    "MAX_CONTENT_BYTES",
    "Columns",
    "Cursor",
    "PackedDecodeError",
    "PackedEncodeError",
    "PackedError",
    "PackedVersionError",
    "check_version",
    "decode_columns",
    "decode_window",
    "encode_window",
    "inflate_frame",
    "varint",
]

FORMAT_VERSION: Final = 1
MAX_CONTENT_BYTES: Final = 64 * 2**20
"""Largest decompressed content written or read (an item is ≤ 400 KB; zstd may expand a
constant column 30,000-fold, so a reader bounds what it inflates)."""

_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]

_SENSOR_ID = operator.attrgetter("sensor_id")
_TS_MS = operator.attrgetter("ts_ms")
_METRICS = operator.attrgetter("metrics")
_TAGS = operator.attrgetter("tags")
_LEVEL: Final = 3
_FLAG_TAGS, _FLAG_MISSING = 1, 2
_INT, _XOR, _DECIMAL, _UINT = 1, 2, 3, 4
_MAX_DECIMALS: Final = 22  # 10.0**22 is the largest exact power of ten in a float64
_POW10 = [10.0**d for d in range(_MAX_DECIMALS + 1)]
_DTYPES: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}
_WIDTHS = (0, *_DTYPES)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ONE = np.uint64(1)
_ZERO = np.uint64(0)
_compressor = zstd.ZstdCompressor(
    options={
        zstd.CompressionParameter.compression_level: _LEVEL,
        zstd.CompressionParameter.checksum_flag: 1,
    }
)


class PackedError(IngestError):
    """Base of the packed codec's errors."""


class PackedEncodeError(PackedError):
    """The readings cannot be stored in a packed item as they are (the message says why)."""


class PackedDecodeError(PackedError):
    """The blob is not a well-formed packed item of a version this reader knows."""


class PackedVersionError(PackedDecodeError):
    """The blob's format version is not one this reader knows."""


# -- encoding ------------------------------------------------------------------------


class _Absent:
    """The value of a metric a reading does not have (None could be a bad value)."""


_ABSENT = _Absent()


_Parsed = tuple[
    str,
    _I64,
    list[str],
    list[npt.NDArray[Any]],
    list[_I64 | None],
    list[tuple[int, dict[str, str]]] | None,
]
"""A blob's content: sensor id, timestamps, column names, values, presence, tag runs."""


@dataclass(slots=True)
class _Column:
    name: str
    mode: int  # _INT, _UINT, or _XOR for any float column (encode picks XOR or decimal)
    values: npt.NDArray[Any]
    present: _I64 | None  # indices of the readings that have it; None: every reading


def encode_window(readings: Iterable[Reading]) -> bytes:
    """Encode one sensor's readings as a packed item's binary attribute (layout v1).

    Args:
        readings: The sensor's readings in write order; any time order. Of two readings
            with the same timestamp the later one is kept.

    Returns:
        The blob; the same for the same readings in any order.

    Raises:
        PackedEncodeError: No readings, several sensors, or a timestamp, metric or tag
            outside the domain (see the module docstring).
    """
    rs, ts = _window(list(readings))
    n = len(rs)
    columns = _columns(rs)
    tags = _encode_tags(rs)
    flags = (_FLAG_TAGS if tags else 0) | (
        _FLAG_MISSING if any(c.present is not None for c in columns) else 0
    )
    sid = rs[0].sensor_id.encode()
    head = bytearray([flags])
    head += varint(n) + varint(len(columns)) + varint(len(sid)) + sid
    for c in columns:
        name = _utf8(c.name, "metric name")
        head += varint(len(name)) + name
    heads = bytearray()
    bodies: list[bytes] = []
    width, body = _narrow(_zigzag(_wrapping_deltas(ts.view(np.uint64))))
    heads += bytes([_INT, 0, width]) + varint(_zigzag_int(int(ts[0]))) + b"\x00"
    bodies.append(body)
    missing = bytearray()
    for c in columns:
        col_head, body = _encode_values(c)
        heads += col_head
        bodies.append(body)
        if flags & _FLAG_MISSING:
            missing += _encode_missing(c.present, n)
    content = b"".join([head, heads, missing, tags, *bodies])
    if len(content) > MAX_CONTENT_BYTES:
        raise PackedEncodeError(
            f"{n} readings of sensor {rs[0].sensor_id!r} take {len(content)} bytes before "
            f"compression, over {MAX_CONTENT_BYTES}: split the window into smaller items"
        )
    frame: bytes = _compressor.compress(content, mode=zstd.ZstdCompressor.FLUSH_FRAME)
    return bytes([FORMAT_VERSION]) + frame


def _window(rs: list[Reading]) -> tuple[list[Reading], _I64]:
    """The readings sorted by time, the last write of each timestamp (checked), and
    their timestamps.

    Here and below, ``map`` with ``operator`` getters rather than comprehensions: the
    loop over the readings stays in C (≈ 3× faster per reading).
    """
    if not rs:
        raise PackedEncodeError("a packed item holds at least one reading: got no readings")
    sids = set(map(_SENSOR_ID, rs))
    if len(sids) > 1:
        raise PackedEncodeError(
            f"a packed item holds one sensor's readings: got {sorted(sids)[:5]!r}"
        )
    stamps = list(map(_TS_MS, rs))
    if set(map(type, stamps)) != {int} or min(stamps) < -(2**63) or max(stamps) >= 2**63:
        bad = next(t for t in stamps if type(t) is not int or not -(2**63) <= t < 2**63)
        raise PackedEncodeError(f"ts_ms must be an int64 (epoch milliseconds), got {bad!r}")
    ts = np.array(stamps, dtype=np.int64)
    if ts.size > 1 and not bool((ts[1:] > ts[:-1]).all()):
        order = np.argsort(ts, kind="stable")
        s = ts[order]
        last = np.ones(s.size, dtype=np.bool_)
        last[:-1] = s[1:] != s[:-1]  # stable: the last of equal stamps came last
        keep = order[last]
        rs = list(map(rs.__getitem__, keep.tolist()))
        ts = ts[keep]
    return rs, ts


def _columns(rs: Sequence[Reading]) -> list[_Column]:
    """Each metric's values as numpy columns, by (name, mode); types checked."""
    dicts = list(map(_METRICS, rs))
    keys = dicts[0].keys()
    uniform = all(map(keys.__eq__, map(dict.keys, dicts)))
    names = sorted(keys) if uniform else sorted(set().union(*dicts))
    out: list[_Column] = []
    for name in names:
        if type(name) is not str:
            raise PackedEncodeError(f"metric names are strings, got {name!r}")
        if uniform:
            col = list(map(operator.itemgetter(name), dicts))
        else:
            col = [d.get(name, _ABSENT) for d in dicts]
        types = set(map(type, col))
        if types == {float}:
            out.append(_Column(name, _XOR, _finite(name, np.array(col, np.float64)), None))
            continue
        if types == {int}:
            try:
                out.append(_Column(name, _INT, np.array(col, np.int64), None))
                continue
            except OverflowError:
                pass
        out += _mixed_columns(name, col)
    return out


def _mixed_columns(name: str, col: list[Any]) -> list[_Column]:
    """The rare path: a metric missing from some readings, or of several types."""
    by_mode: dict[int, tuple[list[int], list[Any]]] = {
        _INT: ([], []),
        _UINT: ([], []),
        _XOR: ([], []),
    }
    for i, v in enumerate(col):
        t = type(v)
        if t is float:
            mode = _XOR
        elif t is int:
            if -(2**63) <= v < 2**63:
                mode = _INT
            elif 2**63 <= v < 2**64:
                mode = _UINT
            else:
                raise PackedEncodeError(
                    f"metric {name!r} = {v} is outside the integers kept exactly "
                    "(-2**63 to 2**64-1): store it as a float"
                )
        elif v is _ABSENT:
            continue
        else:
            raise PackedEncodeError(
                f"metric {name!r} must be an int or a float, got {t.__name__} {v!r}"
            )
        idx, vals = by_mode[mode]
        idx.append(i)
        vals.append(v)
    out = []
    dtypes: tuple[tuple[int, type[np.generic]], ...] = (
        (_INT, np.int64),
        (_UINT, np.uint64),
        (_XOR, np.float64),
    )
    for mode, dtype in dtypes:
        idx, vals = by_mode[mode]
        if not idx:
            continue
        arr: npt.NDArray[Any] = np.array(vals, dtype)
        if mode == _XOR:
            _finite(name, arr)
        present = None if len(idx) == len(col) else np.array(idx, np.int64)
        out.append(_Column(name, mode, arr, present))
    return out


def _finite(name: str, v: _F64) -> _F64:
    if not bool(np.isfinite(v).all()):
        bad = v[~np.isfinite(v)][0]
        raise PackedEncodeError(
            f"metric {name!r} = {bad!r}: NaN and infinities are not stored (the payload "
            "decoder refuses them; drop the value)"
        )
    return v


def _encode_values(c: _Column) -> tuple[bytes, bytes]:
    """A column's head and body."""
    v = c.values
    exceptions = b""
    n_exc = 0
    decimals = 0
    if c.mode in (_INT, _UINT):
        mode = c.mode
        bits = v.view(np.uint64)
        width, body = _narrow(_zigzag(_wrapping_deltas(bits)))
    else:
        found = _decimals(v)
        if found is None:
            mode = _XOR
            bits = v.view(np.uint64)
            width, body = _narrow(bits[1:] ^ bits[:-1])
        else:
            mode = _DECIMAL
            decimals, k, bad = found
            bits = k.view(np.uint64)
            width, body = _narrow(_zigzag(_wrapping_deltas(bits)))
            n_exc = int(bad.size)
            if n_exc:
                exceptions = bad.astype("<u4").tobytes() + v[bad].astype("<f8").tobytes()
    first = int(bits[:1].view(np.int64)[0])
    head = bytes([mode, decimals, width]) + varint(_zigzag_int(first)) + varint(n_exc)
    return head, body + exceptions


def _decimals(v: _F64) -> tuple[int, _I64, _I64] | None:
    """``(d, k, exceptions)`` with ``k / 10**d`` bit-identical to ``v`` but at the
    ``exceptions`` (at most 1/16 of the values; an exception's ``k`` repeats the last
    good one so the deltas stay small), or None.

    ``d`` is guessed from the shortest repr of a few values (how the JSON wrote them),
    then checked on the whole column exactly as the decoder computes it: ``22.54``
    parses to the double nearest 22.54, and ``2254 / 100.0`` (both exact, IEEE division
    correctly rounded) is that same double. Bit patterns are compared, never ``==``
    (which would turn -0.0 into 0.0).
    """
    guesses = []
    for x in v[:: max(1, v.size // 4)].tolist():
        text = repr(x)
        frac = text.partition(".")[2]
        if "e" not in text and len(frac) <= 10:
            guesses.append(0 if frac == "0" else len(frac))
    if not guesses:
        return None
    best: tuple[int, _I64, _I64] | None = None
    allowed = v.size // 16
    target = v.view(np.uint64)
    for d in range(max(guesses), min(max(guesses) + 2, _MAX_DECIMALS) + 1):
        scale = _POW10[d]
        with np.errstate(all="ignore"):  # huge values overflow: they become exceptions
            k = np.rint(v * scale).astype(np.int64)
            back = k / scale  # what the decoder computes
        bad = np.flatnonzero(back.view(np.uint64) != target)
        if bad.size == 0:
            return d, k, bad
        if bad.size <= allowed and (best is None or bad.size < best[2].size):
            best = d, k, bad
    if best is None:
        return None
    d, k, bad = best
    good = np.ones(k.size, dtype=np.bool_)
    good[bad] = False
    first_good = int(np.argmax(good))
    last = np.where(good, np.arange(k.size), first_good)
    np.maximum.accumulate(last, out=last)
    return d, k[last], bad


def _wrapping_deltas(u: _U64) -> _U64:
    out: _U64 = u[1:] - u[:-1]  # uint64 arithmetic wraps: exact for any int64 or uint64
    return out


def _zigzag(u: _U64) -> _U64:
    """Small signed deltas (as uint64 bit patterns) to small unsigned ones."""
    out: _U64 = (u << _ONE) ^ (_ZERO - (u >> np.uint64(63)))
    return out


def _unzigzag(z: _U64) -> _U64:
    out: _U64 = (z >> _ONE) ^ (_ZERO - (z & _ONE))
    return out


def _zigzag_int(x: int) -> int:
    return 2 * x if x >= 0 else -2 * x - 1


def _unzigzag_int(z: int) -> int:
    return z >> 1 if not z & 1 else -(z >> 1) - 1


def _narrow(u: _U64) -> tuple[int, bytes]:
    """The narrowest byte width holding every value, and the values byte-shuffled in it."""
    top = int(u.max()) if u.size else 0
    if top == 0:
        return 0, b""
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    narrowed = u.astype(_DTYPES[width])
    if width == 1:
        return 1, narrowed.tobytes()
    return width, narrowed.view(np.uint8).reshape(-1, width).T.tobytes()


def _encode_missing(present: _I64 | None, n: int) -> bytes:
    if present is None:
        return b"\x00"
    mask = np.zeros(n, dtype=np.bool_)
    mask[present] = True
    absent = np.flatnonzero(~mask)
    if 16 * absent.size > n:
        return varint(int(absent.size)) + np.packbits(mask).tobytes()
    gaps = np.diff(absent, prepend=0).tolist()
    return varint(int(absent.size)) + b"".join(varint(g) for g in gaps)


def _encode_tags(rs: Sequence[Reading]) -> bytes:
    """Each tag key's values as runs over the readings (empty if no reading has tags)."""
    dicts = list(map(_TAGS, rs))
    changes = np.fromiter(map(operator.ne, dicts[1:], dicts[:-1]), np.bool_, len(dicts) - 1)
    starts = [0, *(np.flatnonzero(changes) + 1).tolist()]
    if len(starts) == 1 and not dicts[0]:
        return b""
    lengths = np.diff([*starts, len(dicts)]).tolist()
    segments = [dicts[s] for s in starts]
    keys = sorted(set().union(*segments))
    out = bytearray(varint(len(keys)))
    for key in keys:
        name = _utf8(key, "tag name")
        distinct: dict[str, int] = {}
        runs: list[tuple[int, int]] = []
        for seg, length in zip(segments, lengths, strict=True):
            value = seg.get(key)
            if value is None:
                idx = 0
            elif type(value) is not str:
                raise PackedEncodeError(f"tag {key!r} must be a string, got {value!r}")
            else:
                idx = distinct.setdefault(value, len(distinct) + 1)
            if runs and runs[-1][1] == idx:
                runs[-1] = (runs[-1][0] + length, idx)
            else:
                runs.append((length, idx))
        out += varint(len(name)) + name + varint(len(distinct))
        for value in distinct:
            vb = _utf8(value, f"value of tag {key!r}")
            out += varint(len(vb)) + vb
        out += varint(len(runs))
        out += b"".join(varint(length) + varint(idx) for length, idx in runs)
    return bytes(out)


def _utf8(text: str, what: str) -> bytes:
    if type(text) is not str:
        raise PackedEncodeError(f"a {what} must be a string, got {text!r}")
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise PackedEncodeError(f"{what} {text!r} is not valid Unicode ({exc.reason})") from exc


def varint(x: int) -> bytes:
    out = bytearray()
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


# -- decoding ------------------------------------------------------------------------


class Cursor:
    """Reads a blob's content front to back (varints, bytes, text); running off its end is
    a truncated blob (:class:`PackedDecodeError`)."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.buf):
            raise PackedDecodeError("packed item is corrupt: its content ends early")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int = 2**64 - 1) -> int:
        shift = result = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise PackedDecodeError("packed item is corrupt: a varint is too long")
        if result > limit:
            raise PackedDecodeError(f"packed item is corrupt: {result} is over {limit}")
        return result

    def text(self) -> str:
        try:
            return self.take(self.varint(len(self.buf))).decode()
        except UnicodeDecodeError as exc:
            raise PackedDecodeError("packed item is corrupt: a name is not UTF-8") from exc

    def array(self, dtype: str, count: int) -> npt.NDArray[Any]:
        size = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(size * count), dtype)


@dataclass(slots=True)
class _Head:
    mode: int
    decimals: int
    width: int
    first: int
    exceptions: int


def decode_window(blob: bytes | bytearray | memoryview) -> list[Reading]:
    """Decode a packed item's binary attribute into its readings, sorted by time.

    Raises:
        PackedVersionError: The blob is of a format version this reader does not know.
        PackedDecodeError: The blob is empty, truncated, corrupt or not a packed item.
    """
    return _readings(*_columns_of(blob))


@dataclass(frozen=True, slots=True)
class Columns:
    """A packed blob's content as columns (what :func:`decode_window` makes readings of).

    Attributes:
        sensor_id: Whose readings.
        ts: Timestamps, ascending.
        columns: Per column, its metric name, its values (int64, uint64 or float64, in
            timestamp order) and the indices of the readings that have it (``None``:
            every reading). A metric of several types is several columns of one name.
    """

    sensor_id: str
    ts: _I64
    columns: list[tuple[str, npt.NDArray[Any], _I64 | None]]


def decode_columns(blob: bytes | bytearray | memoryview) -> Columns:
    """Decode a packed blob into columns, without making readings (tags are checked and
    left out); the same refusals as :func:`decode_window`."""
    sensor_id, ts, names, columns, present, _ = _columns_of(blob)
    return Columns(sensor_id, ts, list(zip(names, columns, present, strict=True)))


def _columns_of(
    blob: bytes | bytearray | memoryview,
) -> _Parsed:
    data = bytes(blob)
    check_version(data, FORMAT_VERSION, "packed item")
    content = inflate_frame(memoryview(data)[1:])
    return _parse(Cursor(content))


def check_version(data: bytes | memoryview, known: int, what: str) -> None:
    """Refuse a blob whose first byte is not the format version ``known``.

    Raises:
        PackedDecodeError: The blob is empty.
        PackedVersionError: Another version; the message names both and what to do.
    """
    if not len(data):
        raise PackedDecodeError(f"{what} is empty: no format version byte")
    if data[0] != known:
        newer = "is newer than" if data[0] > known else "is unknown to"
        raise PackedVersionError(
            f"{what} format {data[0]} {newer} this reader ({known}): "
            "upgrade readers before writers, or the blob is corrupt"
        )


def inflate_frame(frame: memoryview, what: str = "packed item") -> bytes:
    """The content of one checksummed zstd frame that must fill ``frame`` exactly.

    Raises:
        PackedDecodeError: No frame, no checksum, bytes after it, a declared size above
            :data:`MAX_CONTENT_BYTES`, truncated or corrupt; the message names ``what``.
    """
    if len(frame) < 6 or bytes(frame[:4]) != _ZSTD_MAGIC:
        raise PackedDecodeError(f"{what} is corrupt: no zstd frame after the version")
    if not frame[4] & 0x04:
        raise PackedDecodeError(f"{what} is corrupt: its zstd frame has no checksum")
    try:
        size = zstd.get_frame_size(frame)
        declared = zstd.get_frame_info(frame).decompressed_size
    except zstd.ZstdError as exc:
        raise PackedDecodeError(f"{what} is truncated or corrupt: {exc}") from exc
    if size != len(frame):
        raise PackedDecodeError(
            f"{what} is corrupt: {len(frame) - size} bytes after its zstd frame"
        )
    if declared is None or declared > MAX_CONTENT_BYTES:
        raise PackedDecodeError(
            f"{what} is corrupt: its frame declares {declared} bytes of content "
            f"(at most {MAX_CONTENT_BYTES})"
        )
    try:
        content: bytes = zstd.decompress(frame)
    except zstd.ZstdError as exc:
        raise PackedDecodeError(f"{what} is truncated or corrupt: {exc}") from exc
    if len(content) != declared:
        raise PackedDecodeError(f"{what} is corrupt: its content size differs from its frame's")
    return content


def _parse(
    cur: Cursor,
) -> _Parsed:
    limit = len(cur.buf)
    flags = cur.u8()
    if flags & ~(_FLAG_TAGS | _FLAG_MISSING):
        raise PackedDecodeError(f"packed item is corrupt: unknown flags {flags:#04x}")
    n = cur.varint(limit * 8)
    m = cur.varint(limit)
    if n == 0:
        raise PackedDecodeError("packed item is corrupt: it holds no readings")
    sensor_id = cur.text()
    names = [cur.text() for _ in range(m)]
    ts_head = _read_head(cur)
    if (ts_head.mode, ts_head.decimals, ts_head.exceptions) != (_INT, 0, 0):
        raise PackedDecodeError("packed item is corrupt: its timestamps' head is not mode 1")
    heads = [_read_head(cur) for _ in range(m)]
    present: list[_I64 | None] = [None] * m
    if flags & _FLAG_MISSING:
        present = [_read_missing(cur, n) for _ in range(m)]
    seen: dict[tuple[str, int], None] = {}
    for name, head in zip(names, heads, strict=True):
        kind = _XOR if head.mode == _DECIMAL else head.mode
        if (name, kind) in seen:
            raise PackedDecodeError(f"packed item is corrupt: metric {name!r} twice")
        seen[name, kind] = None
    tags = _read_tags(cur, n) if flags & _FLAG_TAGS else None
    ts = _read_body(cur, ts_head, n).view(np.int64)
    if n > 1 and not bool((ts[1:] > ts[:-1]).all()):
        raise PackedDecodeError("packed item is corrupt: its timestamps are not increasing")
    columns = []
    for head, where in zip(heads, present, strict=True):
        p = n if where is None else int(where.size)
        if head.exceptions > p:
            raise PackedDecodeError("packed item is corrupt: more exceptions than values")
        columns.append(_read_values(cur, head, p))
    if cur.pos != len(cur.buf):
        raise PackedDecodeError(
            f"packed item is corrupt: {len(cur.buf) - cur.pos} bytes after its last column"
        )
    return sensor_id, ts, names, columns, present, tags


def _read_head(cur: Cursor) -> _Head:
    mode, decimals, width = cur.u8(), cur.u8(), cur.u8()
    first = _unzigzag_int(cur.varint())
    exceptions = cur.varint(len(cur.buf))
    if mode not in (_INT, _XOR, _DECIMAL, _UINT) or width not in _WIDTHS:
        raise PackedDecodeError(f"packed item is corrupt: mode {mode}, byte width {width}")
    if (decimals and mode != _DECIMAL) or decimals > _MAX_DECIMALS:
        raise PackedDecodeError(f"packed item is corrupt: {decimals} decimals in mode {mode}")
    if exceptions and mode != _DECIMAL:
        raise PackedDecodeError(f"packed item is corrupt: exceptions in mode {mode}")
    return _Head(mode, decimals, width, first, exceptions)


def _read_missing(cur: Cursor, n: int) -> _I64 | None:
    absent = cur.varint(n - 1)
    if absent == 0:
        return None
    if 16 * absent > n:
        bits = np.frombuffer(cur.take((n + 7) // 8), np.uint8)
        mask = np.unpackbits(bits)
        if mask[n:].any() or int(mask[:n].sum()) != n - absent:
            raise PackedDecodeError("packed item is corrupt: a presence bitmap disagrees")
        return np.flatnonzero(mask[:n]).astype(np.int64)
    gaps = [cur.varint(n) for _ in range(absent)]
    idx = np.cumsum(np.array(gaps, np.int64))
    if (absent > 1 and int(min(gaps[1:])) == 0) or int(idx[-1]) >= n:
        raise PackedDecodeError("packed item is corrupt: a list of missing readings is wrong")
    mask = np.ones(n, dtype=np.bool_)
    mask[idx] = False
    return np.flatnonzero(mask).astype(np.int64)


def _read_tags(cur: Cursor, n: int) -> list[tuple[int, dict[str, str]]]:
    """The tags as segments: (readings, the tags of each of them)."""
    keys = cur.varint(len(cur.buf))
    per_key: list[tuple[str, list[str | None], list[int], list[int]]] = []
    bounds: set[int] = {0}
    for _ in range(keys):
        key = cur.text()
        values: list[str | None] = [None]
        values += [cur.text() for _ in range(cur.varint(len(cur.buf)))]
        runs = cur.varint(n)
        pairs = [(cur.varint(n), cur.varint(len(values) - 1)) for _ in range(runs)]
        ends = list(itertools.accumulate(length for length, _ in pairs))
        if runs == 0 or min(length for length, _ in pairs) == 0 or ends[-1] != n:
            raise PackedDecodeError(f"packed item is corrupt: the runs of tag {key!r}")
        bounds.update(ends[:-1])
        per_key.append((key, values, ends, [idx for _, idx in pairs]))
    if len({k for k, _, _, _ in per_key}) != keys:
        raise PackedDecodeError("packed item is corrupt: a tag key twice")
    starts = sorted(bounds)
    segments: list[tuple[int, dict[str, str]]] = []
    for i, start in enumerate(starts):
        seg: dict[str, str] = {}
        for key, values, ends, idxs in per_key:
            value = values[idxs[bisect.bisect_right(ends, start)]]
            if value is not None:
                seg[key] = value
        end = starts[i + 1] if i + 1 < len(starts) else n
        segments.append((end - start, seg))
    return segments


def _read_body(cur: Cursor, head: _Head, count: int) -> _U64:
    """Values of a delta or XOR body, as uint64 bit patterns."""
    out = np.empty(count, np.uint64)
    out[0] = np.uint64(head.first % 2**64)
    if count == 1:
        if head.width:
            raise PackedDecodeError("packed item is corrupt: a body for one value")
        return out
    if head.width == 0:
        out[1:] = _ZERO
    else:
        dtype = _DTYPES[head.width]
        raw = np.frombuffer(cur.take(head.width * (count - 1)), np.uint8)
        if head.width > 1:
            raw = np.ascontiguousarray(raw.reshape(head.width, count - 1).T)
        out[1:] = raw.view(dtype).reshape(count - 1)
    if head.mode == _XOR:
        np.bitwise_xor.accumulate(out, out=out)
    else:
        out[1:] = _unzigzag(out[1:])
        np.cumsum(out, out=out)  # uint64 wraps, as the encoder's deltas did
    return out


def _read_values(cur: Cursor, head: _Head, count: int) -> npt.NDArray[Any]:
    bits = _read_body(cur, head, count)
    if head.mode == _INT:
        return bits.view(np.int64)
    if head.mode == _UINT:
        return bits
    if head.mode == _XOR:
        values: _F64 = bits.view(np.float64)
    else:
        values = bits.view(np.int64) / _POW10[head.decimals]
        if head.exceptions:
            e = head.exceptions
            idx = cur.array("<u4", e).astype(np.int64)
            if int(idx.max()) >= count or (e > 1 and bool((idx[1:] <= idx[:-1]).any())):
                raise PackedDecodeError("packed item is corrupt: an exception's index")
            values[idx] = cur.array("<f8", e)
    if not bool(np.isfinite(values).all()):
        raise PackedDecodeError("packed item is corrupt: a NaN or infinite value")
    return values


def _readings(
    sensor_id: str,
    ts: _I64,
    names: list[str],
    columns: list[npt.NDArray[Any]],
    present: list[_I64 | None],
    tags: list[tuple[int, dict[str, str]]] | None,
) -> list[Reading]:
    n = int(ts.size)
    dense = [i for i, p in enumerate(present) if p is None]
    dense_names = [names[i] for i in dense]
    if len(set(dense_names)) != len(dense_names):
        raise PackedDecodeError("packed item is corrupt: a metric twice in every reading")
    rows = (
        zip(*(columns[i].tolist() for i in dense), strict=True)
        if dense
        else itertools.repeat((), n)
    )
    dicts: list[dict[str, float | int]] = list(
        map(dict, map(zip, itertools.repeat(dense_names), rows))
    )
    for i, where in enumerate(present):
        if where is None:
            continue
        name = names[i]
        for j, v in zip(where.tolist(), columns[i].tolist(), strict=True):
            if name in dicts[j]:
                raise PackedDecodeError(f"packed item is corrupt: metric {name!r} twice")
            dicts[j][name] = v
    if tags is None:
        tag_dicts: list[dict[str, str]] = [{} for _ in range(n)]
    else:
        tag_dicts = []
        for length, seg in tags:
            tag_dicts += map(dict.copy, itertools.repeat(seg, length))
    return list(map(Reading, itertools.repeat(sensor_id), ts.tolist(), dicts, tag_dicts))
