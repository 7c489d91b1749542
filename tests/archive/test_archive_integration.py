"""Archival on moto DynamoDB + moto S3: completeness, types, manifests, crashes, deletes."""

from __future__ import annotations

import asyncio
import io
import random
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.archive import archiver as archiver_mod
from ingest.archive.metrics import ArchiveMetrics
from ingest.aws.settings import AwsSettings
from ingest.storage.archive.errors import ArchiveConfigError, StorageError
from ingest.storage.archive.manifest import Manifest, query_markers
from ingest.storage.archive.paths import parse_key
from ingest.storage.archive.reader import archived_buckets, merge_tiers, read_cold
from ingest.storage.archive.store import S3Store
from ingest.storage.layout import Reading
from tests.archive.conftest import BUCKET_MS, DAY_MS, HORIZON_MS, HOUR_MS, NOW_MS, ArchiveEnv

SENSORS = ["dev-a", "dev-b", "dev-c"]
FIRST_MS = NOW_MS - 45 * HOUR_MS
LAST_MS = NOW_MS - 18 * HOUR_MS
ARCHIVABLE_END = NOW_MS - HORIZON_MS  # buckets ending at or before this are archivable


def make_readings(seed: int = 1, per_bucket: int = 5) -> list[Reading]:
    rng = random.Random(seed)
    out: list[Reading] = []
    for sid in SENSORS:
        for bucket in range(FIRST_MS, LAST_MS, BUCKET_MS):
            for ts in sorted(rng.sample(range(bucket, bucket + BUCKET_MS), per_bucket)):
                metrics: dict[str, float | int] = {"temp": round(rng.uniform(-20, 40), 3)}
                if rng.random() < 0.5:
                    metrics["hum"] = rng.randrange(0, 100)
                tags = {"site": f"s{rng.randrange(3)}"} if sid == "dev-a" else {}
                out.append(Reading(sensor_id=sid, ts_ms=ts, metrics=metrics, tags=tags))
    return out


def archivable(r: Reading) -> bool:
    return r.ts_ms - r.ts_ms % BUCKET_MS + BUCKET_MS <= ARCHIVABLE_END


async def all_objects(env: ArchiveEnv) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    async for key in env.store.keys(f"{env.store.prefix}/"):
        data = await env.store.get(key)
        assert data is not None
        out[key] = data
    return out


def decode_all(objects: dict[str, bytes]) -> list[tuple[str, Reading, pa.Schema]]:
    rows = []
    for key, data in objects.items():
        if parse_key(key) is None:
            continue
        sid = key.split("sensor_id=")[1].split("/")[0]
        table = pq.read_table(io.BytesIO(data))
        for i in range(table.num_rows):
            row = {c: table.column(c)[i].as_py() for c in table.column_names}
            ts = row.pop("ts")
            r = Reading(
                sensor_id=sid,
                ts_ms=int(ts.timestamp() * 1000),
                metrics={k[2:]: v for k, v in row.items() if k.startswith("m_") and v is not None},
                tags={k[2:]: v for k, v in row.items() if k.startswith("g_") and v is not None},
            )
            rows.append((key, r, table.schema))
    return rows


