"""The window candidates: each turns (int64 ms timestamps, float64 columns) into one blob.

Every blob starts with ``HDR`` (version, readings, columns) and carries whatever it
needs to decode: what is measured is what would go into the binary attribute.
:func:`window_mismatch` is the exactness check every blob must pass; two lossy
traps (float32, numcodecs' float ``Delta``) are included to prove that it fires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bench.codecbench._columns import (
    COL,
    HDR,
    MODE_DELTA,
    MODE_DOD,
    VERSION,
    ColHead,
    body_size,
    col_decode,
    float_encode,
    frame,
    int_encode,
    narrow,
    read_varint,
    unframe,
    unnarrow,
    varint,
)
from bench.codecbench._data import F64, I64, Window
from bench.codecbench._libs import (
    Compress,
    Decompress,
    backports_zstd,
    backports_zstd_funcs,
    numcodecs,
    pcodec,
    pyarrow_zstd,
    pyzstd,
    zstandard,
    zstd_funcs,
)

__all__ = [
    "Candidate",
    "Decode",
    "Encode",
    "columnar_candidate",
    "float32_trap",
    "numcodecs_candidate",
    "orjson_rows_candidate",
    "pcodec_candidate",
    "pcodec_wrapped_candidate",
    "raw_candidate",
    "shuffle_candidate",
    "window_candidates",
    "window_mismatch",
]

Encode = Callable[[I64, Sequence[F64]], bytes]


Decode = Callable[[bytes], tuple[I64, list[F64]]]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to turn a window (int64 ms timestamps, float64 columns) into bytes."""

    name: str
    family: str
    encode: Encode
    decode: Decode
    note: str = ""


def _raw(ts: I64, cols: Sequence[F64]) -> bytes:
    return ts.astype("<i8", copy=False).tobytes() + b"".join(
        c.astype("<f8", copy=False).tobytes() for c in cols
    )


def _from_raw(buf: bytes, n: int, m: int) -> tuple[I64, list[F64]]:
    ts: I64 = np.frombuffer(buf, "<i8", n).astype(np.int64)
    cols = [np.frombuffer(buf, "<f8", n, 8 * n * (i + 1)).astype(np.float64) for i in range(m)]
    return ts, cols


def raw_candidate(
    name: str, compress: Compress, decompress: Decompress, note: str = ""
) -> Candidate:
    """Little-endian columns, one after the other, in one compressed frame."""

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        return HDR.pack(VERSION, ts.size, len(cols)) + compress(_raw(ts, cols))

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        _, n, m = HDR.unpack_from(blob)
        return _from_raw(decompress(blob[HDR.size :], 8 * n * (m + 1)), n, m)

    return Candidate(name, "raw columns + zstd", encode, decode, note)


def shuffle_candidate(name: str, compress: Compress, decompress: Decompress) -> Candidate:
    """Columns byte-shuffled (8 planes per column, no delta), one compressed frame."""

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        planes = [narrow(ts.view(np.uint64))[1] if ts.size else b""]
        planes += [c.view(np.uint8).reshape(-1, 8).T.tobytes() for c in cols]
        return HDR.pack(VERSION, ts.size, len(cols)) + compress(b"".join(planes))

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        _, n, m = HDR.unpack_from(blob)
        buf = decompress(blob[HDR.size :], 8 * n * (m + 1))
        u, off = unnarrow(buf, 0, n, 8)
        cols = []
        for _ in range(m):
            c, off = unnarrow(buf, off, n, 8)
            cols.append(c.view(np.float64))
        return u.view(np.int64), cols

    return Candidate(name, "numpy transforms + zstd", encode, decode)


