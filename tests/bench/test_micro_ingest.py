"""Micro benchmarks of the ingest hot path: decode, reading → item, batch assembly.

Plain fast tests by default (pyproject passes ``--benchmark-disable``: each body
runs once and its result is checked). To measure and keep the figures for
comparison across commits::

    .venv/bin/pytest tests/bench/test_micro_*.py --benchmark-enable --benchmark-autosave
    .venv/bin/pytest-benchmark compare          # saved runs under .benchmarks/
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import uvloop
from pytest_benchmark.fixture import BenchmarkFixture

from ingest.aws.settings import AwsSettings
from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.mqtt.client import Message
from ingest.pipeline.acks import AckTracker, Pending
from ingest.pipeline.batcher import Batch, Batcher, Placer, ReadingPlacer
from ingest.pipeline.codec import Limits, PayloadDecoder
from ingest.pipeline.decode import DecodeStage, Inbox
from ingest.pipeline.packing import JournalPlacer, OpenWindows, WindowWriter
from ingest.pipeline.registry import SensorRegistry
from ingest.pipeline.writer import Writer
from ingest.storage.dynamohttp import LeanDynamoClient
from ingest.storage.journal import JournalSequence
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.windows import WindowScheme

NOW_MS = int(time.time() * 1000)


def _reading(i: int, gateway: str | None) -> dict[str, Any]:
    """A reading; from a gateway it names its sensor, under the gateway's id (the default rule)."""
    r: dict[str, Any] = {
        "ts": NOW_MS - 60_000 + i,
        "temperature": 21.5 + (i % 97) / 10,
        "humidity": 45.25 - (i % 31) / 8,
        "pressure": 1013.2 + (i % 13) / 4,
    }
    if gateway is not None:
        r["sensor_id"] = f"{gateway}:env-{i % 10_000:05d}"
    return r


SINGLE = orjson.dumps(_reading(7, gateway=None))
BATCH = orjson.dumps({"readings": [_reading(i, gateway="gw-0000") for i in range(100)]})


@pytest.fixture
def decoder() -> PayloadDecoder:
    return PayloadDecoder(sensor_topic_level=1, limits=Limits())


@pytest.mark.benchmark(group="decode")
def test_decode_single_reading(benchmark: BenchmarkFixture, decoder: PayloadDecoder) -> None:
    readings, rejected = benchmark(decoder.decode, "sensors/env-00007/telemetry", SINGLE, NOW_MS)
    assert not rejected
    assert [(r.sensor_id, r.ts_ms) for r in readings] == [("env-00007", NOW_MS - 60_000 + 7)]


@pytest.mark.benchmark(group="decode")
def test_decode_batch_of_100(benchmark: BenchmarkFixture, decoder: PayloadDecoder) -> None:
    readings, rejected = benchmark(decoder.decode, "sensors/gw-0000/telemetry", BATCH, NOW_MS)
    assert not rejected
    assert len(readings) == 100
    sent = _reading(99, gateway="gw-0000")
    assert readings[99].sensor_id == sent.pop("sensor_id")
    assert readings[99].ts_ms == sent.pop("ts")
    assert readings[99].metrics == sent


@pytest.mark.benchmark(group="layout")
def test_reading_to_item_100(benchmark: BenchmarkFixture) -> None:
    layout = TableLayout()
    readings = [
        Reading(f"env-{i:05d}", NOW_MS + i, {"temperature": 21.5, "humidity": 45.25}, {})
        for i in range(100)
    ]

    def run() -> list[dict[str, Any]]:
        to_item = layout.to_item
        return [to_item(r) for r in readings]

    items = benchmark(run)
    assert len(items) == 100
    assert items[0]["pk"]["S"] == layout.partition_key("env-00000", NOW_MS)
    assert items[0]["m"] == {"M": {"temperature": {"N": "21.5"}, "humidity": {"N": "45.25"}}}


@pytest.mark.benchmark(group="batch")
def test_batch_assembly_1000_items(benchmark: BenchmarkFixture) -> None:
    layout = TableLayout()
    items = [
        layout.to_item(Reading(f"env-{i % 300:05d}", NOW_MS + i, {"t": 1.5}, {}))
        for i in range(1000)
    ]
    pending = Pending("sensors/gw/telemetry", 1, 1, 0, NOW_MS, 1000)

    def run() -> list[int]:
        batcher = Batcher(flush_interval_ms=50)
        sizes = []
        for it in items:
            batch = batcher.add(it, pending)
            if batch is not None:
                sizes.append(len(batch))
        last = batcher.take()
        if last is not None:
            sizes.append(len(last))
        return sizes

    sizes = benchmark(run)
    assert sizes == [25] * 40


class _NoDeadLetters:
    """Every payload here is valid: a dead letter would be a bug."""

    async def put(self, *args: object) -> None:
        raise AssertionError(f"unexpected dead letter: {args}")

    async def put_item(self, *args: object) -> None:
        raise AssertionError(f"unexpected dead letter: {args}")


