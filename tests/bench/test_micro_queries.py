"""Micro benchmarks of the read path: shard merge and downsampling.

``read_range`` merges the shards of a bucket with ``heapq.merge`` on the sort
key; the series endpoint folds DynamoDB pages into per-window aggregates
(:class:`queries.read.sampler.SensorSeries`, :class:`queries.read.series.SeriesAccumulator`).
Run with ``--benchmark-enable`` to measure (see test_micro_ingest.py).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingest.storage.layout import Reading, TableLayout
from queries.read.sampler import SensorSeries
from queries.read.series import SeriesAccumulator, WindowGrid

START_MS = 1_795_000_000_000
LAYOUT = TableLayout()
NOW_S = START_MS // 1000  # items expire 30 days after their timestamp: all live


def _shards(n: int) -> list[list[dict[str, Any]]]:
    """``n`` readings one second apart, split over the layout's shards, each shard sorted."""
    shards: list[list[dict[str, Any]]] = [[] for _ in range(LAYOUT.shards)]
    for i in range(n):
        ts = START_MS + i * 1000
        item = LAYOUT.to_item(Reading("env-00001", ts, {"temperature": 20 + (i % 50) / 4}, {}))
        shards[LAYOUT.shard_of(ts)].append(item)
    return shards


SHARDS = _shards(4000)


@pytest.mark.benchmark(group="query")
def test_merge_4_shards_4000_items(benchmark: BenchmarkFixture) -> None:
    def run() -> list[dict[str, Any]]:
        return list(heapq.merge(*SHARDS, key=lambda it: int(it["sk"]["N"])))

    merged = benchmark(run)
    ts = [int(it["sk"]["N"]) for it in merged]
    assert ts == sorted(ts)
    assert len(ts) == 4000


@pytest.mark.benchmark(group="query")
def test_downsample_fold_4000_items_to_minutes(benchmark: BenchmarkFixture) -> None:
    grid = WindowGrid.covering(START_MS, START_MS + 4000 * 1000, 60_000)
    page = [it for shard in SHARDS for it in shard]

    def run() -> SensorSeries:
        series = SensorSeries()
        series.fold(page, grid, ("avg", "min", "max", "count"), NOW_S)
        return series

    series = benchmark(run)
    acc = series.metrics["temperature"]
    assert int(acc.result("count").sum()) == 4000
    assert acc.result("min").min() == 20.0


@pytest.mark.benchmark(group="query")
def test_downsample_accumulate_100k_values(benchmark: BenchmarkFixture) -> None:
    rng = np.random.default_rng(1)
    ts = START_MS + rng.integers(0, 86_400_000, size=100_000, dtype=np.int64)
    values = rng.normal(20, 2, size=100_000)
    grid = WindowGrid.covering(START_MS, START_MS + 86_400_000, 300_000)

    def run() -> SeriesAccumulator:
        acc = SeriesAccumulator(grid, ("avg", "min", "max", "first", "last"))
        acc.add(ts, values)
        return acc

    acc = benchmark(run)
    assert acc.count.sum() == 100_000
    assert np.nanmax(acc.result("max")) == values.max()
