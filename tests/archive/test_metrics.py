"""Archive metrics over real HTTP: in process, and from ``iot-ingest archive --every --metrics-port``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.servers import MotoServer
from ingest.archive.metrics import ArchiveMetrics, serve_metrics
from ingest.aws.settings import AwsSettings
from ingest.storage.archive.errors import StorageError
from ingest.storage.archive.store import S3Store
from ingest.storage.layout import Reading, TableLayout
from ingest.trial.servers import free_port
from tests.archive.conftest import BUCKET_MS, NOW_MS, ArchiveEnv, bucket_name, seed_table_and_bucket

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(http: aiohttp.ClientSession, base: str) -> Samples:
    async with http.get(base + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return parse(await r.text())


def buckets(samples: Samples, outcome: str) -> float:
    return samples[("iot_archive_buckets_total", (("outcome", outcome),))]


async def test_pass_counts_over_http(archive_env: ArchiveEnv) -> None:
    env = archive_env
    readings = [
        Reading(sid, NOW_MS - 40 * 3_600_000 + k * 600_000 + i, {"t": float(i)})
        for sid in ("m-1", "m-2")
        for k in range(6)  # 6 readings 10 min apart: 1 h, within one 3 h bucket or two
        for i in range(2)
    ]
    await env.put(readings)
    metrics = ArchiveMetrics()
    async with serve_metrics(metrics, host="127.0.0.1", port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/readyz") as r:
                assert r.status == 503
                assert (await r.json())["reasons"] == ["no pass has finished yet"]
            before = time.time()
            archiver = env.archiver(grace_ms=0, delete_archived=True)
            archiver.metrics = metrics
            report = await archiver.run_once()
            assert report.ok and report.archived >= 2
            objects = [k async for k in env.store.keys("archive/sensor_id=")]
            sizes = [len(await env.store.get(k) or b"") for k in objects]

            got = await scrape(http, base)
            assert buckets(got, "archived") == report.archived == len(objects)
            assert buckets(got, "empty") == report.empty
            assert buckets(got, "skipped") == 0 and buckets(got, "failed") == 0
            assert got[("iot_archive_rows_total", ())] == len(readings)
            assert got[("iot_archive_bytes_total", ())] == sum(sizes)
            assert got[("iot_archive_items_deleted_total", ())] == len(readings)
            assert got[("iot_archive_passes_total", (("result", "ok"),))] == 1
            assert got[("iot_archive_pass_seconds_count", ())] == 1
            assert got[("iot_archive_last_pass_duration_seconds", ())] > 0
            assert got[("iot_archive_last_success_timestamp_seconds", ())] >= before
            assert got[("iot_archive_sensors", ())] == 2
            async with http.get(base + "/readyz") as r:
                assert r.status == 200

            again = await archiver.run_once()  # everything already archived: skipped
            got = await scrape(http, base)
            assert buckets(got, "skipped") == again.skipped == report.archived + report.empty
            assert got[("iot_archive_rows_total", ())] == len(readings)
            assert got[("iot_archive_passes_total", (("result", "ok"),))] == 2

            async with S3Store(
                bucket="no-such-bucket-for-metrics",
                aws=AwsSettings(
                    endpoint_url=env.endpoint,
                    aws_access_key_id="test",
                    aws_secret_access_key="test",
                ),
            ) as missing:
                archiver.store = missing
                with pytest.raises(StorageError):
                    await archiver.run_once()
            got = await scrape(http, base)
            assert got[("iot_archive_passes_total", (("result", "error"),))] == 1
            async with http.get(base + "/readyz") as r:
                assert r.status == 503
                (reason,) = (await r.json())["reasons"]
                assert "no-such-bucket-for-metrics" in reason
            async with http.get(base + "/healthz") as r:
                assert r.status == 200


async def _setup(endpoint: str, table: str, bucket: str) -> int:
    layout = TableLayout(bucket_ms=BUCKET_MS, shards=2, retention_days=5)
    now = int(time.time() * 1000)
    readings = [Reading("cli-m", now - 2 * 86_400_000 + i, {"t": i}) for i in range(7)]
    return await seed_table_and_bucket(endpoint, table, bucket, layout, readings)


async def test_archive_every_serves_metrics_until_sigterm(
    moto_server: MotoServer, unique_name: str
) -> None:
    endpoint = moto_server.endpoint_url
    bucket = bucket_name(unique_name)
    n = await _setup(endpoint, unique_name, bucket)
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ingest.cli",
        "archive",
        "--table",
        unique_name,
        "--dynamodb-endpoint",
        endpoint,
        "--region",
        "us-east-1",
        "--s3-bucket",
        bucket,
        "--s3-endpoint",
        endpoint,
        "--horizon-days",
        "1",
        "--every",
        "0.5",
        "--metrics-port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        got: Samples = {}
        deadline = time.monotonic() + 45
        async with aiohttp.ClientSession() as http:
            while got.get(("iot_archive_passes_total", (("result", "ok"),)), 0) < 2:
                assert proc.returncode is None, "the archiver exited"
                assert time.monotonic() < deadline, f"no second pass: {got}"
                await asyncio.sleep(0.2)
                try:
                    got = await scrape(http, base)
                except aiohttp.ClientConnectionError:
                    continue  # not listening yet
            assert buckets(got, "archived") == 1
            assert buckets(got, "skipped") >= 1  # the second pass found it archived
            assert got[("iot_archive_rows_total", ())] == n
            async with http.get(base + "/readyz") as r:
                assert r.status == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    assert proc.returncode == 0, err.decode()
    assert f"archive metrics on http://127.0.0.1:{port}/metrics" in err.decode()
