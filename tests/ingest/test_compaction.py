"""Compaction of a packed table, on moto and dynalite: found by the seal log, idempotent,
crash-safe, and end to end after the service sealed one window twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest

from ingest.aws.settings import AwsSettings
from ingest.config import Config
from ingest.pipeline.service import IngestService, layout_from_config
from ingest.storage.compaction import (
    CompactionReport,
    compact_pass,
    needing_compaction,
    parse_seal_log,
    seal_log_items,
    window_parts,
)
from ingest.storage.dynamo import DynamoClient, put_all
from ingest.storage.layout import Reading, TableLayout, rollup_pk
from ingest.storage.rollpass import rollup_pass
from ingest.storage.rollups import MINUTE_MS, parse_rollup_item
from ingest.storage.table import create_table
from ingest.storage.windows import WindowScheme, merge_parts, needs_compaction, seal
from tests.ingest.harness import AWS, counter, publish, running, wait_until

LAYOUT = TableLayout(kind="packed", bucket_ms=3_600_000, window_ms=60_000, groups=4)
SCHEME = WindowScheme(LAYOUT)
HOUR = 3_600_000


def _r(sensor: str, ts: int, v: float) -> Reading:
    return Reading(sensor, ts, {"v": v})


def test_a_sensor_needs_compaction_when_sealed_in_two_rounds_since_its_last_compaction() -> None:
    entries = [(1, "s", ["a", "b"]), (3, "s", ["a"]), (2, "c", ["b"]), (5, "s", ["c"])]
    assert needing_compaction(entries) == ["a"]
    assert needing_compaction([*entries, (4, "c", ["a"])]) == []
    assert needing_compaction([*entries, (4, "c", ["a"]), (9, "s", ["a"])]) == ["a"]
    [item] = seal_log_items(SCHEME, 0, "w", 7, ["x", "y"])
    assert parse_seal_log(item) == (int(item["sk"]["N"]), "s", ["x", "y"])


async def test_two_sets_become_one_the_later_write_wins_and_a_second_pass_does_nothing(
    dynamodb_endpoint: str, unique_name: str
) -> None:
    aws = AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS)
    now = int(time.time() * 1000)
    w = SCHEME.window_start(now - HOUR)
    first = [_r("a", w + i * 1000, i) for i in range(10)]
    second = [_r("a", w + i * 1000, i) for i in range(5, 15)] + [_r("a", w + 7000, 99.0)]
    single = [_r("b", w + i * 1000, -i) for i in range(5)]
    sets = [seal(SCHEME, first, 1_000), seal(SCHEME, second, 2_000), seal(SCHEME, single, 1_000)]
    async with DynamoClient(table=unique_name, aws=aws) as client:
        await create_table(client, LAYOUT)
        await put_all(client, [SCHEME.part_item(p) for ps in sets for p in ps])
        await put_all(
            client,
            seal_log_items(SCHEME, w, "w1", now - HOUR + 70_000, ["a", "b"])
            + seal_log_items(SCHEME, w, "w2", now - HOUR + 80_000, ["a"]),
        )
        before_b = await window_parts(client, SCHEME, "b", w)

        async def compact() -> CompactionReport:
            return await compact_pass(
                client, SCHEME, worker="c1", now_ms=now, lookback_ms=2 * HOUR, settle_ms=300_000
            )

        report = await compact()
        parts = await window_parts(client, SCHEME, "a", w)
        assert not needs_compaction(parts) and len({p.set_id for p in parts}) == 1
        merged = merge_parts(parts)
        assert [r.ts_ms for r in merged] == [w + i * 1000 for i in range(15)]
        assert merged[7].metrics == {"v": 99.0}  # the later set won its timestamp, whole
        assert max(p.sealed_ms for p in parts) == 2_000
        assert (report.windows, report.readings) == (1, 15)
        assert report.parts_deleted == len(sets[0]) + len(sets[1])
        assert await window_parts(client, SCHEME, "b", w) == before_b  # one set: untouched

        again = await compact()
        assert (again.windows, again.parts_written, again.parts_deleted) == (0, 0, 0)
        assert await window_parts(client, SCHEME, "a", w) == parts


async def test_a_crash_between_the_write_and_the_deletes_is_finished_by_the_next_pass(
    dynamodb_endpoint: str, unique_name: str
) -> None:
    aws = AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS)
    now = int(time.time() * 1000)
    w = SCHEME.window_start(now - HOUR)
    a = seal(SCHEME, [_r("a", w + i, i) for i in range(0, 20, 2)], 1_000)
    b = seal(SCHEME, [_r("a", w + i, i) for i in range(1, 20, 2)], 2_000)
    merged = seal(SCHEME, merge_parts(a + b), 2_000)  # what a compactor wrote, then crashed
    async with DynamoClient(table=unique_name, aws=aws) as client:
        await create_table(client, LAYOUT)
        await put_all(client, [SCHEME.part_item(p) for p in a + b + merged])
        await put_all(
            client,
            seal_log_items(SCHEME, w, "w1", 10, ["a"]) + seal_log_items(SCHEME, w, "w1", 20, ["a"]),
        )
        leftovers = await window_parts(client, SCHEME, "a", w)
        assert [r.ts_ms for r in merge_parts(leftovers)] == [w + i for i in range(20)]  # readers
        await compact_pass(
            client, SCHEME, worker="c1", now_ms=now, lookback_ms=2 * HOUR, settle_ms=300_000
        )
        parts = await window_parts(client, SCHEME, "a", w)
        assert sorted(p.part for p in parts) == sorted(p.part for p in merged)


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_a_window_the_service_sealed_twice_is_compacted_into_one(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str
) -> None:
    cfg = ingest_config(
        layout="packed", bucket_minutes=60, window_seconds=60, stage_interval_ms=200
    )
    scheme = WindowScheme(layout_from_config(cfg))
    now = int(time.time() * 1000)
    w = scheme.window_start(now - 90_000)
    topic = cfg.mqtt.topic.replace("+", "s1")
    for half in (range(0, 10), range(10, 20)):  # two runs: each stop seals the window
        service = IngestService(cfg)
        async with running(service):
            sent = await publish(
                cfg.mqtt.mqtt_url or "",
                [(topic, orjson.dumps({"ts": w + i * 1000, "v": i})) for i in half],
            )
            await wait_until(
                lambda s=service, n=sent: counter(s, "iot_ingest_messages_completed_total") >= n,
                20,
                "durable",
            )
        assert counter(service, "iot_ingest_sealed_parts_total") >= 1
    aws = AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS)
    async with DynamoClient(table=cfg.dynamodb.table, aws=aws) as client:
        assert needs_compaction(await window_parts(client, scheme, "s1", w))
        report = await compact_pass(
            client, scheme, worker="c1", now_ms=now + 600_000, lookback_ms=HOUR, settle_ms=0
        )
        parts = await window_parts(client, scheme, "s1", w)
        # The service's seal log drives the rollup pass too: the hour's minute bins.
        rolled = await rollup_pass(
            client, scheme, worker="r1", now_ms=now + 2 * HOUR, lookback_ms=3 * HOUR, settle_ms=0
        )
        got = await client.call(
            "get_item",
            TableName=client.table,
            Key={"pk": {"S": rollup_pk(MINUTE_MS, "s1")}, "sk": {"N": str(w - w % HOUR)}},
            ConsistentRead=True,
        )
    assert report.windows == 1 and not needs_compaction(parts)
    assert [r.ts_ms for r in merge_parts(parts)] == [w + i * 1000 for i in range(20)]
    assert rolled.sensor_hours == 1 and rolled.readings == 20
    bins = parse_rollup_item(got["Item"], "s1", MINUTE_MS).bins["v"]
    assert int(bins.count.sum()) == 20 and sum(bins.sum_k) == sum(range(20))
