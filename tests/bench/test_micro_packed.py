"""Micro benchmarks of the packed item codec (ingest.storage.packed): encode and decode.

One simulated power meter (5 metrics at sensor precision, 1 Hz with a ±2 ms clock
jitter, three tags, the firmware changing once: tests/ingest/test_packed.py's windows)
as a 300-reading window and as a day (86,400 readings). Each benchmark records µs and
bytes per reading in ``extra_info``. Plain fast tests by default (one run each, result
checked); to measure, on CPU time since the reference machine is shared::

    .venv/bin/pytest tests/bench/test_micro_packed.py --benchmark-enable \\
        --benchmark-timer=time.process_time --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import functools

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingest.storage.layout import Reading
from ingest.storage.packed import decode_window, encode_window
from tests.ingest.test_packed import _simulated

SIZES = [300, 86_400]


@functools.cache
def _window(n: int) -> tuple[list[Reading], bytes]:
    readings = _simulated("power", n)
    return readings, encode_window(readings)


def _record(benchmark: BenchmarkFixture, n: int, blob: bytes) -> None:
    benchmark.extra_info["readings"] = n
    benchmark.extra_info["bytes_per_reading"] = round(len(blob) / n, 3)
    if benchmark.stats is not None:
        benchmark.extra_info["us_per_reading"] = round(benchmark.stats.stats.median / n * 1e6, 3)


@pytest.mark.benchmark(group="packed-encode")
@pytest.mark.parametrize("n", SIZES)
def test_encode_window(benchmark: BenchmarkFixture, n: int) -> None:
    readings, blob = _window(n)
    out = benchmark(encode_window, readings)
    assert out == blob
    assert len(out) / n < 7.5  # decision 0007: 6.00 (300) and 4.65 (86,400) B/reading
    _record(benchmark, n, out)


@pytest.mark.benchmark(group="packed-decode")
@pytest.mark.parametrize("n", SIZES)
def test_decode_window(benchmark: BenchmarkFixture, n: int) -> None:
    readings, blob = _window(n)
    out = benchmark(decode_window, blob)
    assert len(out) == n
    assert [r.ts_ms for r in out] == [r.ts_ms for r in readings]
    assert out[-1].metrics == readings[-1].metrics
    assert out[0].tags == readings[0].tags
    _record(benchmark, n, blob)
