"""The codec libraries: optional ones imported if installed (None otherwise), zstd helpers.

zstandard, pyzstd, backports.zstd (the standard library's ``compression.zstd`` of
Python 3.14, for 3.9-3.13), pcodec, numcodecs and msgpack are candidates, not
dependencies of the project: the bench runs without them and lists what it could
not measure. pyarrow (a dependency, for the archive's Parquet) always brings a zstd.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import pyarrow as pa

__all__ = [
    "Compress",
    "Decompress",
    "backports_zstd",
    "backports_zstd_funcs",
    "frame_zstd",
    "msgpack",
    "numcodecs",
    "pcodec",
    "pyarrow_zstd",
    "pyzstd",
    "zstandard",
    "zstd_funcs",
]


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


zstandard = _optional("zstandard")
pyzstd = _optional("pyzstd")
pcodec = _optional("pcodec")
numcodecs = _optional("numcodecs")
msgpack = _optional("msgpack")
backports_zstd = _optional("backports.zstd")

Compress = Callable[[bytes], bytes]
Decompress = Callable[[bytes, int], bytes]
"""Decompress a frame whose decompressed size is given (pyarrow needs it; zstd frames
carry it, and zstandard's decompressor ignores the argument)."""


def zstd_funcs(level: int) -> tuple[Compress, Decompress]:
    """zstandard's compressor and decompressor, each created once (a context per call
    costs several µs)."""
    assert zstandard is not None
    c = zstandard.ZstdCompressor(level=level)
    d = zstandard.ZstdDecompressor()

    def compress(b: bytes) -> bytes:
        out: bytes = c.compress(b)
        return out

    def decompress(b: bytes, _size: int) -> bytes:
        out: bytes = d.decompress(b)
        return out

    return compress, decompress


def backports_zstd_funcs(level: int) -> tuple[Compress, Decompress]:
    """The future standard library's zstd: a compressor reused (flushing a frame per
    call); decompression makes a context per call, as its API offers no reuse."""
    assert backports_zstd is not None
    c = backports_zstd.ZstdCompressor(level=level)
    flush = backports_zstd.ZstdCompressor.FLUSH_FRAME
    decompress_frame = backports_zstd.decompress

    def compress(b: bytes) -> bytes:
        out: bytes = c.compress(b, mode=flush)
        return out

    def decompress(b: bytes, _size: int) -> bytes:
        out: bytes = decompress_frame(b)
        return out

    return compress, decompress


def pyarrow_zstd(level: int) -> tuple[Compress, Decompress]:
    """pyarrow's zstd codec (no new dependency; ≈ 10 µs more per call than zstandard)."""
    codec = pa.Codec("zstd", compression_level=level)

    def compress(b: bytes) -> bytes:
        out: bytes = codec.compress(b, asbytes=True)
        return out

    def decompress(b: bytes, size: int) -> bytes:
        out: bytes = codec.decompress(b, decompressed_size=size, asbytes=True)
        return out

    return compress, decompress


def frame_zstd(level: int) -> tuple[str, Compress, Compress]:
    """Whichever zstd is installed, as a pair that needs no size to decompress (pyarrow's
    gets the size as a varint in front): for blobs whose decompressed size is unknown."""
    if zstandard is not None:
        c, d = zstd_funcs(level)
        return "", c, lambda b: d(b, 0)
    if backports_zstd is not None:
        c, d = backports_zstd_funcs(level)
        return "(backports.zstd)", c, lambda b: d(b, 0)
    pc, pd = pyarrow_zstd(level)

    def compress(b: bytes) -> bytes:
        return _varint(len(b)) + pc(b)

    def decompress(b: bytes) -> bytes:
        size = shift = pos = 0
        while True:
            byte = b[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return pd(b[pos:], size)

    return "(pyarrow)", compress, decompress


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
