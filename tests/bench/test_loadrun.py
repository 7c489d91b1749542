"""The load-run harness: the sink's accounting, the baseline, and ``iot-ingest bench --quick``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from bench.baseline import BaselineConfig, NaiveConverter, plain_serialize, run_baseline
from bench.capacity import item_size_bytes, number_size_bytes, write_units
from bench.histogram import MsHistogram, percentile_from_sparse
from bench.hotsensor import timeline
from bench.processes import parse_prometheus
from bench.servers import MosquittoServer
from bench.sink import Sink, make_app
from ingest.storage.layout import Reading, TableLayout
from ingest.trial.servers import free_port
from simulator.publisher import MqttPublisher, parse_mqtt_url

TABLE = "bench-t"
REQUIRED = (
    "readings_per_s",
    "cpu_us_per_reading",
    "latency_ms",
    "lost",
    "duplicates",
    "peak_rss_mb",
    "write_units",
    "cost_per_million_usd",
    "items_per_reading",
    "requests_per_reading",
)


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[tuple[Sink, str]]:
    """An in-process benchmark sink with the table created; yields it and its URL."""
    state = Sink()
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.op_CreateTable({"TableName": TABLE, "KeySchema": []})
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _call(
    http: aiohttp.ClientSession, url: str, op: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    headers = {"X-Amz-Target": f"DynamoDB_20120810.{op}"}
    async with http.post(url + "/", data=orjson.dumps(body), headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


def _put(*items: dict[str, Any]) -> dict[str, Any]:
    return {"RequestItems": {TABLE: [{"PutRequest": {"Item": it}} for it in items]}}


def _item(pk: str, sk: int, **extra: Any) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"N": str(sk)}, "m": {"M": {"t": {"N": "22.5"}}}, **extra}


# -- item sizes and write units -------------------------------------------------------


def test_item_size_follows_dynamodbs_rules() -> None:
    # pk: 2 + 15; sk: 2 + (13 digits → 7) + 1; m: 1 + 3 + (1 + (3 digits → 2 + 1) + 1).
    item = _item("s1#2026-11-22#0", 1763780000123)
    assert item_size_bytes(item) == 17 + 10 + 9
    assert number_size_bytes("0") == 1
    assert number_size_bytes("-0.00012300") == 3  # leading and trailing zeros trimmed: "123"
    assert number_size_bytes("1.5E+10") == 2
    tagged = {
        "g": {"M": {"site": {"S": "plant-ü"}}},
        "ok": {"BOOL": True},
        "l": {"L": [{"N": "1"}]},
    }
    # g: 1 + 3 + (4 + 8 + 1); ok: 2 + 1; l: 1 + 3 + (2 + 1)
    assert item_size_bytes(tagged) == 17 + 3 + 7
    assert [write_units(n) for n in (1, 1024, 1025, 4096)] == [1, 1, 2, 4]


# -- the sink's accounting ------------------------------------------------------------


async def test_sink_accounts_items_units_keys_and_latency(sink: tuple[Sink, str]) -> None:
    _, url = sink
    now_ms = int(time.time() * 1000)
    small = _item("s1#2026-11-22#0", now_ms - 250)
    big = _item("s2#2026-11-22#1", now_ms - 250, pad={"S": "x" * 1500})  # 2 write units
    async with aiohttp.ClientSession() as http:
        status, body = await _call(http, url, "BatchWriteItem", _put(small, big))
        assert (status, body) == (200, {"UnprocessedItems": {}})
        # Rejected as DynamoDB would, and not counted: duplicate keys, more than 25 requests.
        status, body = await _call(http, url, "BatchWriteItem", _put(small, small))
        assert status == 400
        assert "duplicates" in body["message"]
        too_many = [_item("s3#b#0", now_ms + i) for i in range(26)]
        status, _ = await _call(http, url, "BatchWriteItem", _put(*too_many))
        assert status == 400
        # The same key again, in another request: a rewrite (at-least-once), counted once more.
        status, _ = await _call(http, url, "BatchWriteItem", _put(small))
        assert status == 200
        async with http.get(url + "/_stats?sensors=1") as resp:
            stats = orjson.loads(await resp.read())
    assert stats["counts"]["items"] == 3
    assert stats["distinct_keys"] == 2
    assert stats["rewritten_keys"] == 1
    assert stats["counts"]["write_units"] == 1 + 2 + 1
    assert stats["counts"]["item_bytes"] == 2 * item_size_bytes(small) + item_size_bytes(big)
    assert stats["counts"]["rejected_batches"] == 2
    assert stats["sensor_keys"] == {"s1": 1, "s2": 1}
    assert sum(stats["latency_ms"].values()) == 3
    p50 = percentile_from_sparse(stats["latency_ms"], 50)
    assert p50 is not None
    assert 250 <= p50 < 250 + 5_000  # written 250 ms after its timestamp, plus this test's pace


async def test_sink_clock_maps_backlog_timestamps_to_publish_times(sink: tuple[Sink, str]) -> None:
    state, url = sink
    wall0 = int(time.time() * 1000) - 1000
    ts0 = wall0 - 60_000
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + "/_clock", json={"ts0_ms": ts0, "wall0_ms": wall0, "speed": 2.0}
        ) as resp:
            assert resp.status == 200
        # ts0 + 1000 ms of timestamps was scheduled at wall0 + 500 ms: about 500 ms ago.
        status, _ = await _call(http, url, "BatchWriteItem", _put(_item("hot#d#0", ts0 + 1000)))
        assert status == 200
    p50 = state.latency.percentile(50)
    assert p50 is not None
    assert 500 <= p50 < 500 + 5_000


def test_percentiles_from_a_histogram() -> None:
    hist = MsHistogram()
    for ms in range(1, 101):
        hist.record(ms)
    hist.record(-5)  # clock skew: counted as 0
    assert hist.percentile(50) == 50
    assert hist.percentile(99) == 99
    assert percentile_from_sparse(hist.sparse(), 100) == 100
    assert percentile_from_sparse({}, 50) is None


def test_hot_sensor_timestamps_are_distinct_and_never_ahead_of_the_clock() -> None:
    tl = timeline(2000, 60, wall0_ms=1_800_000_000_000)
    assert tl.step_ms == 1
    assert tl.speed == 2.0
    last = 2000 * 60 - 1
    for i in (0, 1, 1000, last):
        scheduled = tl.wall0_ms + i / 2000 * 1000
        assert tl.ts(i) <= scheduled
        assert tl.scheduled_ms(tl.ts(i)) == pytest.approx(scheduled)


def test_parse_prometheus_sums_label_sets() -> None:
    text = (
        "# HELP x_total x\n# TYPE x_total counter\n"
        'x_total{cause="a"} 2.0\nx_total{cause="b"} 3.0\ny_total 7.0\n'
    )
    assert parse_prometheus(text, ["x_total", "y_total", "z_total"]) == {
        "x_total": 5.0,
        "y_total": 7.0,
        "z_total": 0.0,
    }


# -- the baseline ---------------------------------------------------------------------


def test_baseline_items_have_the_service_layout() -> None:
    layout = TableLayout()
    convert = NaiveConverter(layout)
    payload = b'{"ts": 1795000000123, "temperature": 22.5, "humidity": 45, "site": "p1"}'
    (item,) = convert.items("sensors/env-00001/telemetry", payload)
    ours = layout.to_item(
        Reading("env-00001", 1795000000123, {"temperature": 22.5, "humidity": 45}, {"site": "p1"})
    )
    assert item == ours
    assert plain_serialize({"a": Decimal("1.50"), "b": "x"}) == {
        "M": {"a": {"N": "1.50"}, "b": {"S": "x"}}
    }


async def test_baseline_writes_every_reading_once(
    tmp_path: Path, sink: tuple[Sink, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The baseline uses botocore's default credential chain, as a naive user would.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    state, url = sink
    now = int(time.time() * 1000)
    sent = [(f"env-{i:05d}", now - i) for i in range(60)]
    batch = {
        "readings": [{"sensor_id": sid, "ts": ts, "t": i / 4} for i, (sid, ts) in enumerate(sent)]
    }
    single = {"ts": now, "t": 1.25}
    async with MosquittoServer(data_dir=tmp_path / "mosquitto") as broker:
        cfg = BaselineConfig(
            mqtt_url=broker.url, topic="sensors/+/telemetry", table=TABLE, endpoint_url=url,
            client_id="test-baseline",
        )  # fmt: skip
        stop = asyncio.Event()
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(run_baseline(cfg, stop, on_ready=ready.set), name="baseline")
            async with asyncio.timeout(20):
                await ready.wait()
            topics = ["sensors/gw-0/telemetry", "sensors/dev-1/telemetry"]
            async with MqttPublisher(parse_mqtt_url(broker.url), ["p0", "p1"], topics) as pub:
                assert pub.publish_nowait(0, orjson.dumps(batch))
                assert pub.publish_nowait(1, orjson.dumps(single))
                assert await pub.flush(10) == 0
            for _ in range(400):  # 20 s
                if len(state.keys) >= 61:
                    break
                await asyncio.sleep(0.05)
            stop.set()
        stats = task.result()
    layout = TableLayout()
    want = {(layout.partition_key(sid, ts), str(ts)) for sid, ts in sent}
    want.add((layout.partition_key("dev-1", now), str(now)))
    assert set(state.keys) == want
    assert all(n == 1 for n in state.keys.values())
    assert (stats.messages, stats.readings, stats.items_written) == (2, 61, 61)


# -- iot-ingest bench --quick -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "bench", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = orjson.loads((out / "result.json").read_bytes())
    assert result["quick"] is True
    assert set(result["scenarios"]) == {"gateway", "single"}
    for name, doc in result["scenarios"].items():
        for figures in (doc, doc["baseline"]):
            missing = [k for k in REQUIRED if k not in figures]
            assert not missing, (name, missing)
            assert figures["lost"] == 0, name
            assert figures["drained"] is True, name
            assert set(figures["latency_ms"]) >= {"p50", "p95", "p99"}
            assert figures["readings_durable"] == figures["readings_expected"] > 0
            assert figures["items_per_reading"] >= 1
    assert all(k in result for k in REQUIRED)
    assert result["baseline"]["lost"] == 0
    report = (out / "report.md").read_text()
    assert "benchmark fixture" in report
    for name in ("gateway", "single"):
        assert (out / f"throughput-{name}.png").stat().st_size > 1000
        assert (out / f"latency-{name}.png").stat().st_size > 1000


def test_figures_count_loss_per_sensor_and_take_off_the_connect_time() -> None:
    from bench.loadrun import LoadSpec, _Phase, phase_figures
    from bench.scenarios import get_scenario

    phase = _Phase(
        "ours",
        summary={"valid_readings": 10, "connect_s": 0.5, "achieved_rate_per_s": 5.0},
        manifest_counts={"a": 6, "b": 4},
        final={
            "counts": {
                "items": 10,
                "requests.BatchWriteItem": 2,
                "write_units": 12,
                "registry_updates": 2,
            },
            "distinct_keys": 9,
            "rewritten_keys": 1,
            "sensor_keys": {"a": 6, "b": 3},
            "first_write_s": 100.0,
            "last_write_s": 102.0,
            "latency_ms": {"520": 5, "700": 4, "300": 1},
        },
        cpu_s=0.009,
        window_s=3.0,
        hwm_kb=[102_400, 51_200],
    )
    spec = LoadSpec(scenario=get_scenario("gateway"), duration_s=2, rate_per_s=5)
    fig = phase_figures(phase, spec)
    assert fig["lost"] == 1  # sensor b: 4 sent, 3 keys
    assert fig["duplicates"] == 1
    assert fig["readings_per_s"] == 9 / 2.0
    assert fig["cpu_us_per_reading"] == pytest.approx(1000.0)
    assert fig["latency_offset_ms"] == 500
    assert fig["latency_ms"]["p50"] == 20  # 520 ms measured, 500 ms of it connecting
    assert fig["latency_ms_raw"]["p50"] == 520
    assert fig["latency_ms"]["max"] == 200
    assert fig["peak_rss_mb"] == 100
    assert fig["write_units_per_reading"] == pytest.approx(12 / 9)
    assert fig["cost_per_million_usd"] == pytest.approx(12 / 9 * 0.625)
    assert fig["requests_per_reading"] == pytest.approx(2 / 9)
    assert fig["write_requests_per_reading"] == pytest.approx(4 / 9)


def test_sink_peak_partition_rate_is_per_wall_clock_second() -> None:
    now = [1000.2]
    state = Sink(clock=lambda: now[0])
    for i in range(3):
        state.account_batch({TABLE: [_item("hot#d#0", 1_000_000 + i)]})
    now[0] = 1000.9
    state.stats_doc(light=True)  # a poll in the middle of a second does not split it
    state.account_batch({TABLE: [_item("hot#d#0", 1_000_010), _item("hot#d#1", 1_000_011)]})
    now[0] = 1001.1
    state.account_batch({TABLE: [_item("hot#d#1", 1_000_020)]})
    doc = state.stats_doc()
    assert doc["peak_partition_writes_per_s"] == 4
    assert doc["peak_partition"] == "hot#d#0"
    assert doc["hottest_partitions"][0] == ("hot#d#0", 4)


def test_sink_counts_a_packed_tables_readings_in_its_journal_and_their_visibility() -> None:
    from ingest.storage.journal import journal_items
    from ingest.storage.windows import WindowScheme, encode_stage, seal

    now = [2000.0]
    state = Sink(clock=lambda: now[0])
    scheme = WindowScheme(TableLayout(kind="packed"))
    t0 = 1_999_000  # scheduled publish times: 1 s before the journal write
    readings = [Reading(f"s{i % 2}", t0 + i, {"v": i}) for i in range(6)]
    [(_, journal)] = journal_items("w1", 5_000, readings + readings[:2], 0)  # 2 redelivered
    stage = scheme.stage_item(1, 7, 1_000, encode_stage(readings), 6)
    parts = [scheme.part_item(p) for p in seal(scheme, readings[0::2], 1)]
    state.account_batch({TABLE: [journal]})
    now[0] = 2003.0  # staged 4 s after the publish
    state.account_batch({TABLE: [stage, *parts]})
    doc = state.stats_doc(per_sensor=True)
    assert doc["distinct_keys"] == 6 and doc["rewritten_keys"] == 2
    assert doc["sensor_keys"] == {"s0": 3, "s1": 3}
    counts = doc["counts"]
    assert counts["items.journal"] == 1 and counts["items.stage"] == 1
    assert counts["items.window"] == len(parts)
    assert percentile_from_sparse(doc["latency_ms"], 50) == pytest.approx(1000, abs=10)
    assert percentile_from_sparse(doc["visible_ms"], 50) == pytest.approx(4000, abs=10)