def columnar_candidate(
    name: str,
    compress: Compress,
    decompress: Decompress,
    *,
    decimal: bool,
    note: str = "",
) -> Candidate:
    """Project-owned numpy transforms, narrowed, shuffled, one zstd frame. With
    ``decimal``: timestamps delta-coded, floats as exact scaled decimals (delta-coded)
    where that is bit-exact, else XOR. Without: Gorilla's transforms (timestamps
    delta-of-delta, every float XOR-ed with the previous one).

    Blob: ``HDR``, per column (timestamps first) ``COL`` and a varint count of
    exceptions, then the compressed bodies (their lengths follow from the heads, so
    none is stored).
    """

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        heads = [HDR.pack(VERSION, ts.size, len(cols))]
        bodies = []
        for h, body in (
            int_encode(ts, MODE_DELTA if decimal else MODE_DOD),
            *(float_encode(c, decimal=decimal) for c in cols),
        ):
            heads.append(COL.pack(*h[:4]) + varint(h[4]))
            bodies.append(body)
        return b"".join(heads) + compress(b"".join(bodies))

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        _, n, m = HDR.unpack_from(blob)
        pos = HDR.size
        heads: list[ColHead] = []
        for _ in range(m + 1):
            mode, decimals, width, first = COL.unpack_from(blob, pos)
            exceptions, pos = read_varint(blob, pos + COL.size)
            heads.append((mode, decimals, width, first, exceptions))
        buf = decompress(blob[pos:], sum(body_size(h, n) for h in heads))
        ts, off = col_decode(heads[0], buf, 0, n)
        cols = []
        for h in heads[1:]:
            c, off = col_decode(h, buf, off, n)
            cols.append(c)
        return ts, cols

    return Candidate(name, "numpy transforms + zstd", encode, decode, note)


def orjson_rows_candidate(name: str, compress: Compress, decompress: Compress) -> Candidate:
    """The naive reference: readings as JSON rows ``[ts, v1, v2, …]``, zstd."""

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        rows = list(zip(ts.tolist(), *(c.tolist() for c in cols), strict=True))
        return HDR.pack(VERSION, ts.size, len(cols)) + compress(orjson.dumps(rows))

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        m = HDR.unpack_from(blob)[2]
        rows = orjson.loads(decompress(blob[HDR.size :]))
        columns = list(zip(*rows, strict=True)) if rows else [()] * (m + 1)
        ts = np.array(columns[0], dtype=np.int64)
        return ts, [np.array(c, dtype=np.float64) for c in columns[1:]]

    return Candidate(name, "naive", encode, decode)


def float32_trap() -> Candidate:
    """Deliberately lossy (float32 values): must be rejected by the exactness check."""

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        with np.errstate(over="ignore"):  # out of float32's range: lossy, as intended
            values = b"".join(c.astype("<f4").tobytes() for c in cols)
        return HDR.pack(VERSION, ts.size, len(cols)) + ts.astype("<i8").tobytes() + values

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        _, n, m = HDR.unpack_from(blob)
        ts: I64 = np.frombuffer(blob, "<i8", n, HDR.size).astype(np.int64)
        off = HDR.size + 8 * n
        return ts, [
            np.frombuffer(blob, "<f4", n, off + 4 * n * i).astype(np.float64) for i in range(m)
        ]

    return Candidate("trap:float32", "lossy trap", encode, decode, "must be rejected")


def pcodec_candidate(name: str, *, level: int, mode: str = "auto") -> Candidate:
    """pcodec standalone files, one per column (its numpy API; pcodec is lossless)."""
    assert pcodec is not None
    spec = pcodec.ModeSpec.classic() if mode == "classic" else pcodec.ModeSpec.auto()
    cfg = pcodec.ChunkConfig(compression_level=level, mode_spec=spec)
    std = pcodec.standalone

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        return frame(ts.size, [std.simple_compress(a, cfg) for a in (ts, *cols)])

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        _, parts = unframe(blob)
        arrays = [std.simple_decompress(p) for p in parts]
        return arrays[0], arrays[1:]

    return Candidate(name, "pcodec", encode, decode, f"level {level}, mode {mode}")


