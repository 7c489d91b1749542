"""A late reading through the real ingest service (Mosquitto, moto) ends in the S3 archive.

From the outside: a gateway publishes a reading for a bucket the archiver has
already archived; the service acknowledges it (durable in DynamoDB) and stops;
the next archiver pass puts it in S3, exactly once, and the query API's tiered
read serves it once beside the archived ones. The two processes share only the
table: the service learns the archiver's policy from it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.servers import MotoServer
from ingest.archive.archiver import Archiver, ArchiveSettings
from ingest.pipeline.service import IngestService
from ingest.storage.archive.reader import read_cold
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.registry import late_marks
from queries.read.pages import read_page
from queries.read.reader import TableReader
from tests.archive.conftest import open_archive_env
from tests.ingest.harness import make_config, publish, running

SID = "late-svc"
HOUR_MS = 3_600_000
LAYOUT = TableLayout(bucket_ms=HOUR_MS, shards=2, retention_days=1)


def _archiver(env: Any) -> Archiver:
    return Archiver(
        env.dynamo,
        env.store,
        env.layout,
        ArchiveSettings(horizon_ms=HOUR_MS // 2, settle_ms=0, delete_archived=True),
    )


@pytest.mark.timeout(120)
async def test_late_reading_published_to_the_service_ends_in_s3_once(
    mosquitto: Any, moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    now_ms = int(time.time() * 1000)
    bucket = LAYOUT.bucket_start(now_ms - 3 * HOUR_MS)  # closed and past the horizon
    async with open_archive_env(moto_server.endpoint_url, unique_name, LAYOUT) as env:
        old = [Reading(SID, bucket + 60_000 * i, {"v": float(i)}) for i in range(1, 4)]
        await env.put(old, now_ms=now_ms)
        first = await _archiver(env).run_once()  # archives (and deletes) the bucket
        assert first.ok and first.archived == 1 and await env.count_items(SID, bucket) == 0

        cfg = make_config(
            broker_url=mosquitto.url,
            endpoint=moto_server.endpoint_url,
            name=unique_name,
            data_dir=tmp_path,
            create_table=False,
            bucket_minutes=60,
            shards=2,
            retention_days=1,
        )
        late_ts = bucket + 30 * 60_000 + 7
        async with running(IngestService(cfg)):
            payload = orjson.dumps({"ts": late_ts, "v": 9.25})
            assert await publish(mosquitto.url, [(f"{unique_name}/{SID}/telemetry", payload)]) == 1
        # Acknowledged, so durable: hot only until the next pass.
        assert await env.count_items(SID, bucket) == 1

        second = await _archiver(env).run_once()
        assert second.ok, second.failed
        want = sorted([*old, Reading(SID, late_ts, {"v": 9.25})], key=lambda r: r.ts_ms)
        want = [Reading(SID, r.ts_ms, {"v": float(r.metrics["v"])}) for r in want]
        assert await read_cold(env.store, env.layout, SID, 0, now_ms) == want  # once each
        objects = [k async for k in env.store.keys(f"{env.store.prefix}/sensor_id={SID}/")]
        assert len(objects) == 1  # the re-archived version alone
        assert await env.count_items(SID, bucket) == 0  # deleted early after verification
        assert await late_marks(env.dynamo) == []
        reader = TableReader(env.dynamo, env.layout, cold=env.store)
        page = await read_page(
            reader, SID, bucket, bucket + HOUR_MS - 1, limit=100, stats=reader.new_stats()
        )
        assert [(r.ts_ms, float(r.metrics["v"])) for r in page.items] == [
            (r.ts_ms, r.metrics["v"]) for r in want
        ]
        assert second.rearchived == 1 and second.late == 1


@pytest.mark.timeout(120)
async def test_what_the_archiver_relies_on_is_durable_before_the_ack(
    mosquitto: Any, moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    """A crash right after a PUBACK must not lose a late mark, a new sensor's registry item
    or a lowered first-seen time: the archiver would then never look at those readings.

    The registry's periodic flush is 60 s away here, so only a write made before the
    acknowledgement can be in the table when the message completes.
    """
    from ingest.storage.registry import registry_items
    from tests.ingest.harness import counter, wait_until

    now_ms = int(time.time() * 1000)
    bucket = LAYOUT.bucket_start(now_ms - 3 * HOUR_MS)
    async with open_archive_env(moto_server.endpoint_url, unique_name, LAYOUT) as env:
        await env.put([Reading(SID, bucket + 60_000, {"v": 1.0})], now_ms=now_ms)
        assert (await _archiver(env).run_once()).archived == 1  # records the policy too
        cfg = make_config(
            broker_url=mosquitto.url,
            endpoint=moto_server.endpoint_url,
            name=unique_name,
            data_dir=tmp_path,
            create_table=False,
            bucket_minutes=60,
            shards=2,
            retention_days=1,
            registry_interval_s=60,
            registry_refresh_s=300,
        )
        service = IngestService(cfg)

        async def registry() -> dict[str, int]:
            return {
                it["sid"]["S"]: int(it["fs"]["N"])
                async for it in registry_items(env.dynamo, ("fs",), consistent=True)
            }

        async def publish_and_wait(sensor: str, ts: int, done: float) -> None:
            payload = orjson.dumps({"ts": ts, "v": 2.5})
            await publish(mosquitto.url, [(f"{unique_name}/{sensor}/telemetry", payload)])
            await wait_until(
                lambda: counter(service, "iot_ingest_messages_completed_total") >= done,
                20,
                "the acknowledgement",
            )

        async with running(service):
            await publish_and_wait(SID, bucket + 30 * 60_000, 1)  # late: bucket archived
            marks = await late_marks(env.dynamo)
            assert [(m.sensor_id, m.bucket_start_ms) for m in marks] == [(SID, bucket)]

            await publish_and_wait("brand-new", now_ms - 5_000, 2)  # a sensor never seen
            assert (await registry())["brand-new"] <= now_ms - 5_000

            await publish_and_wait("brand-new", now_ms - 600_000, 3)  # below its first seen
            assert (await registry())["brand-new"] <= now_ms - 600_000
