"""Downsampling with numpy: fixed windows aligned to the epoch, aggregated incrementally.

Windows are ``[k * step, (k + 1) * step)`` in epoch milliseconds (UTC), for integer
``k``: a ``1m`` series has points at whole minutes, ``1h`` at whole hours, ``1d`` at
UTC midnight; a step that does not divide a day (``7d``) is still a multiple from
1970-01-01T00:00Z. A series covers every window that overlaps ``[start, end]``: its
first point is ``start`` rounded down to a multiple of ``step``, and each point
summarises its whole window (data just outside ``[start, end]`` but inside the
first or last window is included), so a point never depends on where the request
happened to begin.

Readings arrive a DynamoDB page at a time, from several shards in any order:
:class:`SeriesAccumulator` folds each page into per-window counters (count, sum,
min, max, first and last by timestamp), so memory is bounded by the number of
windows, never by the number of readings.

Empty windows: ``count`` is 0, every other aggregation is NaN (``null`` in JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from queries.read.params import Agg

__all__ = [
    "STEP_LADDER_MS",
    "FloatArray",
    "IntArray",
    "SeriesAccumulator",
    "WindowGrid",
    "choose_step",
]

_S = 1_000
_M = 60 * _S
_H = 60 * _M
_D = 24 * _H
STEP_LADDER_MS: tuple[int, ...] = (
    *(1, 2, 5, 10, 20, 50, 100, 200, 500),
    *(_S, 2 * _S, 5 * _S, 10 * _S, 15 * _S, 30 * _S),
    *(_M, 2 * _M, 5 * _M, 10 * _M, 15 * _M, 30 * _M),
    *(_H, 2 * _H, 3 * _H, 6 * _H, 12 * _H),
    *(_D, 2 * _D, 7 * _D, 14 * _D, 28 * _D),
)
"""Steps ``max_points`` chooses from: round values, so points fall on round times."""

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class WindowGrid:
    """Consecutive windows of ``step_ms`` starting at ``origin_ms`` (a multiple of the step).

    Attributes:
        origin_ms: Start of the first window.
        step_ms: Window width.
        count: Number of windows.
    """

    origin_ms: int
    step_ms: int
    count: int

    @classmethod
    def covering(cls, start_ms: int, end_ms: int, step_ms: int) -> WindowGrid:
        """The windows overlapping [start_ms, end_ms] (both inclusive)."""
        origin = start_ms - start_ms % step_ms
        last = end_ms - end_ms % step_ms
        return cls(origin, step_ms, (last - origin) // step_ms + 1)

    @property
    def end_ms(self) -> int:
        """End of the last window (exclusive)."""
        return self.origin_ms + self.count * self.step_ms

    def starts(self) -> IntArray:
        """Start of every window, epoch ms."""
        return self.origin_ms + self.step_ms * np.arange(self.count, dtype=np.int64)


def choose_step(start_ms: int, end_ms: int, max_points: int) -> int:
    """The smallest round step giving at most ``max_points`` windows over [start, end].

    Beyond the ladder, doubles the largest step (a span of one window needs at most two).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    for step in STEP_LADDER_MS:
        if WindowGrid.covering(start_ms, end_ms, step).count <= max_points:
            return step
    step = STEP_LADDER_MS[-1]
    while WindowGrid.covering(start_ms, end_ms, step).count > max_points:
        step *= 2
    return step


