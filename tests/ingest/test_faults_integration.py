"""Retry paths, crash recovery and worker groups, with real servers and injected faults.

moto never throttles or returns UnprocessedItems, so a fault-injecting proxy
(bench/faultproxy.py) sits between the service and the DynamoDB-API server.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from ingest.config import Config
from ingest.pipeline.service import IngestService
from ingest.storage.layout import TableLayout
from ingest.trial.servers import free_port
from tests.drain import assert_drained
from tests.ingest.harness import (
    counter,
    publish,
    read_table,
    running,
    start_worker,
    tail,
    wait_until,
    wait_until_metric,
)


def _messages(
    prefix: str, n: int, start_ms: int, sensors: int = 6
) -> tuple[list[tuple[str, bytes]], dict[str, set[int]]]:
    expected: dict[str, set[int]] = {}
    msgs = []
    for i in range(n):
        sid, ts = f"s{i % sensors}", start_ms + i
        msgs.append((f"{prefix}/{sid}/telemetry", orjson.dumps({"ts": ts, "v": i})))
        expected.setdefault(sid, set()).add(ts)
    return msgs, expected


async def _assert_table_holds(
    endpoint: str, table: str, expected: dict[str, set[int]], start_ms: int, end_ms: int
) -> None:
    got = await read_table(endpoint, table, TableLayout(), expected, start_ms, end_ms)
    for sid, stamps in expected.items():
        ts = [r.ts_ms for r in got[sid]]
        assert len(ts) == len(set(ts)), f"{sid}: duplicate items"
        missing = stamps - set(ts)
        assert not missing, f"{sid}: {len(missing)} readings missing"
        assert set(ts) == stamps, f"{sid}: unexpected readings"


async def test_unprocessed_throttling_and_5xx_are_retried_until_every_reading_lands_once(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    fault_proxy: Callable[..., Awaitable[Any]],
) -> None:
    proxy = await fault_proxy(
        dynamodb_endpoint,
        seed=7,
        unprocessed=0.3,
        throttle=0.15,
        error500=0.1,
        slow=0.05,
        slow_ms=100,
    )
    cfg = ingest_config(dynamodb_endpoint=proxy.url, write_retry_base_ms=5, write_retry_max_ms=200)
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 600, start)
    service = IngestService(cfg)
    async with running(service):
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 90, "durable"
        )
    faults = proxy.counters
    assert (
        faults.get("unprocessed_responses", 0) > 0
        and faults.get("throttle", 0) > 0
        and faults.get("error500", 0) > 0
    )
    reg = service.metrics.registry
    assert (
        reg.get_sample_value("iot_ingest_write_retries_total", {"cause": "unprocessed"}) or 0
    ) > 0
    assert (reg.get_sample_value("iot_ingest_write_retries_total", {"cause": "throttled"}) or 0) > 0
    assert (
        reg.get_sample_value("iot_ingest_write_retries_total", {"cause": "server_error"}) or 0
    ) > 0
    assert counter(service, "iot_ingest_dead_letters_total") == 0
    await _assert_table_holds(
        dynamodb_endpoint, cfg.dynamodb.table, expected, start, start + 10_000
    )


async def test_dynamodb_outage_holds_acks_and_recovers(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    fault_proxy: Callable[..., Awaitable[Any]],
) -> None:
    proxy = await fault_proxy(dynamodb_endpoint, seed=3)
    cfg = ingest_config(dynamodb_endpoint=proxy.url, write_retry_base_ms=10, write_retry_max_ms=300)
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 300, start)
    service = IngestService(cfg)
    async with running(service):
        await proxy.set_down(True)
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_received_total") >= sent, 30, "received"
        )
        await asyncio.sleep(1.0)
        # Nothing is durable, so nothing may be complete (acknowledged).
        assert counter(service, "iot_ingest_messages_completed_total") == 0
        ready, reasons = service.readiness()
        assert not ready and any("DynamoDB" in r for r in reasons)
        await proxy.set_down(False)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 60, "durable"
        )
        assert service.readiness()[0]
    await _assert_table_holds(
        dynamodb_endpoint, cfg.dynamodb.table, expected, start, start + 10_000
    )


async def test_shared_subscription_splits_work_and_loses_nothing(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    a = IngestService(
        ingest_config(shared_group="g1", mqtt_client_id=f"{unique_name}-a", data_dir=tmp_path / "a")
    )
    b = IngestService(
        ingest_config(shared_group="g1", mqtt_client_id=f"{unique_name}-b", data_dir=tmp_path / "b")
    )
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 400, start)
    async with running(a), running(b):
        sent = await publish(a.config.mqtt.mqtt_url or "", msgs)

        def done() -> float:
            return counter(a, "iot_ingest_messages_completed_total") + counter(
                b, "iot_ingest_messages_completed_total"
            )

        await wait_until(lambda: done() >= sent, 60, "durable")
    assert counter(a, "iot_ingest_messages_received_total") > 0
    assert counter(b, "iot_ingest_messages_received_total") > 0
    assert done() == sent  # each message went to exactly one worker
    await _assert_table_holds(
        dynamodb_endpoint, a.config.dynamodb.table, expected, start, start + 10_000
    )


async def test_sigkill_mid_stream_then_restart_loses_nothing(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    """Kill -9 while readings are in flight, publish while down, restart: all arrive."""
    cfg = ingest_config()
    port = free_port()
    log = tmp_path / "worker.log"
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 900, start)
    worker = await start_worker(cfg, port, log)
    try:
        await publish(cfg.mqtt.mqtt_url or "", msgs[:300])
        # Kill while the next part is arriving (some received, not all durable).
        pub = asyncio.create_task(publish(cfg.mqtt.mqtt_url or "", msgs[300:600]))
        await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        await pub
        await publish(cfg.mqtt.mqtt_url or "", msgs[600:])  # published while the service is down
        worker = await start_worker(cfg, port, log)
        await wait_until_metric(port, "iot_ingest_messages_completed_total", 1)

        async def all_there() -> bool:
            got = await read_table(
                dynamodb_endpoint,
                cfg.dynamodb.table,
                TableLayout(),
                expected,
                start,
                start + 10_000,
            )
            return sum(len(v) for v in got.values()) >= len(msgs)

        deadline = time.monotonic() + 60
        while not await all_there():
            assert time.monotonic() < deadline, "readings missing after restart"
            await asyncio.sleep(0.5)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            await asyncio.wait_for(worker.wait(), 30)
    assert worker.returncode == 0, tail(log)
    await _assert_table_holds(
        dynamodb_endpoint, cfg.dynamodb.table, expected, start, start + 10_000
    )
    await assert_drained(cfg.mqtt.mqtt_url or "", cfg.mqtt.mqtt_client_id)


async def test_paused_reading_keeps_a_healthy_broker_connection(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    fault_proxy: Callable[..., Awaitable[Any]],
) -> None:
    """DynamoDB stalls long enough that a full inbox pauses reading for > 1.5 × keepalive.

    The broker is healthy throughout: the connection must survive (no reconnect, no
    redelivery storm), and everything lands once DynamoDB is back.
    """
    proxy = await fault_proxy(dynamodb_endpoint, seed=5)
    cfg = ingest_config(
        dynamodb_endpoint=proxy.url,
        mqtt_keepalive_s=5,
        inbox_max_messages=100,
        write_queue_batches=1,
        write_concurrency=1,
        write_retry_base_ms=10,
        write_retry_max_ms=300,
    )
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 1500, start)
    service = IngestService(cfg)
    async with running(service):
        await proxy.set_down(True)
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(service, "iot_ingest_inbox_messages") >= 100, 20, "a full inbox"
        )
        await asyncio.sleep(5 * 1.5 * 1.6)  # well past the keepalive's silence limit
        assert counter(service, "iot_ingest_mqtt_reconnects_total") == 0
        assert service.readiness()[1] == ["DynamoDB writes are failing (retrying)"]
        await proxy.set_down(False)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 90, "durable"
        )
        assert counter(service, "iot_ingest_mqtt_reconnects_total") == 0
    await _assert_table_holds(
        dynamodb_endpoint, cfg.dynamodb.table, expected, start, start + 10_000
    )
