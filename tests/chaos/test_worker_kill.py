"""An ingest worker SIGKILLed under load, two workers in one shared subscription.

The killed worker's unacknowledged messages stay in its persistent session at the
broker; when it comes back (same client id) the broker re-sends them. Some of them
may already have been written before the kill: keys are deterministic, so the
second write of a reading overwrites the same item (one item per key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import FULL, Worker, sim_config, simulate, verify_until, worker_options

pytestmark = pytest.mark.chaos

RUN_S = 60 if FULL else 10
KILL_AT_S = 3.0
COMPLETED = "iot_ingest_messages_completed_total"


@pytest.mark.timeout(300 if FULL else 150)
async def test_sigkill_one_of_two_shared_workers_loses_and_duplicates_nothing(
    mosquitto: Any,
    moto_server: Any,
    unique_name: str,
    tmp_path: Path,
    workers: Callable[..., Worker],
    figure: Callable[..., None],
    table_layout: dict[str, Any],
) -> None:
    common = worker_options(
        broker_url=mosquitto.url,
        endpoint=moto_server.endpoint_url,
        name=unique_name,
        data_dir=tmp_path,
        shared_group="chaos",
        **table_layout,
    )
    a = workers(
        "a", **{**common, "mqtt_client_id": f"{unique_name}-a"[-64:], "data_dir": tmp_path / "a"}
    )
    b = workers(
        "b", **{**common, "mqtt_client_id": f"{unique_name}-b"[-64:], "data_dir": tmp_path / "b"}
    )
    await asyncio.gather(a.start(), b.start())
    sim = sim_config(mosquitto.url, unique_name, rate_per_s=300, duration_s=RUN_S, devices=20)
    publishing = asyncio.create_task(simulate(sim), name="publisher")
    await asyncio.sleep(KILL_AT_S)
    a_before = await a.metrics(COMPLETED, "iot_ingest_unacked_messages")
    await a.kill()
    t_kill = time.monotonic()
    await a.start()
    restart_s = time.monotonic() - t_kill
    summary, manifest = await publishing
    assert summary.complete, summary
    v, _ = await verify_until(manifest, unique_name, moto_server.endpoint_url, 60)
    recovery_s = time.monotonic() - t_kill
    a_after, b_done = await a.metric(COMPLETED), await b.metric(COMPLETED)
    peak_rss = max(a.memory.peak_mb, b.memory.peak_mb)
    assert await b.stop() == 0, b.tail()
    assert await a.stop() == 0, a.tail()
    figure(
        "worker-sigkill-shared",
        published=summary.messages_sent,
        verified=v.found_items,
        expected=v.expected,
        lost=v.lost,
        duplicates=v.duplicates,
        killed_completed_before=int(a_before[COMPLETED]),
        killed_unacked_at_kill=int(a_before["iot_ingest_unacked_messages"]),
        restarted_completed=int(a_after),
        survivor_completed=int(b_done),
        extra_completions=int(a_before[COMPLETED] + a_after + b_done - summary.messages_sent),
        restart_s=round(restart_s, 1),
        recovery_s=round(recovery_s, 1),
        peak_rss_mb=round(peak_rss, 1),
    )
    assert a_before[COMPLETED] > 0 and b_done > 0, "both workers must have taken part"
    assert v.lost == 0 and v.duplicates == 0 and v.changed == 0, v.explain()
    assert v.found_items == v.expected == summary.valid_readings
