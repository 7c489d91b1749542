"""Tiered reads on a ``packed`` table (moto DynamoDB + moto S3): archived buckets from S3.

The table is filled as the write stage fills it (sealed windows), its closed buckets are
archived with the archiver, then sealed windows are taken away as TTL takes them (moto
never expires items): deleted, or rewritten with a past ``ttl``. The API serving the
table with ``s3_bucket`` must answer ``/readings``, ``/series`` and ``/latest`` exactly
like the API serving a packed table that never lost anything, and say which tier
served each bucket.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from bench.servers import MotoServer
from ingest.storage.layout import Item, Reading
from ingest.storage.reads import key_query, query_pages
from queries.read.cache import BucketCache, Closure
from queries.read.closed import read_closed
from queries.read.reader import TableReader
from queries.read.tiers import markers
from tests.archive.conftest import BUCKET_MS, PACKED_LAYOUT, ArchiveEnv, open_archive_env
from tests.queries.test_tiers import (
    A0,
    A1,
    A2,
    A3,
    A4,
    AGGS,
    END,
    NOW_MS,
    START,
    Tiered,
    _expected,
    _same_metrics,
    _tiers,
    in_bucket,
    make_readings,
    serve_tiered,
)


async def _parts(env: ArchiveEnv, sid: str, bucket: int) -> list[Item]:
    """Every sealed part of a sensor's bucket (its one partition)."""
    kwargs = key_query(env.dynamo.table, env.layout.window_pk(sid, bucket))
    return [it async for page in query_pages(env.dynamo.call, kwargs) for it in page["Items"]]


async def _drop(env: ArchiveEnv, parts: list[Item]) -> None:
    """TTL's delete of these parts."""
    for it in parts:
        await env.dynamo.call(
            "delete_item", TableName=env.dynamo.table, Key={"pk": it["pk"], "sk": it["sk"]}
        )


@pytest_asyncio.fixture
async def packed_tiered(moto_server: MotoServer, unique_name: str) -> AsyncIterator[Tiered]:
    endpoint = moto_server.endpoint_url
    async with contextlib.AsyncExitStack() as stack:
        env = await stack.enter_async_context(
            open_archive_env(endpoint, unique_name, PACKED_LAYOUT)
        )
        readings = make_readings()
        # tier-c reported only in A0..A2: its newest reading is archived.
        readings += [
            Reading("tier-c", b + 1_000 * i + 7, {"temp": float(i)})
            for b in (A0, A1, A2)
            for i in range(3)
        ]
        await env.put(readings)
        report = await env.archiver(now_ms=NOW_MS).run_once()
        assert report.ok and report.rows == 5 * 12 * 2 + 9
        # TTL on tier-a: A0 and A4 gone, A1 every other window gone and a reading changed
        # after archival (sealed again, later), A2 untouched, A3 expired, not yet deleted.
        await _drop(env, await _parts(env, "tier-a", A0) + await _parts(env, "tier-a", A4))
        a1 = sorted(await _parts(env, "tier-a", A1), key=lambda it: int(it["sk"]["N"]))
        await _drop(env, a1[::2])
        kept = {int(it["t0"]["N"]) for it in a1[1::2]}
        old = next(r for r in readings if r.sensor_id == "tier-a" and r.ts_ms in kept)
        changed = Reading("tier-a", old.ts_ms, {"temp": 99.5, "hum": 1})
        readings[readings.index(old)] = changed
        await env.put([changed])
        past = {"N": str(int(time.time()) - 3600)}
        await env.dynamo.batch_write(
            [{**it, "ttl": past} for it in await _parts(env, "tier-a", A3)]
        )
        # tier-b and tier-c: every archived part gone.
        for sid in ("tier-b", "tier-c"):
            for b in (A0, A1, A2, A3, A4):
                await _drop(env, await _parts(env, sid, b))

        ref = await stack.enter_async_context(
            open_archive_env(endpoint, f"{unique_name}-ref", PACKED_LAYOUT)
        )
        await ref.put(readings)  # the reference: sealed once, nothing ever lost
        yield await serve_tiered(stack, endpoint, env, ref, readings)


async def test_readings_over_archived_packed_buckets_equal_a_table_that_never_expired(
    packed_tiered: Tiered,
) -> None:
    t = packed_tiered
    path = "/v1/sensors/tier-a/readings"
    headers, body = await t.archived.get(path, start=START, end=END, limit=10_000)
    _, ref = await t.reference.get(path, start=START, end=END, limit=10_000)
    expected = _expected(t.readings, "tier-a", START, END)
    assert ref["readings"] == expected
    assert body["readings"] == expected  # nothing lost, nothing twice, the hot value won
    changed = next(r for r in t.readings if r.metrics.get("temp") == 99.5)
    assert {"ts": changed.ts_ms, "temp": 99.5, "hum": 1} in body["readings"]
    assert body["count"] == len(expected) and body["next_cursor"] is None
    assert body["tiers"] == _tiers(START, END)
    assert int(headers["X-Cold-Objects"]) == 4  # A0, A1, A3, A4; A2 is whole in DynamoDB

    _, desc = await t.archived.get(
        path, start=START, end=END, limit=10_000, order="desc", fields="hum"
    )
    _, ref_desc = await t.reference.get(
        path, start=START, end=END, limit=10_000, order="desc", fields="hum"
    )
    assert desc["readings"] == ref_desc["readings"] and len(desc["readings"]) == len(expected)

    _, b = await t.archived.get("/v1/sensors/tier-b/readings", start=START, end=END)
    assert b["readings"] == _expected(t.readings, "tier-b", START, END)
    b_tiers = {x["bucket_start"]: x["tier"] for x in b["tiers"]}
    assert [b_tiers[x] for x in (A0, A1, A2, A3, A4)] == ["cold"] * 5


