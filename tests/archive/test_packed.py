"""The archiver on a ``packed`` table (decision 0008), on moto DynamoDB + moto S3.

The table is filled as the write stage fills it (one set of content-addressed parts per
sensor and window, a window sealed twice with a corrected value); the archiver must
write the same Parquet objects as on a ``reading`` table (one row per reading, the
later set's value), readable by ``archive sql`` (DuckDB) unchanged, keep the parts
(TTL removes them, free), and archive a late reading of an archived bucket exactly once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from bench.servers import MotoServer
from ingest.archive import archiver as archiver_mod
from ingest.archive.archiver import PACKED_NO_DELETE
from ingest.archive.streams import StreamArchiver
from ingest.aws.settings import AwsSettings
from ingest.cli.main import main
from ingest.config import Config
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.archive.errors import ArchiveConfigError
from ingest.storage.archive.manifest import Manifest, get_marker
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import ArchivePolicy, Reading, TableLayout
from ingest.storage.registry import late_marks
from ingest.storage.table import read_archive_policy
from ingest.storage.windows import SEAL_GRACE_MS
from tests.archive.conftest import (
    BUCKET_MS,
    DAY_MS,
    HOUR_MS,
    NOW_MS,
    PACKED_LAYOUT,
    ArchiveEnv,
    bucket_name,
    seed_table_and_bucket,
)
from tests.archive.test_archive_integration import (
    SENSORS,
    all_objects,
    archivable,
    decode_all,
    make_readings,
)
from tests.archive.test_late import (
    B1,
    B2,
    OLD,
    OLD_HOT,
    SID,
    archived_readings,
    as_floats,
    assert_archived_once,
    readings_of,
    tiered,
)
from tests.archive.test_sql import creds, s3_flags
from tests.ingest.harness import seal_as_worker

SETTLE_MS = 420_000  # the archiver's default settle time (a day's horizon)


def _corrected(readings: list[Reading]) -> Reading:
    """A reading of dev-b sealed again in a later set with another value (a redelivery
    after its seal carrying a correction, a second worker): the later set wins."""
    r = next(r for r in readings if r.sensor_id == "dev-b" and archivable(r))
    return Reading("dev-b", r.ts_ms, {"temp": 99.5})


async def test_packed_bucket_archived_one_row_per_reading_and_sql_reads_it(
    packed_env: ArchiveEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    env = packed_env
    readings = make_readings(seed=3, per_bucket=7)
    await env.put(readings)
    fixed = _corrected(readings)
    await env.put([fixed])  # a second set of its window, sealed later
    readings[[r.ts_ms for r in readings].index(fixed.ts_ms)] = fixed
    spans = sorted({(r.sensor_id, r.ts_ms - r.ts_ms % BUCKET_MS) for r in readings})
    before = [await env.count_items(sid, b) for sid, b in spans]

    report = await env.archiver(grace_ms=0).run_once()  # refused packed tables before

    expected = [r for r in readings if archivable(r)]
    buckets = {(r.sensor_id, r.ts_ms - r.ts_ms % BUCKET_MS) for r in expected}
    assert report.ok, report.failed
    assert (report.archived, report.rows, report.deleted) == (len(buckets), len(expected), 0)
    objects = await all_objects(env)
    rows = decode_all(objects)
    assert sorted((r.sensor_id, r.ts_ms) for _, r, _ in rows) == sorted(
        (r.sensor_id, r.ts_ms) for r in expected
    )  # one row per reading, each once (the twice-sealed window too)
    want = {(r.sensor_id, r.ts_ms): r for r in expected}
    for _, r, schema in rows:
        w = want[(r.sensor_id, r.ts_ms)]
        assert r.metrics == {k: float(v) for k, v in w.metrics.items()} and r.tags == w.tags
        assert schema.field("ts").type == pa.timestamp("ms", tz="UTC")
        assert {n for n in schema.names if n[:2] == "g_"} <= {"g_site"}
    assert {(r.sensor_id, r.ts_ms): r.metrics for _, r, _ in rows}[("dev-b", fixed.ts_ms)] == {
        "temp": 99.5
    }
    manifests = [Manifest.from_json(v) for k, v in objects.items() if "_manifests/" in k]
    assert len(manifests) == len(buckets)
    for m in manifests:
        marker = await get_marker(env.dynamo, m.sensor_id, m.bucket_start_ms)
        assert marker is not None and marker.content_sha256 == m.content_sha256
        mine = [r for r in expected if r.sensor_id == m.sensor_id]
        in_bucket = [r for r in mine if 0 <= r.ts_ms - m.bucket_start_ms < BUCKET_MS]
        assert m.rows == sum(m.shard_rows.values()) == len(in_bucket)
    # The parts stay (TTL deletes them for free): nothing was deleted.
    assert [await env.count_items(sid, b) for sid, b in spans] == before

    # DuckDB over the archive: the same SQL as on a reading table, the same answers.
    creds(monkeypatch)
    argv = [
        "archive",
        "sql",
        *s3_flags(env),
        "--csv",
        "SELECT sensor_id, count(*) AS n, sum(m_temp) AS t, max(m_temp) AS hi "
        "FROM readings GROUP BY 1 ORDER BY 1",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sensor_id,n,t,hi"
    got = {line.split(",")[0]: line.split(",")[1:] for line in lines[1:]}
    assert set(got) == set(SENSORS)
    for sid in SENSORS:
        mine = [float(r.metrics["temp"]) for r in expected if r.sensor_id == sid]
        assert int(got[sid][0]) == len(mine)
        assert float(got[sid][1]) == pytest.approx(sum(mine))
        assert float(got[sid][2]) == max(mine)
    assert float(got["dev-b"][2]) == 99.5  # the later set's value, not the first seal's

    again = await env.archiver(grace_ms=0).run_once()  # idempotent: everything marked
    assert (again.archived, again.rearchived, again.rows) == (0, 0, 0)


async def test_late_reading_in_an_archived_packed_bucket_is_archived_exactly_once(
    packed_env: ArchiveEnv,
) -> None:
    env = packed_env
    await env.put(OLD + OLD_HOT)
    # The first pass after the policy is recorded marks what it archives (ingest workers
    # may not know the policy yet for a settle time): B1 and B2 are looked at again.
    first = await env.archiver().run_once()
    assert first.ok and (first.archived, first.rows) == (2, 6)
    assert await env.count_items(SID, B1) == 3  # parts kept

    # Late: two new readings, one redelivered (the same reading again) and one corrected,
    # all sealed as another set of their windows, a day and a half late.
    late = readings_of(B1, [7_777, 8_888], v=50.0)
    redelivered = OLD[0]
    corrected = Reading(SID, OLD[1].ts_ms, {"v": -3.0})
    at = NOW_MS + 60_000
    await env.put([*late, redelivered, corrected], now_ms=at)
    marks = {(m.sensor_id, m.bucket_start_ms): m.marked_at_ms for m in await late_marks(env.dynamo)}
    assert marks.pop((SID, B1)) == at  # the ingest's mark
    assert set(marks.values()) == {NOW_MS} and (SID, B2) in marks  # the archiver's own
    own = len(marks)  # B2 and the two empty buckets between B2 and the hot one
    now_all = [r for r in OLD + OLD_HOT if r.ts_ms != corrected.ts_ms] + [corrected, *late]
    # Before the re-archive, the tiered read serves each reading once (the hot value).
    assert await tiered(env, at) == sorted(
        as_floats([r for r in now_all if r.ts_ms < OLD_HOT[0].ts_ms]), key=lambda r: r.ts_ms
    )

    # A pass before the settle time leaves the mark (the seal may still be on its way).
    early = await env.archiver(now_ms=at + SETTLE_MS // 2).run_once()
    assert (early.rearchived, early.late, early.late_waiting) == (0, 0, 1 + own)

    later = at + SETTLE_MS + 1_000
    report = await env.archiver(now_ms=later).run_once()
    assert report.ok and (report.rearchived, report.late, report.rows) == (1, 1 + own, 2)
    await assert_archived_once(env, now_all, now_ms=later)
    got = (await archived_readings(env))[B1]
    assert {r.ts_ms: r.metrics for r in got}[corrected.ts_ms] == {"v": -3.0}
    assert len(got) == 5  # 3 + 2 new: the redelivered one is not doubled
    marker = await get_marker(env.dynamo, SID, B1)
    assert marker is not None and marker.rows == 5 and marker.deleted_at_ms is None

    # Marked again by a redelivery of what is archived: nothing new, no object written.
    await env.put([late[0]], now_ms=later + 60_000)
    quiet = await env.archiver(now_ms=later + 2 * SETTLE_MS).run_once()
    assert (quiet.archived, quiet.rearchived, quiet.rows, quiet.late) == (0, 0, 0, 1)
    await assert_archived_once(env, now_all, now_ms=later + 2 * SETTLE_MS)


async def test_late_reading_sealed_during_an_archive_of_its_packed_bucket_is_taken_next(
    packed_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set sealed between the pass's read of the bucket and its marker is in no object
    yet; its late mark (moved by the registry flush) survives, the next pass takes it."""
    env = packed_env
    await env.put(OLD)
    await env.archiver().run_once()
    real = archiver_mod.export_packed_bucket
    raced = readings_of(B1, [5_000], v=60.0)
    first_late = readings_of(B1, [4_000], v=40.0)
    await env.put(first_late, now_ms=NOW_MS + 60_000)
    t2 = NOW_MS + HOUR_MS
    done = False

    async def export_then_seal(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        got = await real(*args, **kwargs)
        if not done and args[3] == B1:
            done = True
            await env.put(raced, now_ms=t2)
        return got

    monkeypatch.setattr(archiver_mod, "export_packed_bucket", export_then_seal)
    racing = await env.archiver(now_ms=t2).run_once()
    # B1's mark moved (the raced seal's registry flush): kept; B2's (the archiver's own) cleared.
    assert racing.ok and (racing.rearchived, racing.rows) == (1, 1)
    assert (racing.late, racing.late_waiting) == (1, 1)
    assert 5_000 + B1 not in {r.ts_ms for r in (await archived_readings(env))[B1]}
    monkeypatch.setattr(archiver_mod, "export_packed_bucket", real)
    again = await env.archiver(now_ms=t2 + HOUR_MS).run_once()
    assert again.ok and (again.rearchived, again.rows, again.late) == (1, 1, 1)
    await assert_archived_once(env, OLD + first_late + raced, now_ms=t2 + HOUR_MS)


async def test_a_late_seal_delayed_past_the_settle_time_marks_its_bucket_again(
    packed_env: ArchiveEnv,
) -> None:
    """A late reading's mark (the registry's, at decode) is cleared by a pass that ran
    while its seal was still held up (DynamoDB failing for longer than the settle time):
    the seal marks the bucket again once it lands, so the next pass archives it."""
    env = packed_env
    await env.put(OLD)
    await env.archiver().run_once()
    late = readings_of(B1, [4_000], v=40.0)
    t1 = NOW_MS + 60_000
    registry = SensorRegistry(env.dynamo, Metrics(), wall_clock=lambda: t1 / 1000)
    await registry.refresh_policy()
    registry.observe(late)  # decoded, journaled and acknowledged: its seal is held up
    await registry.flush()
    cleared = await env.archiver(now_ms=t1 + SETTLE_MS + 1_000).run_once()
    assert cleared.ok and cleared.rows == 0  # B1 unchanged in DynamoDB: nothing new
    assert await late_marks(env.dynamo) == []  # the mark is gone, the reading not archived

    t2 = t1 + SETTLE_MS + 120_000  # DynamoDB answers again: the window is sealed
    await seal_as_worker(env.dynamo, env.layout, late, received_ms=t1, now_ms=t2)
    marks = await late_marks(env.dynamo)
    assert [(m.sensor_id, m.bucket_start_ms, m.marked_at_ms) for m in marks] == [(SID, B1, t2)]

    again = await env.archiver(now_ms=t2 + SETTLE_MS + 1_000).run_once()
    assert again.ok and (again.rearchived, again.rows, again.late) == (1, 1, 1)
    await assert_archived_once(env, OLD + late, now_ms=t2 + SETTLE_MS + 1_000)


async def test_seals_of_buckets_no_archive_can_hold_yet_write_no_mark(
    packed_env: ArchiveEnv,
) -> None:
    env = packed_env
    await env.put(OLD)
    await env.archiver().run_once()  # a policy is recorded (and its own marks written)
    before = await late_marks(env.dynamo)
    await seal_as_worker(env.dynamo, env.layout, OLD_HOT, received_ms=NOW_MS, now_ms=NOW_MS)
    assert await env.count_items(SID, OLD_HOT[0].ts_ms - OLD_HOT[0].ts_ms % BUCKET_MS) == 2
    assert await late_marks(env.dynamo) == before


async def test_delete_archived_is_refused_on_a_packed_table_with_the_reason(
    packed_env: ArchiveEnv,
) -> None:
    with pytest.raises(ArchiveConfigError, match="TTL for free") as info:
        packed_env.archiver(delete_archived=True)
    assert str(info.value) == PACKED_NO_DELETE


async def _policy(endpoint: str, table: str) -> ArchivePolicy | None:
    aws = AwsSettings(
        region="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    async with DynamoClient(table=table, aws=aws) as client:
        return await read_archive_policy(client)


def test_archive_command_one_pass_on_a_packed_table(
    moto_server: MotoServer,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds(monkeypatch)
    endpoint = moto_server.endpoint_url
    bucket = bucket_name(unique_name)
    layout = TableLayout(kind="packed", bucket_ms=DAY_MS, retention_days=5, groups=4)
    day = (int(time.time() * 1000) - 3 * DAY_MS) // DAY_MS * DAY_MS  # the real clock's
    readings = [Reading("cli-p", day + 60_000 * i, {"t": i}) for i in range(40)]
    n = asyncio.run(seed_table_and_bucket(endpoint, unique_name, bucket, layout, readings))
    flags = ["--table", unique_name, "--dynamodb-endpoint", endpoint]
    s3 = ["--s3-bucket", bucket, "--s3-endpoint", endpoint, "--region", "us-east-1"]
    assert main(["archive", *flags, *s3, "--horizon-days", "1"]) == 0
    assert f"1 buckets archived ({n} readings)" in capsys.readouterr().out
    # The settle time it recorded waits for a late reading's seal too (grace + staging).
    cfg = Config.model_validate({"table": unique_name, "region": "us-east-1"})
    ingest_ms = (cfg.pipeline.write_retry_deadline_s + 2 * cfg.pipeline.registry_interval_s) * 1000
    policy = asyncio.run(_policy(endpoint, unique_name))
    assert policy is not None
    assert policy.settle_ms == ingest_ms + 60_000 + SEAL_GRACE_MS + layout.stage_ms
    assert main(["archive", *flags, *s3, "--horizon-days", "1", "--delete-archived"]) == 2
    assert "refused on a 'packed' table" in capsys.readouterr().err


async def test_expired_parts_still_present_are_archived_and_a_corrupt_one_fails_its_bucket(
    packed_env: ArchiveEnv,
) -> None:
    """Parts past their TTL that DynamoDB has not deleted yet are real readings (archived,
    as expired items are on a reading table); a part that cannot be decoded leaves its
    bucket unmarked, reported, and the other buckets archived."""
    env = packed_env
    await env.put(OLD)
    past = {"N": str(NOW_MS // 1000 - 3600)}
    b1 = await _parts(env, B1)
    await env.dynamo.batch_write([{**it, "ttl": past} for it in b1])  # expired, not deleted
    b2 = await _parts(env, B2)
    await env.dynamo.batch_write([{**b2[0], "b": {"B": b"\x01not a window"}}])
    report = await env.archiver().run_once()
    assert report.archived == 1 and report.rows == 3
    assert len(report.failed) == 1 and "unreadable" in report.failed[0]
    assert "bucket" in report.failed[0] and SID in report.failed[0]
    assert (await archived_readings(env))[B1] == as_floats(OLD[:3])
    assert await get_marker(env.dynamo, SID, B2) is None  # left for the next pass
    assert B2 not in await archived_readings(env)


async def _parts(env: ArchiveEnv, bucket: int) -> list[dict[str, Any]]:
    pk = env.layout.window_pk(SID, bucket)
    resp = await env.dynamo.call(
        "query",
        TableName=env.dynamo.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": pk}},
    )
    items: list[dict[str, Any]] = resp["Items"]
    assert items
    return items


def test_the_streams_archiver_refuses_a_packed_table_and_names_the_batch_archiver() -> None:
    with pytest.raises(ArchiveConfigError, match="archives only 'reading' tables") as info:
        StreamArchiver(None, "arn:x", None, PACKED_LAYOUT)  # type: ignore[arg-type]
    assert "`iot-ingest archive`" in str(info.value) and "'packed'" in str(info.value)
