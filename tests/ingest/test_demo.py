"""The one-command demo: embedded servers, ingest, a fleet, the table's lifecycle (a packed
table's staging, sealed windows and compaction; archival to S3) and the dashboard, stopped
cleanly."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.aws.settings import AwsSettings
from ingest.cli.main import build_parser
from ingest.demo import DemoInfo, DemoOptions, demo_config, run_demo
from ingest.pipeline.service import layout_from_config
from ingest.storage.archive.manifest import Manifest
from ingest.storage.archive.store import S3Store
from ingest.storage.dynamo import DynamoClient
from ingest.storage.table import read_layout
from ingest.trial.servers import free_port


async def sample(http: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus endpoint (``AssertionError`` when it has none)."""
    async with http.get(url) as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no {name} {labels} at {url}")


async def archived_buckets(http: aiohttp.ClientSession, url: str) -> float:
    return await sample(http, url, "iot_archive_buckets_total", outcome="archived")


def test_the_demo_is_packed_by_default_and_reading_on_request() -> None:
    urls = {"mqtt_url": "mqtt://127.0.0.1:1883", "protocol": "5", "endpoint_url": "http://x"}
    args = build_parser().parse_args(["demo"])
    assert args.layout == "packed" and args.devices is None and args.rate is None
    packed = layout_from_config(demo_config(DemoOptions(), **urls))
    assert packed.kind == "packed"
    assert packed.bucket_ms % packed.window_ms == 0 and packed.window_ms <= 300_000
    assert packed.stage_ms <= 2_000  # on the dashboard within seconds
    opts = DemoOptions(layout=build_parser().parse_args(["demo", "--layout", "reading"]).layout)
    assert layout_from_config(demo_config(opts, **urls)).kind == "reading"
    assert DemoOptions(devices=300).live_rate_per_s == 300.0  # a reading a second each
    with pytest.raises(ValueError, match="window_seconds=420 must divide the bucket"):
        demo_config(DemoOptions(window_seconds=420), **urls)


