"""Runs against a real Mosquitto: the manifest matches what a subscriber received; rates; faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from simulator.cli import main
from simulator.errors import PublishError
from simulator.faults import FaultConfig
from simulator.fleet import Fleet
from simulator.generator import TrafficOptions
from simulator.manifest import load_manifest
from simulator.publisher import MemoryPublisher
from simulator.run import SimulationConfig, run_simulation
from tests.simulator.helpers import Subscriber, assert_matches_manifest, decode_messages

FAULTS = FaultConfig(
    duplicate_rate=0.03,
    late_rate=0.03,
    late_max_s=0.5,
    skew_rate=0.2,
    skew_max_s=30.0,
    malformed_rate=0.02,
    missing_rate=0.02,
    oversize_rate=0.005,
    dropout_rate=0.002,
    dropout_s=0.5,
)


def _config(broker_url: str, prefix: str, **kw: Any) -> SimulationConfig:
    traffic_kw = {
        k: kw.pop(k)
        for k in (
            "mode",
            "faults",
            "duration_s",
            "count_limit",
            "gateways",
            "batch_size",
            "manifest_detail",
        )
        if k in kw
    }
    fleet = kw.pop("fleet", None) or Fleet.uniform(devices=20, rate_per_s=400, kinds=("env", "gps"))
    mode = traffic_kw.get("mode", "device")
    return SimulationConfig(
        fleet=fleet,
        traffic=TrafficOptions(
            seed=5,
            start_ts_ms=int(time.time() * 1000),
            duration_s=traffic_kw.pop("duration_s", 2.0),
            **traffic_kw,
        ),
        mqtt_url=broker_url,
        topic_pattern=prefix
        + ("/{gateway_id}" if mode == "gateway" else "/{sensor_id}")
        + "/telemetry",
        client_id_prefix=f"{prefix}-",
        **kw,
    )


@pytest.mark.parametrize(
    ("mode", "version"),
    [("device", "3.1.1"), ("gateway", "5"), ("device", "5"), ("gateway", "3.1.1")],
)
async def test_manifest_matches_what_a_subscriber_received(
    mosquitto: Any, unique_name: str, tmp_path: Path, mode: str, version: str
) -> None:
    sub = await asyncio.to_thread(Subscriber, mosquitto.url, f"{unique_name}/+/telemetry")
    try:
        config = _config(
            mosquitto.url,
            unique_name,
            mode=mode,
            protocol_version=version,
            faults=FAULTS,
            gateways=3,
            batch_size=20,
            manifest_path=tmp_path / "manifest.json",
        )
        summary, manifest = await run_simulation(config)
        received = await asyncio.to_thread(sub.collect, summary.messages_sent)
    finally:
        await asyncio.to_thread(sub.close)
    assert summary.complete and summary.messages_acked == summary.messages_sent
    assert load_manifest(tmp_path / "manifest.json") == manifest
    assert len(received) == summary.messages_sent
    assert_matches_manifest(decode_messages(received), manifest)
    faults = manifest["faults"]
    assert all(
        faults[k] > 0
        for k in ("duplicates", "late", "skewed_readings", "malformed", "missing_fields")
    )
    assert manifest["totals"]["valid_readings"] == sum(
        s["count"] for s in manifest["sensors"].values()
    )
    assert manifest["run"]["protocol_version"] == version


async def test_qos0_publishes_everything_on_a_healthy_broker(
    mosquitto: Any, unique_name: str
) -> None:
    sub = await asyncio.to_thread(Subscriber, mosquitto.url, f"{unique_name}/+/telemetry")
    try:
        summary, manifest = await run_simulation(
            _config(mosquitto.url, unique_name, qos=0, duration_s=1.0)
        )
        received = await asyncio.to_thread(sub.collect, summary.messages_sent)
    finally:
        await asyncio.to_thread(sub.close)
    assert summary.messages_acked == 0 and summary.complete
    assert len(received) == summary.messages_sent == summary.readings_generated
    assert_matches_manifest(decode_messages(received), manifest)


@pytest.mark.parametrize("mode", ["device", "gateway"])
async def test_achieved_rate_follows_the_target(
    mosquitto: Any, unique_name: str, mode: str
) -> None:
    fleet = Fleet.uniform(devices=200, rate_per_s=4000)
    summary, _ = await run_simulation(
        _config(mosquitto.url, unique_name, fleet=fleet, mode=mode, duration_s=3.0)
    )
    assert summary.scheduled_rate_per_s == pytest.approx(4000, rel=0.02)
    # a benchmark-style check: generous, since the test machine is shared
    assert summary.achieved_rate_per_s == pytest.approx(4000, rel=0.15)
    assert summary.readings_generated == pytest.approx(12_000, abs=200)
    assert summary.complete


async def test_ramp_up_and_spike_change_the_rate() -> None:
    fleet = Fleet.uniform(devices=50, rate_per_s=500)
    from simulator.schedule import RateProfile, Spike

    config = SimulationConfig(
        fleet=fleet,
        traffic=TrafficOptions(
            seed=1,
            start_ts_ms=1_763_780_000_000,
            duration_s=3.0,
            profile=RateProfile(ramp_s=1.0, spikes=(Spike(at_s=2.0, duration_s=0.5, factor=4.0),)),
        ),
        realtime=False,
    )
    pub = MemoryPublisher(connections=len(fleet))
    summary, _ = await run_simulation(config, publisher=pub)
    # 0.5 s worth in the ramp second, 1 s steady, 0.5 s at 4x, 0.5 s steady
    assert summary.readings_generated == pytest.approx(500 * (0.5 + 1.0 + 2.0 + 0.5), abs=60)


async def test_reconnects_and_resends_after_a_broker_restart(
    mosquitto: Any, unique_name: str
) -> None:
    config = _config(
        mosquitto.url, unique_name, fleet=Fleet.uniform(devices=5, rate_per_s=250), duration_s=3.0
    )
    task = asyncio.create_task(run_simulation(config))
    await asyncio.sleep(0.8)
    await mosquitto.stop()
    await asyncio.sleep(0.5)
    await mosquitto.start()
    summary, manifest = await task
    assert summary.connections_lost >= 5
    assert summary.reconnects >= 5
    assert summary.complete and summary.unconfirmed_messages == 0
    assert manifest["complete"]


async def test_unreachable_broker_fails_with_the_url(unique_name: str) -> None:
    config = _config("mqtt://127.0.0.1:1", unique_name, duration_s=0.5)
    with pytest.raises(ExceptionGroup) as info:
        await run_simulation(config)
    assert info.group_contains(PublishError, match="mqtt://127.0.0.1:1")


async def test_cli_simulate_writes_manifest_and_json(
    mosquitto: Any, unique_name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "run.json"
    argv = [
        "simulate",
        "--mqtt-url",
        mosquitto.url,
        "--devices",
        "10",
        "--rate",
        "200",
        "--duration",
        "1",
        "--mode",
        "gateway",
        "--gateways",
        "2",
        "--seed",
        "3",
        "--manifest",
        str(manifest),
        "--topic-pattern",
        unique_name + "/{gateway_id}/telemetry",
        "--fault-malformed",
        "0.05",
        "--spike",
        "0.5:0.2:2",
        "--json",
    ]
    code = await asyncio.to_thread(main, argv)
    out = capfd.readouterr().out
    assert code == 0
    summary = orjson.loads(out)
    assert summary["complete"] and summary["mode"] == "gateway" and summary["connections"] == 2
    m = load_manifest(manifest)
    assert m["totals"]["readings_generated"] == summary["readings_generated"]
    assert m["faults"]["malformed"] == summary["faults"]["malformed"] > 0
    assert len(m["sensors"]) == 10
    # Under their gateway's id, as the service's default sensor-id rule wants them.
    assert {s.partition(":")[0] for s in m["sensors"]} == {"gw-0000", "gw-0001"}
    assert m["run"]["sensor_id_separator"] == ":"


@pytest.mark.parametrize(
    ("flag", "expected"), [([], ":"), (["--sensor-id-separator", "none"], None)]
)
def test_cli_sensor_id_separator(flag: list[str], expected: str | None) -> None:
    import argparse

    from simulator.cli import add_commands, config_from_args

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--mode", "gateway", "--devices", "4", *flag])
    config = config_from_args(args)
    assert config.traffic.sensor_id_separator == expected


async def test_cli_reports_bad_options_with_exit_status_2(
    capfd: pytest.CaptureFixture[str],
) -> None:
    code = await asyncio.to_thread(
        main, ["simulate", "--devices", "1", "--rate", "900", "--duration", "1"]
    )
    assert code == 2
    assert "900/s" in capfd.readouterr().err