async def test_every_archivable_reading_in_parquet_once_typed_with_manifests(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    readings = make_readings()
    await env.put(readings)
    report = await env.archiver(grace_ms=0).run_once()

    expected = [r for r in readings if archivable(r)]
    buckets_with_data = {(r.sensor_id, r.ts_ms - r.ts_ms % BUCKET_MS) for r in expected}
    assert report.ok, report.failed
    assert report.sensors == 3
    assert report.archived == len(buckets_with_data)
    assert report.rows == len(expected)
    assert report.empty == 0  # clipped to each sensor's [first seen, last seen]: all hold data

    objects = await all_objects(env)
    rows = decode_all(objects)
    got = sorted(((r.sensor_id, r.ts_ms) for _, r, _ in rows))
    assert got == sorted((r.sensor_id, r.ts_ms) for r in expected)  # each exactly once
    by_key = {(r.sensor_id, r.ts_ms): r for r in expected}
    for key, r, schema in rows:
        want = by_key[(r.sensor_id, r.ts_ms)]
        assert r.metrics == want.metrics and r.tags == want.tags
        assert schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        assert all(schema.field(n).type == pa.float64() for n in schema.names if n[:2] == "m_")
        assert all(schema.field(n).type == pa.string() for n in schema.names if n[:2] == "g_")
        b = parse_key(key)
        assert b is not None and b.bucket_start_ms <= r.ts_ms < b.bucket_start_ms + BUCKET_MS
        assert "/date=" in key and key.startswith(f"archive/sensor_id={r.sensor_id}/")

    manifests = {
        k: Manifest.from_json(v) for k, v in objects.items() if k.startswith("archive/_manifests/")
    }
    assert len(manifests) == len(buckets_with_data)
    for m in manifests.values():
        in_bucket = [
            r
            for r in expected
            if r.sensor_id == m.sensor_id and 0 <= r.ts_ms - m.bucket_start_ms < BUCKET_MS
        ]
        assert m.rows == len(in_bucket) == sum(m.shard_rows.values())
        assert m.min_ts_ms == min(r.ts_ms for r in in_bucket)
        assert m.object_bytes == len(objects[m.key])
        markers = await query_markers(env.dynamo, m.sensor_id, m.bucket_start_ms, m.bucket_start_ms)
        marker = markers[m.bucket_start_ms]
        assert (marker.rows, marker.content_sha256, marker.object_sha256) == (
            m.rows,
            m.content_sha256,
            m.object_sha256,
        )
        assert marker.deleted_at_ms is None


async def test_rerun_is_idempotent(archive_env: ArchiveEnv) -> None:
    env = archive_env
    await env.put(make_readings(per_bucket=2))
    first = await env.archiver(grace_ms=0).run_once()
    before = await all_objects(env)
    second = await env.archiver(grace_ms=0).run_once()
    assert second.archived == second.empty == second.rows == 0
    assert second.skipped == first.archived + first.empty
    assert await all_objects(env) == before


async def test_crash_between_write_and_mark_recovers_on_rerun(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = archive_env
    readings = make_readings(per_bucket=3)
    await env.put(readings)
    real = archiver_mod.put_marker
    calls = 0

    async def crashing(client: Any, manifest: Manifest, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls > 5 and manifest.rows:
            raise RuntimeError("simulated crash after the object was written")
        return await real(client, manifest, **kwargs)

    monkeypatch.setattr(archiver_mod, "put_marker", crashing)
    with pytest.raises(BaseExceptionGroup) as info:
        await env.archiver(grace_ms=0, concurrency=1).run_once()
    assert info.group_contains(RuntimeError)
    written = [k for k in await all_objects(env) if parse_key(k)]
    marked = 0
    for sid in SENSORS:
        markers = await query_markers(env.dynamo, sid, 0, NOW_MS)
        marked += sum(1 for m in markers.values() if m.rows)
    assert marked < len(written)  # an object exists whose bucket is not marked

    monkeypatch.setattr(archiver_mod, "put_marker", real)
    report = await env.archiver(grace_ms=0).run_once()
    assert report.ok
    rows = decode_all(await all_objects(env))
    got = sorted((r.sensor_id, r.ts_ms) for _, r, _ in rows)
    assert got == sorted((r.sensor_id, r.ts_ms) for r in readings if archivable(r))
    for sid in SENSORS:
        markers = await query_markers(env.dynamo, sid, 0, NOW_MS)
        assert sum(m.rows for m in markers.values()) == sum(
            1 for r in readings if r.sensor_id == sid and archivable(r)
        )


async def test_early_delete_removes_only_verified_items(archive_env: ArchiveEnv) -> None:
    env = archive_env
    readings = make_readings(per_bucket=3)
    await env.put(readings)
    first = await env.archiver(grace_ms=0).run_once()  # archive, keep the items
    assert first.deleted == 0
    # A late reading lands in an archived bucket: it is in no verified object.
    late_bucket = FIRST_MS + 2 * BUCKET_MS
    late = Reading(sensor_id="dev-b", ts_ms=late_bucket + 1, metrics={"temp": 1.5})
    assert late.ts_ms not in {r.ts_ms for r in readings if r.sensor_id == "dev-b"}
    await env.put([late])

    report = await env.archiver(grace_ms=0, delete_archived=True).run_once()
    assert report.ok
    assert report.deleted == sum(1 for r in readings if archivable(r))
    for sid in SENSORS:
        for bucket in range(FIRST_MS, LAST_MS, BUCKET_MS):
            left = await env.count_items(sid, bucket)
            if bucket + BUCKET_MS > ARCHIVABLE_END:
                assert left == 3, "hot bucket touched"
            elif sid == "dev-b" and bucket == late_bucket:
                assert left == 1, "the unarchived late reading must survive"
            else:
                assert left == 0
        markers = await query_markers(env.dynamo, sid, 0, NOW_MS)
        assert all(m.deleted_at_ms is not None for m in markers.values() if m.rows)
    again = await env.archiver(grace_ms=0, delete_archived=True).run_once()
    assert again.deleted == again.archived == 0


async def test_corrupt_object_is_reported_and_rearchived_before_delete(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    readings = make_readings(per_bucket=3)
    await env.put(readings)
    await env.archiver(grace_ms=0).run_once()
    keys = sorted(k for k in await all_objects(env) if parse_key(k))
    victim = keys[0]
    good = await env.store.get(victim)
    assert good is not None
    await env.store.put(victim, good[: len(good) // 2], content_type="application/octet-stream")

    report = await env.archiver(grace_ms=0, delete_archived=True).run_once()
    assert report.ok
    assert len(report.corrupt) == 1 and victim in report.corrupt[0]
    assert report.rearchived == 1
    assert await env.store.get(victim) == good  # re-archived from DynamoDB, same bytes
    assert report.deleted == sum(1 for r in readings if archivable(r))


async def test_persistently_corrupt_upload_leaves_bucket_unmarked_and_items_kept(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = archive_env
    readings = [r for r in make_readings(per_bucket=2) if r.sensor_id == "dev-a"]
    await env.put(readings)
    real_put = S3Store.put

    async def torn(self: S3Store, key: str, body: bytes, **kw: Any) -> str:
        if key.endswith(".parquet"):
            body = body[:-7]  # a partial object that S3 accepted
        return await real_put(self, key, body, **kw)

    monkeypatch.setattr(S3Store, "put", torn)
    report = await env.archiver(grace_ms=0, delete_archived=True).run_once()
    assert report.archived == report.deleted == 0
    assert report.failed and "partial" in report.failed[0]
    markers = await query_markers(env.dynamo, "dev-a", 0, NOW_MS)
    assert not any(m.rows for m in markers.values())
    assert await env.count_items("dev-a", FIRST_MS) == 2


async def test_ttl_expired_items_read_back_from_s3_with_same_values(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    readings = make_readings(per_bucket=4)
    await env.put(readings)
    await env.archiver(grace_ms=0).run_once()
    # moto never expires items: delete the archived ones ourselves, as TTL would.
    for r in readings:
        if archivable(r):
            await env.dynamo.call(
                "delete_item",
                TableName=env.dynamo.table,
                Key={
                    "pk": {"S": env.layout.partition_key(r.sensor_id, r.ts_ms)},
                    "sk": {"N": str(r.ts_ms)},
                },
            )
    start, end = FIRST_MS + 1234, ARCHIVABLE_END + 5 * HOUR_MS
    for sid in SENSORS:
        want = [
            r for r in readings if r.sensor_id == sid and archivable(r) and start <= r.ts_ms <= end
        ]
        cold = await read_cold(env.store, env.layout, sid, start, end)
        assert cold == want  # same timestamps, metric values and tags
        buckets = await archived_buckets(env.dynamo, env.layout, sid, start, end)
        assert {r.ts_ms - r.ts_ms % BUCKET_MS for r in want} <= buckets
        hot = [
            r
            for r in readings
            if r.sensor_id == sid and not archivable(r) and start <= r.ts_ms <= end
        ]
        merged = merge_tiers(hot, cold)
        assert merged == [r for r in readings if r.sensor_id == sid and start <= r.ts_ms <= end]


async def test_missing_s3_bucket_is_a_clear_error(archive_env: ArchiveEnv) -> None:
    env = archive_env
    async with S3Store(
        bucket="no-such-archive-bucket",
        aws=AwsSettings(
            endpoint_url=env.endpoint, aws_access_key_id="test", aws_secret_access_key="test"
        ),
    ) as store:
        env.store = store
        with pytest.raises(StorageError, match="'no-such-archive-bucket' does not exist"):
            await env.archiver().run_once()


async def test_horizon_must_leave_time_before_ttl(archive_env: ArchiveEnv) -> None:
    with pytest.raises(ArchiveConfigError, match=r"too long.*keeps readings 2 days"):
        archive_env.archiver(horizon_ms=2 * DAY_MS)
    with pytest.raises(ArchiveConfigError, match="> 0"):
        archive_env.archiver(horizon_ms=0)


async def test_manifest_json_roundtrip() -> None:
    m = Manifest(
        sensor_id="x",
        bucket_start_ms=0,
        bucket_ms=BUCKET_MS,
        rows=2,
        key="k",
        content_sha256="c",
        shard_rows={"x#1970-01-01T00#0": 2},
    )
    assert Manifest.from_json(m.to_json()) == m
    assert orjson.loads(m.to_json())["format"] == 1


async def test_overlapping_run_never_overwrites_an_archived_bucket_with_what_is_left(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = archive_env
    readings = [r for r in make_readings(per_bucket=3) if r.sensor_id == "dev-a"]
    await env.put(readings)
    real_export = archiver_mod.export_bucket
    raced = False

    async def export_after_another_run(*args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        if not raced:  # the slow run planned the bucket; a second run now does it all
            raced = True
            other = await env.archiver(grace_ms=0, delete_archived=True).run_once()
            assert other.ok and other.deleted == sum(1 for r in readings if archivable(r))
        return await real_export(*args, **kwargs)  # ...and this export finds items gone

    monkeypatch.setattr(archiver_mod, "export_bucket", export_after_another_run)
    slow = await env.archiver(grace_ms=0, delete_archived=True, concurrency=1).run_once()
    assert slow.ok and slow.archived == slow.empty == 0  # every bucket: left as it was
    markers = await query_markers(env.dynamo, "dev-a", 0, NOW_MS)
    assert markers and all(m.rows == 3 and m.deleted_at_ms is not None for m in markers.values())
    cold = await read_cold(env.store, env.layout, "dev-a", 0, NOW_MS)
    assert cold == [r for r in readings if archivable(r)]


async def test_stop_ends_a_pass_between_buckets_and_the_next_pass_finishes(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = archive_env
    readings = make_readings(per_bucket=2)
    await env.put(readings)
    stop = asyncio.Event()
    real = archiver_mod.put_marker

    async def stop_after_first(client: Any, manifest: Manifest, **kwargs: Any) -> bool:
        written = await real(client, manifest, **kwargs)
        stop.set()  # SIGTERM arrives while the first bucket is being marked
        return written

    monkeypatch.setattr(archiver_mod, "put_marker", stop_after_first)
    archiver = env.archiver(grace_ms=0, concurrency=1)
    archiver.metrics = metrics = ArchiveMetrics()
    first = await archiver.run_once(stop=stop)
    assert first.stopped and first.archived + first.empty == 1
    assert "stopped early" in first.summary()
    sample = metrics.registry.get_sample_value
    assert sample("iot_archive_passes_total", {"result": "stopped"}) == 1
    assert sample("iot_archive_last_success_timestamp_seconds") == 0  # stopped: no success

    monkeypatch.setattr(archiver_mod, "put_marker", real)
    second = await archiver.run_once()
    assert second.ok and not second.stopped
    assert first.rows + second.rows == sum(1 for r in readings if archivable(r))
