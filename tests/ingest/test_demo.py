"""The one-command demo: embedded servers, ingest, a fleet, archival to S3 and the dashboard,
stopped cleanly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ingest.aws.settings import AwsSettings
from ingest.demo import DemoInfo, DemoOptions, run_demo
from ingest.storage.archive.manifest import Manifest
from ingest.storage.archive.store import S3Store
from ingest.trial.servers import free_port


async def archived_buckets(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(url) as r:
        text = await r.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "iot_archive_buckets_total" and s.labels == {"outcome": "archived"}:
                return s.value
    raise AssertionError("no iot_archive_buckets_total in the archive metrics")


async def test_demo_serves_live_data_archives_to_s3_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    infos: list[DemoInfo] = []
    opts = DemoOptions(
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
