"""``iot-ingest plan``: hand-computed cases to exact values, and the command's output."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.archivesize import parquet_bytes_per_reading
from bench.plan import (
    BROKERS,
    MEASURED_CPU_US_PER_MESSAGE_SINGLE,
    MEASURED_CPU_US_PER_READING_BATCHED,
    MEASURED_LATENCY_P99_MS,
    MEASURED_PARQUET_BYTES_PER_METRIC,
    Dashboards,
    Figure,
    Fleet,
    LayoutFigures,
    Plan,
    Prices,
    default_figures,
    make_plan,
    reading_item_bytes,
)
from ingest.cli.main import main as cli_main
from ingest.storage.layout import TableLayout
from simulator.signals import kind_names

MONTH_READINGS_10K_1HZ = 10_000 * 30 * 86_400  # 25.92e9 readings a month


def _plan(
    fleet: Fleet,
    *,
    kind: str = "reading",
    figures: LayoutFigures | None = None,
    broker: str = "iot-core",
    **kw: Any,
) -> Plan:
    layout = TableLayout(kind=kind, shards=kw.pop("shards", 4))
    return make_plan(
        fleet=fleet,
        layout=layout,
        figures=figures or default_figures(fleet),
        dashboards=kw.pop("dashboards", Dashboards()),
        broker=BROKERS[broker],
        prices=kw.pop("prices", Prices()),
        **kw,
    )


def _wru(value: float) -> LayoutFigures:
    return LayoutFigures(
        cpu_us_per_reading=MEASURED_CPU_US_PER_MESSAGE_SINGLE,
        latency_p99_ms=MEASURED_LATENCY_P99_MS,
        write_units_per_reading=Figure(value, "flag", "--wru-per-reading"),
    )


# -- writes, storage, the bill ------------------------------------------------------


def test_10k_sensors_at_1hz_reading_layout_at_1_11_units_per_reading() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    p = _plan(fleet, figures=_wru(1.11), archive_months=0)
    assert p.wcu_per_s == pytest.approx(11_100.0, rel=1e-12)
    # 25.92e9 readings × 1.11 = 28,771.2 M units × $0.625
    assert p.monthly_usd["writes"] == pytest.approx(17_982.0, rel=1e-12)
    # item: pk 2+30, sk 2+8, ttl 3+5, m 1+3 + 5 × (8 + 3 + 1) = 114 bytes; +100 stored
    assert p.item_bytes is not None and p.item_bytes.value == 114
    assert p.stored_bytes_per_reading.value == 214
    assert p.storage_gb_per_day == pytest.approx(10_000 * 86_400 * 214 / 1e9, rel=1e-12)
    assert p.table_gb == pytest.approx(5_546.88, rel=1e-12)
    assert p.monthly_usd["storage"] == pytest.approx(1_386.72, rel=1e-12)
    assert p.partitions_by == {"writes": 12, "reads": 1, "storage": 555}
    assert p.partitions == 555
    assert p.monthly_usd["replicated writes"] == 0
    assert p.monthly_usd["S3 archive"] == 0
    assert p.monthly_total_usd == pytest.approx(
        17_982.0 + 1_386.72 + p.monthly_usd["reads"], rel=1e-12
    )


def test_computed_write_units_are_the_items_and_the_registry() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    p = _plan(fleet)
    # one unit per item (114 B < 1 KB) + one registry UpdateItem per sensor per 300 s
    assert p.write_parts == {"reading items": 1.0, "registry": pytest.approx(1 / 300)}
    assert p.write_units_per_reading.source == "computed"
    assert p.wcu_per_s == pytest.approx(10_000 + 10_000 / 300, rel=1e-12)
    assert reading_item_bytes(80) > 1024  # then two units per reading
    big = _plan(Fleet(sensors=10, rate_hz=1.0, metrics=80))
    assert big.write_parts["reading items"] == 2.0


def test_replicas_bill_the_writes_and_one_ttl_delete_per_item_again() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    p = _plan(fleet, figures=_wru(1.11), replica_regions=2)
    # 2 × 25.92e9 × (1.11 + 1) = 109,382.4 M replicated units × $0.625
    assert p.monthly_usd["replicated writes"] == pytest.approx(68_364.0, rel=1e-12)
    assert p.monthly_usd["replica storage"] == pytest.approx(2 * 1_386.72, rel=1e-12)


def test_standard_ia_prices_and_per_line_overrides() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    ia = _plan(fleet, figures=_wru(1.11), prices=Prices.for_table_class("standard-ia"))
    assert ia.monthly_usd["writes"] == pytest.approx(17_982.0 * 1.25, rel=1e-12)
    assert ia.monthly_usd["storage"] == pytest.approx(5_546.88 * 0.10, rel=1e-12)
    eu = _plan(fleet, figures=_wru(1.11), prices=Prices(wru_per_million=0.7625))
    assert eu.monthly_usd["writes"] == pytest.approx(28_771.2 * 0.7625, rel=1e-12)


def test_the_archive_holds_its_months_of_parquet() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    p = _plan(fleet, archive_months=12)
    assert p.archive_bytes_per_reading.value == pytest.approx(3.05 * 5)
    assert p.archive_gb_per_month == pytest.approx(MONTH_READINGS_10K_1HZ * 15.25 / 1e9)
    assert p.monthly_usd["S3 archive"] == pytest.approx(12 * 395.28 * 0.023, rel=1e-12)


def test_the_parquet_figure_is_what_the_archivers_encoder_makes() -> None:
    # An hour of each simulator kind at 1 Hz (a day takes 6 s: python -m bench.archivesize).
    measured = [parquet_bytes_per_reading(k, hz=1.0, seconds=3_600) for k in kind_names()]
    per_metric = sum(b for _, b in measured) / sum(m for m, _ in measured)
    assert per_metric == pytest.approx(MEASURED_PARQUET_BYTES_PER_METRIC.value, rel=0.15)


def test_dashboard_reads_query_every_shard_of_each_sensor() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    p = _plan(fleet, dashboards=Dashboards(count=10, sensors=10, window_s=3_600, refresh_s=60))
    # per shard: 900 items × 114 B = 102,600 B → 26 × 4 KB → 13 read units (eventual)
    assert p.read_units_per_refresh_per_sensor == 4 * 13
    assert p.rcu_per_s == pytest.approx(100 * 52 / 60, rel=1e-12)
    assert p.monthly_usd["reads"] == pytest.approx(100 * 52 / 60 * 2.592 * 0.125, rel=1e-12)
    none = _plan(fleet, dashboards=Dashboards(count=0))
    assert none.rcu_per_s == 0 and none.monthly_usd["reads"] == 0


# -- hot keys ---------------------------------------------------------------------------


def test_a_hot_sensor_is_spread_over_its_shards() -> None:
    hot = Fleet(sensors=1, rate_hz=2_000.0, metrics=4, readings_per_message=20)
    p4 = _plan(hot, shards=4)
    assert p4.hottest_key.startswith("one sensor's bucket shard")
    assert p4.hottest_key_wcu_per_s == 500.0
    assert p4.hottest_key_ok
    p1 = _plan(hot, shards=1)
    assert p1.hottest_key_wcu_per_s == 2_000.0
    assert not p1.hottest_key_ok
    assert any("at most 1,000 distinct readings a second" in n for n in p1.notes)
    assert _plan(Fleet(sensors=1, rate_hz=1_000.0, metrics=4)).notes == []


def test_a_million_sensors_load_each_registry_partition() -> None:
    fleet = Fleet(sensors=1_000_000, rate_hz=1.0, metrics=5, readings_per_message=100)
    p = _plan(fleet)
    assert p.hottest_key.startswith("a registry partition")
    assert p.hottest_key_wcu_per_s == pytest.approx(1_000_000 / 300 / 8, rel=1e-12)


# -- workers and connections ----------------------------------------------------------


def test_iot_core_needs_a_connection_per_100_messages_per_second() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)  # 10,000 messages/s
    p = _plan(fleet)
    assert p.inflight_messages == pytest.approx(10_000 * 0.077, rel=1e-12)  # 770
    assert p.workers_for_cpu == 1  # 10,000 × 26.9 µs = 0.27 core < 0.6
    assert p.workers_for_connections == 100  # 100 messages/s per connection
    assert p.workers == 100


def test_the_in_flight_window_bounds_a_connection_by_littles_law() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=1.0, metrics=5)
    figures = LayoutFigures(
        cpu_us_per_reading=MEASURED_CPU_US_PER_MESSAGE_SINGLE,
        latency_p99_ms=Figure(50.0, "flag", "--latency-ms"),
    )
    # 10,000/s × 0.05 s = 500 in flight; Mosquitto's 20 → exactly 25 connections
    p = _plan(fleet, figures=figures, broker="mosquitto")
    assert p.inflight_messages == pytest.approx(500.0)
    assert p.workers_for_connections == 25
    assert p.workers == 25
    raised = _plan(fleet, figures=figures, broker="mosquitto", inflight_limit=1000)
    assert raised.workers == 1


def test_cpu_bound_workers_at_a_million_readings_per_second() -> None:
    fleet = Fleet(sensors=1_000_000, rate_hz=1.0, metrics=5, readings_per_message=100)
    p = _plan(fleet, broker="mosquitto", inflight_limit=10_000)
    assert p.cpu_us_per_reading is MEASURED_CPU_US_PER_READING_BATCHED
    # 1e6 × 18.6 µs = 18.6 cores at 0.6 a worker: exactly 31
    assert p.readings_per_s_per_worker == pytest.approx(0.6e6 / 18.6)
    assert p.workers_for_cpu == 31
    assert p.workers == 31


# -- the packed layout (modelled) -----------------------------------------------------


def test_packed_at_decision_0008s_scenario() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=0.3, metrics=5, readings_per_message=100)
    p = _plan(fleet, kind="packed")
    assert p.workers == 1
    # journal: 150 readings per 50 ms flush × 22 B + 60 = 3,360 B → 4 units, 20/s
    # staging: 117.1875 readings per group item × 15 B + 60 → 2 units, 25.6 items/s
    # windows: 270 readings × 6 B + 60 → 2 units per 270; rollups 0.27 per 270
    # registry: 10,000 / 300 s
    expected = {
        "journal": 4 * 20 / 3_000,
        "staging": 2 * 25.6 / 3_000,
        "sealed windows": 2 / 270,
        "rollups": 0.27 / 270,
        "registry": 10_000 / 300 / 3_000,
    }
    assert p.write_parts == pytest.approx(expected, rel=1e-9)
    assert p.write_units_per_reading.source == "modelled"
    assert p.write_units_per_reading.value == pytest.approx(sum(expected.values()), rel=1e-9)
    # stored: windows (1,620 + 60 + 100) / 270, journal (22 + 160/150) × 2/30, staging × 1/30
    stored = (1_620 + 160) / 270 + (22 + 160 / 150) * 2 / 30 + (15 + 160 / 117.1875) / 30
    assert p.stored_bytes_per_reading.value == pytest.approx(stored, rel=1e-9)
    assert p.stored_bytes_per_reading.source == "modelled"
    # acks wait for the journal: the reading layout's 77 ms + one 50 ms flush
    assert p.latency_ms.value == 127.0 and p.latency_ms.source == "modelled"
    assert p.hottest_key.startswith("one worker's journal")
    assert p.hottest_key_wcu_per_s == pytest.approx(80.0)


def test_packed_write_units_grow_with_workers_that_each_flush() -> None:
    # One reading per message on IoT Core: 100 connections, each flushing its journal
    # and its staging items on its own: the per-reading cost is no longer amortised.
    single = _plan(Fleet(sensors=10_000, rate_hz=1.0, metrics=5), kind="packed")
    batched = _plan(
        Fleet(sensors=10_000, rate_hz=1.0, metrics=5, readings_per_message=100), kind="packed"
    )
    assert single.workers == 100 and batched.workers == 1
    flushes = 20 * -math.expm1(-100 * 0.05)  # a worker at 100 readings/s
    assert single.write_parts["journal"] == pytest.approx(flushes * 100 / 10_000, rel=1e-9)
    assert single.write_units_per_reading.value > 5 * batched.write_units_per_reading.value


def test_a_measured_packed_run_replaces_the_model() -> None:
    fleet = Fleet(sensors=10_000, rate_hz=0.3, metrics=5, readings_per_message=100)
    figures = LayoutFigures(
        cpu_us_per_reading=Figure(12.0, "measured", "run"),
        latency_p99_ms=Figure(40.0, "measured", "run"),
        write_units_per_reading=Figure(0.04, "measured", "run"),
        from_packed_run=True,
    )
    p = _plan(fleet, kind="packed", figures=figures)
    assert p.write_units_per_reading.value == 0.04
    assert p.wcu_per_s == pytest.approx(120.0)
    assert p.latency_ms.value == 40.0  # measured on packed: no flush added
    assert p.cpu_us_per_reading.source == "measured"


# -- the command ----------------------------------------------------------------------

BASE = ["plan", "--sensors", "10000", "--rate-hz", "1", "--metrics", "5"]


def _json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert cli_main([*argv, "--json"]) == 0
    doc: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return doc


def test_the_command_prints_both_layouts_and_labels_packed_as_modelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main([*BASE, "--readings-per-message", "100"]) == 0
    out = capsys.readouterr().out
    header, _, table = out.partition("\n\n")
    assert header.startswith("10,000 sensors × 1 Hz × 5 metrics = 10,000 readings/s")
    assert "| reading" in table and "| packed" in table
    assert "packed: MODELLED, not measured" in out
    assert "0.0477 (modelled)" in out  # packed write units per reading
    assert "1.0033 (computed)" in out
    wcu = next(line for line in out.splitlines() if line.startswith("write units/s"))
    assert "10,033" in wcu and "477" in wcu
    assert "$/month total" in out


def test_the_command_json_for_one_layout_with_a_flag_figure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = _json([*BASE, "--layout", "reading", "--wru-per-reading", "1.11"], capsys)
    assert [p["layout"] for p in doc["plans"]] == ["reading"]
    (p,) = doc["plans"]
    assert p["write_units_per_reading"] == {
        "value": 1.11,
        "source": "flag",
        "note": "--wru-per-reading",
    }
    assert p["wcu_per_s"] == pytest.approx(11_100.0)
    assert p["monthly_usd"]["writes"] == pytest.approx(17_982.0)
    assert p["workers"] == 100
    assert doc["inputs"]["prices"]["usd_per_million_wru"] == 0.625


def test_the_command_prices_flags_and_table_class(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*BASE, "--layout", "reading", "--wru-per-reading", "1.11"]
    ia = _json([*argv, "--table-class", "standard-ia"], capsys)["plans"][0]
    assert ia["monthly_usd"]["writes"] == pytest.approx(17_982.0 * 1.25)
    priced = _json([*argv, "--usd-per-million-wru", "1.0", "--replica-regions", "1"], capsys)
    p = priced["plans"][0]
    assert p["monthly_usd"]["writes"] == pytest.approx(28_771.2)
    assert p["monthly_usd"]["replicated writes"] == pytest.approx(25_920 * 2.11 * 0.625)


def test_bench_results_override_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reading = tmp_path / "gateway"
    reading.mkdir()
    (reading / "result.json").write_bytes(
        orjson.dumps(
            {
                "scenario": "gateway",
                "readings_per_s": 2998.0,
                "cpu_us_per_reading": 29.6,
                "latency_ms": {"p50": 34, "p95": 44, "p99": 46},
                "write_units_per_reading": 1.056,
                "item_bytes_mean": 87.0,
                "ingest_args": [],
            }
        )
    )
    packed = tmp_path / "packed.json"
    packed.write_bytes(
        orjson.dumps(
            {
                "scenario": "gateway",
                "readings_per_s": 3000.0,
                "cpu_us_per_reading": 20.0,
                "latency_ms": {"p99": 60},
                "write_units_per_reading": 0.042,
                "ingest_args": [],
                "layout": {"layout": "packed", "bucket_minutes": 1440, "window_ms": 900000},
            }
        )
    )
    doc = _json([*BASE, "--bench", str(reading), "--bench", str(packed)], capsys)
    r, p = doc["plans"]
    assert r["write_units_per_reading"]["value"] == 1.056
    assert r["write_units_per_reading"]["source"] == "measured"
    assert "gateway, 2,998 readings/s" in r["write_units_per_reading"]["note"]
    assert r["stored_bytes_per_reading"]["value"] == 187.0  # 87 + 100
    assert r["latency_ms"]["value"] == 46.0
    assert p["write_units_per_reading"] == {
        "value": 0.042,
        "source": "measured",
        "note": f"{packed} (gateway, 3,000 readings/s)",
    }
    assert p["latency_ms"]["value"] == 60.0
    # only the reading run: packed takes its CPU and latency (+ the journal flush)
    doc = _json([*BASE, "--bench", str(reading)], capsys)
    p = doc["plans"][1]
    assert p["latency_ms"]["value"] == 96.0 and p["latency_ms"]["source"] == "modelled"
    assert p["write_units_per_reading"]["source"] == "modelled"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["plan", "--sensors", "0", "--rate-hz", "1", "--metrics", "5"], ["--sensors", "got 0"]),
        (["plan", "--sensors", "10", "--rate-hz", "nan", "--metrics", "5"], ["--rate-hz", "nan"]),
        (["plan", "--sensors", "10", "--rate-hz", "1", "--metrics", "x"], ["--metrics", "'x'"]),
        ([*BASE, "--layout", "cubic"], ["--layout", "'cubic'"]),
        ([*BASE, "--broker", "rabbit"], ["--broker", "'rabbit'"]),
        ([*BASE, "--replica-regions", "-1"], ["--replica-regions", "got -1"]),
        ([*BASE, "--worker-utilization", "1.5"], ["--worker-utilization", "1.5"]),
        ([*BASE, "--usd-per-million-wru", "-2"], ["--usd-per-million-wru", "-2"]),
        (["plan", "--rate-hz", "1", "--metrics", "5"], ["--sensors"]),
    ],
)
def test_a_bad_flag_value_names_the_flag(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--wru-per-reading", "1.1"], ["--wru-per-reading", "--layout"]),
        (["--shards", "65"], ["--shards", "shards must be 1..64, got 65"]),
        (["--packed-window-s", "7"], ["--packed-window-s", "window_ms"]),
        (["--worker-utilization", "0"], ["--worker-utilization", "> 0"]),
        (["--bench", "/nonexistent/result.json"], ["--bench /nonexistent/result.json"]),
    ],
)
def test_flags_checked_after_parsing_name_the_flag(
    extra: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main([*BASE, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("iot-ingest plan: ")
    assert all(w in captured.err for w in words), captured.err


def test_a_file_that_is_not_a_bench_result_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "result.json"
    bad.write_bytes(b'{"hello": 1}')
    assert cli_main([*BASE, "--bench", str(bad)]) == 2
    assert "not a bench result.json" in capsys.readouterr().err


def test_the_table_flags_a_key_over_a_partitions_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["plan", "--sensors", "1", "--rate-hz", "2000", "--metrics", "4", "--layout"]
    assert cli_main([*argv, "reading", "--readings-per-message", "20", "--shards", "1"]) == 0
    hot = next(line for line in capsys.readouterr().out.splitlines() if "hottest key" in line)
    assert "2,000.0 WCU/s — OVER 1,000/s" in hot
    assert cli_main([*argv, "reading", "--readings-per-message", "20"]) == 0
    hot = next(line for line in capsys.readouterr().out.splitlines() if "hottest key" in line)
    assert "500.0 WCU/s" in hot and "OVER" not in hot


def test_the_broker_flags_set_the_connections(capsys: pytest.CaptureFixture[str]) -> None:
    common = [*BASE, "--layout", "reading", "--latency-ms", "50"]
    p = _json([*common, "--broker", "mosquitto"], capsys)["plans"][0]
    assert (p["broker"], p["inflight_limit"], p["workers"]) == ("Mosquitto", 20, 25)
    p = _json([*common, "--broker", "mosquitto", "--inflight-limit", "1000"], capsys)["plans"][0]
    assert (p["inflight_limit"], p["workers"]) == (1000, 1)
