"""A ``packed`` table's series from its rollups, raw readings only where none cover.

Decision 0008; the bins are :mod:`ingest.storage.rollups`. A series whose step is a
whole number of minutes reads, for the span of its windows:

1. when the step is whole hours, the sensor's **hour items** of the span's days (one
   Query): each covers the hours its day log says were rolled up;
2. for the hours still uncovered, its **minute items** (one Query per run of
   consecutive uncovered hours): each covers its whole hour;
3. for the hours neither covers (the last hour or two, which the rollup pass has not
   reached; hours before rollups existed), the **readings** (sealed windows and staging,
   and the archive's objects for archived buckets:
   :func:`queries.read.packedread.read_packed_tiered`), one read per run.

Hours with a **stale mark** (``#stale#{sensor}``: a set sealed after the rollups of
the hour were written, :mod:`ingest.storage.rollpass`) are read as readings whatever
covers them, until the rollup pass has rolled them up again: one more Query per series,
usually empty (0.5 read units). So a series is exact from the moment a late set is
sealed, not only after the next pass.

Bins are combined into the series' windows exactly (:func:`ingest.storage.rollups.combine`:
counts and exact sums added as integers) before they are folded, so a window served
from rollups alone has the exact sum of its readings, correctly rounded; the other
aggregations (count, min, max, first, last) are exact whatever served them. A late
reading is in the raw read at once (from its staging item), in series from its seal on,
and in the rollups after the next rollup pass.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from ingest.storage.items import RollupBinsItem
from ingest.storage.layout import Reading, TableLayout, rollup_pk, rollup_stale_pk
from ingest.storage.packed import PackedDecodeError
from ingest.storage.reads import key_query, query_pages
from ingest.storage.rollups import (
    HOUR_MS,
    MINUTE_MS,
    RollupItem,
    combine,
    parse_rollup_item,
    runs,
    select_bins,
)
from queries.errors import ReadFailed
from queries.read.packedread import read_packed_tiered
from queries.read.params import Agg
from queries.read.reader import ReadStats, TableReader
from queries.read.series import SeriesAccumulator, WindowGrid
from queries.read.tiers import Tier

__all__ = ["SeriesSink", "fold_packed_series"]

_DAY_MS = 86_400_000


class SeriesSink(Protocol):
    """Where a sensor's series is folded (:class:`queries.read.sampler.SensorSeries`)."""

    def accumulator(
        self, name: str, grid: WindowGrid, aggs: tuple[Agg, ...]
    ) -> SeriesAccumulator | None:
        """The metric's accumulator (made if new), or None past the metric limit."""
        ...

    def fold_readings(
        self, readings: list[Reading], grid: WindowGrid, aggs: tuple[Agg, ...]
    ) -> None:
        """Fold raw readings."""
        ...


async def _rollup_items(
    reader: TableReader,
    sensor_id: str,
    step_ms: int,
    lo: int,
    hi: int,
    stats: ReadStats,
    now_s: int,
) -> list[RollupItem]:
    """The sensor's rollup items of one step whose period starts in [lo, hi]."""
    kwargs = key_query(reader.table, rollup_pk(step_ms, sensor_id), lo, hi)
    out: list[RollupItem] = []
    item: RollupBinsItem
    async for page in query_pages(functools.partial(reader.call, stats=stats), kwargs):
        for item in page.get("Items", []):
            if TableLayout.is_expired(item, now_s):
                continue
            try:
                out.append(parse_rollup_item(item, sensor_id, step_ms))
            except PackedDecodeError as exc:
                raise ReadFailed(f"a rollup item of {sensor_id!r} is corrupt: {exc}") from exc
    return out


async def _stale_hours(
    reader: TableReader, sensor_id: str, lo: int, hi: int, stats: ReadStats
) -> set[int]:
    """The sensor's hours in [lo, hi] whose rollups lack a late seal."""
    kwargs = key_query(reader.table, rollup_stale_pk(sensor_id), lo, hi)
    return {
        int(item["sk"]["N"])
        async for page in query_pages(functools.partial(reader.call, stats=stats), kwargs)
        for item in page.get("Items", [])
    }


def _runs(hours: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive hour starts as [start, end) spans."""
    out: list[tuple[int, int]] = []
    for h in hours:
        if out and out[-1][1] == h:
            out[-1] = (out[-1][0], h + HOUR_MS)
        else:
            out.append((h, h + HOUR_MS))
    return out


def _fold(
    series: SeriesSink,
    item: RollupItem,
    grid: WindowGrid,
    aggs: tuple[Agg, ...],
    fields: Sequence[str] | None,
    stale: set[int],
) -> None:
    for name, all_bins in item.bins.items():
        if fields is not None and name not in fields:
            continue
        bins = all_bins
        if stale:  # an hour item's bins of stale hours are read as readings instead
            keep = ~np.isin(bins.start - bins.start % HOUR_MS, list(stale))
            if not keep.all():
                bins = select_bins(bins, keep)
            if not len(bins):
                continue
        acc = series.accumulator(name, grid, aggs)
        if acc is None:
            continue
        b = combine(bins, grid.step_ms)
        firsts, ends = runs(bins.start, grid.step_ms)
        first_ts = bins.start[firsts]
        last_ts = bins.start[ends - 1] + item.step_ms - 1
        acc.add_bins(b.start, b.count, b.sums(), b.min, b.max, b.first, first_ts, b.last, last_ts)


async def fold_packed_series(
    series: SeriesSink,
    reader: TableReader,
    sensor_id: str,
    grid: WindowGrid,
    aggs: tuple[Agg, ...],
    *,
    fields: Sequence[str] | None,
    stats: ReadStats,
    now_s: int,
) -> dict[int, Tier]:
    """Fold a packed table's sensor into the series' accumulators (see the module
    docstring); the tier that served each bucket read as readings (the others were
    served by rollups, which stay in DynamoDB: ``hot``)."""
    lo, hi = grid.origin_ms, grid.end_ms  # [lo, hi)
    hours = list(range(lo - lo % HOUR_MS, hi, HOUR_MS))
    covered: set[int] = set()
    if grid.step_ms % MINUTE_MS == 0:
        stale = await _stale_hours(reader, sensor_id, hours[0], hours[-1], stats)
        if grid.step_ms % HOUR_MS == 0:
            for item in await _rollup_items(
                reader, sensor_id, HOUR_MS, lo - lo % _DAY_MS, hi - 1, stats, now_s
            ):
                _fold(series, item, grid, aggs, fields, stale)
                for a, b in item.covers():
                    covered.update(h for h in range(a, b, HOUR_MS) if h not in stale)
        for a, b in _runs([h for h in hours if h not in covered and h not in stale]):
            for item in await _rollup_items(reader, sensor_id, MINUTE_MS, a, b - 1, stats, now_s):
                _fold(series, item, grid, aggs, fields, stale)
                covered.add(item.period_start_ms)
    served: dict[int, Tier] = {}
    for a, b in _runs([h for h in hours if h not in covered]):
        readings, tiers = await read_packed_tiered(  # archived buckets: hot + cold
            reader, sensor_id, max(a, lo), min(b, hi) - 1, fields=fields, stats=stats, now_s=now_s
        )
        served.update(tiers)
        series.fold_readings(readings, grid, aggs)
    return served
