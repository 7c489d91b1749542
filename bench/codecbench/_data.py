"""The data: the simulator's own signals, as windows of one sensor and as journal chunks.

Per-sensor windows: :class:`simulator.schedule.TickSchedule` (1 Hz, or 1 kHz for the
hot sensor), the simulator's dropouts (:class:`simulator.faults.FaultInjector`),
values from :mod:`simulator.signals`, a clock jitter the simulator does not model
(the schedule is exact to the ms), sorted by time and one reading per timestamp, as a
writer would store them. Each precision passes through orjson and back, as the
published JSON would. Journal chunks come from :class:`simulator.generator.TrafficGenerator`
in gateway mode, decoded by :class:`ingest.pipeline.codec.PayloadDecoder` as the service does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import numpy as np
import numpy.typing as npt
import orjson

from ingest.pipeline.codec import Limits, PayloadDecoder
from ingest.storage.layout import Reading
from simulator import signals
from simulator.faults import FaultConfig, FaultInjector
from simulator.fleet import DeviceGroup, Fleet
from simulator.generator import TrafficGenerator, TrafficOptions
from simulator.schedule import RateProfile, TickSchedule
from simulator.signals import KINDS, kind_names, make_model

__all__ = [
    "DROPOUT_RATE",
    "F64",
    "I64",
    "JITTER_MS",
    "PRECISIONS",
    "START_MS",
    "U64",
    "DeviceDay",
    "Window",
    "cut_windows",
    "full_precision",
    "journal_readings",
    "json_roundtrip",
    "simulate_devices",
]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]

START_MS = int(datetime(2026, 11, 22, tzinfo=UTC).timestamp() * 1000)
"""Midnight UTC: a day window is one day bucket."""
PRECISIONS = ("published", "2dp", "full")
JITTER_MS = 2.0
"""Standard deviation of the device clock's jitter (integer ms, Gaussian)."""
DROPOUT_RATE = 2e-4
"""Per reading: about 17 silences of 10 s a day at 1 Hz."""


class _Unrounded:
    """numpy as the signal models see it, except that ``round`` keeps every digit."""

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    @staticmethod
    def round(a: Any, decimals: int = 0) -> F64:
        out: F64 = np.asarray(a, dtype=np.float64)
        return out


@contextmanager
def full_precision() -> Iterator[None]:
    """Run the simulator's models without their sensor rounding."""
    with mock.patch.object(signals, "np", _Unrounded()):
        yield


def json_roundtrip(col: F64) -> tuple[F64, bool]:
    """The column as a JSON consumer sees it (orjson, as the simulator publishes), and
    whether that is bit-identical to the float64 before publishing."""
    back = np.array(orjson.loads(orjson.dumps(col.tolist())), dtype=np.float64)
    return back, bool(np.array_equal(back.view(np.uint64), col.view(np.uint64)))


@dataclass(frozen=True, slots=True)
class DeviceDay:
    """One device's readings, sorted by time: timestamps and each precision's columns."""

    kind: str
    ts_exact: I64
    ts: I64
    values: dict[str, tuple[F64, ...]]
    tags: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class Window:
    kind: str
    ts: I64
    cols: tuple[F64, ...]

    @property
    def n(self) -> int:
        return int(self.ts.size)


