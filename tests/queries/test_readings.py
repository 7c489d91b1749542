"""Raw readings: shard fan-out and merge, exactly-once paging (empty pages too), TTL, projection.

Each test runs against moto and dynalite (the ``dynamodb_endpoint`` parameter).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable

from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import read_range
from queries.read.pages import read_page
from queries.read.reader import ReadStats, TableReader
from tests.queries.harness import HOUR_MS, Api, RecordingClient, TestTable, expired, ms_now


def _spread(sensor: str, start_ms: int, span_ms: int, n: int, seed: int) -> list[Reading]:
    rng = random.Random(seed)
    stamps = sorted(rng.sample(range(start_ms, start_ms + span_ms), n))
    return [
        Reading(sensor, ts, {"temperature": round(rng.uniform(-20, 40), 3), "n": i})
        for i, ts in enumerate(stamps)
    ]


async def test_readings_from_every_shard_and_bucket_come_back_complete_and_ordered(
    make_table: Callable[..., Awaitable[TestTable]],
) -> None:
    table = await make_table()  # hourly buckets, 4 shards
    start = ms_now() - 5 * HOUR_MS
    start -= start % HOUR_MS
    readings = _spread("fan-1", start + HOUR_MS // 2, 3 * HOUR_MS, 400, seed=1)
    pks = {table.layout.partition_key("fan-1", r.ts_ms) for r in readings}
    assert len(pks) == 4 * 4  # 4 buckets (3h from mid-bucket) x 4 shards: a real fan-out
    await table.put(readings)
    await table.put(_spread("other", start, 4 * HOUR_MS, 50, seed=2))  # must not leak in

    reader = await TableReader.load(table.client)
    end = start + 5 * HOUR_MS
    stats = ReadStats()
    page = await read_page(reader, "fan-1", start, end, limit=10_000, stats=stats)
    assert [r.ts_ms for r in page.items] == [r.ts_ms for r in readings]
    assert page.next_ts is None
    assert stats.calls >= 16  # every shard of every bucket was queried

    page = await read_page(reader, "fan-1", start, end, limit=10_000, descending=True, stats=stats)
    assert [r.ts_ms for r in page.items] == [r.ts_ms for r in reversed(readings)]

    # The whole-range reader used by checks agrees, readings included.
    assert await read_range(table.client, table.layout, "fan-1", start, end) == readings


async def test_pages_return_every_reading_exactly_once_across_empty_dynamodb_pages(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    now_s = time.time()
    start = ms_now() - 4 * HOUR_MS
    start -= start % HOUR_MS
    # 600 readings 14 s apart over ~2.3 buckets; runs of 60 consecutive readings expired
    # (about 15 per shard: whole DynamoDB pages filtered away).
    readings = [Reading("page-1", start + 14_000 * i, {"v": i}) for i in range(600)]
    items = []
    live: list[int] = []
    for r in readings:
        item = table.layout.to_item(r)
        if (r.metrics["v"] // 60) % 2 == 0:
            items.append(expired(item, now_s))
        else:
            items.append(item)
            live.append(r.ts_ms)
    await table.put_items(items)
    api = await serve_api(table, client_cls=RecordingClient)
    end = start + 3 * HOUR_MS

    for order, limit in (("asc", 11), ("desc", 37), ("asc", 1000)):
        seen: list[int] = []
        cursor = None
        pages = 0
        while True:
            status, headers, body = await api.get(
                "/v1/sensors/page-1/readings",
                start=start,
                end=end,
                order=order,
                limit=limit,
                cursor=cursor,
            )
            assert status == 200, body
            assert float(headers["X-Read-Units"]) >= 0
            assert len(body["readings"]) <= limit
            assert body["count"] == len(body["readings"])
            seen += [r["ts"] for r in body["readings"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert len(body["readings"]) == limit  # only the last page is short
        expected = live if order == "asc" else live[::-1]
        assert seen == expected, f"order={order} limit={limit}"
        assert pages == -(-len(live) // limit)

    # DynamoDB did return pages emptied by the TTL filter that still continued.
    client = api.reader.client
    assert isinstance(client, RecordingClient)
    queries = [resp for op, resp in client.responses if op == "query"]
    assert any(r["Count"] == 0 and r.get("LastEvaluatedKey") for r in queries)


async def test_expired_readings_are_never_returned(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    now_s = time.time()
    start = ms_now() - HOUR_MS
    readings = [Reading("ttl-1", start + 10_000 * i, {"v": float(i)}) for i in range(300)]
    items = [
        expired(table.layout.to_item(r), now_s)
        if i % 3 == 0 or i >= 290
        else table.layout.to_item(r)
        for i, r in enumerate(readings)
    ]
    await table.put_items(items)
    await table.register(readings)  # the registry's "last seen" is an expired reading
    api = await serve_api(table)
    live = [r for i, r in enumerate(readings) if i % 3 != 0 and i < 290]
    end = readings[-1].ts_ms

    status, _, body = await api.get("/v1/sensors/ttl-1/readings", start=start, end=end)
    assert status == 200
    assert [r["ts"] for r in body["readings"]] == [r.ts_ms for r in live]

    status, _, body = await api.get(
        "/v1/sensors/ttl-1/series", start=start, end=end, step="1h", agg="count,sum"
    )
    assert status == 200
    assert sum(body["metrics"]["v"]["count"]) == len(live)
    assert sum(v for v in body["metrics"]["v"]["sum"] if v is not None) == sum(
        r.metrics["v"] for r in live
    )

    status, _, body = await api.get("/v1/sensors/ttl-1/latest")
    assert status == 200
    assert body["reading"] == {"ts": live[-1].ts_ms, "v": live[-1].metrics["v"]}

    assert await read_range(table.client, table.layout, "ttl-1", start, end) == live


async def test_fields_project_metrics_and_the_layout_record_is_used(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    # A layout unlike the defaults: the server must read it from the table's layout record.
    table = await make_table(TableLayout(bucket_ms=15 * 60_000, shards=3, retention_days=7))
    start = ms_now() - HOUR_MS
    readings = [
        Reading("proj-1", start + 20_000 * i, {"a": i, "b": 2.5 * i, "c": -i}, {"site": "x"})
        for i in range(120)
    ]
    await table.put(readings)
    api = await serve_api(table)
    assert (api.reader.layout.bucket_ms, api.reader.layout.shards) == (15 * 60_000, 3)

    status, _, body = await api.get(
        "/v1/sensors/proj-1/readings", start=start, end=start + HOUR_MS, fields="b,a", limit=500
    )
    assert status == 200
    assert body["readings"] == [
        {"ts": r.ts_ms, "a": r.metrics["a"], "b": r.metrics["b"]} for r in readings
    ]

    status, _, body = await api.get("/v1/sensors/proj-1/readings", start=start, end=start + HOUR_MS)
    assert body["readings"][5] == {"ts": readings[5].ts_ms, **readings[5].metrics}
