"""Downsampling: numpy accumulators against a plain-Python reference, and the series endpoints."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.storage.layout import Reading
from queries.read.params import AGGREGATIONS
from queries.read.series import STEP_LADDER_MS, SeriesAccumulator, WindowGrid, choose_step
from tests.queries.harness import HOUR_MS, Api, TestTable, assert_close, ms_now, reference


@st.composite
def series_cases(draw: st.DrawFn) -> tuple[list[tuple[int, float]], int, int, int, list[int]]:
    step = draw(st.sampled_from([1, 7, 1_000, 60_000, 3_600_000]) | st.integers(1, 500_000))
    start = draw(st.integers(0, 10**13))
    span = draw(st.integers(0, step * 40))
    end = start + span
    # Timestamps are unique per sensor (one key per millisecond), some outside the range.
    stamps = draw(
        st.sets(st.integers(max(0, start - 2 * step), end + 2 * step), max_size=200).map(sorted)
    )
    values = draw(
        st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            min_size=len(stamps),
            max_size=len(stamps),
        )
    )
    points = list(zip(stamps, values, strict=True))
    # Pages arrive split and shuffled, as from several shards.
    cuts = sorted(draw(st.lists(st.integers(0, len(points)), max_size=6)))
    return points, start, end, step, cuts


@settings(max_examples=300, deadline=None)
@given(series_cases(), st.randoms(use_true_random=False))
def test_accumulator_matches_a_plain_reference(
    case: tuple[list[tuple[int, float]], int, int, int, list[int]], rnd: random.Random
) -> None:
    points, start, end, step, cuts = case
    grid = WindowGrid.covering(start, end, step)
    acc = SeriesAccumulator(grid, AGGREGATIONS)
    chunks = [points[a:b] for a, b in zip([0, *cuts], [*cuts, len(points)], strict=True)]
    rnd.shuffle(chunks)
    for chunk in chunks:
        rnd.shuffle(chunk)
        acc.add(
            np.array([t for t, _ in chunk], dtype=np.int64),
            np.array([v for _, v in chunk], dtype=np.float64),
        )
    starts, want = reference(points, start, end, step)
    assert grid.starts().tolist() == starts
    assert all(s % step == 0 for s in starts)
    for agg in AGGREGATIONS:
        got = acc.result(agg).tolist()
        if agg == "count":
            assert got == want["count"]
        else:
            assert_close(got, want[agg], agg)


@given(st.integers(0, 10**13), st.integers(0, 40 * 86_400_000), st.integers(10, 10_000))
def test_choose_step_picks_the_smallest_round_step_that_fits(
    start: int, span: int, max_points: int
) -> None:
    end = start + span
    step = choose_step(start, end, max_points)
    assert WindowGrid.covering(start, end, step).count <= max_points
    smaller = [s for s in STEP_LADDER_MS if s < step]
    if step in STEP_LADDER_MS and smaller:
        assert WindowGrid.covering(start, end, smaller[-1]).count > max_points


def _sensor_data(sensor: str, start: int, seed: int) -> list[Reading]:
    rng = random.Random(seed)
    stamps = sorted(rng.sample(range(start, start + 2 * HOUR_MS), 700))
    return [
        Reading(sensor, ts, {"t": round(rng.gauss(20, 5), 4), "h": rng.randint(0, 100)})
        for ts in stamps
    ]


async def test_series_endpoints_match_the_reference(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    base = ms_now() - 3 * HOUR_MS
    data = {s: _sensor_data(s, base, seed) for seed, s in enumerate(("ser-a", "ser-b"))}
    for readings in data.values():
        await table.put(readings)
    api = await serve_api(table)
    start, end = base + 123_456, base + 2 * HOUR_MS - 98_765
    aggs = ",".join(AGGREGATIONS)

    status, headers, body = await api.get(
        "/v1/sensors/ser-a/series", start=start, end=end, step="5m", agg=aggs
    )
    assert status == 200, body
    assert float(headers["X-Read-Units"]) > 0
    assert body["step_ms"] == 300_000
    assert body["agg"] == list(AGGREGATIONS)
    assert sorted(body["metrics"]) == ["h", "t"]
    for metric in ("t", "h"):
        points = [(r.ts_ms, float(r.metrics[metric])) for r in data["ser-a"]]
        starts, want = reference(points, start, end, 300_000)
        assert body["ts"] == starts
        for agg in AGGREGATIONS:
            assert_close(body["metrics"][metric][agg], want[agg], f"{metric}.{agg}")

    # max_points picks a round step; several sensors share one time axis.
    status, _, body = await api.get(
        "/v1/series", sensors="ser-a,ser-b", start=start, end=end, max_points=50, fields="t"
    )
    assert status == 200, body
    assert body["step_ms"] == 300_000  # 2 min would give 60 windows, 5 min gives 24
    assert len(body["ts"]) <= 50
    assert [s["sensor_id"] for s in body["sensors"]] == ["ser-a", "ser-b"]
    for entry in body["sensors"]:
        assert list(entry["metrics"]) == ["t"]
        points = [(r.ts_ms, float(r.metrics["t"])) for r in data[entry["sensor_id"]]]
        _, want = reference(points, start, end, 300_000)
        assert_close(entry["metrics"]["t"]["avg"], want["avg"], entry["sensor_id"])

    # Empty windows are explicit: null (count 0).
    status, _, body = await api.get(
        "/v1/sensors/ser-a/series",
        start=base - HOUR_MS,
        end=base + HOUR_MS,
        step="30m",
        agg="avg,count",
    )
    assert body["metrics"]["t"]["avg"][:2] == [None, None]
    assert body["metrics"]["t"]["count"][:2] == [0, 0]
    assert sum(body["metrics"]["t"]["count"]) == sum(
        1 for r in data["ser-a"] if r.ts_ms < body["ts"][-1] + 30 * 60_000
    )