class SeriesAccumulator:
    """Per-window aggregates of one metric, folded in page by page.

    Args:
        grid: The windows.
        aggs: Aggregations wanted (decides which counters are kept).
    """

    def __init__(self, grid: WindowGrid, aggs: tuple[Agg, ...]) -> None:
        n = grid.count
        self.grid = grid
        self.aggs = aggs
        self.count: IntArray = np.zeros(n, dtype=np.int64)
        self.sum: FloatArray = np.zeros(n, dtype=np.float64)
        self._minmax = "min" in aggs or "max" in aggs
        self._ends = "first" in aggs or "last" in aggs
        if self._minmax:
            self.min: FloatArray = np.full(n, np.inf)
            self.max: FloatArray = np.full(n, -np.inf)
        if self._ends:
            self.first_ts: IntArray = np.full(n, _I64_MAX, dtype=np.int64)
            self.first: FloatArray = np.full(n, np.nan)
            self.last_ts: IntArray = np.full(n, _I64_MIN, dtype=np.int64)
            self.last: FloatArray = np.full(n, np.nan)

    def add(self, ts_ms: IntArray, values: FloatArray) -> None:
        """Fold readings (timestamps and values, any order) into the windows.

        Readings outside the grid are ignored; values must be finite.
        """
        grid = self.grid
        inside = (ts_ms >= grid.origin_ms) & (ts_ms < grid.end_ms)
        if not inside.all():
            ts_ms, values = ts_ms[inside], values[inside]
        if ts_ms.size == 0:
            return
        order = np.argsort(ts_ms, kind="stable")
        ts_ms, values = ts_ms[order], values[order]
        idx = (ts_ms - grid.origin_ms) // grid.step_ms
        # Work on the slice of windows this page touches, not the whole grid.
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        rel = idx - lo
        self.count[lo:hi] += np.bincount(rel, minlength=hi - lo)
        self.sum[lo:hi] += np.bincount(rel, weights=values, minlength=hi - lo)
        if self._minmax:
            np.minimum.at(self.min, idx, values)
            np.maximum.at(self.max, idx, values)
        if self._ends:
            self._fold_ends(idx, ts_ms, values, ts_ms, values)

    def add_bins(
        self,
        start: IntArray,
        count: IntArray,
        sums: FloatArray,
        mins: FloatArray,
        maxs: FloatArray,
        firsts: FloatArray,
        first_ts: IntArray,
        lasts: FloatArray,
        last_ts: IntArray,
    ) -> None:
        """Fold rollup bins (ascending by start; each within one window: the grid's step is a
        multiple of theirs) into the windows. A bin's first and last value count as at
        ``first_ts`` and ``last_ts`` (the start and the end of the span it covers: a bin
        never overlaps the readings or other bins folded into its window, so this orders
        them as their readings' timestamps would)."""
        grid = self.grid
        inside = (start >= grid.origin_ms) & (start < grid.end_ms)
        if not inside.all():
            start, count, sums = start[inside], count[inside], sums[inside]
            mins, maxs, firsts, lasts = mins[inside], maxs[inside], firsts[inside], lasts[inside]
            first_ts, last_ts = first_ts[inside], last_ts[inside]
        if start.size == 0:
            return
        idx = (start - grid.origin_ms) // grid.step_ms
        np.add.at(self.count, idx, count)
        np.add.at(self.sum, idx, sums)
        if self._minmax:
            np.minimum.at(self.min, idx, mins)
            np.maximum.at(self.max, idx, maxs)
        if self._ends:
            self._fold_ends(idx, first_ts, firsts, last_ts, lasts)

    def _fold_ends(
        self,
        idx: IntArray,
        first_ts: IntArray,
        firsts: FloatArray,
        last_ts: IntArray,
        lasts: FloatArray,
    ) -> None:
        """Keep each window's earliest first and latest last (``idx`` sorted: each window's
        run starts at its first position and ends before the next run's)."""
        windows, first_pos = np.unique(idx, return_index=True)
        last_pos = np.append(first_pos[1:], idx.size) - 1
        cand = first_ts[first_pos]
        better = cand < self.first_ts[windows]
        self.first_ts[windows[better]] = cand[better]
        self.first[windows[better]] = firsts[first_pos[better]]
        cand = last_ts[last_pos]
        better = cand > self.last_ts[windows]
        self.last_ts[windows[better]] = cand[better]
        self.last[windows[better]] = lasts[last_pos[better]]

    def result(self, agg: Agg) -> FloatArray | IntArray:
        """One aggregation per window: NaN for empty windows (``count``: 0)."""
        if agg == "count":
            return self.count.copy()
        empty = self.count == 0
        if agg == "sum":
            out = self.sum.copy()
        elif agg == "avg":
            out = self.sum / np.maximum(self.count, 1)
        elif agg == "min":
            out = self.min.copy()
        elif agg == "max":
            out = self.max.copy()
        elif agg == "first":
            out = self.first.copy()
        else:
            out = self.last.copy()
        out[empty] = np.nan
        return out
