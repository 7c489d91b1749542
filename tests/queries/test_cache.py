"""The closed-bucket cache over real HTTP, on moto and dynalite: 0 read units for what cannot
change, the open bucket and late readings always read, the memory bound, TTL, cursors.

The table has hour buckets. The cache's clock is fixed at ``NOW`` (the real time when the
module loads) so which buckets are closed stays put during a test; the readings' times
are real (TTL is real time too). With a late-readings allowance of ``ALLOWANCE`` (2 h),
the buckets of hours H-3 and older are closed, H-2 and H-1 are still inside the
allowance and H (the current hour) is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from ingest.storage.layout import Reading, TableLayout
from queries.api.app import create_app
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings
from queries.read.cache import BucketCache, CacheKey, Closure, compact
from queries.read.reader import TableReader
from tests.queries.harness import HOUR_MS, Api, TestTable, dynamo_client, ms_now

NOW = ms_now()
H = NOW - NOW % HOUR_MS  # the open bucket
ALLOWANCE = 2 * HOUR_MS
SENSOR = "cache-a"
CLOSED = [H - k * HOUR_MS for k in (8, 7, 6, 5, 4, 3)]  # closed at NOW with ALLOWANCE
START, CLOSED_END = CLOSED[0], CLOSED[-1] + HOUR_MS - 1


def readings_of(bucket: int, n: int = 9, sensor: str = SENSOR) -> list[Reading]:
    step = HOUR_MS // (n + 1)
    return [
        Reading(
            sensor,
            bucket + (i + 1) * step + 17,
            {"temp": round(20 + i * 0.37 + bucket % 7, 3), "hum": (i * 11) % 100},
            {"site": "x"} if i % 3 == 0 else {},
        )
        for i in range(n)
    ]


def filled_hours() -> list[Reading]:
    out: list[Reading] = []
    for k in range(8, 0, -1):
        out += readings_of(H - k * HOUR_MS)
    # The open bucket: readings up to a minute ago (all before NOW).
    out += [Reading(SENSOR, NOW - 60_000 - i * 1000, {"temp": 1.5 + i, "hum": i}) for i in range(3)]
    return out


def same_series(a: Any, b: Any) -> bool:
    """Equal, numbers within 1e-12 (sums of floats in another order)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_series(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_series(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float | int):
        return math.isclose(a, b, rel_tol=1e-12)
    return bool(a == b)


def units(headers: Any) -> float:
    return float(headers["X-Read-Units"])


def calls(headers: Any) -> int:
    return int(headers["X-DynamoDB-Calls"])


@pytest_asyncio.fixture
async def serve_cached() -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """Factory: the API for a test table with a cache whose clock is fixed at ``NOW``."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(
            table: TestTable, *, max_bytes: int = 1 << 24, allowance_ms: int = ALLOWANCE
        ) -> Api:
            client = await stack.enter_async_context(dynamo_client(table.name, table.endpoint))
            reader = await TableReader.load(client)
            reader.cache = BucketCache(max_bytes, Closure(allowance_ms), clock_ms=lambda: NOW)
            app = create_app(ServeSettings(table=table.name), reader=reader)
            server = await stack.enter_async_context(ApiServer(app))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Api(server.url, session, reader)

        yield serve


async def _filled(make_table: Callable[..., Awaitable[TestTable]]) -> TestTable:
    table = await make_table(TableLayout(bucket_ms=HOUR_MS, shards=4, retention_days=30))
    await table.put(filled_hours())
    return table


async def _walk(api: Api, **params: Any) -> tuple[list[dict[str, Any]], list[float]]:
    """Every page of a readings query (following cursors): the readings, each page's units."""
    seen: list[dict[str, Any]] = []
    spent: list[float] = []
    cursor = None
    while True:
        status, headers, body = await api.get(
            f"/v1/sensors/{SENSOR}/readings", **params, cursor=cursor
        )
        assert status == 200, body
        seen += body["readings"]
        spent.append(units(headers))
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, spent


async def test_closed_buckets_are_read_once_then_served_with_no_read_units(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_cached: Callable[..., Awaitable[Api]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await _filled(make_table)
    api = await serve_cached(table)
    plain = await serve_api(table)  # no cache: the reference answer
    queries: list[tuple[str, dict[str, Any]]] = [
        (f"/v1/sensors/{SENSOR}/readings", {"start": START, "end": CLOSED_END}),
        (f"/v1/sensors/{SENSOR}/readings", {"start": START, "end": CLOSED_END, "order": "desc"}),
        (f"/v1/sensors/{SENSOR}/readings", {"start": START, "end": CLOSED_END, "fields": "hum"}),
        (
            f"/v1/sensors/{SENSOR}/series",
            {"start": START, "end": CLOSED_END, "step": "10m", "agg": "avg,min,max,count,last"},
        ),
        # The windows start 10 minutes into the first bucket: it is read whole, and kept.
        (
            f"/v1/sensors/{SENSOR}/series",
            {"start": START + 900_000, "end": CLOSED_END, "step": "10m", "agg": "sum"},
        ),
        ("/v1/series", {"sensors": SENSOR, "start": START, "end": CLOSED_END, "step": "1h"}),
    ]
    fresh = [queries[0], queries[2]]  # the asc and desc pages share their entries
    for path, params in queries:
        status, first_headers, first = await api.get(path, **params)
        assert status == 200, first
        if (path, params) in fresh:  # the others share entries with an earlier query
            assert units(first_headers) > 0 and calls(first_headers) > 0, path
        status, headers, again = await api.get(path, **params)
        assert status == 200
        assert (units(headers), calls(headers)) == (0, 0), (path, params)
        assert headers["X-Read-Units"] == "0"
        assert again == first, (path, params)
        _, _, reference = await plain.get(path, **params)
        if "readings" in path:
            assert again == reference, (path, params)
        else:  # sums in another order (the uncached shards' pages come in any order)
            assert same_series(again, reference), (path, params)
    _, _, body = await api.get(f"/v1/sensors/{SENSOR}/readings", start=START, end=CLOSED_END)
    assert body["count"] == 6 * 9
    # A sub-range of cached buckets is cut out of them, still with no read.
    _, headers, part = await api.get(
        f"/v1/sensors/{SENSOR}/readings", start=CLOSED[2] + 5, end=CLOSED[3] + 1_000_000
    )
    _, _, ref = await plain.get(
        f"/v1/sensors/{SENSOR}/readings", start=CLOSED[2] + 5, end=CLOSED[3] + 1_000_000
    )
    assert units(headers) == 0 and part == ref and part["count"] > 0
    # Another projection is another entry: read once.
    _, headers, _ = await api.get(
        f"/v1/sensors/{SENSOR}/readings", start=START, end=CLOSED_END, fields="temp"
    )
    assert units(headers) > 0


async def test_the_open_bucket_is_read_every_time_and_new_readings_show(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_cached: Callable[..., Awaitable[Api]],
) -> None:
    table = await _filled(make_table)
    api = await serve_cached(table)
    path = f"/v1/sensors/{SENSOR}/readings"
    params = {"start": START, "end": H + HOUR_MS - 1}
    series = {"start": START, "end": H + HOUR_MS - 1, "step": "1h", "agg": "count,last"}
    _, h1, first = await api.get(path, **params)
    _, s1, series1 = await api.get(f"/v1/sensors/{SENSOR}/series", **series)
    # Three buckets are not closed (H-2, H-1 inside the allowance, H open): 4 shards each.
    for _ in range(3):
        _, headers, body = await api.get(path, **params)
        assert calls(headers) == 3 * 4 and 0 < units(headers) < units(h1)
        assert body == first
    new = Reading(SENSOR, NOW - 5_000, {"temp": 77.25, "hum": 5})
    await table.put([new])
    _, headers, body = await api.get(path, **params)
    assert calls(headers) == 3 * 4
    assert body["count"] == first["count"] + 1
    assert body["readings"][-1] == {"ts": new.ts_ms, "temp": 77.25, "hum": 5}
    _, headers, series2 = await api.get(f"/v1/sensors/{SENSOR}/series", **series)
    # The series shares the readings' entries (no projection): only the 3 buckets are read.
    assert calls(headers) == 3 * 4 == calls(s1)
    counts1, counts2 = series1["metrics"]["temp"]["count"], series2["metrics"]["temp"]["count"]
    at = (new.ts_ms - START) // HOUR_MS  # its window (the open bucket's, but for the hour's
    # first seconds)
    assert counts2[at] == counts1[at] + 1 and sum(counts2) == sum(counts1) + 1
    assert series2["metrics"]["temp"]["last"][at] == 77.25


async def test_a_late_reading_into_a_bucket_not_yet_closed_is_seen(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_cached: Callable[..., Awaitable[Api]],
) -> None:
    table = await _filled(make_table)
    api = await serve_cached(table)
    path = f"/v1/sensors/{SENSOR}/readings"
    late_bucket = H - 2 * HOUR_MS  # ended over an hour ago, still inside the allowance
    params = {"start": START, "end": H - 1}
    _, _, first = await api.get(path, **params)
    _, headers, again = await api.get(path, **params)
    assert calls(headers) == 2 * 4 and again == first  # H-2 and H-1 read again
    late = Reading(SENSOR, late_bucket + 1234, {"temp": -3.5, "hum": 42})
    await table.put([late])
    _, headers, body = await api.get(path, **params)
    assert body["count"] == first["count"] + 1
    assert {"ts": late.ts_ms, "temp": -3.5, "hum": 42} in body["readings"]
    _, _, series = await api.get(
        f"/v1/sensors/{SENSOR}/series",
        start=late_bucket,
        end=late_bucket + HOUR_MS - 1,
        step="1h",
        agg="count",
    )
    assert series["metrics"]["temp"]["count"] == [10]
    # The same reading into a closed bucket is not possible (the ingest refuses it);
    # written behind the ingest's back, it is not seen until the entry goes: the cache
    # trusts the allowance, which is why the allowance comes from the ingest's config.
    await table.put([Reading(SENSOR, CLOSED[0] + 1, {"temp": 0.0})])
    _, headers, body = await api.get(path, start=START, end=CLOSED_END)
    assert units(headers) == 0 and body["count"] == 6 * 9


async def test_cursor_pages_are_the_same_with_the_cache_and_the_second_walk_reads_less(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_cached: Callable[..., Awaitable[Api]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await _filled(make_table)
    api = await serve_cached(table)
    plain = await serve_api(table)
    for order, limit in (("asc", 7), ("desc", 5), ("asc", 20), ("desc", 20)):
        params = {"start": START, "end": H + HOUR_MS - 1, "order": order, "limit": limit}
        reference, _ = await _walk(plain, **params)
        assert len(reference) == 8 * 9 + 3
        first, spent1 = await _walk(api, **params)
        second, spent2 = await _walk(api, **params)
        assert first == reference and second == reference, (order, limit)
        # A page keeps a closed bucket only when it read it from end to end (it never
        # reads more than it needs): the second walk reads no more than the first.
        assert sum(spent2) <= sum(spent1), (order, limit)
        if limit == 20:  # pages as large as two buckets: some are kept
            assert sum(spent2) < sum(spent1), (order, limit)
    # Once the closed buckets are cached (one large page), small pages that start and
    # end inside them are cut from the cache: cursors resume at a timestamp, as before.
    await api.get(f"/v1/sensors/{SENSOR}/readings", start=START, end=CLOSED_END)
    for order in ("asc", "desc"):
        params = {"start": CLOSED[1] + 400_000, "end": CLOSED[4] + 10, "limit": 4, "order": order}
        reference, _ = await _walk(plain, **params)
        walked, spent = await _walk(api, **params)
        assert walked == reference and len(walked) > 12 and set(spent) == {0.0}


async def test_the_memory_bound_holds_entries_are_evicted_and_metrics_say_so(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table(TableLayout(bucket_ms=HOUR_MS, shards=4, retention_days=30))
    old = [NOW - NOW % HOUR_MS - k * HOUR_MS for k in range(30, 10, -1)]  # 20 closed buckets
    for bucket in old:
        await table.put(readings_of(bucket, n=20))
    probe = BucketCache(1 << 30, Closure(0))
    key = CacheKey("t", (HOUR_MS, 4, "reading"), None, SENSOR, old[0], None)
    one = probe.put(key, readings_of(old[0], n=20), "hot", 2**40).nbytes
    bound = 5 * one + one // 2  # room for 5 buckets
    # Through the settings, as `serve --cache-mb` sets them (real clock: these buckets
    # ended ten hours ago or more, past an allowance of one hour).
    api = await serve_api(table, cache_max_bytes=bound, cache_late_allowance_ms=HOUR_MS)
    params = {"start": old[0], "end": old[-1] + HOUR_MS - 1, "step": "1h", "agg": "count"}
    _, _, first = await api.get(f"/v1/sensors/{SENSOR}/series", **params)
    _, h2, again = await api.get(f"/v1/sensors/{SENSOR}/series", **params)
    assert again == first and first["metrics"]["temp"]["count"] == [20] * 20
    assert units(h2) > 0  # 20 buckets do not fit in 5: read again (the most recent 5 hit)
    metrics = await _metrics(api)
    assert metrics["iot_query_cache_max_bytes"] == bound
    assert 0 < metrics["iot_query_cache_bytes"] <= bound
    assert metrics["iot_query_cache_entries"] == 5
    assert metrics["iot_query_cache_evictions_total"] >= 15
    assert metrics["iot_query_cache_misses_total"] >= 20
    # The buckets kept (the last five read) are served with no read.
    cache = api.reader.cache
    assert cache is not None and cache.bytes <= bound
    kept = sorted(k.bucket for k in cache.keys())  # noqa: SIM118 (a method, not a dict)
    assert len(kept) == 5
    for bucket in kept:
        _, h3, one_bucket = await api.get(
            f"/v1/sensors/{SENSOR}/series",
            start=bucket,
            end=bucket + HOUR_MS - 1,
            step="1h",
            agg="count",
        )
        assert units(h3) == 0 and one_bucket["metrics"]["temp"]["count"] == [20]
    assert (await _metrics(api))["iot_query_cache_hits_total"] >= 5


async def _metrics(api: Api) -> dict[str, float]:
    async with api.session.get(api.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    found = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(iot_query_cache_\w+) ([0-9.e+]+)", line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


async def test_no_cache_by_default_and_metrics_without_one(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await _filled(make_table)
    api = await serve_api(table)
    assert api.reader.cache is None
    for _ in range(2):
        _, headers, _ = await api.get(f"/v1/sensors/{SENSOR}/readings", start=START, end=CLOSED_END)
        assert units(headers) > 0
    assert await _metrics(api) == {}


async def test_an_entry_goes_when_a_reading_in_it_expires(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_cached: Callable[..., Awaitable[Api]],
) -> None:
    table = await _filled(make_table)
    api = await serve_cached(table)
    bucket = CLOSED[0]
    soon = (ms_now() // 1000) + 2
    gone = Reading(SENSOR, bucket + 5, {"temp": 5.0})
    await table.put_items([{**table.layout.to_item(gone), "ttl": {"N": str(soon)}}])
    path = f"/v1/sensors/{SENSOR}/readings"
    _, _, body = await api.get(path, start=bucket, end=bucket + HOUR_MS - 1)
    assert body["count"] == 10
    _, headers, _ = await api.get(path, start=bucket, end=bucket + HOUR_MS - 1)
    assert units(headers) == 0
    await asyncio.sleep(soon - ms_now() / 1000 + 0.05)
    _, headers, body = await api.get(path, start=bucket, end=bucket + HOUR_MS - 1)
    assert body["count"] == 9 and units(headers) > 0
    assert api.reader.cache is not None and api.reader.cache.expired == 1


def test_lru_eviction_order_and_the_bound() -> None:
    cache = BucketCache(10_000, Closure(0))

    def key(b: int) -> CacheKey:
        return CacheKey("t", (HOUR_MS, 4, "reading"), None, SENSOR, b, None)

    size = cache.put(key(0), readings_of(0, n=5), "hot", 2**40).nbytes
    cache = BucketCache(3 * size, Closure(0))
    for b in range(3):
        cache.put(key(b), readings_of(b * HOUR_MS, n=5), "hot", 2**40)
    assert cache.get(key(0), 0) is not None  # 0 is now the most recently used
    cache.put(key(3), readings_of(3 * HOUR_MS, n=5), "hot", 2**40)
    assert cache.get(key(1), 0) is None  # the least recently used went
    assert cache.get(key(0), 0) is not None and cache.get(key(2), 0) is not None
    assert (cache.evictions, len(cache), cache.bytes) == (1, 3, 3 * size)
    huge = cache.put(key(9), readings_of(0, n=500), "hot", 2**40)
    assert cache.get(key(9), 0) is None and cache.too_large == 1 and len(huge.readings) == 500
    assert cache.bytes <= cache.max_bytes
    # The key holds everything that decides the content: a projection is another entry.
    other = CacheKey("t", (HOUR_MS, 4, "reading"), None, SENSOR, 0, ("temp",))
    assert cache.get(other, 0) is None


def test_closure_is_the_bucket_end_plus_the_allowance() -> None:
    layout = TableLayout(bucket_ms=HOUR_MS)
    closure = Closure(ALLOWANCE)
    assert closure.is_closed(layout, 0, HOUR_MS + ALLOWANCE)
    assert not closure.is_closed(layout, 0, HOUR_MS + ALLOWANCE - 1)
    with pytest.raises(ValueError, match="late_allowance_ms"):
        Closure(-1)


def test_the_size_estimate_is_not_below_what_the_readings_hold() -> None:
    layout = TableLayout(bucket_ms=HOUR_MS)
    items = [layout.to_item(r) for r in readings_of(0, n=2000)]
    want = [(r.ts_ms, r.metrics) for r in (TableLayout.from_item(it, SENSOR) for it in items)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        parsed = [TableLayout.from_item(it, SENSOR) for it in items]  # as a read makes them
        kept, estimate = compact(parsed)
        del parsed  # what stays is what the cache holds
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 2000 and all(r.tags == {} for r in kept)
    assert [(r.ts_ms, r.metrics) for r in kept] == want
    assert held <= estimate <= 2 * held, (held, estimate)
