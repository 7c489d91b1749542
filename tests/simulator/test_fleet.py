"""Fleets from flags and from TOML fleet files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.storage.layout import SENSOR_ID_PATTERN
from simulator.errors import SimConfigError
from simulator.fleet import Fleet, load_fleet_file


def test_uniform_fleet_splits_devices_and_rate() -> None:
    fleet = Fleet.uniform(
        devices=10, rate_per_s=50, kinds=("env", "gps", "power"), device_offset=100
    )
    assert len(fleet) == 10
    assert fleet.kinds.count("env") == 4 and fleet.kinds.count("gps") == 3
    assert fleet.total_rate_per_s == pytest.approx(50)
    assert fleet.sensor_ids[0] == "env-00100" and fleet.sensor_ids[-1] == "power-00109"
    assert all(SENSOR_ID_PATTERN.fullmatch(s) for s in fleet.sensor_ids)
    assert len(set(fleet.sensor_ids)) == 10


def test_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(
        """
[[group]]
kind = "env"
count = 3
rate_per_s = 2.0
tags = { site = "plant-1" }

[[group]]
kind = "vibration"
count = 2
interval_s = 0.01
id_prefix = "vib."
"""
    )
    fleet = load_fleet_file(path)
    assert fleet.sensor_ids == ("env-00000", "env-00001", "env-00002", "vib.00003", "vib.00004")
    assert fleet.rates_per_s.tolist() == [2.0, 2.0, 2.0, 100.0, 100.0]
    assert fleet.tags_of(0) == {"site": "plant-1"} and fleet.tags_of(4) == {}
    scaled = fleet.with_total_rate(406.0)
    assert scaled.total_rate_per_s == pytest.approx(406.0)
    assert scaled.sensor_ids == fleet.sensor_ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no \\[\\[group\\]\\]"),
        ("[[group]]\nkind = 'toaster'\ncount = 1", "unknown sensor kind 'toaster'"),
        ("[[group]]\ncount = 1\nrate_per_s = 0", "rate_per_s"),
        ("[[group]]\ncount = 1\nrate_per_s = 1000", "rate_per_s"),
        ("[[group]]\ncount = 1\nid_prefix = 'a#'", "id_prefix"),
        ("[[group]]\ncount = 1\ntags = { ts = 'x' }", "reserved"),
        ("[[group]]\ncount = 1\ncolour = 'red'", "unknown keys"),
        ("[[group]]\nkind = 'env'", "missing key"),
        ("[[group]\n", "not valid TOML"),
        ("[[group]]\ncount = 1\nid_prefix = 'x'\n[[group]]\ncount = 1\nid_prefix = 'x'\n", None),
    ],
)
def test_fleet_file_errors_name_the_problem(tmp_path: Path, text: str, message: str | None) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    if message is None:  # same prefix twice is fine: indexes run over the whole fleet
        assert load_fleet_file(path).sensor_ids == ("x00000", "x00001")
        return
    with pytest.raises(SimConfigError, match=message):
        load_fleet_file(path)
