"""The traffic itself, tick by tick: schedule → values → faults → payloads, and the manifest.

:class:`TrafficGenerator` knows nothing about the network: each call of
:meth:`TrafficGenerator.tick` returns the messages of one logical tick as
``(connection index, payload, readings)`` and records them in the manifest.
Connection ``i`` is device ``i`` in device mode and gateway ``i`` in gateway
mode. In gateway mode a device's sensor id is its gateway's id, a separator and
its fleet id (``gw-0001:env-00042``): the ids the ingest service's default
sensor-id rule (``sensor_id_rule=prefix``) lets the gateway's topic carry.
Everything is drawn from generators spawned from one seed, one per
concern (schedule, signal parameters, noise per kind, faults), so the same
seed and options give the same messages, and switching faults on changes no
value of the readings that stay valid.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from ingest.storage.layout import SENSOR_ID_PATTERN
from simulator.errors import SimConfigError
from simulator.faults import Fault, FaultConfig, FaultInjector, MalformedKind
from simulator.fleet import MAX_DEVICE_RATE_PER_S, Fleet
from simulator.manifest import Manifest, ManifestBuilder
from simulator.payloads import (
    ReadingDict,
    batch_payload,
    malformed_payload,
    missing_fields_payload,
    oversize_payload,
    reading_dicts,
    reading_payload,
)
from simulator.schedule import RateProfile, TickSchedule
from simulator.signals import KINDS, SignalModel, kind_names, make_model

__all__ = [
    "GATEWAY_ID_SEPARATORS",
    "FloatArray",
    "IntArray",
    "Mode",
    "Outgoing",
    "TrafficGenerator",
    "TrafficOptions",
]

Mode = Literal["device", "gateway"]
GATEWAY_ID_SEPARATORS: tuple[str | None, ...] = (":", ".", "_", None)
"""Separators of gateway-mode sensor ids (the service's ``sensor_id_separator`` choices
but ``-``, which the gateway ids contain); None: the fleet's ids unchanged."""
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Outgoing(NamedTuple):
    """One message to publish."""

    conn: int
    payload: bytes
    readings: int
    valid: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficOptions:
    """What the generator needs besides the fleet.

    Args:
        seed: Seed of every random choice.
        start_ts_ms: Epoch ms of the run's logical start (timestamps count from it).
        tick_s: Tick length.
        mode: ``device`` (a message per reading) or ``gateway`` (batches).
        gateways: Gateways in gateway mode (devices are split into contiguous blocks).
        batch_size: Largest batch in gateway mode.
        profile: Ramp-up and spikes.
        faults: Fault rates.
        duration_s: Logical duration (None: no limit).
        count_limit: Stop after this many readings (None: no limit).
        manifest_detail: Keep every reading in the manifest (small runs).
        sensor_id_separator: Gateway mode: sensor ids are ``{gateway id}{separator}{fleet
            id}``, as the service's ``sensor_id_separator``; None: the fleet's ids as they
            are (for a service with ``sensor_id_rule=any``).
        signal_origin_ts_ms: Epoch ms the signals' slow terms (drift, battery drain)
            count from; None: ``start_ts_ms``. A run continuing another one (the demo's
            live fleet after its replayed history) passes the first run's start, so its
            values carry on where the first run's stopped.
    """

    seed: int
    start_ts_ms: int
    tick_s: float = 0.01
    mode: Mode = "device"
    gateways: int = 4
    batch_size: int = 100
    profile: RateProfile = field(default_factory=RateProfile)
    faults: FaultConfig = field(default_factory=FaultConfig)
    duration_s: float | None = None
    count_limit: int | None = None
    manifest_detail: bool = False
    sensor_id_separator: str | None = ":"
    signal_origin_ts_ms: int | None = None


class _Block(NamedTuple):
    """Kept readings of one sensor kind in a tick."""

    metrics: tuple[str, ...]
    dev: IntArray
    ts: IntArray
    values: dict[str, FloatArray]
    codes: IntArray


class _Valid:
    """Valid readings of a tick, as parallel lists (device index, reading)."""

    __slots__ = ("devs", "rows")

    def __init__(self) -> None:
        self.devs: list[int] = []
        self.rows: list[ReadingDict] = []


