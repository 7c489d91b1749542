"""Write failures that used to stop the service are retried, end to end (issue #11, item 5).

The real service (Mosquitto, moto or dynalite behind the fault proxy) meets answers
no DynamoDB gives — a 200 that is HTML, a 200 that is ``[]``, a 429 in plain text —
and a container-credentials endpoint that stops answering. Each must leave the
service running with readiness false, acknowledge nothing that is not written, and
once the fault ends write and acknowledge every reading: the table holds each once,
and the broker holds nothing for the service's session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bench.faultproxy import FaultProxy
from ingest.config import Config
from ingest.mqtt.client import MqttConnection, MqttSettings
from ingest.pipeline.service import IngestService
from tests.ingest.credentials import CredentialEndpoint, container_credentials
from tests.ingest.harness import counter, publish, wait_until
from tests.ingest.test_faults_integration import _assert_table_holds, _messages


async def broker_redelivers(broker_url: str, client_id: str, wait_s: float = 1.0) -> int:
    """Resume the session ``client_id`` left and count what the broker sends again.

    A broker resends every unacknowledged QoS 1 message of a resumed session right
    after CONNACK; a session whose messages were all acknowledged gets nothing.
    """
    host, port = broker_url.removeprefix("mqtt://").split(":")
    got: list[Any] = []
    conn = MqttConnection(
        MqttSettings(host=host, port=int(port), client_id=client_id, clean_start=False),
        on_messages=got.extend,
    )
    async with conn:
        assert conn.session_present, "the service's session is gone: nothing would be checked"
        await asyncio.sleep(wait_s)
    return len(got)


async def _start(service: IngestService) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready), name="service-under-test")
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
    assert ready.is_set(), "service did not become ready"
    return stop, task


async def _hold_failing(
    service: IngestService, task: asyncio.Task[None], what: str, cause: str
) -> None:
    """While a fault lasts: the service runs, is not ready, and acknowledges nothing."""
    before = _retries(service, cause)
    await wait_until(lambda: _retries(service, cause) >= before + 2, 30, f"retries on {what}")
    assert not task.done(), f"the service stopped on {what}: {task.exception()!r}"
    ready, reasons = service.readiness()
    assert not ready and "DynamoDB writes are failing (retrying)" in reasons, reasons
    assert counter(service, "iot_ingest_messages_completed_total") == 0


def _retries(service: IngestService, cause: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "iot_ingest_write_retries_total", {"cause": cause}
    )
    return value or 0.0


async def test_answers_that_are_not_dynamodbs_are_retried_until_every_reading_lands(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    fault_proxy: Callable[..., Awaitable[FaultProxy]],
) -> None:
    proxy = await fault_proxy(dynamodb_endpoint, seed=5)
    cfg = ingest_config(dynamodb_endpoint=proxy.url, write_retry_base_ms=10, write_retry_max_ms=200)
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 120, start)
    service = IngestService(cfg)
    stop, task = await _start(service)
    try:
        proxy.not_json = 1.0
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs[:40])
        await _hold_failing(service, task, "a 200 with an HTML body", "bad_response")
        proxy.not_json, proxy.json_list = 0.0, 1.0
        sent += await publish(cfg.mqtt.mqtt_url or "", msgs[40:80])
        await _hold_failing(service, task, "a 200 with a [] body", "bad_response")
        proxy.json_list, proxy.throttle_text = 0.0, 1.0
        sent += await publish(cfg.mqtt.mqtt_url or "", msgs[80:])
        await _hold_failing(service, task, "a 429 with a text body", "throttled")
        proxy.throttle_text = 0.0
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 60, "durable"
        )
        assert service.readiness() == (True, [])
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    task.result()  # drained and returned, no error

    faults = proxy.counters
    assert faults["not_json"] > 0 and faults["json_list"] > 0 and faults["throttle_text"] > 0
    assert _retries(service, "bad_response") >= faults["not_json"] + faults["json_list"]
    assert _retries(service, "throttled") >= faults["throttle_text"]
    assert counter(service, "iot_ingest_dead_letters_total") == 0
    assert counter(service, "iot_ingest_messages_completed_total") == sent == len(msgs)
    await _assert_table_holds(
        dynamodb_endpoint, cfg.dynamodb.table, expected, start, start + 10_000
    )
    assert await broker_redelivers(cfg.mqtt.mqtt_url or "", cfg.mqtt.mqtt_client_id) == 0


async def test_a_failing_credential_refresh_is_retried_until_every_reading_lands(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # No static keys: the credentials come from the (fake) container-credentials endpoint,
    # and expire within botocore's mandatory refresh window, so every request refreshes.
    cfg = ingest_config(
        dynamodb_endpoint=dynamodb_endpoint,
        aws_access_key_id=None,
        aws_secret_access_key=None,
        write_retry_base_ms=10,
        write_retry_max_ms=200,
    )
    start = int(time.time() * 1000) - 30_000
    msgs, expected = _messages(unique_name, 60, start)
    async with container_credentials(monkeypatch, tmp_path) as credential_endpoint:
        service = IngestService(cfg)
        await _fail_credentials_then_recover(service, credential_endpoint, cfg, msgs)
    assert counter(service, "iot_ingest_dead_letters_total") == 0
    assert counter(service, "iot_ingest_messages_completed_total") == len(msgs)
    await _assert_table_holds(
        dynamodb_endpoint, cfg.dynamodb.table, expected, start, start + 10_000
    )
    assert await broker_redelivers(cfg.mqtt.mqtt_url or "", cfg.mqtt.mqtt_client_id) == 0


async def _fail_credentials_then_recover(
    service: IngestService,
    credential_endpoint: CredentialEndpoint,
    cfg: Config,
    msgs: list[tuple[str, bytes]],
) -> None:
    stop, task = await _start(service)
    try:
        credential_endpoint.failing = True
        sent = await publish(cfg.mqtt.mqtt_url or "", msgs)
        await _hold_failing(service, task, "a failed credential refresh", "credentials")
        credential_endpoint.failing = False
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 60, "durable"
        )
        assert service.readiness() == (True, [])
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    task.result()
