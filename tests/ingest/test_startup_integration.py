"""DynamoDB unreachable at start: wait not ready, then ingest; or fail clearly (issue #11, item 12).

A deploy during a DynamoDB blip must neither crash-loop nor lose its place: the
service keeps its health server up (``/healthz`` alive, ``/readyz`` saying why it is
not ready), retries with backoff without subscribing (the broker keeps the session's
messages), starts ingesting once DynamoDB answers, stops promptly on SIGTERM while
waiting, and past ``startup_retry_deadline_s`` exits non-zero with a clear message.
What waiting cannot heal (a missing table without ``create_table``, another layout,
access denied) fails at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bench.faultproxy import FaultProxy
from ingest.config import Config
from ingest.core.errors import TableError
from ingest.pipeline.service import IngestService, layout_from_config
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import TableLayout
from ingest.storage.table import create_table
from ingest.trial.servers import free_port
from tests.ingest.harness import AWS, counter, make_config, publish, read_table, wait_until
from tests.ingest.test_dynamohttp import CraftedDynamo, reply
from tests.ingest.test_write_faults_integration import broker_redelivers


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def _readyz_until(port: int, predicate: Callable[[int, Any], bool], timeout_s: float) -> Any:
    """Poll /readyz over HTTP until ``predicate(status, body)``; return the body."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, body = await _get(f"http://127.0.0.1:{port}/readyz")
            last = (status, body)
            if predicate(status, body):
                return body
        except aiohttp.ClientError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never matched in {timeout_s} s; last: {last!r}")


def _waiting_for_dynamodb(status: int, body: Any) -> bool:
    reasons = " ".join(body["reasons"])
    return status == 503 and body["ready"] is False and "DynamoDB unreachable" in reasons


async def test_dynamodb_down_at_start_waits_not_ready_then_ingests(
    ingest_config: Callable[..., Config],
    dynamodb_endpoint: str,
    unique_name: str,
    fault_proxy: Callable[..., Awaitable[FaultProxy]],
) -> None:
    proxy = await fault_proxy(dynamodb_endpoint, seed=2)
    await proxy.set_down(True)
    cfg = ingest_config(
        dynamodb_endpoint=proxy.url, write_retry_max_ms=300, startup_retry_deadline_s=0
    )
    service = IngestService(cfg)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready), name="service-under-test")
    try:
        await wait_until(lambda: service.health_port is not None or task.done(), 10, "health")
        assert not task.done(), f"the service exited: {task.exception()!r}"
        port = service.health_port
        assert port is not None
        body = await _readyz_until(port, _waiting_for_dynamodb, 15)
        (reason,) = body["reasons"]
        assert proxy.url in reason and "connection" in reason  # where, and why
        assert await _get(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        await asyncio.sleep(1.0)  # a few more attempts: still waiting, still alive
        assert not task.done() and not ready.is_set()
        assert (await _get(f"http://127.0.0.1:{port}/readyz"))[0] == 503
        retried = service.metrics.registry.get_sample_value(
            "iot_ingest_startup_retries_total", {"cause": "connection"}
        )
        assert retried is not None and retried >= 2
        assert counter(service, "iot_ingest_messages_received_total") == 0  # not subscribed

        await proxy.set_down(False)
        await asyncio.wait_for(ready.wait(), 30)
        await _readyz_until(port, lambda status, body: status == 200 and body["ready"], 10)
        ts = int(time.time() * 1000) - 5_000
        sent = await publish(
            cfg.mqtt.mqtt_url or "",
            [(f"{unique_name}/dev-1/telemetry", orjson.dumps({"ts": ts, "t": 21.5}))],
        )
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 30, "durable"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    task.result()

    got = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, service.layout, ["dev-1"], ts, ts + 1
    )
    assert [(r.ts_ms, r.metrics) for r in got["dev-1"]] == [(ts, {"t": 21.5})]
    assert await broker_redelivers(cfg.mqtt.mqtt_url or "", cfg.mqtt.mqtt_client_id) == 0


