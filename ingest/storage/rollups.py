"""Rollups of a ``packed`` table: per sensor, minute and hour bins of every metric.

Decision 0008. A **bin** is one metric of one sensor over one step (a minute or an
hour): how many readings had the metric, their minimum, maximum, first and last value
(by timestamp) and their **exact sum**. Bins are computed from sealed windows, merged
(:func:`~ingest.storage.windows.merge_parts`: each timestamp once, the last write
winning), so a duplicate, a redelivery or a late reading is counted once; a dashboard's
series over a long range reads a few bins instead of every reading.

**Exact sums.** A reading's value came as a JSON decimal, so a metric's values are
almost always decimals of a few digits (``22.54``): the double nearest ``k / 10**d``.
A bin's sum is kept as the integer ``Σ k`` and the scale ``d``: the exact decimal sum,
whatever the order the readings came in, and bins combine into coarser ones (minutes
into an hour, into a dashboard's five minutes) by integer addition, the same value bit
for bit as the sum computed from the readings. The float a series shows is that exact
sum, correctly rounded. A column that is not such a decimal (more than 15 digits,
huge ints beyond 2**53, values like ``1e-300``) keeps ``math.fsum`` of its values
instead (correctly rounded per bin; combining such bins rounds once more), and the bin
says so (:attr:`Bins.exact`).

**Storage.** A sensor-hour's minute bins are one item, a sensor-day's hour bins another,
each a packed blob (:mod:`ingest.storage.packed`, the window codec, exact and about
2 B per value here): bin ``i`` is a row at its start time whose metrics are the stats,
named ``{stat}{metric}`` with a one-letter stat (``c`` count, ``n`` min, ``x`` max,
``s`` sum, ``d`` the sum's scale, ``f`` first, ``l`` last). Keys come from
:mod:`ingest.storage.layout` (:func:`rollup_pk`)::

    pk  S  "#rollup#1m#{sensor}"  sk N  hour start ms     (minute bins of one hour)
    pk  S  "#rollup#1h#{sensor}"  sk N  day start ms      (hour bins of one day)
    ttl N  period end + max(retention, ROLLUP_RETENTION_DAYS)
    n   N  readings the bins cover            b  B  the packed blob
    h   N  (day items) bit i set: hour i's minute bins were folded in
    v   N  (day items) version, for the conditional write of a recomputation

Rollups outlive the readings (:data:`ROLLUP_RETENTION_DAYS`): a bucket archived to S3
and expired from DynamoDB keeps its series readable at a minute or an hour step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ingest.storage.items import RollupBinsItem, StaleMarkItem
from ingest.storage.layout import (
    Reading,
    TableLayout,
    binary_value,
    rollup_pk,
    rollup_stale_key,
)
from ingest.storage.packed import PackedDecodeError, decode_columns, encode_window

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "ROLLUP_RETENTION_DAYS",
    "Bins",
    "RollupItem",
    "bins_of_readings",
    "combine",
    "decode_bins",
    "encode_bins",
    "parse_rollup_item",
    "rollup_item",
    "runs",
    "select_bins",
    "stale_mark_item",
]

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
ROLLUP_RETENTION_DAYS: Final = 400
"""How long rollups are kept at least (a year and a month: year-over-year dashboards),
or the table's retention if longer."""
_MAX_SCALE: Final = 15  # 10**15 · a value stays exact in int64 for |value| < 9,223
_EXACT_INT: Final = 2**53
_STATS = ("c", "n", "x", "s", "d", "f", "l")

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Bins:
    """One metric's non-empty bins of one step, ascending by start.

    Attributes:
        start: Start of each bin (epoch ms, a multiple of the step).
        count: Readings with the metric in the bin (≥ 1).
        min, max, first, last: Their minimum, maximum, first and last value by time.
        sum_k: Exact bins: the sum as an integer in units of ``10**-scale``; other bins:
            unused (0).
        scale: Per bin, the scale ``d`` of ``sum_k``, or -1 where the sum is ``fsum``.
        fsum: Per bin, the float sum where ``scale`` is -1 (else 0.0).
    """

    start: _I64
    count: _I64
    min: _F64
    max: _F64
    first: _F64
    last: _F64
    sum_k: list[int]
    scale: list[int]
    fsum: _F64

    def __len__(self) -> int:
        return int(self.start.size)

    @property
    def exact(self) -> bool:
        """Whether every bin's sum is exact."""
        return all(d >= 0 for d in self.scale)

    def sums(self) -> _F64:
        """Each bin's sum as a float (the exact sum correctly rounded, where exact)."""
        out = self.fsum.copy()
        for i, (k, d) in enumerate(zip(self.sum_k, self.scale, strict=True)):
            if d >= 0:
                out[i] = float(Fraction(k, 10**d))
        return out


