"""Byte-level pieces: numpy column transforms, varints and framing, tags, missing metrics.

Columns (the project-owned candidates ``np-dec`` and ``np-xor``): every column is
its first value plus ``n - 1`` transformed values, zigzagged to unsigned, stored in
the narrowest byte width that holds them and byte-shuffled (all first bytes, then
all second bytes …) so that zstd sees long runs of equal high bytes:

- ``MODE_DELTA`` / ``MODE_DOD``: integers (timestamps) as deltas, or deltas of deltas
  (Gorilla's choice; with a jittered clock plain deltas are smaller);
- ``MODE_DECIMAL``: floats that are exactly ``k / 10**d`` (what a JSON decimal parses
  to), as the integers ``k``, delta-coded; the few that are not (a rollup's sum, a
  stray value with more digits) as exceptions;
- ``MODE_XOR``: any other float, as the XOR of its bits with the previous value's.

Each column's header is ``COL`` (mode, decimals, width, first value: 11 bytes) and
a varint count of exceptions (decimal columns: values kept as raw bits).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bench.codecbench._data import F64, I64, U64

__all__ = [
    "COL",
    "HDR",
    "MODE_DECIMAL",
    "MODE_DELTA",
    "MODE_DOD",
    "MODE_XOR",
    "VERSION",
    "ColHead",
    "body_size",
    "col_decode",
    "decode_tags",
    "encode_tags",
    "float_encode",
    "frame",
    "int_encode",
    "missing_figures",
    "narrow",
    "read_varint",
    "unframe",
    "unnarrow",
    "varint",
]

HDR = struct.Struct("<BIB")
"""Blob header of every candidate: format version, readings, metric columns."""
COL = struct.Struct("<BBBq")
"""Column header of the numpy candidates: mode, decimals, byte width, first value;
then the number of exceptions as a varint."""
VERSION = 1
MODE_DOD, MODE_DELTA, MODE_XOR, MODE_DECIMAL = 0, 1, 2, 3
_UINTS: dict[int, type[np.unsignedinteger[Any]]] = {
    1: np.uint8,
    2: np.uint16,
    4: np.uint32,
    8: np.uint64,
}
_ONE = np.uint64(1)
ColHead = tuple[int, int, int, int, int]
"""mode, decimals, byte width, first value (int64, or a float's bits), exceptions."""


def _zigzag(x: I64) -> U64:
    out: U64 = ((x << 1) ^ (x >> 63)).view(np.uint64)
    return out


def _unzigzag(u: U64) -> I64:
    out: I64 = ((u >> _ONE) ^ (np.uint64(0) - (u & _ONE))).view(np.int64)
    return out


def narrow(u: U64) -> tuple[int, bytes]:
    """The narrowest byte width holding every value, and the values byte-shuffled in it."""
    if u.size == 0:
        return 0, b""
    top = int(u.max())
    if top < 1 << 8:
        return 1, u.astype(np.uint8).tobytes()
    width = 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    return width, u.astype(_UINTS[width]).view(np.uint8).reshape(-1, width).T.tobytes()


def unnarrow(buf: bytes, offset: int, n: int, width: int) -> tuple[U64, int]:
    raw = np.frombuffer(buf, np.uint8, n * width, offset)
    if width > 1:
        raw = np.ascontiguousarray(raw.reshape(width, n).T).view(_UINTS[width]).reshape(n)
    out: U64 = raw.astype(np.uint64)
    return out, offset + n * width


def int_encode(x: I64, mode: int) -> tuple[ColHead, bytes]:
    """Integers as their first value and the deltas (``MODE_DELTA``) or deltas of
    deltas (``MODE_DOD``) of the rest, zigzagged, narrowed and byte-shuffled."""
    if x.size == 0:
        return (mode, 0, 0, 0, 0), b""
    d = x[1:] - x[:-1]
    if mode == MODE_DOD and d.size:
        d = np.concatenate((d[:1], d[1:] - d[:-1]))
    width, body = narrow(_zigzag(d))
    return (mode, 0, width, int(x[0]), 0), body


def _decimals(v: F64) -> tuple[int, I64, I64] | None:
    """``(d, k, exceptions)``: ``k / 10**d`` is bit-identical to ``v`` everywhere but at
    the (few) ``exceptions`` indices; None if no ``d`` does that for 15/16 of the values.

    ``d`` is guessed from the shortest repr of a few values (how the JSON wrote them;
    values with more than 10 decimals are left out of the guess), then checked on the
    whole column exactly as the decoder computes it: a JSON decimal ``22.54`` parses to
    the double nearest 22.54, and ``2254 / 100.0`` (both exact, IEEE division correctly
    rounded) is that same double. A value that is not such a decimal (more digits, a
    sum, -0.0) becomes an exception, kept as its raw bits; too many, and the caller
    uses XOR (the idea of ALP, Afroozeh et al., SIGMOD 2023, without its search).
    """
    guesses = []
    for x in v[:: max(1, v.size // 4)].tolist():
        text = repr(x)
        frac = text.partition(".")[2]
        if "e" not in text and "n" not in text and len(frac) <= 10:
            guesses.append(0 if frac == "0" else len(frac))
    if not guesses:
        return None
    d = max(guesses)
    best: tuple[int, I64, I64] | None = None
    for digits in (d, d + 1, d + 2):  # a sample whose values all end in 0 under-guesses
        scale = 10.0**digits
        with np.errstate(all="ignore"):  # huge values overflow: they become exceptions
            ki = np.rint(v * scale).astype(np.int64)
        back = ki / scale  # what the decoder computes
        if back.tobytes() == v.tobytes():
            return digits, ki, np.empty(0, np.int64)
        bad = np.flatnonzero(back.view(np.uint64) != v.view(np.uint64))
        if bad.size <= v.size // 16 and (best is None or bad.size < best[2].size):
            best = digits, ki, bad
    return best


def float_encode(v: F64, *, decimal: bool) -> tuple[ColHead, bytes]:
    """A float column: scaled decimal integers (delta-coded, with exceptions) when that is
    exact for nearly all values, else Gorilla's XOR of each value's bits with the
    previous one's. Exceptions follow the column's body: their indices (u32) and raw
    bits (u64); the head's last field counts them."""
    found = _decimals(v) if decimal and v.size else None
    if found is not None:
        d, k, bad = found
        if bad.size:  # an exception repeats the last good k: the deltas stay small
            good = np.ones(k.size, dtype=np.bool_)
            good[bad] = False
            last = np.where(good, np.arange(k.size), 0)
            np.maximum.accumulate(last, out=last)
            last[: int(np.argmax(good))] = int(np.argmax(good))
            k = k[last]
        (_, _, width, first, _), body = int_encode(k, MODE_DELTA)
        if bad.size:
            body += bad.astype("<u4").tobytes() + v[bad].astype("<f8").tobytes()
        return (MODE_DECIMAL, d, width, first, int(bad.size)), body
    bits = v.view(np.uint64)
    if bits.size == 0:
        return (MODE_XOR, 0, 0, 0, 0), b""
    width, body = narrow(bits[1:] ^ bits[:-1])
    return (MODE_XOR, 0, width, int(bits[:1].view(np.int64)[0]), 0), body


def body_size(head: ColHead, n: int) -> int:
    """Bytes of a column's body (what :func:`col_decode` reads)."""
    return max(n - 1, 0) * head[2] + 12 * head[4]


def col_decode(head: ColHead, buf: bytes, offset: int, n: int) -> tuple[Any, int]:
    """Inverse of :func:`int_encode` / :func:`float_encode`: ``(array, next offset)``."""
    mode, decimals, width, first, exceptions = head
    if n == 0:
        return np.empty(0, np.float64 if mode >= MODE_XOR else np.int64), offset
    if width:
        u, offset = unnarrow(buf, offset, n - 1, width)
    else:
        u = np.empty(0, np.uint64)
    if mode == MODE_XOR:
        bits = np.empty(n, np.uint64)
        bits[0] = np.int64(first).view(np.uint64)
        bits[1:] = u
        np.bitwise_xor.accumulate(bits, out=bits)
        return bits.view(np.float64), offset
    d = _unzigzag(u)
    if mode == MODE_DOD:
        d = np.cumsum(d)
    x = np.empty(n, np.int64)
    x[0] = first
    np.cumsum(d, out=x[1:])
    x[1:] += first
    if mode != MODE_DECIMAL:
        return x, offset
    values = x / 10.0**decimals
    if exceptions:
        idx = np.frombuffer(buf, "<u4", exceptions, offset)
        values[idx] = np.frombuffer(buf, "<f8", exceptions, offset + 4 * exceptions)
        offset += 12 * exceptions
    return values, offset


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def frame(n: int, parts: Sequence[bytes]) -> bytes:
    """Header, the length of each part but the last, the parts."""
    lens = b"".join(varint(len(p)) for p in parts[:-1])
    return HDR.pack(VERSION, n, len(parts) - 1) + lens + b"".join(parts)


def unframe(blob: bytes) -> tuple[int, list[bytes]]:
    _, n, m = HDR.unpack_from(blob)
    pos = HDR.size
    lens = []
    for _ in range(m):
        ln, pos = read_varint(blob, pos)
        lens.append(ln)
    parts = []
    for ln in lens:
        parts.append(blob[pos : pos + ln])
        pos += ln
    parts.append(blob[pos:])
    return n, parts


def encode_tags(tags: Mapping[str, Sequence[str]]) -> bytes:
    """Tags of a window as runs: per key its name, its distinct values, then
    ``(run length, value index)`` varints. A constant tag costs its text once."""
    out = bytearray(varint(len(tags)))
    for key, values in tags.items():
        arr = np.asarray(values, dtype=object)
        starts = [0, *(np.flatnonzero(arr[1:] != arr[:-1]) + 1).tolist()]
        lengths = np.diff([*starts, len(values)]).tolist()
        distinct: dict[str, int] = {}
        runs = [distinct.setdefault(values[s], len(distinct)) for s in starts]
        kb = key.encode()
        out += varint(len(kb)) + kb + varint(len(distinct))
        for v in distinct:
            vb = v.encode()
            out += varint(len(vb)) + vb
        out += varint(len(runs))
        for length, idx in zip(lengths, runs, strict=True):
            out += varint(length) + varint(idx)
    return bytes(out)


def decode_tags(blob: bytes) -> dict[str, list[str]]:
    pos = 0
    nkeys, pos = read_varint(blob, pos)
    out: dict[str, list[str]] = {}
    for _ in range(nkeys):
        ln, pos = read_varint(blob, pos)
        key = blob[pos : pos + ln].decode()
        pos += ln
        nvals, pos = read_varint(blob, pos)
        vals = []
        for _ in range(nvals):
            ln, pos = read_varint(blob, pos)
            vals.append(blob[pos : pos + ln].decode())
            pos += ln
        nruns, pos = read_varint(blob, pos)
        expanded: list[str] = []
        for _ in range(nruns):
            length, pos = read_varint(blob, pos)
            idx, pos = read_varint(blob, pos)
            expanded += [vals[idx]] * length
        out[key] = expanded
    return out


def missing_figures(n: int, rate: float, seed: int) -> dict[str, Any]:
    """Bytes to say which readings lack a metric: a bitmap (zstd) or a list of the
    missing indices (varint deltas), for ``n`` readings with ``rate`` missing."""
    rng = np.random.default_rng(seed)
    present = rng.random(n) >= rate
    missing_idx = np.flatnonzero(~present)
    bitmap = np.packbits(present).tobytes()
    deltas = np.diff(missing_idx, prepend=0).tolist()
    exceptions = b"".join(varint(d) for d in deltas)
    zstd_bitmap = len(pa.Codec("zstd", compression_level=3).compress(bitmap, asbytes=True))
    return {
        "readings": n,
        "missing_rate": rate,
        "missing": int(missing_idx.size),
        "bitmap_bytes": len(bitmap),
        "bitmap_zstd_bytes": zstd_bitmap,
        "index_list_bytes": len(exceptions) + len(varint(len(deltas))),
    }
