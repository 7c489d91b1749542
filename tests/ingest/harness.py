"""Helpers for the ingest integration tests: run the service, publish, read the table back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

from ingest.aws.settings import AwsSettings
from ingest.config import Config
from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.mqtt.client import MqttConnection, MqttSettings
from ingest.pipeline.packing import OpenWindows, WindowWriter
from ingest.pipeline.service import IngestService, mqtt_settings
from ingest.storage.dynamo import DynamoClient, TableClient
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import read_range
from ingest.storage.windows import WindowScheme
from tests.drain import assert_drained

AWS = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}


def make_config(
    *, broker_url: str, endpoint: str, name: str, data_dir: Path, **overrides: Any
) -> Config:
    """A service config isolated by ``name`` (table, topic prefix, client id)."""
    values: dict[str, Any] = {
        "mqtt_url": broker_url,
        "topic": f"{name}/+/telemetry",
        "table": name,
        "dynamodb_endpoint": endpoint,
        "create_table": True,
        "data_dir": data_dir,
        "metrics_port": 0,
        "mqtt_client_id": f"ingest-{name}"[:64],
        "flush_interval_ms": 20,
        "registry_interval_s": 0.5,
        "registry_refresh_s": 0,
        "shutdown_timeout_s": 20,
        **AWS,
    }
    values.update(overrides)
    return Config(**values)


@contextlib.asynccontextmanager
async def running(
    service: IngestService, ready_timeout_s: float = 30, *, drained: bool = True
) -> AsyncIterator[IngestService]:
    """Run a service in this event loop; stop and drain it on exit.

    With ``drained`` (the default), once the service has stopped, its MQTT session is
    resumed by an independent client and the broker must hold nothing for it
    (:func:`tests.drain.assert_drained`): every fault test proves both halves of
    at-least-once for free. Pass ``drained=False`` where the broker cannot be asked
    (a scripted hostile broker, a broker the test leaves stopped).
    """
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(service.run(stop, ready), name="service-under-test")
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait(
            [task, waiter], timeout=ready_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task.done():
            task.result()  # raises the startup error
        assert ready.is_set(), "service did not become ready"
        yield service
    finally:
        waiter.cancel()
        stop.set()
        await asyncio.wait_for(task, 60)
    if drained:
        cfg = service.config
        s = mqtt_settings(cfg, service.mqtt_url)
        await assert_drained(
            service.mqtt_url,
            cfg.mqtt.mqtt_client_id,
            version=cfg.mqtt.mqtt_protocol,
            quiet_s=1.0,
            tls=s.tls,
            username=s.username,
            password=s.password,
        )


async def publish(broker_url: str, messages: Iterable[tuple[str, bytes]], *, qos: int = 1) -> int:
    """Publish every (topic, payload), waiting for each PUBACK; return the count."""
    host, port = broker_url.removeprefix("mqtt://").split(":")
    conn = MqttConnection(
        MqttSettings(
            host=host, port=int(port), client_id=f"pub-{time.monotonic_ns()}", clean_start=True
        )
    )
    n = 0
    async with conn:
        for topic, payload in messages:
            await conn.publish(topic, payload, qos=qos)
            n += 1
    return n


def counter(service: IngestService, name: str) -> float:
    """A metric's value, summed over its labels (0 when never set)."""
    return sum(
        sample.value
        for metric in service.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == name
    )


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


async def read_table(
    endpoint: str,
    table: str,
    service_layout: Any,
    sensors: Iterable[str],
    start_ms: int,
    end_ms: int,
    *,
    now_s: float | None = None,
) -> dict[str, list[Reading]]:
    """Every sensor's readings in the range (either layout; ``now_s``: the reader's clock)."""
    async with DynamoClient(
        table=table, aws=AwsSettings(region="us-east-1", endpoint_url=endpoint, **AWS)
    ) as client:
        return {
            s: await read_range(client, service_layout, s, start_ms, end_ms, now_s=now_s)
            for s in sorted(set(sensors))
        }


def tail(log: Path) -> str:
    """The end of a worker's log, for an assertion's message."""
    return log.read_text()[-2000:]


async def start_worker(
    cfg: Config, port: int, log: Path, *extra: str
) -> asyncio.subprocess.Process:
    """``iot-ingest run`` as a child process on ``cfg`` (plus ``extra`` flags), once ready."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": AWS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": AWS["aws_secret_access_key"],
    }
    args = [
        sys.executable, "-m", "ingest.cli", "run",
        "--mqtt-url", cfg.mqtt.mqtt_url or "", "--topic", cfg.mqtt.topic, "--table", cfg.dynamodb.table,
        "--dynamodb-endpoint", cfg.aws.dynamodb_endpoint or "", "--create-table",
        "--mqtt-client-id", cfg.mqtt.mqtt_client_id, "--data-dir", str(cfg.operations.data_dir),
        "--metrics-port", str(port), "--flush-interval-ms", "20", *extra,
    ]  # fmt: skip
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise AssertionError(f"worker exited with {proc.returncode}: {tail(log)}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError(f"worker not ready in 30 s: {tail(log)}")


async def metric(port: int, name: str) -> float:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def wait_until_metric(port: int, name: str, at_least: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while await metric(port, name) < at_least:
        assert time.monotonic() < deadline, f"{name} < {at_least}"
        await asyncio.sleep(0.1)


async def seal_as_worker(
    client: TableClient,
    layout: TableLayout,
    readings: list[Reading],
    *,
    received_ms: int,
    now_ms: int,
) -> None:
    """Seal ``readings`` (received at ``received_ms``) as a worker's window writer does at
    ``now_ms``: one set of parts per window, the seal log, and the stale and late marks
    its seals call for."""
    windows = OpenWindows(WindowScheme(layout))
    for r in readings:
        windows.add(r, received_ms)
    writer = WindowWriter(
        client=client,
        windows=windows,
        worker="w-seal",
        journal_ttl_s=3600,
        metrics=Metrics(),
        backoff=Backoff(base_ms=1, cap_ms=1),
        now_ms=lambda: now_ms,
    )
    await writer.seal_all()