def _scale(v: _F64) -> tuple[int, _I64] | None:
    """``(d, k)`` with ``k / 10**d`` bit for bit ``v`` everywhere, or None."""
    if v.size == 0:
        return 0, np.zeros(0, dtype=np.int64)
    with np.errstate(all="ignore"):
        for d in range(_MAX_SCALE + 1):
            scale = 10.0**d
            k = np.rint(v * scale)
            if not bool((np.abs(k) < _EXACT_INT).all()):
                return None
            back = k / scale
            if bool((back.view(np.uint64) == v.view(np.uint64)).all()):
                return d, k.astype(np.int64)
    return None


def runs(start: _I64, step_ms: int) -> tuple[_I64, _I64]:
    """Where each run of equal ``start // step_ms`` begins and ends (exclusive), for
    ascending ``start``: the bins (or readings) that fall into each coarser bin."""
    idx = start // step_ms
    first = np.flatnonzero(np.concatenate(([True], idx[1:] != idx[:-1])))
    return first, np.append(first[1:], idx.size)


def _column_bins(ts: _I64, values: Sequence[float | int], step_ms: int) -> Bins:
    """Bins of one metric's readings (``ts`` ascending, each timestamp once)."""
    exact_ints = all(type(x) is float or -_EXACT_INT <= x <= _EXACT_INT for x in values)
    v = np.array(values, dtype=np.float64)
    starts, ends = runs(ts, step_ms)
    count = (ends - starts).astype(np.int64)
    scaled = _scale(v) if exact_ints else None
    sum_k: list[int]
    fsum = np.zeros(starts.size, dtype=np.float64)
    if scaled is not None:
        d, k = scaled
        sum_k = [int(x) for x in np.add.reduceat(k.astype(object), starts)]
        scales = [d] * starts.size
    else:
        sum_k = [0] * starts.size
        scales = [-1] * starts.size
        as_list = list(values)
        for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            fsum[i] = math.fsum(as_list[a:b])
    return Bins(
        start=ts[starts] // step_ms * step_ms,
        count=count,
        min=np.minimum.reduceat(v, starts),
        max=np.maximum.reduceat(v, starts),
        first=v[starts],
        last=v[ends - 1],
        sum_k=sum_k,
        scale=scales,
        fsum=fsum,
    )


def bins_of_readings(readings: Iterable[Reading], step_ms: int) -> dict[str, Bins]:
    """Per metric, the bins of ``readings`` (one sensor, each timestamp once: merged)."""
    rs = sorted(readings, key=lambda r: r.ts_ms)
    columns: dict[str, tuple[list[int], list[float | int]]] = {}
    for r in rs:
        for name, value in r.metrics.items():
            col = columns.get(name)
            if col is None:
                col = columns[name] = ([], [])
            col[0].append(r.ts_ms)
            col[1].append(value)
    return {
        name: _column_bins(np.array(ts, dtype=np.int64), values, step_ms)
        for name, (ts, values) in sorted(columns.items())
    }


def _combined_sum(
    ks: Sequence[int], ds: Sequence[int], fs: Sequence[float]
) -> tuple[int, int, float]:
    """``(k, d, fsum)`` of several bins' sums: exact if all are, else -1 and the float of
    the exact sum of the parts."""
    if all(d >= 0 for d in ds):
        top = max(ds)
        return sum(k * 10 ** (top - d) for k, d in zip(ks, ds, strict=True)), top, 0.0
    total = sum(
        (Fraction(k, 10**d) if d >= 0 else Fraction(f) for k, d, f in zip(ks, ds, fs, strict=True)),
        Fraction(0),
    )
    return 0, -1, float(total)


