"""DynamoDB faults: an outage (connections refused) and sustained throttling.

The fault proxy (bench/faultproxy.py) sits between the worker and moto: ``set_down``
closes its port (connection refused, open connections dropped); probabilities make
``BatchWriteItem`` return ``UnprocessedItems`` or throttling errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.pipeline.service import IngestService
from tests.chaos.conftest import (
    FULL,
    Worker,
    sim_config,
    simulate,
    verify,
    verify_until,
    worker_options,
)
from tests.ingest.harness import counter, make_config, running, wait_until

pytestmark = pytest.mark.chaos

OUTAGE_S = 60 if FULL else 10
RECEIVE_MAXIMUM = 500
COMPLETED = "iot_ingest_messages_completed_total"
RECEIVED = "iot_ingest_messages_received_total"
UNACKED = "iot_ingest_unacked_messages"
INBOX = "iot_ingest_inbox_messages"
WRITE_QUEUE = "iot_ingest_write_queue_batches"


@pytest.mark.timeout(OUTAGE_S * 2 + 200)
async def test_dynamodb_down_holds_acks_bounds_intake_and_recovers_every_reading(
    mosquitto: Any,
    moto_server: Any,
    unique_name: str,
    tmp_path: Path,
    fault_proxy: Callable[..., Awaitable[Any]],
    workers: Callable[..., Worker],
    figure: Callable[..., None],
    table_layout: dict[str, Any],
) -> None:
    proxy = await fault_proxy(moto_server.endpoint_url, seed=3)
    worker = workers(
        "worker",
        **worker_options(
            broker_url=mosquitto.url,
            endpoint=proxy.url,
            name=unique_name,
            data_dir=tmp_path / "data",
            mqtt_receive_maximum=RECEIVE_MAXIMUM,
            **table_layout,
        ),
    )
    await worker.start()
    rss_before = worker.memory.samples[-1][1] if worker.memory.samples else 0.0
    # 300 readings/s for the whole outage: several times the Receive Maximum, so the
    # broker has to hold the rest (intake paused by backpressure, not buffered by us).
    sim = sim_config(mosquitto.url, unique_name, rate_per_s=300, duration_s=OUTAGE_S, devices=20)

    await proxy.set_down(True)
    t_down = time.monotonic()
    publishing = asyncio.create_task(simulate(sim), name="publisher")
    peak = {UNACKED: 0.0, INBOX: 0.0, WRITE_QUEUE: 0.0, RECEIVED: 0.0, COMPLETED: 0.0}
    reasons_seen: set[str] = set()
    while time.monotonic() - t_down < OUTAGE_S or not publishing.done():
        values = await worker.metrics(*peak)
        for name, value in values.items():
            peak[name] = max(peak[name], value)
        reasons_seen.update((await worker.readiness())[1])
        await asyncio.sleep(0.25)
    summary, manifest = await publishing
    assert summary.complete, f"the broker did not acknowledge every message: {summary}"
    outage_s = time.monotonic() - t_down

    await proxy.set_down(False)
    t_up = time.monotonic()
    await worker.wait_metric(COMPLETED, 1, timeout_s=60)
    first_ack_s = time.monotonic() - t_up
    await worker.wait_metric(COMPLETED, summary.messages_sent, timeout_s=120)
    recovery_s = time.monotonic() - t_up
    v, _ = await verify_until(manifest, unique_name, moto_server.endpoint_url, timeout_s=30)
    ready, reasons = await worker.readiness()
    rss_end = worker.memory.samples[-1][1]
    await worker.stop()
    figure(
        "dynamodb-down",
        outage_s=round(outage_s, 1),
        published=summary.messages_sent,
        verified=v.found_items,
        expected=v.expected,
        lost=v.lost,
        duplicates=v.duplicates,
        completed_during_outage=int(peak[COMPLETED]),
        peak_unacked=int(peak[UNACKED]),
        receive_maximum=RECEIVE_MAXIMUM,
        peak_inbox=int(peak[INBOX]),
        peak_rss_mb=round(worker.memory.peak_mb, 1),
        rss_before_mb=round(rss_before, 1),
        rss_end_mb=round(rss_end, 1),
        first_ack_after_up_s=round(first_ack_s, 1),
        recovery_s=round(recovery_s, 1),
    )
    # Nothing durable, so nothing acknowledged; and the service said why it is not ready.
    assert peak[COMPLETED] == 0
    assert any("DynamoDB" in r for r in reasons_seen), reasons_seen
    # Backpressure: the broker holds what is beyond the Receive Maximum.
    assert summary.messages_sent > 3 * RECEIVE_MAXIMUM
    assert peak[UNACKED] <= RECEIVE_MAXIMUM
    assert peak[RECEIVED] <= RECEIVE_MAXIMUM
    assert ready, reasons
    assert v.lost == 0 and v.duplicates == 0 and v.changed == 0, v.explain()
    assert v.found_items == v.expected == summary.valid_readings


@pytest.mark.timeout(300 if FULL else 150)
async def test_half_of_writes_throttled_loses_and_duplicates_nothing(
    mosquitto: Any,
    moto_server: Any,
    unique_name: str,
    tmp_path: Path,
    fault_proxy: Callable[..., Awaitable[Any]],
    figure: Callable[..., None],
    table_layout: dict[str, Any],
) -> None:
    # Half the BatchWriteItem calls fail: a quarter partly (UnprocessedItems, HTTP 200), a
    # quarter wholly (ProvisionedThroughputExceeded / ThrottlingException, HTTP 400).
    proxy = await fault_proxy(moto_server.endpoint_url, seed=11, unprocessed=0.25, throttle=0.25)
    cfg = make_config(
        broker_url=mosquitto.url,
        endpoint=proxy.url,
        name=unique_name,
        data_dir=tmp_path,
        **table_layout,
    )
    duration_s = 60 if FULL else 10
    rate = 400
    sim = sim_config(mosquitto.url, unique_name, rate_per_s=rate, duration_s=duration_s, devices=20)
    service = IngestService(cfg)
    async with running(service):
        t0 = time.monotonic()
        summary, manifest = await simulate(sim)
        t_published = time.monotonic()
        await wait_until(
            lambda: (
                counter(service, "iot_ingest_messages_completed_total") >= summary.messages_sent
            ),
            60,
            "every message durable",
        )
        t_durable = time.monotonic()
    reg = service.metrics.registry
    retries = {
        cause: int(reg.get_sample_value("iot_ingest_write_retries_total", {"cause": cause}) or 0)
        for cause in ("unprocessed", "throttled", "server_error")
    }
    faults = proxy.counters
    v = await verify(manifest, unique_name, moto_server.endpoint_url)
    calls = faults.get("requests", 0)
    batch_calls = faults.get("requests.BatchWriteItem", 0)  # the only operation faulted
    faulted = faults.get("throttle", 0) + faults.get("unprocessed_responses", 0)
    figure(
        "dynamodb-throttled-50pct",
        published=summary.messages_sent,
        verified=v.found_items,
        lost=v.lost,
        duplicates=v.duplicates,
        dynamodb_calls=calls,
        batch_write_calls=batch_calls,
        faulted_pct_of_batch_writes=round(100 * faulted / max(batch_calls, 1), 1),
        retries_unprocessed=retries["unprocessed"],
        retries_throttled=retries["throttled"],
        offered_rate_per_s=rate,
        durable_rate_per_s=round(summary.messages_sent / (t_durable - t0), 1),
        drain_after_publish_s=round(t_durable - t_published, 2),
        dead_letters=int(counter(service, "iot_ingest_dead_letters_total")),
    )
    assert 0.35 < faulted / batch_calls < 0.65, faults
    assert retries["unprocessed"] > 0 and retries["throttled"] > 0
    assert counter(service, "iot_ingest_dead_letters_total") == 0
    assert counter(service, "iot_ingest_write_gave_up_total") == 0
    # Degrades smoothly: at this moderate rate the retries keep up; no backlog builds.
    assert t_durable - t_published < 15
    assert v.lost == 0 and v.duplicates == 0 and v.changed == 0, v.explain()
    assert v.found_items == v.expected == summary.valid_readings
