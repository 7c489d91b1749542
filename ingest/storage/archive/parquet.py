"""Readings ↔ Arrow tables ↔ Parquet bytes, and the content checksum.

Schema of an archive object (one sensor, one bucket, ascending ``ts``, one row
per reading)::

    ts          timestamp[ms, tz=UTC]   not null
    m_{name}    float64                 one column per metric name (null: not sent)
    g_{name}    string                  one column per tag name    (null: not sent)

The fixed ``m_``/``g_`` prefixes keep metric and tag names apart (a metric and a
tag may share a name) and the mapping reversible. The sensor id is not a column:
it is the ``sensor_id=`` path segment (Hive partitioning). Metrics are float64
in the archive: integers above 2**53 lose precision (the ingest codec accepts
JSON numbers, which most producers already send as doubles).

The content checksum is a SHA-256 over a canonical form of the readings (sorted
by timestamp, metrics as float64, names sorted), computed independently from
the DynamoDB items and from the decoded object, so a match proves the object
holds exactly the source readings, whatever the Parquet encoder did.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.storage.layout import Reading

__all__ = ["TS_TYPE", "content_checksum", "decode", "encode", "from_table", "to_table"]

TS_TYPE = pa.timestamp("ms", tz="UTC")
_METRIC = "m_"
_TAG = "g_"


def content_checksum(readings: Iterable[Reading]) -> str:
    """SHA-256 (hex) of the readings' canonical form; order-independent, int/float-blind."""
    h = hashlib.sha256()
    for r in sorted(readings, key=lambda r: r.ts_ms):
        row = [
            r.ts_ms,
            sorted((k, float(v)) for k, v in r.metrics.items()),
            sorted(r.tags.items()),
        ]
        h.update(orjson.dumps(row))
        h.update(b"\n")
    return h.hexdigest()


def to_table(readings: Sequence[Reading], *, metadata: dict[str, str] | None = None) -> pa.Table:
    """An Arrow table of readings (sorted by timestamp), typed as in the module docstring."""
    rows = sorted(readings, key=lambda r: r.ts_ms)
    metric_names = sorted({k for r in rows for k in r.metrics})
    tag_names = sorted({k for r in rows for k in r.tags})
    arrays: list[pa.Array] = [pa.array([r.ts_ms for r in rows], type=pa.int64()).cast(TS_TYPE)]
    fields = [pa.field("ts", TS_TYPE, nullable=False)]
    for name in metric_names:
        values = [r.metrics.get(name) for r in rows]
        arrays.append(pa.array([None if v is None else float(v) for v in values], pa.float64()))
        fields.append(pa.field(_METRIC + name, pa.float64()))
    for name in tag_names:
        arrays.append(pa.array([r.tags.get(name) for r in rows], pa.string()))
        fields.append(pa.field(_TAG + name, pa.string()))
    schema = pa.schema(
        fields, metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()}
    )
    return pa.Table.from_arrays(arrays, schema=schema)


def from_table(table: pa.Table, sensor_id: str) -> list[Reading]:
    """Readings of an archive table (the inverse of :func:`to_table`)."""
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    readings = [Reading(sensor_id=sensor_id, ts_ms=int(t), metrics={}, tags={}) for t in ts]
    for name in table.column_names:
        if name.startswith(_METRIC):
            key, values = name[len(_METRIC) :], table.column(name).to_pylist()
            for r, v in zip(readings, values, strict=True):
                if v is not None:
                    r.metrics[key] = v
        elif name.startswith(_TAG):
            key, values = name[len(_TAG) :], table.column(name).to_pylist()
            for r, v in zip(readings, values, strict=True):
                if v is not None:
                    r.tags[key] = v
    return readings


def encode(readings: Sequence[Reading], *, metadata: dict[str, str] | None = None) -> bytes:
    """Parquet bytes (zstd) of the readings. CPU-bound: call it with ``asyncio.to_thread``."""
    sink = io.BytesIO()
    pq.write_table(to_table(readings, metadata=metadata), sink, compression="zstd")
    return sink.getvalue()


def decode(data: bytes, sensor_id: str) -> list[Reading]:
    """Readings of Parquet bytes; raises ``pyarrow.ArrowInvalid`` (or ``OSError``) on corruption.

    CPU-bound: call it with ``asyncio.to_thread``.
    """
    table = pq.read_table(io.BytesIO(data))
    if "ts" not in table.column_names or table.schema.field("ts").type != TS_TYPE:
        raise ValueError(f"not an archive object: no ts column of type {TS_TYPE}")
    return from_table(table, sensor_id)