def pcodec_wrapped_candidate(name: str, *, level: int) -> Candidate:
    """pcodec's wrapped format: one 2-byte file header, per column chunk metadata and one
    page (saves the standalone per-column framing, ~15 bytes a column)."""
    assert pcodec is not None
    cfg = pcodec.ChunkConfig(compression_level=level)
    wrapped = pcodec.wrapped
    file_header = wrapped.FileCompressor().write_header()
    fd, _ = wrapped.FileDecompressor.new(file_header)

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        fc = wrapped.FileCompressor()
        parts = [fc.write_header()]
        for a in (ts, *cols):
            cc = fc.chunk_compressor(a, cfg)
            parts.append(cc.write_meta())
            parts.append(cc.write_page(0))
        return frame(ts.size, parts)

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        n, parts = unframe(blob)
        out: list[Any] = []
        for i in range(1, len(parts), 2):
            dtype = "i64" if i == 1 else "f64"
            cd, _ = fd.chunk_decompressor(parts[i], dtype)
            dst = np.empty(n, np.int64 if i == 1 else np.float64)
            cd.read_page_into(parts[i + 1], n, dst)
            out.append(dst)
        return out[0], out[1:]

    return Candidate(name, "pcodec", encode, decode, f"level {level}, wrapped format")


def numcodecs_candidate(name: str, codec: Any, *, float_delta: bool = False) -> Candidate:
    """numcodecs: integer ``Delta`` on the timestamps, then one codec over all columns as
    8-byte elements (so Blosc shuffles with typesize 8). ``float_delta`` also runs the
    values through ``Delta('<f8')``: lossy (float subtraction), the second trap."""
    assert numcodecs is not None
    ts_delta = numcodecs.Delta(dtype="<i8")
    f_delta = numcodecs.Delta(dtype="<f8")

    def encode(ts: I64, cols: Sequence[F64]) -> bytes:
        vals = [f_delta.encode(c) if float_delta else c for c in cols]
        parts = [
            ts_delta.encode(ts).view(np.uint64),
            *(np.asarray(v).view(np.uint64) for v in vals),
        ]
        return HDR.pack(VERSION, ts.size, len(cols)) + bytes(codec.encode(np.concatenate(parts)))

    def decode(blob: bytes) -> tuple[I64, list[F64]]:
        _, n, m = HDR.unpack_from(blob)
        buf = bytes(codec.decode(blob[HDR.size :]))
        ts: I64 = np.asarray(ts_delta.decode(np.frombuffer(buf, "<i8", n)), dtype=np.int64)
        cols = []
        for i in range(m):
            c = np.frombuffer(buf, "<f8", n, 8 * n * (i + 1))
            cols.append(np.asarray(f_delta.decode(c) if float_delta else c, dtype=np.float64))
        return ts, cols

    family = "lossy trap" if float_delta else "numcodecs"
    return Candidate(name, family, encode, decode, "must be rejected" if float_delta else "")


class _Chain:
    """numcodecs codecs applied in order (as a zarr filter pipeline would)."""

    def __init__(self, *codecs: Any) -> None:
        self.codecs = codecs

    def encode(self, buf: Any) -> bytes:
        for c in self.codecs:
            buf = c.encode(buf)
        return bytes(buf)

    def decode(self, buf: Any) -> bytes:
        for c in reversed(self.codecs):
            buf = c.decode(buf)
        return bytes(buf)


