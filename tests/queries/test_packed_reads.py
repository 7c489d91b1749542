"""The API on a ``packed`` table: pages, series and latest from sealed windows and staging.

The table is filled the way the write stage fills it (sealed sets of parts, a window
sealed twice, the last minutes only in staging items) on moto and dynalite; the API is
served over real HTTP. Every reading must come back exactly once, in order, with the
later write of a timestamp winning.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from ingest.storage.layout import Reading, TableLayout, sensor_group
from ingest.storage.windows import WindowScheme, encode_stage, seal
from queries.read.pages import read_page
from queries.read.params import AGGREGATIONS
from queries.read.reader import ReadStats, TableReader
from tests.queries.harness import HOUR_MS, Api, TestTable, assert_close, ms_now, reference

LAYOUT = TableLayout(kind="packed", bucket_ms=HOUR_MS, window_ms=300_000, groups=4)
SCHEME = WindowScheme(LAYOUT)


async def _fill(table: TestTable, now: int) -> dict[int, Reading]:
    """3 hours of ``fan-1`` every 10 s, sealed; a window sealed twice (a later set wins a
    timestamp); the last 2 minutes only staged, beside a sensor of the same group."""
    rng = random.Random(5)
    start = now - 3 * HOUR_MS
    start -= start % HOUR_MS
    sealed_until = SCHEME.window_start(now - 120_000)
    readings = [
        Reading("fan-1", ts, {"t": round(rng.uniform(-5, 30), 2), "n": i})
        for i, ts in enumerate(range(start, now - 1_000, 10_000))
    ]
    by_window: dict[int, list[Reading]] = {}
    staged: list[Reading] = []
    for r in readings:
        if r.ts_ms < sealed_until:
            by_window.setdefault(SCHEME.window_start(r.ts_ms), []).append(r)
        else:
            staged.append(r)
    items = []
    for rs in by_window.values():
        items += [SCHEME.part_item(p) for p in seal(SCHEME, rs, 1_000)]
    # One window sealed again later (a redelivery after its seal, a second worker):
    # the same readings and one corrected value, in a second set.
    twice = sorted(by_window)[5]
    fixed = Reading("fan-1", by_window[twice][3].ts_ms, {"t": 99.5, "n": -1})
    items += [SCHEME.part_item(p) for p in seal(SCHEME, [*by_window[twice], fixed], 2_000)]
    neighbour = next(
        s
        for s in (f"fan-{i}" for i in range(2, 99))
        if sensor_group(s, 4) == sensor_group("fan-1", 4)
    )
    other = [Reading(neighbour, r.ts_ms, {"t": 0.0}) for r in staged]
    blob = encode_stage(staged[::2] + other + staged[1::2])
    sk = WindowScheme.stage_sk(now - 5_000, "worker-1")
    items.append(SCHEME.stage_item(sensor_group("fan-1", 4), sk, now - 5_000, blob, len(staged)))
    await table.put_items(items)
    await table.register(readings)
    want = {r.ts_ms: r for r in readings}
    want[fixed.ts_ms] = fixed
    return want


async def test_pages_serve_every_reading_once_in_both_orders_across_windows_and_staging(
    make_table: Callable[..., Awaitable[TestTable]], serve_api: Callable[..., Awaitable[Api]]
) -> None:
    table = await make_table(LAYOUT)
    now = ms_now()
    want = await _fill(table, now)
    start, end = min(want) + 25_000, now
    expected = [t for t in sorted(want) if start <= t <= end]

    reader = await TableReader.load(table.client)
    stats = ReadStats()
    page = await read_page(reader, "fan-1", start, end, limit=100_000, stats=stats)
    assert [(r.ts_ms, r.metrics) for r in page.items] == [(t, want[t].metrics) for t in expected]

    api = await serve_api(table)
    for order, limit in (("asc", 97), ("desc", 250), ("asc", 5000)):
        seen: list[int] = []
        cursor = None
        while True:
            status, headers, body = await api.get(
                "/v1/sensors/fan-1/readings",
                start=start,
                end=end,
                order=order,
                limit=limit,
                cursor=cursor,
            )
            assert status == 200, body
            assert float(headers["X-Read-Units"]) > 0
            seen += [r["ts"] for r in body["readings"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert len(body["readings"]) == limit
        assert seen == (expected if order == "asc" else expected[::-1]), (order, limit)

    status, _, body = await api.get("/v1/sensors/fan-1/latest")
    assert status == 200, body
    newest = max(want)
    assert body["reading"] == {"ts": newest, **want[newest].metrics}  # from staging only


async def test_series_on_a_packed_table_match_the_reference(
    make_table: Callable[..., Awaitable[TestTable]], serve_api: Callable[..., Awaitable[Api]]
) -> None:
    table = await make_table(LAYOUT)
    now = ms_now()
    want = await _fill(table, now)
    api = await serve_api(table)
    start, end = min(want) + 123_456, now
    status, headers, body = await api.get(
        "/v1/sensors/fan-1/series", start=start, end=end, step="5m", agg=",".join(AGGREGATIONS)
    )
    assert status == 200, body
    assert float(headers["X-Read-Units"]) > 0
    points = [(t, float(r.metrics["t"])) for t, r in sorted(want.items())]
    starts, ref = reference(points, start, end, 300_000)
    assert body["ts"] == starts
    for agg in AGGREGATIONS:
        assert_close(body["metrics"]["t"][agg], ref[agg], f"t.{agg}")
