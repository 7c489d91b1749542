"""The codec bench (``python -m bench.codecbench --quick``) reports only exact codecs.

Lossless is mandatory for the packed layout: the bench must never report a codec
whose values do not come back as the same float64 bits. The first test runs the
quick bench and checks its report; the second re-checks every reported candidate
on values chosen to break careless codecs, with a comparison of its own (so a bug
in the bench's check cannot hide a lossy codec either). No speed is asserted.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from bench.codecbench import main, window_candidates

_SECTIONS = ("windows", "timestamps", "rollups")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    path: Path = tmp_path_factory.mktemp("codecbench") / "codecs.json"
    assert main(["--quick", "--json", str(path)]) == 0
    doc: dict[str, object] = orjson.loads(path.read_bytes())
    return doc


@pytest.mark.timeout(900)
def test_quick_bench_reports_only_codecs_that_round_trip_exactly(
    report: dict[str, object],
) -> None:
    rejected = report["rejected"]
    candidates = report["candidates"]
    assert isinstance(rejected, dict) and isinstance(candidates, dict)
    # The deliberately lossy trap is always measured, and the check catches it.
    assert "not bit-identical" in rejected["trap:float32"]
    windows = report["windows"]
    assert isinstance(windows, list) and windows
    reported = {r["candidate"] for r in windows}
    assert reported == set(candidates) - set(rejected)
    assert not any(name.startswith("trap:") for name in reported)
    # Every reported candidate on every dataset (precision x size x kind), each exact.
    datasets = {(r["precision"], r["size"], r["kind"]) for r in windows}
    assert len(windows) == len(datasets) * len(reported)
    assert {p for p, _, _ in datasets} == {"published", "2dp", "full"}
    for section in _SECTIONS:
        rows = report[section]
        assert isinstance(rows, list) and rows, section
        for row in rows:
            assert row["exact"] is True, (section, row)
            assert row["candidate"] not in rejected, (section, row)
            assert row["bytes_per_reading"] > 0
    journal = report["journal"]
    assert isinstance(journal, list)
    measured = [r for r in journal if r["size"] != "payload"]
    assert measured and all(r["exact"] is True for r in measured)
    checks = report["checks"]
    assert isinstance(checks, dict)
    assert checks["json_columns"] > 0 and checks["json_not_bit_identical"] == 0


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _hard_windows() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Timestamps and values that break lossy or careless codecs (no NaN or infinity:
    the ingest contract refuses them)."""
    rng = np.random.default_rng(5)
    tiny = struct.unpack("<d", struct.pack("<Q", 1))[0]  # the smallest subnormal
    edge = np.array([0.0, -0.0, tiny, -tiny, 1e-300, 1.7976931348623157e308, 0.1 + 0.2, 22.54])
    i64 = np.iinfo(np.int64)
    random_bits = rng.integers(i64.min, i64.max, 300, dtype=np.int64).view(np.float64)
    random_bits = random_bits[np.isfinite(random_bits)]
    decimals = np.round(rng.normal(20, 5, 300), 2)
    decimals[::37] = -0.0  # a negative zero inside decimal-looking data
    stray = decimals.copy()  # decimals with a few values that are not: exceptions
    stray[[5, 77, 200]] = [0.1 + 0.2, 1e300, -(2.0**70)]
    out: list[tuple[np.ndarray, list[np.ndarray]]] = []
    for values in (
        edge,
        random_bits,
        decimals,
        stray,
        np.full(50, 3.25),
        decimals[:1],
        decimals[:2],
    ):
        n = values.size
        ts = 1_795_305_600_000 + np.cumsum(rng.integers(-5, 3_000, n)).astype(np.int64)
        out.append((ts, [values.astype(np.float64), values[::-1].copy()]))
    out.append((np.array([0, 2**62, -(2**62), 1], dtype=np.int64), [edge[:4].copy()]))
    return out


@pytest.mark.timeout(300)
def test_every_reported_candidate_is_exact_on_hard_values(report: dict[str, object]) -> None:
    windows = report["windows"]
    assert isinstance(windows, list)
    reported = {r["candidate"] for r in windows}
    candidates = {c.name: c for c in window_candidates()[0]}
    assert reported <= set(candidates)
    for name in sorted(reported):
        codec = candidates[name]
        for ts, cols in _hard_windows():
            ts_back, cols_back = codec.decode(codec.encode(ts, cols))
            assert np.asarray(ts_back).dtype == np.int64, name
            assert np.array_equal(ts_back, ts), name
            assert len(cols_back) == len(cols), name
            for a, b in zip(cols, cols_back, strict=True):
                assert np.asarray(b).dtype == np.float64, name
                assert _bits(a) == _bits(b), (name, a[:4], np.asarray(b)[:4])