def combine(bins: Bins, step_ms: int) -> Bins:
    """The bins at a coarser ``step_ms`` (a multiple of theirs): counts added, sums exact."""
    if len(bins) == 0:
        return bins
    starts, ends = runs(bins.start, step_ms)
    sum_k: list[int] = []
    scales: list[int] = []
    fsum = np.zeros(starts.size, dtype=np.float64)
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        k, d, f = _combined_sum(bins.sum_k[a:b], bins.scale[a:b], bins.fsum[a:b].tolist())
        sum_k.append(k)
        scales.append(d)
        fsum[i] = f
    return Bins(
        start=bins.start[starts] // step_ms * step_ms,
        count=np.add.reduceat(bins.count, starts),
        min=np.minimum.reduceat(bins.min, starts),
        max=np.maximum.reduceat(bins.max, starts),
        first=bins.first[starts],
        last=bins.last[ends - 1],
        sum_k=sum_k,
        scale=scales,
        fsum=fsum,
    )


def encode_bins(sensor_id: str, bins: Mapping[str, Bins]) -> bytes:
    """A packed blob of one sensor's bins (every metric's, one step)."""
    rows: dict[int, dict[str, float | int]] = {}
    for name, b in bins.items():
        for i, start in enumerate(b.start.tolist()):
            row = rows.setdefault(start, {})
            row["c" + name] = int(b.count[i])
            row["n" + name] = float(b.min[i])
            row["x" + name] = float(b.max[i])
            row["f" + name] = float(b.first[i])
            row["l" + name] = float(b.last[i])
            d = b.scale[i]
            k = b.sum_k[i]
            if d >= 0 and -(2**63) <= k < 2**63:
                row["s" + name] = k
                row["d" + name] = d
            else:  # an exact sum beyond int64 is stored as its correctly rounded float
                row["s" + name] = float(Fraction(k, 10**d)) if d >= 0 else float(b.fsum[i])
    return encode_window(Reading(sensor_id, ts, metrics) for ts, metrics in sorted(rows.items()))


def decode_bins(blob: bytes | bytearray | memoryview) -> dict[str, Bins]:
    """The bins of a blob of :func:`encode_bins` (decoded as columns: no rows are made).

    Raises:
        PackedDecodeError: Not such a blob.
    """
    content = decode_columns(blob)
    n = int(content.ts.size)
    every = np.arange(n, dtype=np.int64)
    stats: dict[str, dict[str, list[tuple[npt.NDArray[Any], _I64]]]] = {}
    for key, values, present in content.columns:
        if len(key) < 2 or key[0] not in _STATS:
            raise PackedDecodeError(f"rollup blob holds a column {key!r} that is no bin's")
        rows = every if present is None else present
        stats.setdefault(key[1:], {}).setdefault(key[0], []).append((values, rows))
    out: dict[str, Bins] = {}
    for name, by_stat in sorted(stats.items()):
        try:
            [(count, rows)] = by_stat["c"]
            cols = {s: _on_rows(by_stat[s], rows, name, s) for s in ("n", "x", "f", "l")}
            sums = by_stat["s"]
        except (KeyError, ValueError) as exc:
            raise PackedDecodeError(f"rollup bins of {name!r} are incomplete") from exc
        sum_k = [0] * rows.size
        scale = [-1] * rows.size
        fsum = np.zeros(rows.size, dtype=np.float64)
        scales = by_stat.get("d", [])
        for values, where in sums:
            pos = np.searchsorted(rows, where)
            if values.dtype.kind == "f":
                fsum[pos] = values
                continue
            d = _on_rows(scales, where, name, "d")
            for p, k, dd in zip(pos.tolist(), values.tolist(), d.tolist(), strict=True):
                sum_k[p], scale[p] = int(k), int(dd)
        out[name] = Bins(
            start=content.ts[rows],
            count=count.astype(np.int64),
            min=cols["n"],
            max=cols["x"],
            first=cols["f"],
            last=cols["l"],
            sum_k=sum_k,
            scale=scale,
            fsum=fsum,
        )
    return out


