"""`verify` against a real DynamoDB-API server (moto) filled through the table layout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from ingest.pipeline.codec import Limits, PayloadDecoder
from ingest.storage.layout import Item, Reading, TableLayout, registry_key
from simulator.cli import main
from simulator.faults import FaultConfig
from simulator.fleet import Fleet
from simulator.generator import TrafficOptions
from simulator.manifest import Manifest, save_manifest
from simulator.verify import format_report, verify_table
from tests.simulator.helpers import generate_all

# 1 s before a bucket boundary of the 1-hour layout (the last one: items must not have expired),
# so the run spans two buckets.
_NOW_MS = int(time.time() * 1000)
START_TS_MS = _NOW_MS - _NOW_MS % 3_600_000 - 1_000
LAYOUT = TableLayout(bucket_ms=3_600_000, shards=3)
Client = Callable[..., AbstractAsyncContextManager[Any]]


def _run(detail: bool) -> tuple[Manifest, list[Reading]]:
    fleet = Fleet.uniform(devices=8, rate_per_s=80, kinds=("env", "power"))
    faults = FaultConfig(
        duplicate_rate=0.05, late_rate=0.05, malformed_rate=0.05, skew_rate=0.25, skew_max_s=5
    )
    options = TrafficOptions(
        seed=2, start_ts_ms=START_TS_MS, duration_s=2.0, faults=faults, manifest_detail=detail
    )
    gen, messages = generate_all(fleet, options)
    manifest = gen.build_manifest(run={}, totals={}, complete=True)
    decoder = PayloadDecoder(sensor_topic_level=1, limits=Limits(max_past_ms=10**13))
    readings = [
        r
        for c, p in messages
        for r in decoder.decode(f"sensors/{fleet.sensor_ids[c]}/telemetry", p, START_TS_MS)[0]
    ]
    return manifest, readings


async def _table(client: Any, name: str) -> None:
    await client.create_table(
        TableName=name,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )


async def _put(client: Any, name: str, items: list[Item]) -> None:
    unique = list({(i["pk"]["S"], i["sk"]["N"]): i for i in items}.values())
    for k in range(0, len(unique), 25):
        batch = [{"PutRequest": {"Item": i}} for i in unique[k : k + 25]]
        await client.batch_write_item(RequestItems={name: batch})


async def _filled(
    client: Any, name: str, readings: list[Reading], *, layout_item: bool = True
) -> None:
    await _table(client, name)
    items = [LAYOUT.to_item(r) for r in readings]
    if layout_item:
        items.append(LAYOUT.to_layout_item())
    await _put(client, name, items)


async def test_verify_passes_when_the_table_holds_exactly_the_valid_readings(
    moto_server: Any, dynamodb_client: Client, unique_name: str
) -> None:
    manifest, readings = _run(detail=False)
    async with dynamodb_client(moto_server.endpoint_url) as client:
        await _filled(client, unique_name, readings)
    report = await verify_table(manifest, table=unique_name, endpoint_url=moto_server.endpoint_url)
    assert report.ok, format_report(report)
    assert report.readings_found == report.readings_expected == manifest["totals"]["valid_readings"]
    assert report.layout == {"bucket_ms": 3_600_000, "shards": 3}
    assert report.queries >= 8 * 2 * 3  # every shard of both buckets of every sensor
    assert report.warnings == []


async def test_verify_names_missing_unexpected_and_changed_readings(
    moto_server: Any, dynamodb_client: Client, unique_name: str
) -> None:
    manifest, readings = _run(detail=True)
    lost, changed, kept = readings[0], readings[10], readings[1:]
    extra = Reading(changed.sensor_id, changed.ts_ms + 1, {"temperature": 1.0})
    async with dynamodb_client(moto_server.endpoint_url) as client:
        await _filled(client, unique_name, kept)
        metric = next(iter(changed.metrics))
        altered = Reading(
            changed.sensor_id, changed.ts_ms, {**changed.metrics, metric: -42.5}, changed.tags
        )
        await _put(client, unique_name, [LAYOUT.to_item(altered), LAYOUT.to_item(extra)])
        other, sk = registry_key("stranger-1")
        await _put(
            client,
            unique_name,
            [{"pk": {"S": other}, "sk": {"N": str(sk)}, "sid": {"S": "stranger-1"}}],
        )
    report = await verify_table(manifest, table=unique_name, endpoint_url=moto_server.endpoint_url)
    assert not report.ok
    diffs = {d.sensor_id: d for d in report.diffs}
    assert diffs[lost.sensor_id].missing_ts == [lost.ts_ms]
    assert diffs[changed.sensor_id].changed_ts == [changed.ts_ms]
    assert diffs[changed.sensor_id].extra_ts == [changed.ts_ms + 1]
    assert report.unknown_sensors == ["stranger-1"]
    text = "\n".join(format_report(report))
    assert text.startswith("FAIL")
    assert f"missing ts: {lost.ts_ms}" in text and "stranger-1" in text
    quiet = await verify_table(
        manifest, table=unique_name, endpoint_url=moto_server.endpoint_url, check_registry=False
    )
    assert quiet.unknown_sensors == []


async def test_verify_without_detail_still_fails_on_a_changed_value(
    moto_server: Any, dynamodb_client: Client, unique_name: str
) -> None:
    manifest, readings = _run(detail=False)
    r = readings[5]
    metric = next(iter(r.metrics))
    readings[5] = Reading(
        r.sensor_id, r.ts_ms, {**r.metrics, metric: r.metrics[metric] + 0.01}, r.tags
    )
    async with dynamodb_client(moto_server.endpoint_url) as client:
        await _filled(client, unique_name, readings)
    report = await verify_table(manifest, table=unique_name, endpoint_url=moto_server.endpoint_url)
    assert [d.sensor_id for d in report.diffs] == [r.sensor_id]
    assert any(p.startswith("checksum") for p in report.diffs[0].problems)


async def test_verify_assumes_the_given_layout_when_the_table_has_none(
    moto_server: Any, dynamodb_client: Client, unique_name: str
) -> None:
    manifest, readings = _run(detail=False)
    async with dynamodb_client(moto_server.endpoint_url) as client:
        await _filled(client, unique_name, readings, layout_item=False)
    report = await verify_table(
        manifest, table=unique_name, endpoint_url=moto_server.endpoint_url, default_layout=LAYOUT
    )
    assert report.ok
    assert "no layout item" in report.warnings[0]
    wrong = await verify_table(manifest, table=unique_name, endpoint_url=moto_server.endpoint_url)
    assert not wrong.ok  # the default layout (1 day, 4 shards) finds other partitions


async def test_cli_verify_exit_status(
    moto_server: Any,
    dynamodb_client: Client,
    unique_name: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    manifest, readings = _run(detail=True)
    path = tmp_path / "manifest.json"
    save_manifest(manifest, path)
    async with dynamodb_client(moto_server.endpoint_url) as client:
        await _filled(client, unique_name, readings)
    argv = [
        "verify",
        "--manifest",
        str(path),
        "--table",
        unique_name,
        "--dynamodb-endpoint",
        moto_server.endpoint_url,
    ]
    assert await asyncio.to_thread(main, argv) == 0
    assert capfd.readouterr().out.startswith("PASS")
    async with dynamodb_client(moto_server.endpoint_url) as client:
        item = LAYOUT.to_item(readings[0])
        await client.delete_item(TableName=unique_name, Key={"pk": item["pk"], "sk": item["sk"]})
    assert await asyncio.to_thread(main, argv) == 1
    out = capfd.readouterr().out
    assert out.startswith("FAIL") and f"missing ts: {readings[0].ts_ms}" in out
    argv[4] = unique_name + "-absent"
    assert await asyncio.to_thread(main, argv) == 2
    assert "does not exist" in capfd.readouterr().err
