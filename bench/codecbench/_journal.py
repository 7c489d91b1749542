"""Journal chunks: one flush of an ingest worker (many sensors, arrival order) as one blob.

Row formats (orjson as it serializes the :class:`ingest.storage.layout.Reading` dataclass, or
msgpack rows), zstd with and without a trained dictionary, against a columnar form
grouped by schema and sensor. Decoding gives rows back; :func:`canonical` compares
them as a multiset with bit-identical values (and int vs float kept).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bench.codecbench._columns import (
    MODE_DELTA,
    ColHead,
    col_decode,
    decode_tags,
    encode_tags,
    float_encode,
    int_encode,
    read_varint,
    varint,
)
from bench.codecbench._libs import Compress, frame_zstd, msgpack, zstandard
from ingest.storage.layout import Reading

__all__ = [
    "JRow",
    "JournalCodec",
    "canonical",
    "columnar_journal",
    "journal_codecs",
    "msgpack_journal",
    "orjson_journal",
    "rows_of",
    "train_dictionaries",
]

JRow = tuple[str, int, dict[str, Any], dict[str, str]]


@dataclass(frozen=True, slots=True)
class JournalCodec:
    name: str
    encode: Callable[[Sequence[Reading]], bytes]
    decode: Callable[[bytes], list[JRow]]
    note: str = ""


def rows_of(readings: Sequence[Reading]) -> list[JRow]:
    return [(r.sensor_id, r.ts_ms, r.metrics, r.tags) for r in readings]


def canonical(rows: Sequence[JRow]) -> bytes:
    """Rows in a canonical order and form: equal iff the same multiset of readings with
    bit-identical values (orjson writes the shortest round-trip form, keeps int vs float)."""
    ordered = sorted(rows, key=lambda r: (r[0], r[1]))
    return orjson.dumps([list(r) for r in ordered], option=orjson.OPT_SORT_KEYS)


def orjson_journal(name: str, compress: Compress, decompress: Compress, note: str) -> JournalCodec:
    """Readings as orjson serializes the dataclass (no Python loop), compressed."""

    def encode(readings: Sequence[Reading]) -> bytes:
        return compress(orjson.dumps(readings))

    def decode(blob: bytes) -> list[JRow]:
        return [
            (d["sensor_id"], d["ts_ms"], d["metrics"], d["tags"])
            for d in orjson.loads(decompress(blob))
        ]

    return JournalCodec(name, encode, decode, note)


def msgpack_journal(name: str, compress: Compress, decompress: Compress, note: str) -> JournalCodec:
    assert msgpack is not None
    packer = msgpack.Packer()

    def encode(readings: Sequence[Reading]) -> bytes:
        return compress(packer.pack(rows_of(readings)))

    def decode(blob: bytes) -> list[JRow]:
        return [(s, t, m, g) for s, t, m, g in msgpack.unpackb(decompress(blob))]

    return JournalCodec(name, encode, decode, note)


def columnar_journal(name: str, compress: Compress, decompress: Compress) -> JournalCodec:
    """Grouped by schema (metric and tag names), sorted by sensor then time, columns as in
    ``np-dec`` (sensor index and time delta-coded), tags as runs; one zstd frame."""

    def encode(readings: Sequence[Reading]) -> bytes:
        sid_index: dict[str, int] = {}
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Reading]] = {}
        for r in readings:
            sid_index.setdefault(r.sensor_id, len(sid_index))
            groups.setdefault((tuple(r.metrics), tuple(r.tags)), []).append(r)
        meta: list[dict[str, Any]] = []
        bodies: list[bytes] = []
        for (names, tag_keys), rs in groups.items():
            n = len(rs)
            sid = np.fromiter((sid_index[r.sensor_id] for r in rs), np.int64, n)
            ts = np.fromiter((r.ts_ms for r in rs), np.int64, n)
            order = np.lexsort((ts, sid))
            ordered = [rs[i] for i in order.tolist()]
            heads: list[ColHead] = []
            for x in (sid[order], ts[order]):
                h, body = int_encode(x, MODE_DELTA)
                heads.append(h)
                bodies.append(body)
            json_cols: dict[str, list[Any]] = {}
            for k in names:
                vals = [r.metrics[k] for r in ordered]
                if all(type(v) is float for v in vals):
                    h, body = float_encode(np.array(vals, dtype=np.float64), decimal=True)
                    heads.append(h)
                    bodies.append(body)
                else:  # ints (or a mix) keep their JSON form: exact, and rare
                    json_cols[k] = vals
            tag_runs = encode_tags({k: [r.tags[k] for r in ordered] for k in tag_keys})
            meta.append(
                {
                    "metrics": names,
                    "n": n,
                    "heads": heads,
                    "json": json_cols,
                    "tags": tag_runs.hex(),
                }
            )
        head = orjson.dumps({"sids": list(sid_index), "groups": meta})
        return compress(varint(len(head)) + head + b"".join(bodies))

    def decode(blob: bytes) -> list[JRow]:
        buf = decompress(blob)
        ln, pos = read_varint(buf, 0)
        head = orjson.loads(buf[pos : pos + ln])
        off = pos + ln
        sids = head["sids"]
        rows: list[JRow] = []
        for g in head["groups"]:
            n = g["n"]
            arrays: list[Any] = []
            for h in g["heads"]:
                a, off = col_decode(tuple(h), buf, off, n)
                arrays.append(a.tolist())
            sid, ts, *cols = arrays
            names = [k for k in g["metrics"] if k not in g["json"]]
            by_name = dict(zip(names, cols, strict=True)) | g["json"]
            metric_cols = [by_name[k] for k in g["metrics"]]
            tags = decode_tags(bytes.fromhex(g["tags"]))
            tag_cols = list(tags.values())
            keys = list(tags)
            rows += [
                (
                    sids[sid[i]],
                    ts[i],
                    {k: c[i] for k, c in zip(g["metrics"], metric_cols, strict=True)},
                    {k: c[i] for k, c in zip(keys, tag_cols, strict=True)},
                )
                for i in range(n)
            ]
        return rows

    return JournalCodec(name, encode, decode, "grouped by schema and sensor")


def train_dictionaries(training: Sequence[Reading], chunk: int = 100) -> dict[str, Any]:
    """zstd dictionaries (32 KB) for the row formats, trained on earlier readings of the
    same fleet cut into chunks, as a deployment would train and ship one per version."""
    if zstandard is None:
        return {}
    samples = [training[i : i + chunk] for i in range(0, len(training) - chunk + 1, chunk)]
    formats: dict[str, Callable[[Sequence[Reading]], bytes]] = {"orjson": orjson.dumps}
    if msgpack is not None:
        packer = msgpack.Packer()
        formats["msgpack"] = lambda rs: bytes(packer.pack(rows_of(rs)))
    out: dict[str, Any] = {}
    for name, dump in formats.items():
        try:
            out[name] = zstandard.train_dictionary(32_768, [dump(s) for s in samples], level=3)
        except zstandard.ZstdError as exc:
            out[name] = f"cannot train on {len(samples)} samples: {exc}"
    return out


def journal_codecs(dicts: Mapping[str, Any]) -> tuple[list[JournalCodec], list[str]]:
    """The journal encodings (``dicts`` from :func:`train_dictionaries`; with zstd from
    zstandard, else backports.zstd, else pyarrow, named in a suffix)."""
    out: list[JournalCodec] = []
    missing: list[str] = [] if zstandard is not None else ["zstandard: trained dictionaries"]
    via, c3, d3 = frame_zstd(3)
    _, c1, d1 = frame_zstd(1)
    out.append(orjson_journal(f"orjson-rows+zstd3{via}", c3, d3, "naive"))
    out.append(orjson_journal(f"orjson-rows+zstd1{via}", c1, d1, ""))
    if msgpack is not None:
        out.append(msgpack_journal(f"msgpack-rows+zstd3{via}", c3, d3, ""))
    else:
        missing.append("msgpack")
    makers = {"orjson": orjson_journal, "msgpack": msgpack_journal}
    for fmt, d in dicts.items():
        if isinstance(d, str) or zstandard is None:
            missing.append(f"{fmt} dictionary: {d}")
            continue
        zc = zstandard.ZstdCompressor(level=3, dict_data=d)
        zd = zstandard.ZstdDecompressor(dict_data=d)
        note = f"{len(d.as_bytes()) // 1024} KB dictionary"
        out.append(makers[fmt](f"{fmt}-rows+zstd3+dict", zc.compress, zd.decompress, note))
    out.append(columnar_journal(f"grouped-columnar+zstd3{via}", c3, d3))
    return out, missing