class TrafficGenerator:
    """Generates the messages of a run, tick by tick (see the module docstring).

    Args:
        fleet: The devices.
        options: Seed, mode, limits, faults.
    """

    def __init__(self, fleet: Fleet, options: TrafficOptions) -> None:
        o = options
        if o.mode not in ("device", "gateway"):
            raise SimConfigError(f"mode must be 'device' or 'gateway', got {o.mode!r}")
        if o.mode == "gateway" and not 1 <= o.gateways <= len(fleet):
            raise SimConfigError(
                f"--gateways must be 1..{len(fleet)} (the devices), got {o.gateways}"
            )
        if not 1 <= o.batch_size <= 1000:
            raise SimConfigError(f"--batch-size must be 1..1000, got {o.batch_size}")
        peak = float(fleet.rates_per_s.max()) * o.profile.max_multiplier
        if peak > MAX_DEVICE_RATE_PER_S:
            raise SimConfigError(
                f"a device would read {peak:g}/s at the peak of a spike; at most "
                f"{MAX_DEVICE_RATE_PER_S:g}/s per device: add devices or lower --rate/--spike"
            )
        if o.count_limit is not None and o.count_limit < 1:
            raise SimConfigError(f"--count-limit must be >= 1, got {o.count_limit}")
        if o.duration_s is not None and o.duration_s <= 0:
            raise SimConfigError(f"--duration must be > 0, got {o.duration_s}")
        if o.sensor_id_separator not in GATEWAY_ID_SEPARATORS:
            raise SimConfigError(
                f"--sensor-id-separator must be one of {', '.join(map(str, GATEWAY_ID_SEPARATORS))}"
                f" (gateway ids gw-0000… contain '-'), got {o.sensor_id_separator!r}"
            )
        self.fleet = fleet
        self.options = o
        self.gateway = o.mode == "gateway"
        seq = np.random.SeedSequence(o.seed)
        sched_seq, param_seq, noise_seq, fault_seq = seq.spawn(4)
        self.schedule = TickSchedule(
            fleet.rates_per_s,
            tick_s=o.tick_s,
            profile=o.profile,
            rng=np.random.default_rng(sched_seq),
        )
        # One model per kind present; a kind's generators do not depend on which other kinds exist.
        names = kind_names()
        param_seqs = param_seq.spawn(len(names))
        noise_seqs = noise_seq.spawn(len(names))
        kinds = np.array([names.index(k) for k in fleet.kinds], dtype=np.int64)
        self._kind_of: IntArray = kinds
        self._local: IntArray = np.zeros(len(fleet), dtype=np.int64)
        self._models: dict[int, SignalModel] = {}
        for ki, name in enumerate(names):
            members = np.flatnonzero(kinds == ki)
            if members.size:
                self._local[members] = np.arange(members.size)
                self._models[ki] = make_model(
                    name,
                    int(members.size),
                    np.random.default_rng(param_seqs[ki]),
                    np.random.default_rng(noise_seqs[ki]),
                )
        self.faults = FaultInjector(
            o.faults, n_devices=len(fleet), tick_s=o.tick_s, rng=np.random.default_rng(fault_seq)
        )
        self._tags = [fleet.tags_of(i) for i in range(len(fleet))]
        self._has_tags = any(self._tags)
        n = len(fleet)
        self._gateway_of: IntArray = (np.arange(n, dtype=np.int64) * o.gateways) // n
        self._gateway_list: list[int] = self._gateway_of.tolist()
        self.sensor_ids: tuple[str, ...] = fleet.sensor_ids
        """The sensor id of each device as sent (under its gateway's id in gateway mode)."""
        if self.gateway and o.sensor_id_separator is not None:
            gw_ids = self.connection_ids()
            self.sensor_ids = tuple(
                f"{gw_ids[g]}{o.sensor_id_separator}{sid}"
                for g, sid in zip(self._gateway_list, fleet.sensor_ids, strict=True)
            )
            too_long = next(
                (s for s in self.sensor_ids if not SENSOR_ID_PATTERN.fullmatch(s)), None
            )
            if too_long is not None:
                raise SimConfigError(
                    f"sensor id {too_long!r} (gateway id + separator + fleet id) is invalid: "
                    "at most 128 of [A-Za-z0-9_.:-]; shorten id_prefix"
                )
        self.manifest = ManifestBuilder(self.sensor_ids, self._tags, detail=o.manifest_detail)
        self._ids = np.array(self.sensor_ids, dtype=object)
        self._deferred: list[tuple[int, int, int, ReadingDict]] = []
        self._seq = itertools.count()
        self.ticks_total = None if o.duration_s is None else max(1, round(o.duration_s / o.tick_s))
        self.next_tick = 0
        self.readings_generated = 0
        self.fault_counts: Counter[str] = Counter()
        self.invalid_counts: Counter[str] = Counter()
        self.readings_sent = 0
        self.messages = 0

    @property
    def connections(self) -> int:
        """Connections the run needs (devices, or gateways)."""
        return self.options.gateways if self.gateway else len(self.fleet)

    def connection_ids(self) -> list[str]:
        """The id each connection stands for (its topic's id)."""
        if self.gateway:
            return [f"gw-{i:04d}" for i in range(self.options.gateways)]
        return list(self.fleet.sensor_ids)

    @property
    def done(self) -> bool:
        """True once the duration or the count limit is reached."""
        if self.ticks_total is not None and self.next_tick >= self.ticks_total:
            return True
        limit = self.options.count_limit
        return limit is not None and self.readings_generated >= limit

    @property
    def pending_deferred(self) -> int:
        return len(self._deferred)

    def tick(self) -> list[Outgoing]:
        """The messages of the next tick (advances the logical clock by one tick)."""
        j = self.next_tick
        self.next_tick += 1
        dev, offset_ms, elapsed_s = self.schedule.tick(j)
        out: list[Outgoing] = []
        valid = _Valid()
        if dev.size:
            self._generate(j, dev, offset_ms, elapsed_s, valid=valid, out=out)
        while self._deferred and self._deferred[0][0] <= j:
            _, _, d, r = heapq.heappop(self._deferred)
            valid.devs.append(d)
            valid.rows.append(r)
        self._emit(valid, out)
        return out

    def drain(self) -> list[Outgoing]:
        """Every reading still held back (late readings, second copies), at the end of a run."""
        valid = _Valid()
        for _, _, d, r in sorted(self._deferred):
            valid.devs.append(d)
            valid.rows.append(r)
        self._deferred.clear()
        out: list[Outgoing] = []
        self._emit(valid, out)
        return out

    # -- one tick -------------------------------------------------------------

    def _generate(
        self,
        j: int,
        dev: IntArray,
        offset_ms: IntArray,
        elapsed_s: FloatArray,
        *,
        valid: _Valid,
        out: list[Outgoing],
    ) -> None:
        o = self.options
        start_s = o.start_ts_ms / 1000.0
        origin_ms = o.start_ts_ms if o.signal_origin_ts_ms is None else o.signal_origin_ts_ms
        since_origin_s = (o.start_ts_ms - origin_ms) / 1000.0
        # Values first, for every scheduled reading: faults then never shift the noise draws.
        kind = self._kind_of[dev]
        blocks: list[tuple[int, IntArray, dict[str, FloatArray]]] = []
        for ki, model in self._models.items():
            sel = np.flatnonzero(kind == ki) if len(self._models) > 1 else np.arange(dev.size)
            if sel.size:
                values = model.sample(
                    self._local[dev[sel]], start_s + elapsed_s[sel], since_origin_s + elapsed_s[sel]
                )
                blocks.append((ki, sel, values))
        keep, started = self.faults.dropouts(dev, offset_ms)
        self.fault_counts["dropouts"] += started
        self.fault_counts["dropped_readings"] += int(dev.size - np.count_nonzero(keep))
        if o.count_limit is not None:
            room = o.count_limit - self.readings_generated
            kept = np.flatnonzero(keep)
            if kept.size > room:
                keep[kept[room:]] = False
        n = int(np.count_nonzero(keep))
        if n == 0:
            return
        self.readings_generated += n
        ts_all = o.start_ts_ms + offset_ms + self.faults.skew_ms[dev]
        codes_kept = self.faults.categorise(n)
        codes = np.full(dev.size, -1, dtype=np.int64)
        codes[keep] = codes_kept
        if self.faults.skewed_devices:
            self.fault_counts["skewed_readings"] += int(
                np.count_nonzero(self.faults.skew_ms[dev[keep]])
            )
        for ki, sel, values in blocks:
            c = codes[sel]
            m = c >= 0
            if m.any():
                block = _Block(
                    metrics=KINDS[kind_names()[ki]].metrics,
                    dev=dev[sel[m]],
                    ts=ts_all[sel[m]],
                    values=values if m.all() else {k: v[m] for k, v in values.items()},
                    codes=c[m],
                )
                self._block(j, block, valid=valid, out=out)

    def _block(self, j: int, block: _Block, *, valid: _Valid, out: list[Outgoing]) -> None:
        metrics, dev, ts, values, codes = block
        is_valid = codes < Fault.MALFORMED  # none, duplicate, late
        if is_valid.all():
            self.manifest.add_valid(dev, ts, values)
        else:
            self.manifest.add_valid(
                dev[is_valid], ts[is_valid], {k: v[is_valid] for k, v in values.items()}
            )
            self.manifest.add_sent(dev[~is_valid], ts[~is_valid])
        keys: tuple[str, ...] = ("ts", *metrics)
        cols: list[list[Any]] = [ts.tolist(), *(values[k].tolist() for k in metrics)]
        if self.gateway:
            keys = ("sensor_id", *keys)
            cols.insert(0, self._ids[dev].tolist())
        rows = reading_dicts(keys, cols)
        devs = dev.tolist()
        if self._has_tags:
            for d, r in zip(devs, rows, strict=True):
                r.update(self._tags[d])
        if not codes.any():
            valid.devs += devs
            valid.rows += rows
            return
        fc = self.options.faults
        faulty = np.flatnonzero(codes)
        fault_codes = codes[faulty].tolist()
        dup_delays = iter(self.faults.delay_ticks(len(faulty), fc.duplicate_delay_s).tolist())
        late_delays = iter(self.faults.delay_ticks(len(faulty), fc.late_max_s).tolist())
        bad_kinds = iter(self.faults.malformed_kinds(len(faulty)).tolist())
        skip = set(faulty.tolist())
        for i, (d, r) in enumerate(zip(devs, rows, strict=True)):
            if i not in skip:
                valid.devs.append(d)
                valid.rows.append(r)
        for i, code in zip(faulty.tolist(), fault_codes, strict=True):
            d, r = devs[i], rows[i]
            conn = self._gateway_list[d] if self.gateway else d
            if code == Fault.DUPLICATE:
                valid.devs.append(d)
                valid.rows.append(r)
                self._defer(j + next(dup_delays), d, r)
                self.fault_counts["duplicates"] += 1
            elif code == Fault.LATE:
                self._defer(j + next(late_delays), d, r)
                self.fault_counts["late"] += 1
            elif code == Fault.MALFORMED:
                kind = MalformedKind(next(bad_kinds))
                out.append(
                    Outgoing(conn, malformed_payload(kind, r, gateway=self.gateway), 1, False)
                )
                self.fault_counts["malformed"] += 1
                self.invalid_counts[f"malformed.{kind.name.lower()}"] += 1
            elif code == Fault.MISSING:
                out.append(
                    Outgoing(conn, missing_fields_payload(r, gateway=self.gateway), 1, False)
                )
                self.fault_counts["missing_fields"] += 1
                self.invalid_counts["missing_fields"] += 1
            elif code == Fault.OVERSIZE:
                payload = oversize_payload(r, gateway=self.gateway, size_bytes=fc.oversize_bytes)
                out.append(Outgoing(conn, payload, 1, False))
                self.fault_counts["oversize"] += 1
                self.invalid_counts["oversize"] += 1

    def _defer(self, release_tick: int, dev: int, reading: ReadingDict) -> None:
        heapq.heappush(self._deferred, (release_tick, next(self._seq), dev, reading))

    def _emit(self, valid: _Valid, out: list[Outgoing]) -> None:
        """Valid readings → messages (one each, or batches per gateway)."""
        invalid_messages = len(out)
        rows = valid.rows
        if not self.gateway:
            out.extend(
                Outgoing(d, reading_payload(r), 1, True)
                for d, r in zip(valid.devs, rows, strict=True)
            )
        elif rows:
            gw = self._gateway_of[np.array(valid.devs, dtype=np.int64)]
            order = np.argsort(gw, kind="stable")
            gw_sorted = gw[order]
            rows = [rows[i] for i in order.tolist()]
            cuts = np.flatnonzero(np.diff(gw_sorted)) + 1
            bounds = [0, *cuts.tolist(), len(rows)]
            size = self.options.batch_size
            for a, b in itertools.pairwise(bounds):
                g = int(gw_sorted[a])
                for k in range(a, b, size):
                    chunk = rows[k : min(k + size, b)]
                    out.append(Outgoing(g, batch_payload(chunk), len(chunk), True))
        self.readings_sent += len(rows) + invalid_messages
        self.messages += len(out)

    # -- the manifest ------------------------------------------------------------

    def fault_summary(self) -> dict[str, int]:
        """Counts of every injected fault (zeros included, so readers see what was off)."""
        names = (
            "duplicates",
            "late",
            "skewed_devices",
            "skewed_readings",
            "malformed",
            "missing_fields",
            "oversize",
            "dropouts",
            "dropped_readings",
        )
        counts = {k: int(self.fault_counts.get(k, 0)) for k in names}
        counts["skewed_devices"] = self.faults.skewed_devices
        return counts

    def build_manifest(
        self, *, run: dict[str, Any], totals: dict[str, int], complete: bool
    ) -> Manifest:
        """The manifest of everything generated so far."""
        invalid = {
            "messages": int(sum(self.invalid_counts.values())),
            **dict(sorted(self.invalid_counts.items())),
        }
        return self.manifest.build(
            run=run,
            totals={
                "readings_generated": self.readings_generated,
                "valid_readings": self.manifest.valid_readings,
                "invalid_readings": invalid["messages"],
                "readings_sent": self.readings_sent,
                "messages_generated": self.messages,
                **totals,
            },
            faults=self.fault_summary(),
            invalid=invalid,
            complete=complete,
        )
