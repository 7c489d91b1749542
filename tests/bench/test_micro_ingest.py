"""Micro benchmarks of the ingest hot path: decode, reading → item, batch assembly.

Plain fast tests by default (pyproject passes ``--benchmark-disable``: each body
runs once and its result is checked). To measure and keep the figures for
comparison across commits::

    .venv/bin/pytest tests/bench/test_micro_*.py --benchmark-enable --benchmark-autosave
    .venv/bin/pytest-benchmark compare          # saved runs under .benchmarks/
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingest.acks import Pending
from ingest.batcher import Batcher
from ingest.codec import Limits, PayloadDecoder
from ingest.layout import Reading, TableLayout

NOW_MS = int(time.time() * 1000)


def _reading(i: int, sensor: bool) -> dict[str, Any]:
    r: dict[str, Any] = {
        "ts": NOW_MS - 60_000 + i,
        "temperature": 21.5 + (i % 97) / 10,
        "humidity": 45.25 - (i % 31) / 8,
        "pressure": 1013.2 + (i % 13) / 4,
    }
    if sensor:
        r["sensor_id"] = f"env-{i % 10_000:05d}"
    return r


SINGLE = orjson.dumps(_reading(7, sensor=False))
BATCH = orjson.dumps({"readings": [_reading(i, sensor=True) for i in range(100)]})


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
    sent = _reading(99, sensor=True)
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