async def test_packed_demo_stages_seals_compacts_and_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default demo on a packed table: the dashboard's API serves the last seconds
    (staging) and the replayed minutes (sealed windows); compaction passes run; the
    archiver runs if it takes a packed table, else the demo says so once and goes on."""
    caplog.set_level(logging.INFO, logger="ingest.demo")
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    infos: list[DemoInfo] = []
    opts = DemoOptions(
        devices=20,
        port=port,
        data_dir=tmp_path,
        history_minutes=3,
        window_seconds=60,  # the replayed minutes are whole windows, sealed a minute on
        compact_every_s=2,
        archive_every_s=1,
    )
    demo = asyncio.create_task(run_demo(opts, stop, ready, on_ready=infos.append))
    try:
        async with asyncio.timeout(110):  # a bound, not a target: the seal waits a minute
            await asyncio.wait(
                [demo, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED"
            )
            assert ready.is_set(), "demo did not start"
            (info,) = infos
            async with DynamoClient(
                table=info.table,
                aws=AwsSettings(
                    endpoint_url=info.endpoint_url,
                    aws_access_key_id="demo",
                    aws_secret_access_key="demo",
                ),
            ) as client:
                layout = await read_layout(client)
            assert layout is not None and layout.kind == "packed"
            assert layout.window_ms == 60_000 and layout.stage_ms == opts.stage_interval_ms
            refusals = [r for r in caplog.records if "archival off" in r.getMessage()]
            if info.archive_metrics_url is None:  # this archiver archives reading tables only
                assert info.s3_bucket is None
                assert len(refusals) == 1 and "packed" in refusals[0].getMessage()
            else:
                assert info.s3_bucket == opts.s3_bucket and not refusals
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                sensors: list[dict[str, object]] = []
                while len(sensors) < 20:
                    await asyncio.sleep(0.5)
                    async with http.get(base + "/v1/sensors") as r:
                        sensors = (await r.json())["sensors"]
                sid = sensors[0]["sensor_id"]
                # Live readings are visible within seconds (staging), before any seal.
                newest_age_s = float("inf")
                while newest_age_s > 6:
                    await asyncio.sleep(0.5)
                    now_ms = int(time.time() * 1000)
                    async with http.get(
                        f"{base}/v1/sensors/{sid}/readings?start={now_ms - 30_000}&order=desc"
                    ) as r:
                        assert r.status == 200
                        live = (await r.json())["readings"]
                    newest_age_s = (now_ms - live[0]["ts"]) / 1000 if live else newest_age_s
                # The replayed windows are sealed (a minute after their last reading came).
                sealed = 0.0
                while sealed < 20:  # every sensor has replayed windows
                    await asyncio.sleep(1)
                    sealed = await sample(http, info.metrics_url, "iot_ingest_sealed_parts_total")
                start = now_ms - 180_000
                async with http.get(
                    f"{base}/v1/sensors/{sid}/readings?start={start}&end={start + 59_999}"
                ) as r:
                    assert r.status == 200
                    assert (await r.json())["readings"], "nothing read from the sealed windows"
    finally:
        stop.set()
        assert await asyncio.wait_for(demo, 30) == 0
    # A pass every 2 s while the seal was awaited, each over at least one settled period.
    passes = [r.getMessage() for r in caplog.records if "compaction:" in r.getMessage()]
    assert len(passes) >= 10, passes
    assert all(" windows in " in p and " in 0 periods" not in p for p in passes), passes


async def test_reading_demo_serves_live_data_archives_to_s3_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    infos: list[DemoInfo] = []
    opts = DemoOptions(
        layout="reading",
        devices=30,
        rate_per_s=60,
        port=port,
        data_dir=tmp_path,
        bucket_minutes=1,  # buckets close every minute: archivable 1 minute later
        history_minutes=3,
        history_rate_per_s=15,
        archive_every_s=1,
    )
    demo = asyncio.create_task(run_demo(opts, stop, ready, on_ready=infos.append))
    try:
        async with asyncio.timeout(
            120
        ):  # the whole run, shutdown aside (generous: a bound, not a target)
            await asyncio.wait(
                [demo, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED"
            )
            assert ready.is_set(), "demo did not start"
            (info,) = infos
            assert info.s3_bucket == "iot-demo-archive" and info.archive_metrics_url
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/") as r:
                    assert r.status == 200 and "<html" in (await r.text()).lower()
                sensors: list[dict[str, object]] = []
                while len(sensors) < 30:
                    await asyncio.sleep(0.5)
                    async with http.get(base + "/v1/sensors") as r:
                        sensors = (await r.json())["sensors"]
                sid = sensors[0]["sensor_id"]
                async with http.get(
                    f"{base}/v1/sensors/{sid}/readings?start={int(time.time() * 1000) - 60_000}"
                ) as r:
                    assert r.status == 200
                    assert (await r.json())["readings"], "no readings for a listed sensor"

                # Archival: the replayed minutes are archived, verified, deleted from
                # DynamoDB, and served back from S3.
                archived = 0.0
                while archived < 1:  # polled over HTTP, as an operator would
                    await asyncio.sleep(0.5)
                    archived = await archived_buckets(http, info.archive_metrics_url)
                async with S3Store(
                    bucket=info.s3_bucket,
                    aws=AwsSettings(
                        endpoint_url=info.endpoint_url,
                        aws_access_key_id="demo",
                        aws_secret_access_key="demo",
                    ),
                ) as store:
                    key = await anext(store.keys("archive/_manifests/"))
                    body = await store.get(key)
                assert body is not None
                manifest = Manifest.from_json(body)
                assert manifest.rows > 0 and manifest.bucket_ms == 60_000
                start = manifest.bucket_start_ms
                async with http.get(
                    f"{base}/v1/sensors/{manifest.sensor_id}/readings"
                    f"?start={start}&end={start + 59_999}"
                ) as r:
                    assert r.status == 200
                    page = await r.json()
                    assert int(r.headers["X-Cold-Objects"]) >= 1
                assert page["tiers"] == [{"bucket_start": start, "tier": "cold"}]
                assert len(page["readings"]) == manifest.rows
    finally:
        stop.set()
        assert await asyncio.wait_for(demo, 30) == 0


async def test_ctrl_c_on_the_terminal_drains_before_the_servers_stop(tmp_path: Path) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the embedded
    servers must not die under the draining service (they run in their own group)."""
    import os
    import signal
    import sys

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "ingest.cli", "demo", "--devices", "20", "--rate", "40"],
        *["--port", str(port), "--data-dir", str(tmp_path)],
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a group of its own, as a shell job has
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "history replayed" not in "".join(lines):
                line = await proc.stderr.readline()
                assert line, "".join(lines)
                lines.append(line.decode())
        await asyncio.sleep(2)  # live traffic in flight
        os.killpg(proc.pid, signal.SIGINT)
        async with asyncio.timeout(60):
            lines += [raw.decode() async for raw in proc.stderr]
            assert await proc.wait() == 0, "".join(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(lines)
    assert "demo stopped" in text, text
    for trouble in ("Connection refused", "ConnectionClosedError", "Traceback", "ERROR"):
        assert trouble not in text, text


async def test_a_service_that_does_not_return_after_its_stop_does_not_hold_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A packed service whose drain deadline passed before sealing kept its window writer,
    and returned only when cancelled: the demo waited for the CLI's hard stop (20 s at
    2,000 devices). The demo cancels it its own drain deadline plus a grace after."""
    import ingest.demo
    from ingest.pipeline.service import IngestService

    returned = asyncio.Event()

    class StuckService(IngestService):
        async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
            # As with the window writer left running: the stop never reaches the end.
            await super().run(asyncio.Event(), ready)
            returned.set()

    monkeypatch.setattr(ingest.demo, "IngestService", StuckService)
    opts = DemoOptions(
        devices=3,
        port=free_port(),
        data_dir=tmp_path,
        history_minutes=0,
        archive=False,
        compact_every_s=None,
        shutdown_timeout_s=1.5,  # the service: 1 s; then 2 s of grace
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    demo = asyncio.create_task(run_demo(opts, stop, ready))
    async with asyncio.timeout(60):
        await ready.wait()
    stop.set()
    started = time.monotonic()
    assert await asyncio.wait_for(demo, 15) == 0
    assert 2.5 < time.monotonic() - started < 10
    assert not returned.is_set()
    assert any("had not returned 3 s after its stop" in r.getMessage() for r in caplog.records)
