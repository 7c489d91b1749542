"""Digests and manifests: the vectorised and scalar digests agree; files round-trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.storage.layout import Reading, TableLayout
from simulator.errors import ManifestError
from simulator.manifest import (
    ManifestBuilder,
    digest_readings,
    load_manifest,
    reading_digest,
    save_manifest,
    sensor_hash,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(
    ts=st.lists(st.integers(0, 2**53), min_size=1, max_size=20),
    a=st.data(),
)
def test_vectorised_digest_equals_scalar_digest(ts: list[int], a: st.DataObject) -> None:
    n = len(ts)
    temp = a.draw(st.lists(finite, min_size=n, max_size=n))
    hum = a.draw(st.lists(finite, min_size=n, max_size=n))
    tags = {"site": "plant-1"}
    vec = digest_readings(
        np.full(n, sensor_hash("env-00001", tags), dtype=np.uint64),
        np.array(ts, dtype=np.int64),
        {"temperature": np.array(temp), "humidity": np.array(hum)},
    )
    scalar = [
        reading_digest("env-00001", t, {"humidity": h, "temperature": x}, tags)
        for t, x, h in zip(ts, temp, hum, strict=True)
    ]
    assert vec.tolist() == scalar


@settings(max_examples=100, deadline=None)
@given(value=finite)
def test_digest_survives_the_table_round_trip(value: float) -> None:
    layout = TableLayout()
    reading = Reading("dev-1", 1_763_780_000_123, {"v": value}, {"k": "x"})
    back = layout.from_item(layout.to_item(reading))
    assert reading_digest(back.sensor_id, back.ts_ms, back.metrics, back.tags) == reading_digest(
        "dev-1", 1_763_780_000_123, {"v": value}, {"k": "x"}
    )


def test_digest_depends_on_every_part() -> None:
    base = reading_digest("s", 1, {"a": 1.5, "b": 2.0}, {})
    assert base == reading_digest("s", 1, {"b": 2.0, "a": 1.5}, {})  # metric order is irrelevant
    assert base == reading_digest("s", 1, {"a": 1.5, "b": 2}, {})  # 2 == 2.0, as format_number says
    others = [
        reading_digest("t", 1, {"a": 1.5, "b": 2.0}, {}),
        reading_digest("s", 2, {"a": 1.5, "b": 2.0}, {}),
        reading_digest("s", 1, {"a": 1.25, "b": 2.0}, {}),
        reading_digest("s", 1, {"c": 1.5, "b": 2.0}, {}),
        reading_digest("s", 1, {"a": 1.5, "b": 2.0}, {"g": "x"}),
        reading_digest("s", 1, {"a": 1.5}, {}),
    ]
    assert len({base, *others}) == 1 + len(others)


def test_checksum_is_independent_of_order_and_counts_once_per_call() -> None:
    ids = ["a", "b"]
    dev = np.array([0, 1, 0, 1], dtype=np.int64)
    ts = np.array([10, 11, 12, 13], dtype=np.int64)
    vals = {"v": np.array([1.0, 2.0, 3.0, 4.0])}
    one = ManifestBuilder(ids, [{}, {}])
    one.add_valid(dev, ts, vals)
    two = ManifestBuilder(ids, [{}, {}])
    order = np.array([3, 1, 0, 2])
    two.add_valid(dev[order][:2], ts[order][:2], {"v": vals["v"][order][:2]})
    two.add_valid(dev[order][2:], ts[order][2:], {"v": vals["v"][order][2:]})
    kw: dict[str, Any] = {
        "run": {},
        "totals": {},
        "faults": {},
        "invalid": {"messages": 0},
        "complete": True,
    }
    m1, m2 = one.build(**kw), two.build(**kw)
    assert m1 == m2
    assert m1["sensors"]["a"] == {
        "count": 2,
        "first_ts": 10,
        "last_ts": 12,
        "checksum": m1["sensors"]["a"]["checksum"],
        "span": [10, 12],
    }
    assert m1["ts_range"] == [10, 13]


def test_manifest_file_round_trip_and_errors(tmp_path: Path) -> None:
    b = ManifestBuilder(["a"], [{}], detail=True)
    b.add_valid(np.array([0]), np.array([5]), {"v": np.array([1.0])})
    m = b.build(run={"seed": 1}, totals={}, faults={}, invalid={"messages": 0}, complete=True)
    path = tmp_path / "m.json"
    save_manifest(m, path)
    assert load_manifest(path) == m
    assert m["readings"] == {"a": [[5, m["sensors"]["a"]["checksum"]]]}
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ManifestError, match="not a simulator manifest"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("{")
    with pytest.raises(ManifestError, match="not JSON"):
        load_manifest(tmp_path / "bad2.json")
