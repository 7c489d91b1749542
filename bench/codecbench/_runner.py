"""The run: plans, the timer, the exactness gate, and one function per section.

Timing is CPU time (``time.process_time``) with the collector off. Each job is
calibrated to a loop of at least ``min_loop_s``, then every job of a section runs
once per round, ``repeats`` rounds, round-robin: the load of a shared machine then
falls on all candidates alike, and the median per call is kept.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.codecbench._candidates import Candidate, window_candidates, window_mismatch
from bench.codecbench._columns import decode_tags, encode_tags, missing_figures
from bench.codecbench._data import (
    DROPOUT_RATE,
    F64,
    JITTER_MS,
    PRECISIONS,
    DeviceDay,
    Window,
    cut_windows,
    journal_readings,
    simulate_devices,
)
from bench.codecbench._journal import (
    JournalCodec,
    canonical,
    journal_codecs,
    rows_of,
    train_dictionaries,
)
from ingest.storage.layout import Reading
from simulator.signals import KINDS, kind_names

__all__ = [
    "FULL",
    "ITEM_OVERHEAD_BYTES",
    "QUICK",
    "ROLLUP_STEPS",
    "Bench",
    "Job",
    "Plan",
    "Timer",
    "read_units",
    "rollup",
    "run",
]

ITEM_OVERHEAD_BYTES = 60
"""pk, sk, ttl and attribute names of a packed item (an estimate, for read units)."""

Job = Callable[[], object]
ROLLUP_STEPS = {"minute": 60_000, "5 minutes": 300_000, "hour": 3_600_000}


@contextmanager
def _gc_off() -> Iterator[None]:
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(frozen=True, slots=True)
class Timer:
    """Median CPU seconds per call of each job (see the module docstring)."""

    repeats: int
    min_loop_s: float

    def run(self, jobs: Mapping[str, Job]) -> dict[str, float]:
        numbers: dict[str, int] = {}
        samples: dict[str, list[float]] = {name: [] for name in jobs}
        with _gc_off():
            for name, fn in jobs.items():
                t0 = time.process_time()
                fn()
                elapsed = time.process_time() - t0
                numbers[name] = max(
                    1, min(100_000, math.ceil(self.min_loop_s / max(elapsed, 1e-6)))
                )
            for _ in range(self.repeats):
                for name, fn in jobs.items():
                    n = numbers[name]
                    t0 = time.process_time()
                    for _ in range(n):
                        fn()
                    samples[name].append((time.process_time() - t0) / n)
        return {name: statistics.median(s) for name, s in samples.items()}


def _encoder(c: Candidate, windows: Sequence[Window]) -> Job:
    return lambda: [c.encode(w.ts, w.cols) for w in windows]


def _decoder(c: Candidate, blobs: Sequence[bytes]) -> Job:
    return lambda: [c.decode(b) for b in blobs]


@dataclass(slots=True)
class Bench:
    """Measures window candidates, and keeps the ones rejected as lossy out for good."""

    timer: Timer
    candidates: list[Candidate]
    rejected: dict[str, str]

    def live(self) -> list[Candidate]:
        return [c for c in self.candidates if c.name not in self.rejected]

    def windows(
        self, label: dict[str, Any], windows: Sequence[Window], *, timed: bool = True
    ) -> list[dict[str, Any]]:
        """Encode, verify and (``timed``) time every live candidate on ``windows``."""
        readings = sum(w.n for w in windows)
        blobs: dict[str, list[bytes]] = {}
        where = ", ".join(f"{k}={v}" for k, v in label.items()) or "single column"
        for c in self.live():
            try:
                bs = [c.encode(w.ts, w.cols) for w in windows]
                problem = next(
                    (
                        p
                        for w, b in zip(windows, bs, strict=True)
                        if (p := window_mismatch(w, *c.decode(b))) is not None
                    ),
                    None,
                )
            except Exception as exc:  # a codec refusing the data is a failure, not a crash
                problem = f"raised {type(exc).__name__}: {exc}"
            if problem is not None:
                self.rejected[c.name] = f"{where}: {problem}"
                continue
            blobs[c.name] = bs
        times: dict[str, float] = {}
        if timed:
            jobs: dict[str, Job] = {}
            for c in self.live():
                jobs["e:" + c.name] = _encoder(c, windows)
                jobs["d:" + c.name] = _decoder(c, blobs[c.name])
            times = self.timer.run(jobs)
        rows = []
        for c in self.live():
            size = sum(len(b) for b in blobs[c.name])
            row = {
                **label,
                "candidate": c.name,
                "family": c.family,
                "windows": len(windows),
                "readings": readings,
                "values_per_reading": len(windows[0].cols),
                "bytes": size,
                "bytes_per_reading": size / readings,
                "exact": True,
            }
            if timed:
                row["encode_us_per_reading"] = times["e:" + c.name] / readings * 1e6
                row["decode_us_per_reading"] = times["d:" + c.name] / readings * 1e6
            rows.append(row)
        return rows


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much data, and how long to time it."""

    devices: int
    day: int
    sizes: dict[int, int]
    """Window size → how many windows of it (spread over the devices and the day)."""
    hot: int
    journal_sizes: dict[int, int]
    journal_training: int
    repeats: int
    min_loop_s: float


