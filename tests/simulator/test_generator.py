"""The generator without a network: determinism, schedule accuracy, limits, signals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.errors import SimConfigError
from simulator.faults import FaultConfig
from simulator.fleet import Fleet
from simulator.generator import TrafficGenerator, TrafficOptions
from simulator.schedule import RateProfile, Spike, TickSchedule
from simulator.signals import KINDS
from tests.simulator.helpers import START_TS_MS, decode_messages, generate_all, payload_readings

ALL_KINDS = tuple(KINDS)


def _options(**kw: Any) -> TrafficOptions:
    base: dict[str, Any] = {"seed": 7, "start_ts_ms": START_TS_MS, "duration_s": 2.0}
    base.update(kw)
    return TrafficOptions(**base)


@pytest.mark.parametrize("mode", ["device", "gateway"])
def test_same_seed_same_messages(mode: str) -> None:
    fleet = Fleet.uniform(devices=40, rate_per_s=400, kinds=ALL_KINDS)
    _, first = generate_all(fleet, _options(mode=mode))
    _, again = generate_all(fleet, _options(mode=mode))
    _, other = generate_all(fleet, _options(mode=mode, seed=8))
    assert len(first) > 0
    assert first == again
    assert first != other


@pytest.mark.parametrize(("separator", "qualify"), [(":", True), (".", True), (None, False)])
def test_same_readings_in_device_and_gateway_mode(separator: str | None, qualify: bool) -> None:
    fleet = Fleet.uniform(devices=30, rate_per_s=300, kinds=ALL_KINDS)
    _, device = generate_all(fleet, _options(mode="device"))
    gen, gateway = generate_all(
        fleet,
        _options(mode="gateway", gateways=3, batch_size=7, sensor_id_separator=separator),
    )
    ids = fleet.sensor_ids
    from_device = {(ids[c], r["ts"]): r for c, p in device for r in payload_readings(p)}
    from_gateway = {}
    for c, p in gateway:
        for r in payload_readings(p):
            sid = r.pop("sensor_id")
            if qualify:  # under its own gateway's id: what the default sensor-id rule accepts
                gw, sep, sid = sid.partition(str(separator))
                assert (gw, sep) == (f"gw-{c:04d}", separator)
            from_gateway[(sid, r["ts"])] = r
    assert from_device == from_gateway
    assert all(len(payload_readings(p)) <= 7 for _, p in gateway)
    assert set(gen.build_manifest(run={}, totals={}, complete=True)["sensors"]) == set(
        gen.sensor_ids
    )


def test_gateway_sensor_ids_are_under_their_gateways_id() -> None:
    fleet = Fleet.uniform(devices=6, rate_per_s=60)
    gen = TrafficGenerator(fleet, _options(mode="gateway", gateways=2))

    assert gen.connection_ids() == ["gw-0000", "gw-0001"]
    assert gen.sensor_ids == (
        "gw-0000:env-00000",
        "gw-0000:env-00001",
        "gw-0000:env-00002",
        "gw-0001:env-00003",
        "gw-0001:env-00004",
        "gw-0001:env-00005",
    )
    device = TrafficGenerator(fleet, _options(mode="device"))
    assert device.sensor_ids == fleet.sensor_ids


@pytest.mark.parametrize("separator", ["-", "#", ""])
def test_a_separator_the_gateway_ids_contain_or_ids_cannot_is_refused(separator: str) -> None:
    fleet = Fleet.uniform(devices=2, rate_per_s=2)
    with pytest.raises(SimConfigError, match="--sensor-id-separator must be one of"):
        TrafficGenerator(fleet, _options(mode="gateway", gateways=1, sensor_id_separator=separator))


def test_gateway_sensor_ids_longer_than_128_characters_are_refused() -> None:
    fleet = Fleet.uniform(devices=2, rate_per_s=2, id_prefix="x" * 120)
    with pytest.raises(SimConfigError, match="is invalid: at most 128"):
        TrafficGenerator(fleet, _options(mode="gateway", gateways=1))


def test_faults_do_not_change_the_values_of_valid_readings() -> None:
    fleet = Fleet.uniform(devices=20, rate_per_s=200, kinds=ALL_KINDS)
    faults = FaultConfig(
        duplicate_rate=0.05,
        late_rate=0.05,
        malformed_rate=0.02,
        missing_rate=0.02,
        oversize_rate=0.01,
    )
    _, clean = generate_all(fleet, _options())
    gen, faulty = generate_all(fleet, _options(faults=faults))

    def topic(c: int) -> str:
        return f"sensors/{fleet.sensor_ids[c]}/telemetry"

    clean_rx = decode_messages([(topic(c), p) for c, p in clean], received_ms=START_TS_MS)
    faulty_rx = decode_messages([(topic(c), p) for c, p in faulty], received_ms=START_TS_MS)
    invalid = gen.fault_summary()
    n_invalid = invalid["malformed"] + invalid["missing_fields"] + invalid["oversize"]
    assert n_invalid > 0 and faulty_rx.rejected_messages == n_invalid
    clean_all = {(s, t): d for s, per in clean_rx.sensors.items() for t, d in per.items()}
    faulty_all = {(s, t): d for s, per in faulty_rx.sensors.items() for t, d in per.items()}
    assert len(faulty_all) == len(clean_all) - n_invalid
    assert all(clean_all[k] == d for k, d in faulty_all.items())


@pytest.mark.parametrize("rate_per_s", [50.0, 1000.0, 20_000.0])
def test_schedule_holds_the_target_rate(rate_per_s: float) -> None:
    fleet = Fleet.uniform(devices=50, rate_per_s=rate_per_s)
    gen, _ = generate_all(fleet, _options(duration_s=3.0))
    expected = rate_per_s * 3.0
    # each device reads at most one reading more or less than its share
    assert abs(gen.readings_generated - expected) <= len(fleet)


def test_count_limit_stops_at_exactly_that_many_readings() -> None:
    fleet = Fleet.uniform(devices=10, rate_per_s=1000)
    gen, messages = generate_all(fleet, _options(duration_s=None, count_limit=1234))
    assert gen.readings_generated == 1234
    assert len(messages) == 1234
    assert gen.manifest.valid_readings == 1234


def test_ramp_and_spike_shape_the_rate() -> None:
    fleet = Fleet.uniform(devices=100, rate_per_s=1000)
    profile = RateProfile(ramp_s=2.0, spikes=(Spike(at_s=3.0, duration_s=1.0, factor=5.0),))
    schedule = TickSchedule(
        fleet.rates_per_s, tick_s=0.01, profile=profile, rng=np.random.default_rng(1)
    )
    per_second = [0] * 5
    for j in range(500):
        dev, _, t_s = schedule.tick(j)
        per_second[j // 100] += dev.size
        assert np.all((t_s >= j * 0.01) & (t_s <= (j + 1) * 0.01))
    assert per_second[0] == pytest.approx(250, abs=30)  # ramp: mean 25 % in the first second
    assert per_second[1] == pytest.approx(750, abs=30)
    assert per_second[2] == pytest.approx(1000, abs=30)
    assert per_second[3] == pytest.approx(5000, abs=120)
    assert per_second[4] == pytest.approx(1000, abs=120)


@settings(max_examples=30, deadline=None)
@given(
    rate=st.floats(min_value=0.05, max_value=400.0),
    tick_ms=st.sampled_from([1.0, 5.0, 10.0, 50.0, 200.0]),
    seed=st.integers(0, 2**32),
)
def test_timestamps_of_a_device_are_distinct_and_increasing(
    rate: float, tick_ms: float, seed: int
) -> None:
    rates = np.full(5, rate)
    schedule = TickSchedule(
        rates, tick_s=tick_ms / 1000, profile=RateProfile(), rng=np.random.default_rng(seed)
    )
    last = np.full(5, -1)
    total = 0
    for j in range(int(2000 / tick_ms)):
        dev, offset_ms, _ = schedule.tick(j)
        for d, t in zip(dev.tolist(), offset_ms.tolist(), strict=True):
            assert t > last[d]
            last[d] = t
        total += dev.size
    assert abs(total - rate * 5 * 2.0) <= 5 + 1e-6


def test_every_kind_produces_plausible_values() -> None:
    fleet = Fleet.uniform(devices=40, rate_per_s=400, kinds=ALL_KINDS)
    _, messages = generate_all(fleet, _options())
    received = decode_messages(
        [(f"sensors/{fleet.sensor_ids[c]}/telemetry", p) for c, p in messages],
        received_ms=START_TS_MS,
    )
    assert received.rejected_messages == 0
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for c, p in messages:
        by_kind.setdefault(fleet.kinds[c], []).extend(payload_readings(p))
    for kind, readings in by_kind.items():
        assert {k for r in readings for k in r} == {"ts", *KINDS[kind].metrics}, kind
    env = by_kind["env"]
    assert all(0 < r["temperature"] < 100 and 5 <= r["humidity"] <= 100 for r in env)
    assert 15 < sum(r["temperature"] for r in env) / len(env) < 30
    gps = by_kind["gps"]
    assert all(-90 < r["lat"] < 90 and -180 < r["lon"] < 180 for r in gps)
    power = by_kind["power"]
    assert all(r["power_w"] >= 0 and 0.5 <= r["pf"] <= 1.0 for r in power)


def test_invalid_options_are_refused_with_the_value() -> None:
    fleet = Fleet.uniform(devices=2, rate_per_s=600)
    spike = RateProfile(spikes=(Spike(at_s=0, duration_s=1, factor=2),))
    with pytest.raises(SimConfigError, match="600/s"):
        generate_all(fleet, _options(profile=spike))
    with pytest.raises(SimConfigError, match="batch-size"):
        generate_all(fleet, _options(mode="gateway", gateways=1, batch_size=5000))
    with pytest.raises(SimConfigError, match="gateways"):
        generate_all(fleet, _options(mode="gateway", gateways=3))
