"""Each fault mode produces what it claims, and the manifest counts it."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import orjson
import pytest

from ingest.pipeline.codec import Limits, PayloadDecoder
from simulator.faults import FaultConfig
from simulator.fleet import Fleet
from simulator.generator import Mode, TrafficGenerator, TrafficOptions
from tests.simulator.helpers import START_TS_MS, decode_messages, generate_all, payload_readings

DEVICES = 20


def _run(
    faults: FaultConfig,
    *,
    rate_per_device: float = 100.0,
    duration_s: float = 3.0,
    mode: Mode = "device",
) -> tuple[Fleet, TrafficGenerator, list[tuple[int, bytes]]]:
    fleet = Fleet.uniform(devices=DEVICES, rate_per_s=DEVICES * rate_per_device)
    options = TrafficOptions(
        seed=11,
        start_ts_ms=START_TS_MS,
        duration_s=duration_s,
        faults=faults,
        mode=mode,
        gateways=2,
    )
    gen, messages = generate_all(fleet, options)
    return fleet, gen, messages


def _binomial_ok(observed: int, n: int, p: float) -> bool:
    sd = (n * p * (1 - p)) ** 0.5
    return bool(abs(observed - n * p) <= 5 * sd + 2)


def _device_readings(
    fleet: Fleet, messages: list[tuple[int, bytes]]
) -> list[tuple[str, dict[str, Any]]]:
    return [(fleet.sensor_ids[c], r) for c, p in messages for r in payload_readings(p)]


def test_duplicates_are_identical_second_copies() -> None:
    fleet, gen, messages = _run(FaultConfig(duplicate_rate=0.05))
    readings = _device_readings(fleet, messages)
    copies = Counter((sid, orjson.dumps(r, option=orjson.OPT_SORT_KEYS)) for sid, r in readings)
    keys = Counter((sid, r["ts"]) for sid, r in readings)
    duplicated = [k for k, n in copies.items() if n == 2]
    assert max(copies.values()) == 2
    assert len(duplicated) == gen.fault_summary()["duplicates"]
    # a duplicate never differs in value: as many distinct keys as distinct readings
    assert len(keys) == len(copies)
    assert _binomial_ok(len(duplicated), gen.readings_generated, 0.05)
    assert gen.manifest.valid_readings == len(keys) == gen.readings_generated


def test_late_readings_arrive_after_newer_ones() -> None:
    # 100 readings/s per device: a reading held back one tick (10 ms) or more comes after the next
    fleet, gen, messages = _run(FaultConfig(late_rate=0.03, late_max_s=1.0))
    newest: dict[str, int] = {}
    out_of_order = 0
    for sid, r in _device_readings(fleet, messages):
        ts = int(r["ts"])
        if ts < newest.get(sid, -1):
            out_of_order += 1
        newest[sid] = max(ts, newest.get(sid, -1))
    late = gen.fault_summary()["late"]
    # all but those held back from the very end of the run (nothing newer follows them)
    assert late - DEVICES <= out_of_order <= late
    assert late > 0
    assert _binomial_ok(late, gen.readings_generated, 0.03)
    assert gen.manifest.valid_readings == gen.readings_generated  # late readings are valid


def test_clock_skew_shifts_whole_devices_by_a_constant() -> None:
    fleet, _, clean = _run(FaultConfig(), duration_s=1.0)
    _, gen, skewed = _run(FaultConfig(skew_rate=0.5, skew_max_s=30.0), duration_s=1.0)
    offsets: dict[str, set[int]] = {}
    for (sid, a), (_, b) in zip(
        _device_readings(fleet, clean), _device_readings(fleet, skewed), strict=True
    ):
        offsets.setdefault(sid, set()).add(int(b["ts"]) - int(a["ts"]))
        assert {k: v for k, v in a.items() if k != "ts"} == {
            k: v for k, v in b.items() if k != "ts"
        }
    assert all(len(v) == 1 for v in offsets.values())
    shifted = [next(iter(v)) for v in offsets.values() if v != {0}]
    assert len(shifted) == gen.fault_summary()["skewed_devices"] > 0
    assert all(0 < abs(s) <= 30_000 for s in shifted)


def test_malformed_payloads_are_refused_by_the_decoder_in_every_variant() -> None:
    fleet, gen, messages = _run(FaultConfig(malformed_rate=0.05))
    decoder = PayloadDecoder(sensor_topic_level=1, limits=Limits())
    refused = 0
    for c, p in messages:
        readings, rejections = decoder.decode(
            f"sensors/{fleet.sensor_ids[c]}/telemetry", p, START_TS_MS
        )
        assert bool(readings) != bool(rejections)
        refused += bool(rejections)
    faults = gen.fault_summary()
    assert refused == faults["malformed"] > 0
    variants = {k for k in gen.invalid_counts if k.startswith("malformed.")}
    assert len(variants) == 6
    assert gen.manifest.valid_readings == gen.readings_generated - refused


@pytest.mark.parametrize("mode", ["device", "gateway"])
def test_missing_fields_readings_have_no_metrics(mode: Mode) -> None:
    fleet, gen, messages = _run(FaultConfig(missing_rate=0.05), mode=mode)
    decoder = PayloadDecoder(sensor_topic_level=1, limits=Limits())
    reasons = []
    for c, p in messages:
        sid = fleet.sensor_ids[c] if mode == "device" else f"gw-{c:04d}"
        _, rejections = decoder.decode(f"sensors/{sid}/telemetry", p, START_TS_MS)
        reasons += [r.reason for r in rejections]
    assert len(reasons) == gen.fault_summary()["missing_fields"] > 0
    assert all("no numeric metrics" in r for r in reasons)


def test_oversize_messages_have_the_asked_size() -> None:
    fleet, gen, messages = _run(
        FaultConfig(oversize_rate=0.01, oversize_bytes=270_000), duration_s=1.0
    )
    big = [p for _, p in messages if len(p) > 10_000]
    assert len(big) == gen.fault_summary()["oversize"] > 0
    assert {len(p) for p in big} == {270_000}
    received = decode_messages(
        [(f"sensors/{fleet.sensor_ids[c]}/telemetry", p) for c, p in messages],
        received_ms=START_TS_MS,
    )
    assert received.rejected_messages == len(big)


def test_dropouts_silence_devices_for_the_asked_time() -> None:
    fleet, clean_gen, clean = _run(FaultConfig(), rate_per_device=10.0, duration_s=5.0)
    _, gen, messages = _run(
        FaultConfig(dropout_rate=0.01, dropout_s=1.0), rate_per_device=10.0, duration_s=5.0
    )
    faults = gen.fault_summary()
    assert faults["dropouts"] > 0
    assert gen.readings_generated == clean_gen.readings_generated - faults["dropped_readings"]
    # every silence is at least dropout_s long: gaps of ~1 s (10 readings) appear
    by_sensor: dict[str, list[int]] = {}
    for sid, r in _device_readings(fleet, messages):
        by_sensor.setdefault(sid, []).append(int(r["ts"]))
    gaps = [b - a for ts in by_sensor.values() for a, b in itertools.pairwise(ts) if b - a > 150]
    assert gaps and all(g >= 1000 for g in gaps)
    assert len(clean) - len(messages) == faults["dropped_readings"]


def test_rates_must_be_probabilities_and_exclusive() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultConfig(duplicate_rate=1.5)
    with pytest.raises(ValueError, match="sum"):
        FaultConfig(duplicate_rate=0.6, late_rate=0.6)
