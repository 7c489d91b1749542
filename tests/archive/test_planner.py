"""The planner looks only at buckets that can hold a sensor's readings (registry ``fs``..``ls``).

Unit tests of the clip, and passes on moto with one-minute buckets, where the
full retention window is thousands of buckets per sensor: the Query calls and
markers of a pass follow the sensors' data span, backfills included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from bench.servers import MotoServer
from ingest.archive.archiver import Archiver, ArchiveSettings
from ingest.archive.planner import SensorSpan, Window, archive_window, clip_window
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.archive.manifest import query_markers
from ingest.storage.archive.reader import read_cold
from ingest.storage.layout import Reading, TableLayout, registry_key
from tests.archive.conftest import (
    BUCKET_MS,
    DAY_MS,
    HORIZON_MS,
    NOW_MS,
    ArchiveEnv,
    open_archive_env,
)

MIN_MS = 60_000
MINUTE_LAYOUT = TableLayout(bucket_ms=MIN_MS, shards=2, retention_days=2)


# -- the clip -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("span", "expected"),
    [
        (SensorSpan("s"), (1_000, 9_000)),  # nothing known: the whole window
        (SensorSpan("s", 0, None), (1_000, 9_000)),  # fs 0: unknown
        (SensorSpan("s", 3_500, 6_200), (3_000, 6_000)),  # bucket starts of fs and ls
        (SensorSpan("s", 500, 20_000), (1_000, 9_000)),  # wider than the window
        (SensorSpan("s", 4_000, None), (4_000, 9_000)),  # ls unknown: up to the window's end
        (SensorSpan("s", None, 2_999), (1_000, 2_000)),  # fs unknown: from the window's start
        (SensorSpan("s", 9_500, 12_000), (9_000, 9_000)),  # first seen in the last bucket
    ],
)
def test_clip_to_the_sensors_buckets(span: SensorSpan, expected: tuple[int, int]) -> None:
    layout = TableLayout(bucket_ms=MIN_MS, shards=1, retention_days=1)
    scale = MIN_MS // 1_000  # the cases in "thousands" are minutes
    window = Window(1_000 * scale, 9_000 * scale)
    scaled = SensorSpan(
        "s",
        None if span.first_seen_ms is None else span.first_seen_ms * scale,
        None if span.last_seen_ms is None else span.last_seen_ms * scale,
    )
    got = clip_window(layout, window, scaled)
    assert (got.first_ms, got.last_ms) == (expected[0] * scale, expected[1] * scale)


@pytest.mark.parametrize(
    "span",
    [
        SensorSpan("s", 10 * MIN_MS, 12 * MIN_MS),  # first seen after the window
        SensorSpan("s", MIN_MS // 2, 2 * MIN_MS - 1),  # last seen before it
    ],
)
def test_clip_outside_the_window_is_empty(span: SensorSpan) -> None:
    got = clip_window(MINUTE_LAYOUT, Window(2 * MIN_MS, 9 * MIN_MS), span)
    assert got.last_ms < got.first_ms


# -- passes on moto ---------------------------------------------------------------


@pytest_asyncio.fixture
async def minute_env(moto_server: MotoServer, unique_name: str) -> AsyncIterator[ArchiveEnv]:
    """Like ``archive_env``, with one-minute buckets (2 days: 2,880 buckets per sensor)."""
    async with open_archive_env(moto_server.endpoint_url, unique_name, MINUTE_LAYOUT) as env:
        yield env


class Calls:
    """Counts the DynamoDB operations an archive pass makes (by name, and Query by pk)."""

    def __init__(self, env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ops: Counter[str] = Counter()
        self.reading_queries = 0
        real = env.dynamo.call

        async def counting(operation: str, **kwargs: Any) -> dict[str, Any]:
            self.ops[operation] += 1
            if operation == "query":
                pk = kwargs["ExpressionAttributeValues"][":pk"]["S"]
                self.reading_queries += not pk.startswith("#")
            return await real(operation, **kwargs)

        monkeypatch.setattr(env.dynamo, "call", counting)

    def reset(self) -> None:
        self.ops.clear()
        self.reading_queries = 0


def every_other_minute(sid: str, first_ms: int, last_ms: int) -> list[Reading]:
    return [
        Reading(sid, ts + 1_234, {"v": float(ts // MIN_MS % 97)})
        for ts in range(first_ms, last_ms, 2 * MIN_MS)
    ]


def span_buckets(readings: list[Reading], last_archivable: int) -> int:
    first = min(r.ts_ms for r in readings) // MIN_MS * MIN_MS
    last = min(max(r.ts_ms for r in readings) // MIN_MS * MIN_MS, last_archivable)
    return (last - first) // MIN_MS + 1


async def archived_ts(env: ArchiveEnv, sid: str) -> list[int]:
    return [r.ts_ms for r in await read_cold(env.store, env.layout, sid, 0, NOW_MS)]


async def test_pass_work_follows_the_data_span_including_a_backfill(
    minute_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = minute_env
    horizon = 10 * MIN_MS
    last_archivable = NOW_MS - horizon - MIN_MS  # the last bucket start in the window
    window = archive_window(env.layout, now_ms=NOW_MS, horizon_ms=horizon)
    full_window = (window.last_ms - window.first_ms) // MIN_MS + 1
    assert full_window > 5_000  # 2 days' retention + 2 days' grace, in minutes

    a = every_other_minute("dev-a", NOW_MS - 40 * MIN_MS, NOW_MS - 25 * MIN_MS)
    b = every_other_minute("dev-b", NOW_MS - 30 * MIN_MS, NOW_MS - 2 * MIN_MS)  # runs on, hot
    await env.put(a + b)
    span_a, span_b = span_buckets(a, last_archivable), span_buckets(b, last_archivable)
    calls = Calls(env, monkeypatch)

    report = await env.archiver(horizon_ms=horizon).run_once()
    assert report.ok, report.failed
    assert report.archived + report.empty == span_a + span_b  # one marker per span bucket
    closed = [r for r in a + b if env.layout.bucket_start(r.ts_ms) <= last_archivable]
    assert report.archived == len(closed)  # one reading per bucket
    # 8 registry and 8 late-mark partitions, one marker Query per sensor, every shard of
    # each span bucket
    assert calls.ops["query"] == 8 + 8 + 2 + env.layout.shards * (span_a + span_b)
    assert calls.reading_queries == env.layout.shards * (span_a + span_b)
    assert calls.ops["put_item"] == 1 + span_a + span_b  # the archive policy, the markers
    # The policy is new: the archiver marks what it archives late itself (see test_late.py).
    assert calls.ops["update_item"] == span_a + span_b
    assert await archived_ts(env, "dev-a") == [r.ts_ms for r in a]

    calls.reset()  # a re-run: nothing but the listings and the marker Queries
    again = await env.archiver(horizon_ms=horizon).run_once()
    assert (again.archived, again.empty, again.skipped) == (0, 0, span_a + span_b)
    assert calls.ops["query"] == 8 + 8 + 2 and calls.ops["put_item"] == 0
    assert calls.ops["get_item"] == 1  # the archive policy, unchanged

    # A backfill of dev-a three hours back: only the buckets it adds are looked at.
    backfill = every_other_minute("dev-a", NOW_MS - 180 * MIN_MS, NOW_MS - 170 * MIN_MS)
    await env.put(backfill)
    calls.reset()
    third = await env.archiver(horizon_ms=horizon).run_once()
    added = (NOW_MS - 40 * MIN_MS - (NOW_MS - 180 * MIN_MS)) // MIN_MS  # new fs .. old fs
    assert third.ok and third.archived + third.empty == added
    assert third.archived == len(backfill) and third.rows == len(backfill)
    assert calls.reading_queries == env.layout.shards * added
    assert calls.ops["put_item"] == added
    assert await archived_ts(env, "dev-a") == sorted(r.ts_ms for r in a + backfill)
    assert calls.ops["query"] < full_window // 10  # vs. 2 shards x every bucket of the window


async def test_reading_below_first_seen_is_archived_once_the_registry_knows_it(
    minute_env: ArchiveEnv,
) -> None:
    env = minute_env
    horizon = 10 * MIN_MS
    live = every_other_minute("dev-a", NOW_MS - 40 * MIN_MS, NOW_MS - 30 * MIN_MS)
    await env.put(live)
    await env.archiver(horizon_ms=horizon).run_once()
    # A reading written, its registry flush not yet done (the ingest flushes every
    # registry_interval_s): this pass does not see its bucket, and does not mark it.
    early = Reading("dev-a", NOW_MS - 60 * MIN_MS + 5, {"v": 1.0})
    await env.dynamo.batch_write([env.layout.to_item(early)])
    blind = await env.archiver(horizon_ms=horizon).run_once()
    assert blind.archived == blind.empty == 0
    early_bucket = env.layout.bucket_start(early.ts_ms)
    assert await query_markers(env.dynamo, "dev-a", early_bucket, early_bucket) == {}
    # The registry flush lands: the next pass archives it (and marks the empty minutes).
    registry = SensorRegistry(env.dynamo, Metrics())
    registry.observe([early])
    await registry.flush()
    seen = await env.archiver(horizon_ms=horizon).run_once()
    assert seen.archived == 1 and seen.rows == 1
    assert seen.archived + seen.empty == 20  # from the early minute up to the old fs
    assert early.ts_ms in await archived_ts(env, "dev-a")


async def test_registry_item_without_first_seen_keeps_the_whole_window(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env  # 3-hour buckets, 2 days' retention: a small window
    readings = [Reading("old-1", NOW_MS - 30 * 3_600_000 + i, {"v": i}) for i in range(3)]
    await env.dynamo.batch_write([env.layout.to_item(r) for r in readings])
    pk, sk = registry_key("old-1")  # as written before the registry recorded fs
    await env.dynamo.call(
        "put_item",
        TableName=env.dynamo.table,
        Item={
            "pk": {"S": pk},
            "sk": {"N": str(sk)},
            "sid": {"S": "old-1"},
            "ls": {"N": str(readings[-1].ts_ms)},
            "n": {"N": "3"},
        },
    )
    report = await env.archiver(grace_ms=0).run_once()
    window_first = NOW_MS - 2 * DAY_MS
    last = (NOW_MS - HORIZON_MS) // BUCKET_MS * BUCKET_MS - BUCKET_MS
    up_to_ls = (min(last, readings[-1].ts_ms // BUCKET_MS * BUCKET_MS) - window_first) // BUCKET_MS
    assert report.ok and report.archived == 1 and report.rows == 3
    assert report.empty == up_to_ls  # every bucket from the window's start, as before fs


async def test_same_archiver_reads_only_the_markers_of_new_buckets(
    minute_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = minute_env
    horizon = 10 * MIN_MS
    readings = every_other_minute("dev-a", NOW_MS - 40 * MIN_MS, NOW_MS - 1 * MIN_MS)
    readings += every_other_minute("dev-b", NOW_MS - 20 * MIN_MS, NOW_MS - 1 * MIN_MS)
    await env.put(readings)
    now = NOW_MS
    archiver = Archiver(  # the same archiver, pass after pass, on a clock the test moves
        env.dynamo,
        env.store,
        env.layout,
        ArchiveSettings(horizon_ms=horizon),
        clock=lambda: now / 1000,
    )
    calls = Calls(env, monkeypatch)
    first = await archiver.run_once()
    assert first.ok and first.archived > 0

    calls.reset()  # nothing closed since: the registry and late-mark listings only
    second = await archiver.run_once()
    assert (second.archived, second.empty) == (0, 0)
    assert second.skipped == first.archived + first.empty
    assert calls.ops["query"] == 8 + 8

    calls.reset()  # one more minute closed: one marker Query per sensor, for it alone
    now += 2 * MIN_MS
    ranges: list[tuple[int, int]] = []
    real = env.dynamo.call

    async def spy(operation: str, **kwargs: Any) -> dict[str, Any]:
        values = kwargs.get("ExpressionAttributeValues", {})
        if operation == "query" and values.get(":pk", {}).get("S", "").startswith("#archive#"):
            ranges.append((int(values[":a"]["N"]), int(values[":b"]["N"])))
        return await real(operation, **kwargs)

    monkeypatch.setattr(env.dynamo, "call", spy)
    third = await archiver.run_once()
    new_first = NOW_MS - horizon  # the two buckets that closed past the horizon
    assert sorted(ranges) == [(new_first, new_first + MIN_MS)] * 2
    assert third.archived + third.empty == 2 * 2
    got = await read_cold(env.store, env.layout, "dev-a", 0, NOW_MS)
    closed = [r for r in readings if r.sensor_id == "dev-a"]
    assert [r.ts_ms for r in got] == [
        r.ts_ms for r in closed if r.ts_ms < now - horizon - (now - horizon) % MIN_MS
    ]
