"""End to end: simulator → Mosquitto → ingest service → moto; `verify` passes.

The dead letters hold exactly the invalid messages the manifest counts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ingest.pipeline.service import IngestService
from ingest.storage.spool import iter_dead_letters
from simulator.faults import FaultConfig
from simulator.fleet import Fleet
from simulator.generator import Mode, TrafficOptions
from simulator.run import SimulationConfig, run_simulation
from simulator.verify import format_report, verify_table
from tests.ingest.harness import counter, make_config, running, wait_until

FAULTS = FaultConfig(
    duplicate_rate=0.03,
    late_rate=0.03,
    late_max_s=0.5,
    skew_rate=0.2,
    skew_max_s=20.0,
    malformed_rate=0.02,
    missing_rate=0.01,
    oversize_rate=0.005,
    dropout_rate=0.002,
    dropout_s=0.5,
)


@pytest.mark.parametrize("mode", ["device", "gateway"])
async def test_simulated_traffic_lands_exactly_in_the_table(
    mosquitto: Any, moto_server: Any, unique_name: str, tmp_path: Path, mode: Mode
) -> None:
    cfg = make_config(
        broker_url=mosquitto.url,
        endpoint=moto_server.endpoint_url,
        name=unique_name,
        data_dir=tmp_path,
    )
    sim = SimulationConfig(
        fleet=Fleet.uniform(devices=12, rate_per_s=240, kinds=("env", "power", "gps")),
        traffic=TrafficOptions(
            seed=9,
            start_ts_ms=int(time.time() * 1000) - 60_000,
            duration_s=2.0,
            mode=mode,
            gateways=2,
            batch_size=25,
            faults=FAULTS,
            manifest_detail=True,
        ),
        mqtt_url=mosquitto.url,
        topic_pattern=f"{unique_name}/{{sensor_id}}/telemetry",
        client_id_prefix=f"{unique_name[-8:]}-",
    )
    service = IngestService(cfg)
    async with running(service):
        summary, manifest = await run_simulation(sim)
        assert summary.complete
        await wait_until(
            lambda: (
                counter(service, "iot_ingest_messages_completed_total") >= summary.messages_sent
            ),
            60,
            "every simulated message durable",
        )
    report = await verify_table(manifest, table=unique_name, endpoint_url=moto_server.endpoint_url)
    assert report.ok, "\n".join(format_report(report))
    assert report.readings_found == manifest["totals"]["valid_readings"] > 300
    letters = [dl for _, dl in iter_dead_letters(tmp_path / "deadletters")]
    assert len(letters) == manifest["invalid"]["messages"] > 0
    report.check_dead_letters(manifest, tmp_path / "deadletters")
    assert report.ok and report.dead_letters_found == report.dead_letters_expected
    assert any(line.startswith("dead letters:") for line in format_report(report))