def _on_rows(
    parts: list[tuple[npt.NDArray[Any], _I64]], rows: _I64, name: str, stat: str
) -> npt.NDArray[Any]:
    """One stat's values on ``rows`` (every one of them must have it, once)."""
    if len(parts) != 1 or not np.array_equal(parts[0][1], rows):
        raise PackedDecodeError(f"rollup bins of {name!r}: {stat!r} is not on every bin")
    return parts[0][0]


@dataclass(frozen=True, slots=True)
class RollupItem:
    """A rollup item, parsed: one sensor's bins of one step over one period."""

    sensor_id: str
    step_ms: int
    period_start_ms: int
    bins: dict[str, Bins]
    readings: int
    hours: int = 0
    version: int = 0

    def covers(self) -> list[tuple[int, int]]:
        """The spans [start, end) whose bins this item holds completely."""
        if self.step_ms == MINUTE_MS:
            return [(self.period_start_ms, self.period_start_ms + HOUR_MS)]
        out: list[tuple[int, int]] = []
        for h in range(24):
            if self.hours >> h & 1:
                lo = self.period_start_ms + h * HOUR_MS
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], lo + HOUR_MS)
                else:
                    out.append((lo, lo + HOUR_MS))
        return out


def rollup_item(
    layout: TableLayout,
    sensor_id: str,
    step_ms: int,
    period_start_ms: int,
    bins: Mapping[str, Bins],
    *,
    hours: int = 0,
    version: int = 0,
) -> RollupBinsItem:
    """The item of one sensor's bins over one period (an hour of minutes, a day of hours)."""
    period = HOUR_MS if step_ms == MINUTE_MS else DAY_MS
    keep_ms = max(layout.retention_ms, ROLLUP_RETENTION_DAYS * DAY_MS)
    n = sum(int(b.count.sum()) for b in bins.values())
    item: RollupBinsItem = {
        "pk": {"S": rollup_pk(step_ms, sensor_id)},
        "sk": {"N": str(period_start_ms)},
        "ttl": {"N": str((period_start_ms + period + keep_ms) // 1000)},
        "n": {"N": str(n)},
        "b": {"B": encode_bins(sensor_id, bins)},
    }
    if step_ms == HOUR_MS:
        item["h"] = {"N": str(hours)}
        item["v"] = {"N": str(version)}
    return item


def stale_mark_item(
    layout: TableLayout, sensor_id: str, hour_ms: int, sealed_ms: int
) -> StaleMarkItem:
    """The mark of an hour whose rollups lack a set sealed at ``sealed_ms`` (kept as long as
    the hour's rollups: a mark that expired first would let a stale rollup be served)."""
    keep_ms = max(layout.retention_ms, ROLLUP_RETENTION_DAYS * DAY_MS)
    key = rollup_stale_key(sensor_id, hour_ms)
    return {
        "pk": key["pk"],
        "sk": key["sk"],
        "t": {"N": str(sealed_ms)},
        "ttl": {"N": str((hour_ms + DAY_MS + keep_ms) // 1000)},
    }


def select_bins(bins: Bins, keep: _Bool) -> Bins:
    """The bins where ``keep`` is true."""
    where = np.flatnonzero(keep)
    return Bins(
        start=bins.start[where],
        count=bins.count[where],
        min=bins.min[where],
        max=bins.max[where],
        first=bins.first[where],
        last=bins.last[where],
        sum_k=[bins.sum_k[i] for i in where],
        scale=[bins.scale[i] for i in where],
        fsum=bins.fsum[where],
    )


def parse_rollup_item(item: RollupBinsItem, sensor_id: str, step_ms: int) -> RollupItem:
    """A rollup item read back (``sensor_id`` and ``step_ms`` from the query that found it).

    Raises:
        PackedDecodeError: Not a rollup item, or its blob is corrupt.
    """
    try:
        start = int(item["sk"]["N"])
        readings = int(item["n"]["N"])
        blob = binary_value(item["b"])
        hours = int(item.get("h", {"N": "0"})["N"])
        version = int(item.get("v", {"N": "0"})["N"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PackedDecodeError(f"not a rollup item: {exc!r}") from exc
    return RollupItem(sensor_id, step_ms, start, decode_bins(blob), readings, hours, version)
