"""The sensor registry's first-seen time (``fs``): set once, lowered by backfills, cheap in steady state.

Against moto and dynalite, with the lean client the service uses. A counting
wrapper around the client records every UpdateItem, so the tests can assert
what steady traffic costs (one call per sensor per flush). Also its late marks:
readings whose bucket may already be archived, under the policy the archiver
records in the table (the archive side is in tests/archive/test_late.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoRetriable
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.dynamo import DynamoClient
from ingest.storage.dynamohttp import LeanDynamoClient
from ingest.storage.layout import ArchivePolicy, Reading, TableLayout, registry_key
from ingest.storage.registry import LateMark, clear_late_mark, late_marks, write_late_mark
from ingest.storage.table import create_table

AWS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
T0 = 1_795_348_800_000


class CountingClient:
    """The lean client, recording each call (and failing the next ``fail`` UpdateItems)."""

    def __init__(self, inner: LeanDynamoClient) -> None:
        self.inner = inner
        self.table = inner.table
        self.calls: list[dict[str, Any]] = []
        self.fail = 0
        self.fail_lowering = 0
        self.fail_policy = 0  # GetItem of the archive policy
        self.fail_marks = 0  # UpdateItem of late marks

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        if operation == "get_item" and self.fail_policy:
            self.fail_policy -= 1
            raise DynamoRetriable("InternalServerError: try again")
        if operation == "update_item" and self.fail_marks and is_mark(kwargs):
            self.fail_marks -= 1
            raise DynamoRetriable("ProvisionedThroughputExceededException: slow down")
        if operation == "update_item":
            self.calls.append(kwargs)
            lowering = kwargs.get("ConditionExpression") == "#fs > :fs"
            if self.fail or (lowering and self.fail_lowering):
                if lowering and self.fail_lowering:
                    self.fail_lowering -= 1
                else:
                    self.fail -= 1
                raise DynamoRetriable("ProvisionedThroughputExceededException: slow down")
        return await self.inner.call(operation, **kwargs)


def is_mark(update: dict[str, Any]) -> bool:
    return str(update["Key"]["pk"]["S"]).startswith("#late#")


@pytest_asyncio.fixture
async def client(dynamodb_endpoint: str, unique_name: str) -> AsyncIterator[CountingClient]:
    async with contextlib.AsyncExitStack() as stack:
        admin = await stack.enter_async_context(
            DynamoClient(
                table=unique_name,
                aws=AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS),
            )
        )
        await create_table(admin, TableLayout())
        stack.push_async_callback(admin.call, "delete_table", TableName=unique_name)
        lean = await stack.enter_async_context(
            LeanDynamoClient(
                table=unique_name,
                aws=AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS),
            )
        )
        yield CountingClient(lean)


def reading(ts: int, sid: str = "dev-1", v: float = 1.0) -> Reading:
    return Reading(sensor_id=sid, ts_ms=ts, metrics={"v": v})


async def item(client: CountingClient, sid: str = "dev-1") -> dict[str, Any]:
    pk, sk = registry_key(sid)
    resp = await client.inner.call(
        "GetItem",
        TableName=client.table,
        Key={"pk": {"S": pk}, "sk": {"N": str(sk)}},
        ConsistentRead=True,
    )
    got: dict[str, Any] = resp["Item"]
    return got


def num(it: dict[str, Any], name: str) -> int:
    return int(it[name]["N"])


async def test_first_seen_is_the_lowest_timestamp_and_steady_traffic_costs_one_call(
    client: CountingClient,
) -> None:
    reg = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    reg.observe([reading(T0 + 500), reading(T0 + 100), reading(T0 + 900, v=9.0)])
    assert await reg.flush() == 1
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 + 100, T0 + 900, 3)
    assert it["m"]["M"]["v"]["N"] == "9"
    assert len(client.calls) == 1  # created with fs in the same UpdateItem
    assert reg.first_seen_floor("dev-1") == T0 + 100

    for k in range(3):  # steady traffic: newer readings only
        client.calls.clear()
        reg.observe([reading(T0 + 1000 * (k + 1)), reading(T0 + 1000 * (k + 1) + 1)])
        await reg.flush()
        assert len(client.calls) == 1
        assert client.calls[0]["ReturnValues"] == "NONE"  # nothing to learn
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 + 100, T0 + 3001, 9)


async def test_backfill_lowers_first_seen_and_keeps_latest_values(client: CountingClient) -> None:
    reg = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    reg.observe([reading(T0, v=1.0)])
    await reg.flush()
    client.calls.clear()
    reg.observe([reading(T0 - 60_000, v=-1.0), reading(T0 - 30_000, v=-2.0)])  # all older
    await reg.flush()
    it = await item(client)
    assert num(it, "fs") == T0 - 60_000
    assert num(it, "ls") == T0 and it["m"]["M"]["v"]["N"] == "1"  # latest did not move back
    assert num(it, "n") == 3
    # refused main update, count + fs fallback, the conditional lowering
    assert len(client.calls) == 3
    assert client.calls[-1]["ConditionExpression"] == "#fs > :fs"
    assert reg.first_seen_floor("dev-1") == T0 - 60_000

    client.calls.clear()  # a batch reaching below fs and above ls at once
    reg.observe([reading(T0 - 120_000), reading(T0 + 5_000, v=5.0)])
    await reg.flush()
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 - 120_000, T0 + 5_000, 5)
    assert len(client.calls) == 2  # main (returning the item), then the lowering

    client.calls.clear()  # a late reading above fs: no fs work at all
    reg.observe([reading(T0 - 90_000)])
    await reg.flush()
    assert num(await item(client), "fs") == T0 - 120_000
    assert len(client.calls) == 2  # refused main update, count-only fallback
    assert client.calls[-1]["ReturnValues"] == "NONE"


async def test_a_second_worker_never_raises_first_seen(client: CountingClient) -> None:
    a = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    b = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    a.observe([reading(T0 - 10_000), reading(T0)])
    await a.flush()
    b.observe([reading(T0 + 50_000)])  # b has never seen the sensor: it learns fs, keeps it
    await b.flush()
    assert b.first_seen_floor("dev-1") == T0 - 10_000
    b.observe([reading(T0 - 20_000)])
    a.observe([reading(T0 - 15_000)])
    await b.flush()
    await a.flush()  # a's floor is stale (T0 - 10_000): it asks, and does not raise fs
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 - 20_000, T0 + 50_000, 5)


async def test_item_from_before_first_seen_gets_unknown_not_a_made_up_value(
    client: CountingClient,
) -> None:
    pk, sk = registry_key("old-1")
    await client.inner.call(
        "PutItem",
        TableName=client.table,
        Item={
            "pk": {"S": pk},
            "sk": {"N": str(sk)},
            "sid": {"S": "old-1"},
            "ls": {"N": str(T0)},
            "n": {"N": "40"},
            "m": {"M": {"v": {"N": "3"}}},
        },
    )
    reg = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    reg.observe([reading(T0 + 1_000, sid="old-1", v=7.0)])
    await reg.flush()
    it = await item(client, "old-1")
    # fs 0: "unknown" (the archive planner then looks at its whole window); the flush's
    # latest values still land.
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (0, T0 + 1_000, 41)
    assert it["m"]["M"]["v"]["N"] == "7"
    assert reg.first_seen_floor("old-1") == 0
    client.calls.clear()
    reg.observe([reading(T0 - 1_000, sid="old-1")])  # nothing can go below "unknown"
    await reg.flush()
    assert num(await item(client, "old-1"), "fs") == 0
    assert len(client.calls) == 2  # refused main update, count-only fallback


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_retriable_failure_is_kept_for_the_next_flush(client: CountingClient) -> None:
    reg = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    reg.observe([reading(T0)])
    await reg.flush()
    client.fail = 1  # the backfill's update is throttled
    reg.observe([reading(T0 - 3_600_000)])
    assert await reg.flush() == 0
    assert num(await item(client), "fs") == T0
    assert len(reg) == 1  # kept
    reg.observe([reading(T0 + 1)])
    assert await reg.flush() == 1
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 - 3_600_000, T0 + 1, 3)


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_failed_lowering_alone_is_retried(client: CountingClient) -> None:
    reg = SensorRegistry(client, Metrics())  # type: ignore[arg-type]
    reg.observe([reading(T0)])
    await reg.flush()
    client.fail_lowering = 1
    reg.observe([reading(T0 - 60_000), reading(T0 + 10)])  # main update lands, lowering fails
    await reg.flush()
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0, T0 + 10, 3)
    assert reg.first_seen_floor("dev-1") == T0
    assert len(reg) == 1  # the lowering waits for the next flush
    await reg.flush()
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 - 60_000, T0 + 10, 3)
    assert reg.first_seen_floor("dev-1") == T0 - 60_000


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_refresh_period_bounds_writes_per_sensor_and_nothing_is_lost(
    client: CountingClient,
) -> None:
    now = [1000.0]
    reg = SensorRegistry(client, Metrics(), refresh_s=300, clock=lambda: now[0])  # type: ignore[arg-type]
    reg.observe([reading(T0), reading(T0, sid="dev-2")])
    assert await reg.flush() == 2  # new to this process: written at once
    client.calls.clear()

    for k in range(1, 6):  # a minute of flushes every 10 s: nothing written, all counted
        now[0] += 10
        reg.observe([reading(T0 + 1000 * k, v=float(k))])
        assert await reg.flush() == 0
    assert client.calls == []
    assert len(reg) == 1  # dev-1's observations wait in memory; dev-2 sent nothing

    reg.observe([reading(T0 - 60_000)])  # a backfill below first seen is written at once
    assert await reg.flush() == 1
    it = await item(client)
    assert (num(it, "fs"), num(it, "ls"), num(it, "n")) == (T0 - 60_000, T0 + 5000, 7)
    assert it["m"]["M"]["v"]["N"] == "5"

    client.calls.clear()
    reg.observe([reading(T0 + 9000, v=9.0)])
    now[0] += 299
    assert await reg.flush() == 0
    now[0] += 2  # the refresh period has passed since the backfill's write
    assert await reg.flush() == 1
    assert (num(await item(client), "ls"), len(client.calls)) == (T0 + 9000, 1)

    reg.observe([reading(T0 + 10_000, v=10.0)])  # shutdown: everything, whatever its age
    assert await reg.flush(everything=True) == 1
    it = await item(client)
    assert (num(it, "ls"), num(it, "n")) == (T0 + 10_000, 9)
    assert num(await item(client, "dev-2"), "n") == 1


# -- late marks -----------------------------------------------------------------

HOUR = 3_600_000
DAY = 24 * HOUR
POLICY = ArchivePolicy(horizon_ms=DAY, bucket_ms=HOUR, settle_ms=600_000, since_ms=T0 - DAY)
LATE_BEFORE = T0 - DAY  # bucket_start(T0 + settle + one minute's lookahead - horizon)


async def record_policy(client: CountingClient, policy: ArchivePolicy = POLICY) -> None:
    await client.inner.call("PutItem", TableName=client.table, Item=policy.to_item())


def marks_of(found: list[LateMark]) -> list[tuple[str, int, int, int]]:
    return sorted((m.sensor_id, m.bucket_start_ms, m.marked_at_ms, m.readings) for m in found)


async def test_late_readings_are_marked_once_per_bucket_and_steady_traffic_marks_nothing(
    client: CountingClient,
) -> None:
    await record_policy(client)
    reg = SensorRegistry(client, Metrics(), wall_clock=lambda: T0 / 1000)  # type: ignore[arg-type]
    assert await reg.refresh_policy() == POLICY
    assert POLICY.late_before(T0, 60_000) == LATE_BEFORE
    reg.observe([reading(T0 - 5 * HOUR), reading(T0 - 1_000), reading(LATE_BEFORE, "dev-2")])
    await reg.flush()
    assert [c for c in client.calls if is_mark(c)] == []  # nothing is late
    assert await late_marks(client.inner) == []

    client.calls.clear()  # a gateway back after a day offline: three readings, two buckets
    reg.observe(
        [reading(LATE_BEFORE - 1), reading(LATE_BEFORE - 2), reading(LATE_BEFORE - HOUR - 1)]
    )
    assert reg.late_pending == 2
    await reg.flush()
    assert len([c for c in client.calls if is_mark(c)]) == 2  # one UpdateItem per bucket
    assert marks_of(await late_marks(client.inner)) == [
        ("dev-1", LATE_BEFORE - 2 * HOUR, T0, 1),
        ("dev-1", LATE_BEFORE - HOUR, T0, 2),
    ]


async def test_readings_observed_before_the_policy_is_read_are_marked_too(
    client: CountingClient,
) -> None:
    await record_policy(client)
    reg = SensorRegistry(client, Metrics(), wall_clock=lambda: T0 / 1000)  # type: ignore[arg-type]
    # Seen before the first policy read (a service start): a backfill and live traffic.
    reg.observe([reading(LATE_BEFORE - 3 * HOUR + 5), reading(T0 - 1_000)])
    client.fail_policy = 1  # and the first read fails
    await reg.flush()
    assert reg.archive_policy is None and await late_marks(client.inner) == []
    await reg.flush()  # read now: every bucket of the span below the threshold (a superset)
    assert reg.archive_policy == POLICY
    assert [b for _, b, _, _ in marks_of(await late_marks(client.inner))] == [
        LATE_BEFORE - 3 * HOUR,
        LATE_BEFORE - 2 * HOUR,
        LATE_BEFORE - HOUR,
    ]


@pytest.mark.parametrize("settled", [True, False])
async def test_readings_durable_before_the_policy_was_recorded_need_no_mark(
    client: CountingClient, settled: bool
) -> None:
    """The archiver's first export runs after it records its policy: it sees every reading
    durable before then (decoded a settle time before). A replayed history observed while
    no policy existed marks nothing once the policy appears; observed closer, it does."""
    wall = [T0 / 1000]
    reg = SensorRegistry(client, Metrics(), wall_clock=lambda: wall[0])  # type: ignore[arg-type]
    assert await reg.refresh_policy() is None  # read: none recorded yet
    reg.observe([reading(LATE_BEFORE - 3 * HOUR + 5), reading(LATE_BEFORE - HOUR)])
    gap = POLICY.settle_ms + (1_000 if settled else -1_000)
    recorded = ArchivePolicy(
        horizon_ms=DAY, bucket_ms=HOUR, settle_ms=POLICY.settle_ms, since_ms=T0 + gap
    )
    await record_policy(client, recorded)
    wall[0] = (T0 + gap) / 1000
    assert await reg.refresh_policy(force=True) == recorded
    await reg.flush()
    marked = [b for _, b, _, _ in marks_of(await late_marks(client.inner))]
    if settled:
        assert marked == []
    else:
        assert marked == [LATE_BEFORE - 3 * HOUR, LATE_BEFORE - 2 * HOUR, LATE_BEFORE - HOUR]


async def test_no_policy_recorded_nothing_is_late(client: CountingClient) -> None:
    reg = SensorRegistry(client, Metrics(), wall_clock=lambda: T0 / 1000)  # type: ignore[arg-type]
    reg.observe([reading(T0 - 20 * DAY)])
    await reg.flush()
    assert reg.archive_policy is None and reg.late_pending == 0
    assert await late_marks(client.inner) == []


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_failed_mark_is_retried_with_the_next_flush_and_a_new_policy_is_learned(
    client: CountingClient,
) -> None:
    await record_policy(client)
    mono = [0.0]
    reg = SensorRegistry(  # type: ignore[arg-type]
        client, Metrics(), wall_clock=lambda: T0 / 1000, clock=lambda: mono[0]
    )
    await reg.refresh_policy()
    reg.observe([reading(LATE_BEFORE - 1)])
    client.fail_marks = 1
    await reg.flush()
    assert reg.late_pending == 1 and await late_marks(client.inner) == []
    await reg.flush()
    assert marks_of(await late_marks(client.inner)) == [("dev-1", LATE_BEFORE - HOUR, T0, 1)]

    shorter = ArchivePolicy(horizon_ms=2 * HOUR, bucket_ms=HOUR, settle_ms=0, since_ms=T0)
    await record_policy(client, shorter)
    await reg.flush()  # the policy is read again only after policy_refresh_s
    assert reg.archive_policy == POLICY
    reg.observe([reading(T0 - 3 * HOUR)])  # late under the new policy only
    mono[0] = 10.0
    await reg.flush()  # reads it first: what was observed since the last flush is marked
    assert reg.archive_policy == shorter
    assert [b for _, b, _, _ in marks_of(await late_marks(client.inner))] == [
        LATE_BEFORE - HOUR,
        T0 - 3 * HOUR,
    ]


async def test_a_mark_is_cleared_only_if_unchanged_since_it_was_read(
    client: CountingClient,
) -> None:
    await write_late_mark(client.inner, "dev-1", T0, 100, 2)
    [seen] = await late_marks(client.inner)
    assert seen == LateMark("dev-1", T0, 100, 2)
    await write_late_mark(client.inner, "dev-1", T0, 200, 1)  # a new late reading meanwhile
    assert await clear_late_mark(client.inner, seen) is False
    [again] = await late_marks(client.inner)
    assert again == LateMark("dev-1", T0, 200, 3)
    assert await clear_late_mark(client.inner, again) is True
    assert await late_marks(client.inner) == []
