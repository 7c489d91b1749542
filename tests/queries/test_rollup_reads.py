"""Series of a ``packed`` table served from its rollups, on moto and dynalite, over HTTP.

The table is filled as the write stage fills it (sealed windows and their seal log),
rolled up by the rollup pass, then read: the same values as the readings give (count,
min, max, first and last exactly, sums exactly for windows the rollups serve whole),
for fewer read units, and still when the readings of a rolled-up hour are gone (proof
that the rollups served them); a step that is not whole minutes reads the readings.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from fractions import Fraction

from ingest.storage.compaction import seal_log_items
from ingest.storage.layout import Reading, TableLayout, rollup_stale_pk
from ingest.storage.reads import key_query, query_pages
from ingest.storage.rollpass import clear_stale, rollup_pass
from ingest.storage.windows import WindowScheme, seal
from queries.read.params import AGGREGATIONS
from tests.ingest.harness import seal_as_worker
from tests.queries.harness import HOUR_MS, Api, TestTable, assert_close, ms_now, reference

LAYOUT = TableLayout(kind="packed", bucket_ms=HOUR_MS, window_ms=900_000, groups=4)
SCHEME = WindowScheme(LAYOUT)


async def _fill(table: TestTable, start: int, end: int) -> list[Reading]:
    """``pump-1`` every 10 s in [start, end), sealed window by window with its seal log."""
    rng = random.Random(7)
    readings = [
        Reading("pump-1", ts, {"t": round(rng.uniform(-5, 30), 2), "n": i % 13})
        for i, ts in enumerate(range(start, end, 10_000))
    ]
    by_window: dict[int, list[Reading]] = {}
    for r in readings:
        by_window.setdefault(SCHEME.window_start(r.ts_ms), []).append(r)
    items = []
    for w, rs in by_window.items():
        items += [SCHEME.part_item(p) for p in seal(SCHEME, rs, w + 961_000)]
        items += seal_log_items(SCHEME, w, "w1", w + 961_000, ["pump-1"])
    await table.put_items(items)
    await table.register(readings)
    return readings


async def _filled(
    make_table: Callable[..., Awaitable[TestTable]], serve_api: Callable[..., Awaitable[Api]]
) -> tuple[TestTable, Api, list[Reading], tuple[int, int, int]]:
    """A table of ``pump-1`` over 28 hours ending two hours ago, served; and (now, start,
    end) of its readings."""
    table = await make_table(LAYOUT)
    now = ms_now()
    hour = now - now % HOUR_MS
    start, end = hour - 30 * HOUR_MS, hour - 2 * HOUR_MS
    readings = await _fill(table, start, end)
    return table, await serve_api(table), readings, (now, start, end)


async def _series(api: Api, start: int, end: int, step: str) -> tuple[float, dict[str, object]]:
    status, headers, body = await api.get(
        "/v1/sensors/pump-1/series", start=start, end=end, step=step, agg=",".join(AGGREGATIONS)
    )
    assert status == 200, body
    return float(headers["X-Read-Units"]), body


def _exact_parts(body: dict[str, object]) -> dict[str, object]:
    """The series without its sums and averages (the readings' float sums are rounded at
    every addition; the rollups' are exact)."""
    metrics = body["metrics"]
    assert isinstance(metrics, dict)
    return {
        **body,
        "metrics": {
            n: {a: v for a, v in aggs.items() if a not in ("sum", "avg")}
            for n, aggs in metrics.items()
        },
    }


def _exact_sums(body: dict[str, object], readings: list[Reading], step: int, lo: int) -> None:
    """Every window the rollups serve whole has the exact sum of its readings' values as
    the JSON wrote them, correctly rounded."""
    metrics, ts = body["metrics"], body["ts"]
    assert isinstance(metrics, dict) and isinstance(ts, list)
    checked = 0
    for i, t0 in enumerate(ts):
        values = [r.metrics["t"] for r in readings if t0 <= r.ts_ms < t0 + step]
        if values and t0 >= lo:
            exact = sum((Fraction(repr(v)) for v in values), Fraction(0))
            assert metrics["t"]["sum"][i] == float(exact), t0
            checked += 1
    assert checked > 20


def _check(
    body: dict[str, object], readings: list[Reading], start: int, end: int, step: int
) -> None:
    for name in ("t", "n"):
        points = [(r.ts_ms, float(r.metrics[name])) for r in readings]
        starts, ref = reference(points, start, end, step)
        assert body["ts"] == starts
        metrics = body["metrics"]
        assert isinstance(metrics, dict)
        for agg in ("count", "min", "max", "first", "last"):
            assert metrics[name][agg] == ref[agg], f"{name}.{agg}"
        for agg in ("sum", "avg"):
            assert_close(metrics[name][agg], ref[agg], f"{name}.{agg}")


async def test_series_from_rollups_equal_the_readings_for_fewer_read_units_and_survive_their_loss(
    make_table: Callable[..., Awaitable[TestTable]], serve_api: Callable[..., Awaitable[Api]]
) -> None:
    table, api, readings, (now, start, _) = await _filled(make_table, serve_api)
    hour = now - now % HOUR_MS
    lo = start + 7 * 60_000  # not on an hour: the first window is partly outside
    raw_units, raw = await _series(api, lo, now, "5m")
    _check(raw, readings, lo, now, 300_000)

    report = await rollup_pass(
        table.client, SCHEME, worker="r", now_ms=now, lookback_ms=31 * HOUR_MS, settle_ms=300_000
    )
    assert report.sensor_hours == 28 and report.readings == len(readings)
    units, rolled = await _series(api, lo, now, "5m")
    assert _exact_parts(rolled) == _exact_parts(raw)
    _check(rolled, readings, lo, now, 300_000)
    _exact_sums(rolled, readings, 300_000, lo)
    assert units < raw_units / 3, (units, raw_units)

    # Hourly: a closed day from its hour item, the rest from minute items; sums exact.
    _, hourly = await _series(api, lo, now, "1h")
    _check(hourly, readings, lo, now, HOUR_MS)
    _exact_sums(hourly, readings, HOUR_MS, lo)

    # The readings of a rolled-up hour deleted: the series still has them (rollups served).
    gone = hour - 10 * HOUR_MS
    parts = await table.client.call(
        "query",
        TableName=table.client.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": LAYOUT.window_pk("pump-1", gone)}},
    )
    assert parts["Items"]
    for item in parts["Items"]:
        await table.client.call(
            "delete_item", TableName=table.client.table, Key={"pk": item["pk"], "sk": item["sk"]}
        )
    _, after = await _series(api, lo, now, "5m")
    assert after == rolled
    # A step of seconds reads the readings: that hour is empty there now.
    _, seconds = await _series(api, gone - 60_000, gone + 120_000, "30s")
    metrics = seconds["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["t"]["count"] == [3, 3] + [0] * 5


async def _stale_hours(table: TestTable) -> list[int]:
    kwargs = key_query(table.client.table, rollup_stale_pk("pump-1"), consistent=True)
    return [
        int(it["sk"]["N"])
        async for page in query_pages(table.client.call, kwargs)
        for it in page["Items"]
    ]


async def test_a_late_seal_into_rolled_up_hours_is_in_the_series_at_once_and_rolled_up_next(
    make_table: Callable[..., Awaitable[TestTable]], serve_api: Callable[..., Awaitable[Api]]
) -> None:
    """A late set sealed into hours the rollups already cover marks them stale: until the
    next rollup pass, series read those hours' readings (exact at every moment, not only
    after the pass); the pass rolls them up again and clears the marks."""
    table, api, readings, (now, start, end) = await _filled(make_table, serve_api)
    raw_units, _ = await _series(api, start, end, "5m")  # no rollups yet: readings
    await rollup_pass(
        table.client, SCHEME, worker="r", now_ms=now, lookback_ms=31 * HOUR_MS, settle_ms=300_000
    )
    late = [  # off the 10 s grid: new timestamps, in a closed day's hour and a later one
        Reading("pump-1", start + HOUR_MS + 5_001, {"t": 99.25, "n": 40}),
        Reading("pump-1", end - 3 * HOUR_MS + 7_003, {"t": -42.5, "n": 41}),
    ]
    await seal_as_worker(table.client, LAYOUT, late, received_ms=now, now_ms=now)
    stale = sorted(r.ts_ms - r.ts_ms % HOUR_MS for r in late)
    assert await _stale_hours(table) == stale
    # A pass that read a mark before a later seal moved its ``t`` leaves it standing.
    assert await clear_stale(table.client, [("pump-1", stale[0], str(now - 1))]) == 0
    assert await _stale_hours(table) == stale
    everything = sorted(readings + late, key=lambda r: r.ts_ms)
    for step, step_ms in (("5m", 300_000), ("1h", HOUR_MS)):
        _, body = await _series(api, start, end, step)
        _check(body, everything, start, end, step_ms)

    report = await rollup_pass(
        table.client, SCHEME, worker="r", now_ms=now, lookback_ms=31 * HOUR_MS, settle_ms=300_000
    )
    assert report.sensor_hours == 2  # only the two hours sealed again
    assert await _stale_hours(table) == []
    for step, step_ms in (("5m", 300_000), ("1h", HOUR_MS)):
        units, body = await _series(api, start, end, step)
        _check(body, everything, start, end, step_ms)
        _exact_sums(body, everything, step_ms, start)  # served by the rollups again
        assert units < raw_units / 3, (units, raw_units)