@pytest.mark.parametrize(("order", "limit"), [("asc", 7), ("desc", 13)])
async def test_pages_over_archived_packed_buckets_give_every_reading_once(
    packed_tiered: Tiered, order: str, limit: int
) -> None:
    expected = _expected(packed_tiered.readings, "tier-a", START, END)
    if order == "desc":
        expected.reverse()
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"start": START, "end": END, "order": order, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        _, body = await packed_tiered.archived.get("/v1/sensors/tier-a/readings", **params)
        assert len(body["readings"]) <= limit
        seen += body["readings"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


@pytest.mark.parametrize(("step", "start"), [("1h", START), ("3h", A1 + 3_600_000)])
async def test_series_over_archived_packed_buckets_equal_a_table_that_never_expired(
    packed_tiered: Tiered, step: str, start: int
) -> None:
    t = packed_tiered
    params = {"start": start, "end": END, "step": step, "agg": AGGS}
    headers, body = await t.archived.get("/v1/sensors/tier-a/series", **params)
    _, ref = await t.reference.get("/v1/sensors/tier-a/series", **params)
    assert body["ts"] == ref["ts"]
    _same_metrics(body["metrics"], ref["metrics"])
    counts = body["metrics"]["temp"]["count"]
    assert sum(counts) == len(_expected(t.readings, "tier-a", body["ts"][0], END))
    assert body["tiers"] == _tiers(body["ts"][0], END)
    assert int(headers["X-Cold-Objects"]) == (4 if start == START else 3)

    multi = {**params, "sensors": "tier-a,tier-b"}
    _, body = await t.archived.get("/v1/series", **multi)
    _, ref = await t.reference.get("/v1/series", **multi)
    for got, want in zip(body["sensors"], ref["sensors"], strict=True):
        assert got["sensor_id"] == want["sensor_id"]
        _same_metrics(got["metrics"], want["metrics"])
    b_tiers = {x["bucket_start"]: x["tier"] for x in body["sensors"][1]["tiers"]}
    assert {b_tiers[b] for b in (A1, A2, A3, A4)} == {"cold"}


async def test_latest_of_a_sensor_whose_readings_are_all_archived_comes_from_the_archive(
    packed_tiered: Tiered,
) -> None:
    newest = max(
        (r for r in packed_tiered.readings if r.sensor_id == "tier-c"), key=lambda r: r.ts_ms
    )
    assert in_bucket(newest, "tier-c", A2)
    _, body = await packed_tiered.archived.get("/v1/sensors/tier-c/latest")
    assert body["reading"] == {"ts": newest.ts_ms, **newest.metrics}
    _, a = await packed_tiered.archived.get("/v1/sensors/tier-a/latest")
    newest_a = max(
        (r for r in packed_tiered.readings if r.sensor_id == "tier-a"), key=lambda r: r.ts_ms
    )
    assert a["reading"] == {"ts": newest_a.ts_ms, **newest_a.metrics}  # hot, not archived


async def test_closed_bucket_reads_of_a_packed_table_merge_the_archive(
    packed_tiered: Tiered,
) -> None:
    """``queries.read.closed``: a packed table's closed bucket read whole, with its marker
    hot and cold merged, without one hot only; the entry kept holds exactly its readings."""
    env = packed_tiered.env
    reader = TableReader(
        env.dynamo, env.layout, cold=env.store, cache=BucketCache(10_000_000, Closure(0))
    )
    stats = reader.new_stats()
    now_s = int(time.time())
    marks = await markers(reader, "tier-a", A0, A4 + BUCKET_MS - 1, stats)
    assert sorted(marks) == [A0, A1, A2, A3, A4]
    for bucket, tier in ((A1, "hot+cold"), (A3, "cold"), (A2, "hot")):
        entry = await read_closed(
            reader, "tier-a", bucket, marks[bucket], fields=None, now_s=now_s, stats=stats
        )
        want = _expected(packed_tiered.readings, "tier-a", bucket, bucket + BUCKET_MS - 1)
        assert [{"ts": r.ts_ms, **r.metrics} for r in entry.readings] == want
        assert entry.tier == tier
    hot = await read_closed(reader, "tier-a", A0, None, fields=None, now_s=now_s, stats=stats)
    assert hot.readings == () and hot.tier == "hot"  # no marker: DynamoDB only (parts gone)
    assert stats.cold_objects == 2  # A1 and A3; A2 is whole in DynamoDB
