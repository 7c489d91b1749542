"""The ``packed`` layout's write stage end to end: a real broker, a real DynamoDB-API server.

Both halves of at-least-once, from the outside: every reading published reads back
exactly once (staging items while its window is open, sealed windows after), and the
broker holds nothing for the stopped service (:func:`tests.drain.assert_drained`).
A SIGKILLed worker's acknowledged readings come back from its journal.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.aws.settings import AwsSettings
from ingest.config import Config
from ingest.pipeline.packing import adopt_journal
from ingest.pipeline.service import IngestService, layout_from_config
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import key_query, query_pages
from ingest.storage.windows import WindowScheme, needs_compaction, parse_part_item
from ingest.trial.servers import free_port
from tests.drain import assert_drained
from tests.ingest.harness import (
    AWS,
    counter,
    publish,
    read_table,
    running,
    start_worker,
    tail,
    wait_until,
    wait_until_metric,
)

PACKED = {
    "layout": "packed",
    "bucket_minutes": 60,
    "window_seconds": 60,
    "stage_interval_ms": 200,
    "staging_groups": 4,
}
_PACKED_FLAGS = (
    "--layout", "packed", "--bucket-minutes", "60", "--window-seconds", "60",
    # Nothing staged, nothing sealed before the kill: only the journal has the readings.
    "--stage-interval-ms", "600000",
)  # fmt: skip
_LATER_S = 3 * 86_400
"""A reader's clock this far ahead sees sealed windows only (staging is for the last minutes)."""


def _messages(
    prefix: str, n: int, start_ms: int, sensors: int = 5
) -> tuple[list[tuple[str, bytes]], dict[str, dict[int, float]]]:
    """``n`` readings as messages of 1–3 readings each (some sent twice: duplicates)."""
    expected: dict[str, dict[int, float]] = {}
    msgs: list[tuple[str, bytes]] = []
    i = 0
    while i < n:
        sid = f"s{i % sensors}"
        batch = []
        for _ in range(1 + i % 3):
            if i >= n:
                break
            ts, v = start_ms + i * 37, i / 8
            batch.append({"ts": ts, "v": v})
            expected.setdefault(sid, {})[ts] = v
            i += 1
        msg = (f"{prefix}/{sid}/telemetry", orjson.dumps({"readings": batch}))
        msgs += [msg, msg] if i % 7 == 0 else [msg]
    return msgs, expected


def _check(got: dict[str, list[Reading]], expected: dict[str, dict[int, float]]) -> None:
    for sid, want in expected.items():
        stamps = [r.ts_ms for r in got[sid]]
        assert len(stamps) == len(set(stamps)), f"{sid}: a reading read twice"
        assert {r.ts_ms: r.metrics["v"] for r in got[sid]} == want, f"{sid}: readings differ"


async def _parts(
    endpoint: str, table: str, layout: TableLayout, sensor: str, start: int
) -> list[Any]:
    async with DynamoClient(
        table=table, aws=AwsSettings(region="us-east-1", endpoint_url=endpoint, **AWS)
    ) as client:
        kwargs = key_query(table, layout.window_pk(sensor, start))
        return [
            parse_part_item(it, sensor)
            async for page in query_pages(client.call, kwargs)
            for it in page.get("Items", [])
        ]


async def test_every_reading_is_visible_then_sealed_once_and_the_broker_is_drained(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str
) -> None:
    cfg = ingest_config(**PACKED)
    layout = layout_from_config(cfg)
    start = int(time.time() * 1000) - 20_000
    start -= start % 60_000  # every reading in one or two windows of each sensor
    msgs, expected = _messages(unique_name, 400, start)
    n = sum(len(v) for v in expected.values())
    end = start + 400 * 37
    service = IngestService(cfg)
    async with running(service):
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 30, "durable"
        )
        # Open windows: visible through the staging items within a few stage intervals.
        deadline = time.monotonic() + 10
        while True:
            got = await read_table(
                dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end
            )
            if sum(len(v) for v in got.values()) >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        _check(got, expected)
        assert counter(service, "iot_ingest_sealed_parts_total") == 0  # not sealed yet
    # Stopped: every window sealed, once, and the sealed windows alone hold every reading.
    assert counter(service, "iot_ingest_sealed_parts_total") >= len(expected)
    later = time.time() + _LATER_S
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    _check(got, expected)
    for sid in expected:
        for w in range(start, end + 1, 60_000):
            parts = await _parts(dynamodb_endpoint, cfg.dynamodb.table, layout, sid, w)
            assert not needs_compaction([p for p in parts if p.window_start_ms == w])


