"""Parquet bytes per reading of the S3 archive, for ``iot-ingest plan``'s archive line.

``python -m bench.archivesize [--hours H] [--hz R]`` encodes, per simulator kind, one
sensor's readings over ``hours`` at ``hz`` (values from :mod:`simulator.signals`, at the
precision the simulator publishes) with the archiver's own encoder
(:func:`ingest.storage.archive.parquet.encode`: one object per sensor and bucket, zstd)
and prints the bytes per reading and per metric. The figure ``bench.plan`` uses
(``MEASURED_PARQUET_BYTES_PER_METRIC``) is the mean per metric over the four kinds of a
day at 1 Hz (docs/performance.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from ingest.storage.archive.parquet import encode
from ingest.storage.layout import Reading
from simulator.signals import kind_names, make_model

__all__ = ["main", "parquet_bytes_per_reading"]

_T0_S = 1_795_000_000


def parquet_bytes_per_reading(
    kind: str, *, hz: float, seconds: float, seed: int = 1
) -> tuple[int, float]:
    """(metrics, Parquet bytes per reading) of one ``kind`` sensor over ``seconds``."""
    model = make_model(kind, 1, np.random.default_rng(seed), np.random.default_rng(seed + 1))
    n = max(1, int(seconds * hz))
    ts = _T0_S + np.arange(n) / hz
    values = model.sample(np.zeros(n, dtype=np.int64), ts, ts - _T0_S)
    readings = [
        Reading("gw-0001:dev-00001", int(ts[k] * 1000), {m: float(v[k]) for m, v in values.items()})
        for k in range(n)
    ]
    return len(values), len(encode(readings)) / n


def main(argv: list[str] | None = None) -> int:
    """Print the bytes per reading of each kind and the mean per metric."""
    p = argparse.ArgumentParser(prog="python -m bench.archivesize", description=__doc__)
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--hz", type=float, default=1.0)
    args = p.parse_args(argv)
    total_bytes = total_metrics = 0.0
    print("| kind | metrics | bytes/reading | bytes/metric |")
    print("|---|---:|---:|---:|")
    for kind in kind_names():
        metrics, per_reading = parquet_bytes_per_reading(
            kind, hz=args.hz, seconds=args.hours * 3600
        )
        total_bytes += per_reading
        total_metrics += metrics
        print(f"| {kind} | {metrics} | {per_reading:.2f} | {per_reading / metrics:.2f} |")
    print(f"| mean per metric | | | {total_bytes / total_metrics:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