async def _pipeline_pass(messages: list[Message], layout: str = "reading") -> tuple[int, int]:
    """Decode → item → batch → BatchWriteItem body + SigV4 → acks, with the HTTP send stubbed.

    ``packed``: the readings go into journal items (and open windows), then are staged
    and sealed as a running worker would: the whole CPU a reading costs on that layout.
    """
    client = LeanDynamoClient(
        table="bench",
        aws=AwsSettings(
            region="us-east-1",
            endpoint_url="http://127.0.0.1:9",
            aws_access_key_id="a",
            aws_secret_access_key="b",
        ),
    )
    bodies = [0]

    async def request(operation: str, body: bytes) -> dict[str, Any]:
        client._signer.headers(await client._credentials(), "DynamoDB_20120810." + operation, body)
        bodies[0] += 1
        return {}

    client.request = request  # type: ignore[method-assign]
    metrics = Metrics()
    acked: list[int] = []
    acks = AckTracker(acked.extend)
    epoch = acks.new_epoch()
    queue: asyncio.Queue[Batch] = asyncio.Queue(16)
    windows = OpenWindows(WindowScheme(TableLayout(kind="packed")))
    placer: Placer = ReadingPlacer(TableLayout(), Batcher(flush_interval_ms=50))
    if layout == "packed":
        placer = JournalPlacer(
            worker="bench",
            windows=windows,
            flush_interval_ms=50,
            max_messages=5_000,
            ttl_s=172_800,
            sequence=JournalSequence(),
        )
    stage = DecodeStage(
        inbox=Inbox(100_000),
        decoder=PayloadDecoder(sensor_topic_level=1, limits=Limits()),
        placer=placer,
        write_queue=queue,
        acks=acks,
        deadletters=_NoDeadLetters(),  # type: ignore[arg-type]
        registry=SensorRegistry(client, metrics),  # type: ignore[arg-type]
        metrics=metrics,
    )
    writer = Writer(
        sink=client,
        acks=acks,
        deadletters=_NoDeadLetters(),  # type: ignore[arg-type]
        metrics=metrics,
        backoff=Backoff(base_ms=1, cap_ms=1),
        deadline_s=1,
    )
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(writer.run(queue)) for _ in range(4)]
        decoding = tg.create_task(stage.run())
        for i in range(0, len(messages), 20):  # chunks of 20, as from one socket read
            stage.inbox.put(epoch, NOW_MS, messages[i : i + 20])
        stage.inbox.close()
        await decoding  # returns once every message is decoded and its batch queued
        await queue.join()
        if layout == "packed":
            staging = WindowWriter(
                client=client,
                windows=windows,
                worker="bench",
                journal_ttl_s=172_800,
                metrics=metrics,
                backoff=Backoff(base_ms=1, cap_ms=1),
            )
            await staging.seal_all()  # staged, then every window sealed
            assert windows.readings == 0
        for t in tasks:
            t.cancel()
    return len(acked), bodies[0]


@pytest.mark.benchmark(group="pipeline")
def test_pipeline_gateway_100_messages_of_100(benchmark: BenchmarkFixture) -> None:
    """The Python hot path per gateway reading, network excluded (divide the time by 10,000)."""
    messages: list[Message] = [
        (
            "sensors/gw-1/telemetry",
            orjson.dumps({"readings": [_reading(m * 100 + i, gateway="gw-1") for i in range(100)]}),
            1,
            m + 1,
        )
        for m in range(100)
    ]

    def run() -> tuple[int, int]:
        return uvloop.run(_pipeline_pass(messages))

    acked, requests = benchmark(run)
    assert (acked, requests) == (100, 400)  # every message acked; 25 items per request


def _steady_messages() -> list[Message]:
    """100 gateway messages of 100 readings of 40 sensors: 250 readings a sensor, as a
    15-minute window holds at the gateway scenario's 0.3 Hz (a packed table's steady state)."""
    messages: list[Message] = []
    for m in range(100):
        readings = [_reading(m * 100 + i, gateway="gw-1") for i in range(100)]
        for r in readings:
            r["sensor_id"] = r["sensor_id"][:-5] + f"{int(r['sensor_id'][-5:]) % 40:05d}"
        messages.append(("sensors/gw-1/telemetry", orjson.dumps({"readings": readings}), 1, m + 1))
    return messages


@pytest.mark.benchmark(group="pipeline-steady")
@pytest.mark.parametrize("layout", ["reading", "packed"])
def test_pipeline_steady_state_per_layout(benchmark: BenchmarkFixture, layout: str) -> None:
    """The hot path per reading on each layout, same messages (divide the time by 10,000);
    ``packed`` includes what its readings cost later: staging and the seal of every window."""
    messages = _steady_messages()

    def run() -> tuple[int, int]:
        return uvloop.run(_pipeline_pass(messages, layout))

    acked, requests = benchmark(run)
    assert acked == 100
    # reading: 25 items a request; packed: one journal item, staging, 40 windows' seals,
    # and the seal round's read of the archive policy (none recorded here).
    assert requests == (400 if layout == "reading" else 7)