async def test_with_seal_at_stop_off_a_stop_seals_nothing_and_the_next_start_seals_all(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str
) -> None:
    cfg, layout, start, msgs, expected = _setup(ingest_config, unique_name, 150)
    n = sum(len(v) for v in expected.values())
    end = start + 150 * 37
    first = IngestService(cfg.replace(seal_at_stop=False))
    async with running(first):
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(first, "iot_ingest_messages_completed_total") >= sent, 30, "durable"
        )
    assert counter(first, "iot_ingest_sealed_parts_total") == 0  # stopped without a seal
    again = IngestService(cfg)  # the same client id: its journal
    async with running(again):
        assert counter(again, "iot_ingest_journal_recovered_readings_total") >= n
    assert counter(again, "iot_ingest_sealed_parts_total") >= len(expected)
    later = time.time() + _LATER_S  # staging items expired: the sealed windows alone
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    _check(got, expected)  # and each `running` above drained the broker


async def _acknowledged_then_killed(
    cfg: Config, port: int, log: Path, msgs: list[tuple[str, bytes]]
) -> int:
    """Start a packed worker, publish ``msgs``, and SIGKILL it once every one is
    acknowledged (nothing staged or sealed yet: only its journal holds them)."""
    worker = await start_worker(cfg, port, log, *_PACKED_FLAGS)
    try:
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until_metric(port, "iot_ingest_messages_completed_total", sent)
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    return sent


def _setup(
    ingest_config: Callable[..., Config], prefix: str, n: int
) -> tuple[Config, TableLayout, int, list[tuple[str, bytes]], dict[str, dict[int, float]]]:
    """A packed worker's config and layout, and ``n`` readings from 10 s ago (a minute's
    start, so they fall in one or two windows of each sensor) as messages."""
    cfg = ingest_config(**PACKED)
    start = int(time.time() * 1000) - 10_000
    start -= start % 60_000
    msgs, expected = _messages(prefix, n, start)
    return cfg, layout_from_config(cfg), start, msgs, expected


async def test_a_killed_workers_acknowledged_readings_come_back_from_its_journal(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    cfg, layout, start, msgs, expected = _setup(ingest_config, unique_name, 300)
    port, log = free_port(), tmp_path / "worker.log"
    sent = await _acknowledged_then_killed(cfg, port, log, msgs[:200])
    await publish(cfg.mqtt.mqtt_url or "", msgs[200:])  # while it is down
    worker = await start_worker(cfg, port, log, *_PACKED_FLAGS)
    try:
        await wait_until_metric(port, "iot_ingest_journal_recovered_readings_total", 1)
        await wait_until_metric(port, "iot_ingest_messages_completed_total", len(msgs) - sent)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 30)
    assert worker.returncode == 0, tail(log)
    later = time.time() + _LATER_S
    end = start + 300 * 37
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    _check(got, expected)
    await assert_drained(cfg.mqtt.mqtt_url or "", cfg.mqtt.mqtt_client_id)


async def test_what_a_worker_gone_for_good_left_in_its_journal_is_adopted_and_sealed(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    cfg, layout, start, msgs, expected = _setup(ingest_config, unique_name, 150)
    port, log = free_port(), tmp_path / "worker.log"
    await _acknowledged_then_killed(cfg, port, log, msgs)  # never to start again
    later = time.time() + _LATER_S
    end = start + 150 * 37
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    assert sum(len(v) for v in got.values()) == 0  # acknowledged, in the journal only
    async with DynamoClient(
        table=cfg.dynamodb.table,
        aws=AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS),
    ) as client:
        n = await adopt_journal(
            client, WindowScheme(layout), cfg.mqtt.mqtt_client_id, journal_ttl_s=3600
        )
        assert n >= sum(len(v) for v in expected.values())
        assert (
            await adopt_journal(  # the checkpoint moved on: nothing twice
                client, WindowScheme(layout), cfg.mqtt.mqtt_client_id, journal_ttl_s=3600
            )
            == 0
        )
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    _check(got, expected)
    await assert_drained(cfg.mqtt.mqtt_url or "", cfg.mqtt.mqtt_client_id)


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_a_stop_cut_short_leaves_its_windows_to_the_journal_and_the_next_start_seals_them(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    fault_proxy: Callable[..., Awaitable[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await fault_proxy(dynamodb_endpoint, seed=5)
    cfg = ingest_config(
        **{**PACKED, "stage_interval_ms": 600_000},  # nothing staged or sealed before the stop
        dynamodb_endpoint=proxy.url,
        shutdown_timeout_s=2,
        write_retry_base_ms=5,
        write_retry_max_ms=50,
    )
    layout = layout_from_config(cfg)
    start = int(time.time() * 1000) - 10_000
    start -= start % 60_000
    msgs, expected = _messages(unique_name, 120, start)
    service = IngestService(cfg)
    async with running(service):
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 30, "durable"
        )
        await proxy.set_down(True)  # the stop's seals cannot be written before its deadline
    assert "windows not sealed: their readings stay in the journal" in caplog.text
    await proxy.set_down(False)
    later = time.time() + _LATER_S
    end = start + 120 * 37
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    assert sum(len(v) for v in got.values()) == 0  # acknowledged, in the journal only
    async with running(IngestService(cfg)):  # the next start reads its journal back
        pass  # and its stop seals every window
    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, layout, expected, start, end, now_s=later
    )
    _check(got, expected)