def window_candidates() -> tuple[list[Candidate], list[str]]:
    """Every candidate whose library is installed, and notes on those that are not."""
    out: list[Candidate] = []
    missing: list[str] = []
    if zstandard is not None:
        c3, d3 = zstd_funcs(3)
        out.append(orjson_rows_candidate("orjson-rows+zstd3", c3, lambda b: d3(b, 0)))
        for level in (1, 3, 9, 19):
            c, d = zstd_funcs(level)
            out.append(raw_candidate(f"raw+zstd{level}", c, d))
        out.append(shuffle_candidate("shuffle+zstd3", c3, d3))
        out.append(columnar_candidate("np-xor+zstd3", c3, d3, decimal=False))
        for level in (1, 3, 9):
            c, d = zstd_funcs(level)
            out.append(columnar_candidate(f"np-dec+zstd{level}", c, d, decimal=True))
    else:
        missing.append("zstandard: orjson-rows, raw+zstd, np-* (zstandard backend)")
    pc, pd = pyarrow_zstd(3)
    out.append(raw_candidate("raw+zstd3(pyarrow)", pc, pd))
    out.append(columnar_candidate("np-dec+zstd3(pyarrow)", pc, pd, decimal=True))
    if backports_zstd is not None:
        bc, bd = backports_zstd_funcs(3)
        out.append(raw_candidate("raw+zstd3(backports.zstd)", bc, bd))
        out.append(columnar_candidate("np-dec+zstd3(backports.zstd)", bc, bd, decimal=True))
    else:
        missing.append("backports.zstd")
    if pyzstd is not None:
        comp = pyzstd.ZstdCompressor(3)
        flush = pyzstd.ZstdCompressor.FLUSH_FRAME

        def pyzstd_compress(b: bytes) -> bytes:
            out_b: bytes = comp.compress(b, flush)
            return out_b

        def pyzstd_decompress(b: bytes, _size: int) -> bytes:
            out_b: bytes = pyzstd.decompress(b)
            return out_b

        out.append(raw_candidate("raw+zstd3(pyzstd)", pyzstd_compress, pyzstd_decompress))
    else:
        missing.append("pyzstd")
    if pcodec is not None:
        out.append(pcodec_candidate("pcodec-L8", level=8))
        out.append(pcodec_candidate("pcodec-L4", level=4))
        out.append(pcodec_candidate("pcodec-L8-classic", level=8, mode="classic"))
        out.append(pcodec_wrapped_candidate("pcodec-wrapped-L8", level=8))
    else:
        missing.append("pcodec")
    if numcodecs is not None:
        numcodecs.blosc.use_threads = False  # one core, as an ingest worker has
        blosc = numcodecs.Blosc
        for label, cname, shuffle in (
            ("zstd5-shuffle", "zstd", blosc.SHUFFLE),
            ("zstd5-bitshuffle", "zstd", blosc.BITSHUFFLE),
            ("lz4-bitshuffle", "lz4", blosc.BITSHUFFLE),
        ):
            codec = blosc(cname=cname, clevel=5, shuffle=shuffle)
            out.append(numcodecs_candidate(f"numcodecs-blosc-{label}", codec))
        out.append(
            numcodecs_candidate(
                "numcodecs-shuffle+zstd3",
                _Chain(numcodecs.Shuffle(elementsize=8), numcodecs.Zstd(level=3)),
            )
        )
        out.append(
            numcodecs_candidate(
                "trap:numcodecs-delta-f8",
                blosc(cname="zstd", clevel=5, shuffle=blosc.SHUFFLE),
                float_delta=True,
            )
        )
    else:
        missing.append("numcodecs")
    out.append(float32_trap())
    return out, missing


def window_mismatch(w: Window, ts: Any, cols: Sequence[Any]) -> str | None:
    """Why a decoded window is not the original, bit for bit, or None."""
    if not isinstance(ts, np.ndarray) or ts.dtype != np.int64 or not np.array_equal(ts, w.ts):
        return "timestamps differ (values or dtype)"
    if len(cols) != len(w.cols):
        return f"{len(cols)} columns back for {len(w.cols)}"
    for i, (a, b) in enumerate(zip(w.cols, cols, strict=True)):
        if not isinstance(b, np.ndarray) or b.dtype != np.float64 or b.shape != a.shape:
            return f"column {i}: not a float64 array of {a.size}"
        differ = int(np.count_nonzero(a.view(np.uint64) != b.view(np.uint64)))
        if differ:
            return f"column {i}: {differ} of {a.size} values not bit-identical"
    return None
