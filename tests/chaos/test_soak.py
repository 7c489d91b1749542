"""Soak: a steady moderate rate with the simulator's data faults on.

Duplicates, late and clock-skewed readings, malformed, metric-less and oversize
messages, device dropouts. Quick: 60 s; ``CHAOS_FULL=1``: 20 minutes. Memory is
sampled every half second (RSS of the worker subprocess), the queue gauges every
second; the manifest is verified (zero loss, one item per key) and the dead letters
are exactly the invalid messages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.storage.spool import iter_dead_letters
from tests.chaos.conftest import (
    DATA_FAULTS,
    FULL,
    Worker,
    sim_config,
    simulate,
    verify_until,
    worker_options,
)

pytestmark = pytest.mark.chaos

SOAK_S = 1200 if FULL else 60
RATE_PER_S = 200
COMPLETED = "iot_ingest_messages_completed_total"
QUEUES = (
    "iot_ingest_unacked_messages",
    "iot_ingest_inbox_messages",
    "iot_ingest_write_queue_batches",
)
# Quick runs are too short for a trend: allow the warm-up growth of caches and allocators.
RSS_GROWTH_LIMIT_MB = 25.0


# After publishing: the drain, then reading every key back, which moto serves at a few
# hundred readings per second (quick: 20-34 s for 11,552; full: 506 s for 231,161).
@pytest.mark.timeout(SOAK_S + (1500 if FULL else 180))
async def test_soak_with_data_faults_keeps_memory_and_queues_flat_and_loses_nothing(
    mosquitto: Any,
    moto_server: Any,
    unique_name: str,
    tmp_path: Path,
    workers: Callable[..., Worker],
    figure: Callable[..., None],
) -> None:
    worker = workers(
        "soak",
        **worker_options(
            broker_url=mosquitto.url,
            endpoint=moto_server.endpoint_url,
            name=unique_name,
            data_dir=tmp_path / "data",
        ),
    )
    await worker.start()
    sim = sim_config(
        mosquitto.url,
        unique_name,
        rate_per_s=RATE_PER_S,
        duration_s=SOAK_S,
        devices=40,
        faults=DATA_FAULTS,
        seed=5,
    )
    publishing = asyncio.create_task(simulate(sim), name="publisher")
    queue_samples: list[tuple[float, dict[str, float]]] = []
    t0 = time.monotonic()
    while not publishing.done():
        queue_samples.append((time.monotonic() - t0, await worker.metrics(*QUEUES)))
        await asyncio.sleep(1.0)
    summary, manifest = await publishing
    publish_s = time.monotonic() - t0
    assert summary.complete, summary
    await worker.wait_metric(COMPLETED, summary.messages_sent, timeout_s=60)
    drain_s = time.monotonic() - t0 - publish_s
    print(f"soak: published in {publish_s:.0f} s, drained in {drain_s:.1f} s", flush=True)
    t_verify = time.monotonic()
    v, _ = await verify_until(manifest, unique_name, moto_server.endpoint_url, 30)
    verify_s = time.monotonic() - t_verify
    mem = worker.memory
    # After a warm-up tenth of the run, memory must not trend up.
    rss_start, rss_end = mem.rss_at(0.1), mem.rss_at(1.0)
    assert await worker.stop() == 0, worker.tail()
    letters = sum(1 for _ in iter_dead_letters(tmp_path / "data" / "deadletters"))

    half = len(queue_samples) // 2

    def peak(name: str, part: list[tuple[float, dict[str, float]]]) -> float:
        return max((s[name] for _, s in part), default=0.0)

    first = {n: peak(n, queue_samples[:half]) for n in QUEUES}
    second = {n: peak(n, queue_samples[half:]) for n in QUEUES}
    figure(
        "soak-data-faults",
        duration_s=SOAK_S,
        rate_per_s=RATE_PER_S,
        published=summary.messages_sent,
        verified=v.found_items,
        expected=v.expected,
        lost=v.lost,
        duplicates=v.duplicates,
        injected_faults=sum(summary.faults.values()),
        invalid_messages=manifest["invalid"]["messages"],
        dead_letters=letters,
        rss_start_mb=round(rss_start, 1),
        rss_end_mb=round(rss_end, 1),
        peak_rss_mb=round(mem.peak_mb, 1),
        peak_unacked_first_half=int(first["iot_ingest_unacked_messages"]),
        peak_unacked_second_half=int(second["iot_ingest_unacked_messages"]),
        peak_inbox=int(
            max(first["iot_ingest_inbox_messages"], second["iot_ingest_inbox_messages"])
        ),
        publish_s=round(publish_s, 1),
        drain_s=round(drain_s, 1),
        verify_s=round(verify_s, 1),
    )
    assert v.lost == 0 and v.duplicates == 0 and v.changed == 0, v.explain()
    assert v.found_items == v.expected == summary.valid_readings
    assert letters == manifest["invalid"]["messages"] > 0
    assert rss_end - rss_start < RSS_GROWTH_LIMIT_MB, (rss_start, rss_end)
    # No growth in queues: the second half never holds much more than the first did.
    for name in QUEUES:
        assert second[name] <= 2 * first[name] + 200, (name, first[name], second[name])
