"""Broker restart with persistence on, while a QoS 1 publisher keeps going.

Mosquitto persists by snapshot (deploy/mosquitto.conf: ``autosave_interval 30``, and
on a clean shutdown). So:

* a clean stop (SIGTERM) saves everything: nothing the broker acknowledged is lost;
* a SIGKILL loses what the broker acknowledged after its last snapshot and had not
  yet delivered: the *broker* loses it, not the service. The test asserts that only
  readings from before the kill can be missing, and reports how many were.

Before the fault, the test asks Mosquitto for a snapshot (SIGUSR1): the state of a
broker that has been up longer than ``autosave_interval`` since the worker subscribed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest

from ingest.pipeline.service import IngestService
from tests.chaos.conftest import FULL, sim_config, simulate, verify_until
from tests.ingest.harness import counter, make_config, running

pytestmark = pytest.mark.chaos

RUN_S = 40 if FULL else 8
FAULT_AT_S = 3.0
DOWN_S = 10.0 if FULL else 1.0


@pytest.mark.timeout(240 if FULL else 150)
@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_broker_restart_under_qos1_load(
    mosquitto: Any,
    moto_server: Any,
    unique_name: str,
    tmp_path: Path,
    figure: Callable[..., None],
    table_layout: dict[str, Any],
    how: Literal["stop", "kill"],
) -> None:
    cfg = make_config(
        broker_url=mosquitto.url,
        endpoint=moto_server.endpoint_url,
        name=unique_name,
        data_dir=tmp_path,
        **table_layout,
    )
    sim = sim_config(mosquitto.url, unique_name, rate_per_s=200, duration_s=RUN_S, devices=10)
    start_ts_ms = sim.traffic.start_ts_ms
    service = IngestService(cfg)
    async with running(service):
        # Snapshot now: the worker's persistent session and subscription are on disk.
        os.kill(mosquitto._proc.pid, signal.SIGUSR1)
        await asyncio.sleep(0.5)
        t_sim = time.monotonic()
        publishing = asyncio.create_task(simulate(sim), name="publisher")
        await asyncio.sleep(FAULT_AT_S)
        t_fault = time.monotonic()
        await (mosquitto.kill() if how == "kill" else mosquitto.stop())
        await asyncio.sleep(DOWN_S)
        await mosquitto.start()
        t_up = time.monotonic()
        while not service.readiness()[0]:
            assert time.monotonic() - t_up < 60, service.readiness()
            await asyncio.sleep(0.05)
        reconnect_s = time.monotonic() - t_up
        summary, manifest = await publishing
        assert summary.complete, summary
        v, _ = await verify_until(manifest, unique_name, moto_server.endpoint_url, 45)
        recovery_s = time.monotonic() - t_fault
        reconnects = int(counter(service, "iot_ingest_mqtt_reconnects_total"))
    missing = sorted(ts for d in v.report.diffs for ts in d.missing_ts)
    # Logical timestamps follow the publisher's clock from its start.
    fault_ts_ms = start_ts_ms + int((t_fault - t_sim) * 1000)
    figure(
        f"broker-{'sigkill' if how == 'kill' else 'clean-stop'}",
        published=summary.messages_sent,
        publisher_reconnects=summary.reconnects,
        verified=v.found_items,
        expected=v.expected,
        lost=v.lost,
        duplicates=v.duplicates,
        down_s=DOWN_S,
        worker_reconnects=reconnects,
        reconnect_after_up_s=round(reconnect_s, 2),
        fault_to_verified_s=round(recovery_s, 1),
    )
    assert reconnects >= 1 and summary.reconnects >= 1
    assert v.duplicates == 0 and v.changed == 0, v.explain()
    if how == "stop":
        assert v.lost == 0, v.explain()
        assert v.found_items == v.expected == summary.valid_readings
    else:
        # Only what the broker held unsaved at the kill may be gone (+1 s of publisher lag).
        late = [ts for ts in missing if ts > fault_ts_ms + 1000]
        assert late == [], f"{len(late)} readings published after the restart are missing"