FULL = Plan(
    devices=4,
    day=86_400,
    sizes={60: 16, 300: 16, 3_600: 8, 86_400: 4},
    hot=10_000,
    journal_sizes={100: 20, 1_000: 5, 10_000: 1},
    journal_training=30_000,
    repeats=5,
    min_loop_s=0.02,
)
QUICK = Plan(
    devices=1,
    day=3_600,
    sizes={60: 4, 300: 2, 3_600: 1},
    hot=2_000,
    journal_sizes={100: 4, 1_000: 1},
    journal_training=5_000,
    repeats=2,
    min_loop_s=0.002,
)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- sections -----------------------------------------------------------------------------


def _window_section(
    bench: Bench, plan: Plan, days: Mapping[str, list[DeviceDay]], hot: list[DeviceDay]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for precision in PRECISIONS:
        for size, count in plan.sizes.items():
            for kind, kind_days in days.items():
                log(f"windows: {precision} {size} {kind}")
                ws = cut_windows(kind_days, size, count, precision)
                rows += bench.windows({"precision": precision, "size": size, "kind": kind}, ws)
        log(f"windows: {precision} hot sensor")
        ws = cut_windows(hot, plan.hot, len(hot), precision)
        label = {"precision": precision, "size": plan.hot, "kind": "vibration@1kHz"}
        rows += bench.windows(label, ws)
    return rows


def _timestamp_section(
    bench: Bench, plan: Plan, days: Mapping[str, list[DeviceDay]]
) -> list[dict[str, Any]]:
    """The timestamp column alone: the schedule's exact 1 Hz, and with the clock jitter."""
    rows: list[dict[str, Any]] = []
    for size in (s for s in plan.sizes if s >= 3_600):
        for variant in ("exact", "jitter"):
            ws = [
                Window("env", d.ts_exact[:size] if variant == "exact" else d.ts[:size], ())
                for d in days["env"]
            ]
            rows += bench.windows({"timestamps": variant, "size": size}, ws)
    return rows


def _column_section(bench: Bench, days: Mapping[str, list[DeviceDay]]) -> list[dict[str, Any]]:
    """Bytes per value of each metric alone (3,600 readings; the timestamps' share taken off)."""
    rows: list[dict[str, Any]] = []
    size = min(3_600, *(len(d[0].ts) for d in days.values()))
    for precision in PRECISIONS:
        for kind, kind_days in days.items():
            base = cut_windows(kind_days, size, 1, precision)[0]
            ts_only = {
                r["candidate"]: r["bytes"]
                for r in bench.windows({}, [Window(kind, base.ts, ())], timed=False)
            }
            for i, metric in enumerate(KINDS[kind].metrics):
                one = Window(kind, base.ts, (base.cols[i],))
                rows += [
                    {
                        "precision": precision,
                        "kind": kind,
                        "metric": metric,
                        "candidate": r["candidate"],
                        "bytes_per_value": (r["bytes"] - ts_only[r["candidate"]]) / size,
                    }
                    for r in bench.windows({}, [one], timed=False)
                ]
    return rows


def _tag_encoder(sets: Sequence[Mapping[str, Sequence[str]]]) -> Job:
    return lambda: [encode_tags(s) for s in sets]


def _tag_decoder(blobs: Sequence[bytes]) -> Job:
    return lambda: [decode_tags(b) for b in blobs]


def _tag_section(bench: Bench, plan: Plan, days: Sequence[DeviceDay]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for size, count in plan.sizes.items():
        sets = []
        for i in range(count):
            day = days[i % len(days)]
            start = (day.ts.size - size) * i // max(1, count - 1) if count > 1 else 0
            sets.append({k: v[start : start + size] for k, v in day.tags.items()})
        blobs = [encode_tags(t) for t in sets]
        if any(decode_tags(b) != t for b, t in zip(blobs, sets, strict=True)):
            raise AssertionError("tag runs do not decode to the tags")
        t = bench.timer.run({"e": _tag_encoder(sets), "d": _tag_decoder(blobs)})
        n = count * size
        rows.append(
            {
                "size": size,
                "tag_keys": len(sets[0]),
                "bytes_per_window": sum(map(len, blobs)) / count,
                "bytes_per_reading": sum(map(len, blobs)) / n,
                "encode_us_per_reading": t["e"] / n * 1e6,
                "decode_us_per_reading": t["d"] / n * 1e6,
                "exact": True,
            }
        )
    return rows


def _journal_encoder(jc: JournalCodec, chunks: Sequence[Sequence[Reading]]) -> Job:
    return lambda: [jc.encode(ch) for ch in chunks]


def _journal_decoder(jc: JournalCodec, blobs: Sequence[bytes]) -> Job:
    return lambda: [jc.decode(b) for b in blobs]


def _journal_section(
    bench: Bench, plan: Plan, seed: int
) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    rows: list[dict[str, Any]] = []
    rejected: dict[str, str] = {}
    notes: list[str] = []
    need = plan.journal_training + max(s * c for s, c in plan.journal_sizes.items())
    for precision in ("published", "full"):
        log(f"journal: {precision}")
        readings = journal_readings(need, precision, seed)
        training, test = readings[: plan.journal_training], readings[plan.journal_training :]
        codecs, missing = journal_codecs(train_dictionaries(training))
        notes += [f"journal, {precision}: {m}" for m in missing]
        for size, count in plan.journal_sizes.items():
            chunks = [test[i * size : (i + 1) * size] for i in range(count)]
            blobs: dict[str, list[bytes]] = {}
            for jc in codecs:
                bs = [jc.encode(ch) for ch in chunks]
                if any(
                    canonical(jc.decode(b)) != canonical(rows_of(ch))
                    for b, ch in zip(bs, chunks, strict=True)
                ):
                    rejected[jc.name] = f"{precision} {size}: rows differ after decoding"
                else:
                    blobs[jc.name] = bs
            live = [jc for jc in codecs if jc.name in blobs and jc.name not in rejected]
            jobs: dict[str, Job] = {}
            for jc in live:
                jobs["e:" + jc.name] = _journal_encoder(jc, chunks)
                jobs["d:" + jc.name] = _journal_decoder(jc, blobs[jc.name])
            times = bench.timer.run(jobs)
            n = size * count
            rows += [
                {
                    "precision": precision,
                    "size": size,
                    "chunks": count,
                    "sensors_per_chunk": len({r.sensor_id for r in chunks[0]}),
                    "candidate": jc.name,
                    "note": jc.note,
                    "bytes_per_reading": sum(map(len, blobs[jc.name])) / n,
                    "bytes_per_chunk": sum(map(len, blobs[jc.name])) / count,
                    "encode_us_per_reading": times["e:" + jc.name] / n * 1e6,
                    "decode_us_per_reading": times["d:" + jc.name] / n * 1e6,
                    "exact": True,
                }
                for jc in live
            ]
        rows.append(
            {
                "precision": precision,
                "size": "payload",
                "candidate": "gateway JSON as received (reference)",
                "bytes_per_reading": len(orjson.dumps(rows_of(test))) / len(test),
            }
        )
    return [r for r in rows if r["candidate"] not in rejected], rejected, notes


def rollup(w: Window, step_ms: int) -> Window:
    """count, then min/max/sum/first/last of each metric per ``step_ms`` bin, as a window
    (timestamps = bin starts) so that every candidate can encode it. The sum is
    ``math.fsum`` (correctly rounded): the same bits whatever order the readings came in."""
    bins = w.ts // step_ms
    starts = np.flatnonzero(np.diff(bins, prepend=bins[0] - 1))
    ends = np.append(starts[1:], w.n)
    cols: list[F64] = [(ends - starts).astype(np.float64)]
    bounds = list(zip(starts.tolist(), ends.tolist(), strict=True))
    for c in w.cols:
        values = c.tolist()
        cols += [
            np.minimum.reduceat(c, starts),
            np.maximum.reduceat(c, starts),
            np.array([math.fsum(values[a:b]) for a, b in bounds], dtype=np.float64),
            c[starts],
            c[ends - 1],
        ]
    return Window(w.kind, (bins[starts] * step_ms).astype(np.int64), tuple(cols))


def read_units(item_bytes: int, items: int = 1) -> float:
    """Eventually consistent read units of a Query returning ``items`` such items."""
    return math.ceil(item_bytes * items / 4096) * 0.5


def _rollup_section(
    bench: Bench, plan: Plan, days: Mapping[str, list[DeviceDay]]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for precision in PRECISIONS:
        for kind, kind_days in days.items():
            day = cut_windows(kind_days, plan.day, 1, precision)[0]
            for step, step_ms in ROLLUP_STEPS.items():
                table = rollup(day, step_ms)
                for r in bench.windows(
                    {"precision": precision, "kind": kind, "step": step}, [table]
                ):
                    item = r["bytes"] + ITEM_OVERHEAD_BYTES
                    rows.append(
                        {
                            **r,
                            "bins": table.n,
                            "metrics": len(day.cols),
                            "raw_bytes": 8 * table.n * (1 + len(table.cols)),
                            "item_bytes": item,
                            "read_units_1_day": read_units(item),
                            "read_units_rolling_24h": read_units(item, 2),
                        }
                    )
    return rows


# -- the whole run ---------------------------------------------------------------------------


def run(*, quick: bool = False, seed: int = 13) -> dict[str, Any]:
    """Every section; the report as a JSON-able dict (``render`` makes the tables)."""
    plan = QUICK if quick else FULL
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    candidates, unavailable = window_candidates()
    bench = Bench(Timer(plan.repeats, plan.min_loop_s), candidates, {})
    checks = {"json_columns": 0, "json_not_bit_identical": 0}
    log("simulating devices …")
    days = {
        kind: simulate_devices(
            kind,
            devices=plan.devices,
            readings=plan.day,
            rate_per_s=1.0,
            seed=seed,
            jitter_ms=JITTER_MS,
            dropout_rate=DROPOUT_RATE,
            checks=checks,
        )
        for kind in kind_names()
    }
    hot = simulate_devices(
        "vibration",
        devices=min(2, plan.devices),
        readings=plan.hot,
        rate_per_s=1000.0,
        seed=seed,
        jitter_ms=0.0,
        dropout_rate=0.0,
        checks=checks,
    )
    windows = _window_section(bench, plan, days, hot)
    log("timestamps, columns, tags …")
    timestamps = _timestamp_section(bench, plan, days)
    columns = _column_section(bench, days)
    tags = _tag_section(bench, plan, days["env"])
    journal, journal_rejected, journal_notes = _journal_section(bench, plan, seed)
    log("rollups …")
    rollups = _rollup_section(bench, plan, days)

    def keep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A candidate rejected in a later section is dropped from the earlier ones too."""
        return [r for r in rows if r["candidate"] not in bench.rejected]

    return {
        "environment": _environment(load_start, time.perf_counter() - t_start),
        "plan": {
            "quick": quick,
            "devices_per_kind": plan.devices,
            "day_readings": plan.day,
            "window_counts": plan.sizes,
            "hot_readings": plan.hot,
            "journal_sizes": plan.journal_sizes,
            "journal_training": plan.journal_training,
            "repeats": plan.repeats,
            "min_loop_ms": plan.min_loop_s * 1000,
            "jitter_ms": JITTER_MS,
            "dropout_rate": DROPOUT_RATE,
            "seed": seed,
        },
        "checks": checks,
        "candidates": {c.name: {"family": c.family, "note": c.note} for c in candidates},
        "unavailable": unavailable + journal_notes,
        "rejected": bench.rejected | {f"journal:{k}": v for k, v in journal_rejected.items()},
        "windows": keep(windows),
        "timestamps": keep(timestamps),
        "columns": keep(columns),
        "tags": tags,
        "missing_metrics": [missing_figures(3_600, rate, seed) for rate in (0.001, 0.01, 0.1)],
        "journal": journal,
        "rollups": keep(rollups),
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _environment(load_start: tuple[float, float, float], elapsed_s: float) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dists = (
        "numpy",
        "orjson",
        "pyarrow",
        "zstandard",
        "pyzstd",
        "backports.zstd",
        "pcodec",
        "numcodecs",
        "msgpack",
    )
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "elapsed_s": round(elapsed_s, 1),
        "versions": {d: _version(d) for d in dists},
    }