def simulate_devices(
    kind: str,
    *,
    devices: int,
    readings: int,
    rate_per_s: float,
    seed: int,
    jitter_ms: float,
    dropout_rate: float,
    checks: dict[str, int],
) -> list[DeviceDay]:
    """``readings`` readings of each of ``devices`` devices of ``kind`` (see the docstring)."""
    names = kind_names()
    sched_seq, param_seq, noise_seq, fault_seq, jitter_seq = np.random.SeedSequence(
        [seed, names.index(kind), int(rate_per_s)]
    ).spawn(5)
    schedule = TickSchedule(
        np.full(devices, rate_per_s),
        tick_s=1.0,
        profile=RateProfile(),
        rng=np.random.default_rng(sched_seq),
    )
    faults = FaultInjector(
        FaultConfig(dropout_rate=max(dropout_rate, 0.0), dropout_s=10.0),
        n_devices=devices,
        tick_s=1.0,
        rng=np.random.default_rng(fault_seq),
    )
    want = readings + 16  # a few spare: jitter may make two timestamps equal
    devs: list[I64] = []
    offs: list[I64] = []
    els: list[F64] = []
    counts = np.zeros(devices, dtype=np.int64)
    j = 0
    while counts.min() < want:
        dev, off, el = schedule.tick(j)
        j += 1
        keep, _ = faults.dropouts(dev, off)
        devs.append(dev[keep])
        offs.append(off[keep])
        els.append(el[keep])
        counts += np.bincount(dev[keep], minlength=devices)
    dev, off, el = np.concatenate(devs), np.concatenate(offs), np.concatenate(els)
    t_s = START_MS / 1000.0 + el

    def model_values() -> dict[str, F64]:
        model = make_model(
            kind, devices, np.random.default_rng(param_seq), np.random.default_rng(noise_seq)
        )
        return model.sample(dev, t_s, el)

    published = model_values()
    with full_precision():
        full = model_values()
    metrics = KINDS[kind].metrics
    jitter_rng = np.random.default_rng(jitter_seq)
    out: list[DeviceDay] = []
    for d in range(devices):
        sel = np.flatnonzero(dev == d)[:want]
        ts_exact = START_MS + off[sel]
        jit = np.rint(jitter_rng.normal(0.0, jitter_ms, sel.size)).astype(np.int64)
        ts_j = ts_exact + jit if jitter_ms > 0 else ts_exact
        order = np.argsort(ts_j, kind="stable")
        _, first = np.unique(ts_j[order], return_index=True)  # one reading per timestamp
        order = order[first][:readings]
        values: dict[str, tuple[F64, ...]] = {}
        for precision in PRECISIONS:
            cols: list[F64] = []
            for m in metrics:
                src = full[m] if precision == "full" else published[m]
                raw = src[sel][order]
                if precision == "2dp":
                    raw = np.round(raw, 2)
                col, same = json_roundtrip(raw)
                checks["json_columns"] += 1
                checks["json_not_bit_identical"] += not same
                cols.append(col)
            values[precision] = tuple(cols)
        change = int(jitter_rng.integers(1, readings))
        tags = {
            "site": [f"plant-{d % 3 + 1}"] * readings,
            "zone": [f"hall-{d % 7 + 1}"] * readings,
            "fw": ["2.3.1"] * change + ["2.4.0"] * (readings - change),
        }
        out.append(DeviceDay(kind, ts_exact[order], ts_j[order], values, tags))
    return out


def cut_windows(days: Sequence[DeviceDay], size: int, count: int, precision: str) -> list[Window]:
    """``count`` windows of ``size`` readings, spread over the devices and their day."""
    out: list[Window] = []
    for i in range(count):
        day = days[i % len(days)]
        slots = max(1, math.ceil(count / len(days)))
        span = day.ts.size - size
        start = span * (i // len(days)) // max(1, slots - 1) if slots > 1 else 0
        sl = slice(start, start + size)
        out.append(Window(day.kind, day.ts[sl], tuple(c[sl] for c in day.values[precision])))
    return out


def journal_readings(total: int, precision: str, seed: int) -> list[Reading]:
    """``total`` readings of a 3,000-sensor fleet at 1 Hz, in the order an ingest worker
    decodes them (gateway batches of 100, 0.1 % duplicates, 0.2 % late)."""
    groups = [
        DeviceGroup(kind="env", count=1200, rate_per_s=1.0, tags={"site": "plant-1", "floor": "2"}),
        DeviceGroup(
            kind="vibration", count=600, rate_per_s=1.0, tags={"site": "plant-1", "line": "press-4"}
        ),
        DeviceGroup(kind="power", count=900, rate_per_s=1.0, tags={"site": "plant-2"}),
        DeviceGroup(kind="gps", count=300, rate_per_s=1.0, tags={"fleet": "vans"}),
    ]
    options = TrafficOptions(
        seed=seed,
        start_ts_ms=START_MS,
        mode="gateway",
        gateways=30,
        batch_size=100,
        faults=FaultConfig(duplicate_rate=0.001, late_rate=0.002),
        count_limit=total,
    )
    gen = TrafficGenerator(Fleet(groups), options)
    # The payloads as the service decodes them (numbers, tags); which topic may carry
    # which ids is not what is measured here.
    decoder = PayloadDecoder(sensor_topic_level=None, sensor_id_rule="any", limits=Limits())
    out: list[Reading] = []
    with full_precision() if precision == "full" else nullcontext():
        while not gen.done:
            received_ms = START_MS + int(gen.next_tick * options.tick_s * 1000) + 50
            for msg in gen.tick():
                readings, rejected = decoder.decode(
                    "sensors/gw/telemetry", msg.payload, received_ms
                )
                if rejected:
                    raise RuntimeError(
                        f"the simulator sent readings the service refuses: {rejected}"
                    )
                out += readings
    return out