def _worker_args(cfg: Config, endpoint: str, metrics_port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ingest.cli", "run",
        "--mqtt-url", cfg.mqtt.mqtt_url or "", "--topic", cfg.mqtt.topic, "--table", cfg.dynamodb.table,
        "--dynamodb-endpoint", endpoint, "--mqtt-client-id", cfg.mqtt.mqtt_client_id,
        "--data-dir", str(cfg.operations.data_dir), "--metrics-port", str(metrics_port),
        "--write-retry-max-ms", "300", *extra,
    ]  # fmt: skip


async def _spawn(args: list[str]) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": AWS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": AWS["aws_secret_access_key"],
    }
    return await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_unreachable_past_the_deadline_exits_non_zero_with_a_clear_message(
    ingest_config: Callable[..., Config],
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = ingest_config()
    t0 = time.monotonic()
    proc = await _spawn(
        _worker_args(cfg, down, free_port(), "--create-table", "--startup-retry-deadline-s", "2")
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, err.decode()
    stderr = err.decode()
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"iot-ingest: DynamoDB at {down} did not answer"), stderr
    assert "(startup_retry_deadline_s=2)" in last and "connection" in last, last
    assert "Traceback" not in stderr
    assert 2 <= elapsed < 20  # waited out the deadline, and not much longer


async def test_sigterm_while_waiting_for_dynamodb_stops_promptly(
    ingest_config: Callable[..., Config],
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    cfg = ingest_config()
    port = free_port()
    proc = await _spawn(
        _worker_args(cfg, down, port, "--create-table", "--startup-retry-deadline-s", "0")
    )
    try:
        await _readyz_until(port, _waiting_for_dynamodb, 30)
        assert (await _get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert time.monotonic() - t0 < 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()


# -- what waiting cannot heal fails at once ----------------------------------------------


async def test_missing_table_without_create_table_fails_at_once(
    ingest_config: Callable[..., Config],
) -> None:
    cfg = ingest_config(create_table=False, startup_retry_deadline_s=0)  # 0: else wait forever
    with pytest.raises(TableError, match=f"table {cfg.dynamodb.table!r} does not exist"):
        await asyncio.wait_for(IngestService(cfg).run(asyncio.Event()), 15)


async def test_layout_mismatch_fails_at_once(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str
) -> None:
    cfg = ingest_config(shards=4)
    async with DynamoClient.from_config(cfg) as client:
        await create_table(client, layout_from_config(cfg))
    other = ingest_config(shards=8, create_table=False, startup_retry_deadline_s=0)
    with pytest.raises(TableError, match=r"created with bucket_minutes=1440, shards=4"):
        await asyncio.wait_for(IngestService(other).run(asyncio.Event()), 15)


@pytest.mark.parametrize(
    "code",
    ["AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"],
)
async def test_access_denied_fails_at_once(code: str, tmp_path: Path) -> None:
    crafted = CraftedDynamo()
    await crafted.start()
    denied = orjson.dumps(
        {
            "__type": f"com.amazon.coral.service#{code}",
            "message": "User: arn:aws:iam::123456789012:user/ingest is not authorized",
        }
    )
    crafted.script = [reply(400, denied)] * 50
    try:
        cfg = make_config(
            broker_url="mqtt://127.0.0.1:1",  # never reached: the table check comes first
            endpoint=crafted.url,
            name="t-denied",
            data_dir=tmp_path,
            create_table=False,
            startup_retry_deadline_s=0,
        )
        with pytest.raises(TableError, match=f"{code}: User: arn:aws:iam"):
            await asyncio.wait_for(IngestService(cfg).run(asyncio.Event()), 15)
    finally:
        await crafted.aclose()
    assert crafted.targets == ["GetItem"]  # asked once, not retried


async def test_a_reading_service_refuses_a_packed_table_naming_both_layouts(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str
) -> None:
    cfg = ingest_config()
    async with DynamoClient.from_config(cfg) as client:
        await create_table(client, TableLayout(kind="packed"))
    other = ingest_config(create_table=False, startup_retry_deadline_s=0)
    with pytest.raises(
        TableError,
        match=r"created with layout=packed, bucket_minutes=1440, window_ms=900000, groups=256, "
        r"stage_ms=10000; the config says layout=reading, bucket_minutes=1440, shards=4",
    ):
        await asyncio.wait_for(IngestService(other).run(asyncio.Event()), 15)
