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
