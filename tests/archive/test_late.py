"""Late readings on moto DynamoDB + moto S3: a reading written after its bucket was archived.

The ingest side is the real :class:`~ingest.pipeline.registry.SensorRegistry` (it reads the
archive policy the archiver records and marks late buckets); the archiver runs on a
fixed clock. Each test checks, from the outside, that every reading ends in S3
exactly once (one object per bucket, decoded), that the late marks are gone, and
that the tiered read path (``queries.read.pages.read_page``, what the HTTP API serves)
returns every reading once — with and without the early delete, across a late
write racing the archiver, an ingest that does not know the policy yet, and a
crash at each step of a re-archive.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingest.archive import archiver as archiver_mod
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.archive.manifest import get_marker
from ingest.storage.archive.paths import parse_key
from ingest.storage.archive.reader import read_cold
from ingest.storage.archive.store import S3Store
from ingest.storage.layout import ArchivePolicy, Reading
from ingest.storage.registry import late_marks
from ingest.storage.table import read_archive_policy
from queries.read.pages import read_page
from queries.read.reader import TableReader
from tests.archive.conftest import BUCKET_MS, DAY_MS, HORIZON_MS, HOUR_MS, NOW_MS, ArchiveEnv
from tests.archive.test_archive_integration import all_objects, decode_all

SID = "late-1"
B1 = NOW_MS - 36 * HOUR_MS  # archivable at NOW_MS (ends a day and 9 hours before)
B2 = NOW_MS - 33 * HOUR_MS  # archivable too
HOT = NOW_MS - 12 * HOUR_MS  # not archivable at NOW_MS


def readings_of(bucket: int, offsets: list[int], v: float = 1.0) -> list[Reading]:
    return [Reading(SID, bucket + o, {"v": v + i}) for i, o in enumerate(offsets)]


OLD = readings_of(B1, [1_000, 2_000, 3_000]) + readings_of(B2, [1_000, 2_000, 3_000])
OLD_HOT = readings_of(HOT, [5, 6])


async def archived_readings(env: ArchiveEnv) -> dict[int, list[Reading]]:
    """Every reading of SID in the archive's batch objects, by bucket (each object once)."""
    out: dict[int, list[Reading]] = {}
    for key, r, _ in decode_all(await all_objects(env)):
        name = parse_key(key)
        assert name is not None
        out.setdefault(name.bucket_start_ms, []).append(r)
    return {b: sorted(rs, key=lambda r: r.ts_ms) for b, rs in out.items()}


async def batch_objects(env: ArchiveEnv) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    async for key in env.store.keys(f"{env.store.prefix}/sensor_id={SID}/"):
        name = parse_key(key)
        if name is not None and not name.stream_tag:
            out.setdefault(name.bucket_start_ms, []).append(key)
    return out


async def tiered(env: ArchiveEnv, now_ms: int, lo: int = B1, hi: int = HOT - 1) -> list[Reading]:
    """The readings the query API serves for [lo, hi] (hot and cold merged)."""
    reader = TableReader(env.dynamo, env.layout, cold=env.store)
    page = await read_page(
        reader, SID, lo, hi, limit=10_000, stats=reader.new_stats(), now_s=now_ms // 1000
    )
    assert page.next_ts is None
    return [Reading(SID, r.ts_ms, {k: float(v) for k, v in r.metrics.items()}) for r in page.items]


def _ts(r: Reading) -> int:
    return r.ts_ms


def as_floats(readings: list[Reading]) -> list[Reading]:
    """Readings as the archive returns them (metrics are float64 there)."""
    return [
        Reading(r.sensor_id, r.ts_ms, {k: float(v) for k, v in r.metrics.items()}) for r in readings
    ]


async def assert_archived_once(env: ArchiveEnv, expected: list[Reading], *, now_ms: int) -> None:
    """Every archivable reading of ``expected`` in S3 exactly once, one object per bucket,
    no late mark left, and the tiered read serving each reading once."""
    want = sorted(as_floats(expected), key=_ts)
    archivable = [r for r in want if r.ts_ms < HOT]
    got = await archived_readings(env)
    assert [r for b in sorted(got) for r in got[b]] == archivable  # each exactly once
    objects = await batch_objects(env)
    assert all(len(keys) == 1 for keys in objects.values()), objects
    for bucket, rs in got.items():
        marker = await get_marker(env.dynamo, SID, bucket)
        assert marker is not None and marker.rows == len(rs)
    assert await late_marks(env.dynamo) == []
    assert await read_cold(env.store, env.layout, SID, 0, NOW_MS) == archivable
    assert await tiered(env, now_ms) == [r for r in want if B1 <= r.ts_ms < HOT]


@pytest.mark.parametrize("delete", [False, True], ids=["kept", "deleted-early"])
async def test_late_reading_in_an_archived_bucket_is_archived_exactly_once(
    archive_env: ArchiveEnv, delete: bool
) -> None:
    env = archive_env
    await env.put(OLD + OLD_HOT)  # before any archiver ran: nothing is late
    first = await env.archiver(delete_archived=delete, settle_ms=0).run_once()
    assert first.ok and first.archived == 2 and first.rows == 6
    assert await env.count_items(SID, B1) == (0 if delete else 3)

    late = readings_of(B1, [7_777, 8_888], v=50.0)  # real data, a day and a half late
    await env.put(late, now_ms=NOW_MS + 60_000)
    # Between the late write and the next pass, the query API serves both tiers.
    assert await tiered(env, NOW_MS + 60_000) == sorted(as_floats(OLD + late), key=_ts)

    second = env.archiver(now_ms=NOW_MS + HOUR_MS, delete_archived=delete, settle_ms=0)
    report = await second.run_once()
    await assert_archived_once(env, OLD + OLD_HOT + late, now_ms=NOW_MS + HOUR_MS)
    assert await env.count_items(SID, B1) == (0 if delete else 5)
    assert report.ok and (report.rearchived, report.late, report.rows) == (1, 1, 2)
    marker = await get_marker(env.dynamo, SID, B1)
    assert marker is not None and marker.rows == 5

    third = env.archiver(now_ms=NOW_MS + 2 * HOUR_MS, delete_archived=delete, settle_ms=0)
    again = await third.run_once()  # nothing more to do
    assert (again.archived, again.rearchived, again.rows, again.late) == (0, 0, 0, 0)


@pytest.mark.parametrize("case", ["deleted-early", "expiring"])
async def test_tiered_read_between_a_late_write_and_its_rearchive_misses_nothing(
    archive_env: ArchiveEnv, case: str
) -> None:
    """As many late readings as the archive lost from DynamoDB must not fool the count."""
    env = archive_env
    if case == "deleted-early":
        bucket, read_at = B1, NOW_MS + 60_000
        old = readings_of(bucket, [1_000, 2_000, 3_000])
        late = readings_of(bucket, [4_000, 5_000, 6_000], v=50.0)
    else:  # no early delete; two archived readings expire (TTL) before the read
        bucket, read_at = NOW_MS - 2 * DAY_MS, NOW_MS + HOUR_MS
        old = readings_of(bucket, [10 * 60_000, 20 * 60_000, 170 * 60_000])
        late = readings_of(bucket, [90 * 60_000, 120 * 60_000], v=50.0)
    await env.put(old)
    report = await env.archiver(
        grace_ms=0, settle_ms=0, delete_archived=case == "deleted-early"
    ).run_once()
    assert report.ok and report.rows == 3
    await env.put(late, now_ms=NOW_MS + 60_000)
    got = await tiered(env, read_at, lo=bucket, hi=bucket + BUCKET_MS - 1)
    assert got == sorted(as_floats(old + late), key=_ts)


async def test_late_write_during_the_first_archive_of_its_bucket_is_archived_next_pass(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = archive_env
    c = NOW_MS - 24 * HOUR_MS  # archivable from NOW_MS + 3 h on
    old = readings_of(c, [1_000, 2_000])
    await env.put(old + OLD)
    assert (await env.archiver(settle_ms=0).run_once()).archived == 2  # B1, B2
    t3 = NOW_MS + 3 * HOUR_MS
    raced = readings_of(c, [9_999], v=70.0)  # written between the export and the marker
    await _race(env, monkeypatch, raced, at_ms=t3)
    racing = await env.archiver(now_ms=t3, settle_ms=0).run_once()
    assert (await archived_readings(env))[c] == as_floats(old)  # C, without the raced one

    later = await env.archiver(now_ms=t3 + HOUR_MS, settle_ms=0).run_once()
    await assert_archived_once(env, old + OLD + raced, now_ms=t3 + HOUR_MS)
    assert racing.ok and racing.archived == 1 and racing.rows == 2
    assert later.ok and (later.rearchived, later.rows, later.late) == (1, 1, 1)


@pytest.mark.parametrize("delete", [False, True], ids=["kept", "deleted-early"])
async def test_late_write_during_a_rearchive_is_archived_next_pass(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch, delete: bool
) -> None:
    env = archive_env
    await env.put(OLD)
    await env.archiver(delete_archived=delete, settle_ms=0).run_once()
    first_late = readings_of(B1, [4_000], v=40.0)
    await env.put(first_late, now_ms=NOW_MS + 30 * 60_000)
    t2 = NOW_MS + HOUR_MS
    raced = readings_of(B1, [5_000], v=60.0)  # written between the export and the marker
    await _race(env, monkeypatch, raced, at_ms=t2)
    racing = await env.archiver(now_ms=t2, delete_archived=delete, settle_ms=0).run_once()
    if delete:  # the raced reading was in no verified object: not deleted
        assert await env.count_items(SID, B1) == 1

    later = env.archiver(now_ms=t2 + HOUR_MS, delete_archived=delete, settle_ms=0)
    again = await later.run_once()
    await assert_archived_once(env, OLD + first_late + raced, now_ms=t2 + HOUR_MS)
    assert await env.count_items(SID, B1) == (0 if delete else 5)
    assert racing.ok and racing.rearchived == 1 and racing.rows == 1  # the first late one
    assert racing.late == 0 and racing.late_waiting == 1  # marked again meanwhile: kept
    assert again.ok and (again.rearchived, again.rows, again.late) == (1, 1, 1)


async def _race(
    env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch, readings: list[Reading], *, at_ms: int
) -> None:
    """The next export of the readings' bucket is followed by their ingest (write and
    registry flush at ``at_ms``) before the archiver goes on to write and mark."""
    real = archiver_mod.export_bucket
    bucket = env.layout.bucket_start(readings[0].ts_ms)
    done = False

    async def export_then_ingest(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        got = await real(*args, **kwargs)
        if not done and args[3] == bucket:
            done = True
            await env.put(readings, now_ms=at_ms)
        return got

    monkeypatch.setattr(archiver_mod, "export_bucket", export_then_ingest)


async def test_reading_from_an_ingest_that_does_not_know_the_policy_yet_is_archived(
    archive_env: ArchiveEnv,
) -> None:
    """The archiver marks what it archives for a settle time after it records a policy."""
    env = archive_env
    await env.put(OLD)
    mono = [0.0]
    stale = SensorRegistry(
        env.dynamo, Metrics(), wall_clock=lambda: NOW_MS / 1000, clock=lambda: mono[0]
    )
    await stale.flush()  # reads the policy: none recorded yet
    first = await env.archiver().run_once()  # records it, with the default settle time
    late = readings_of(B2, [7_000], v=80.0)
    stale.observe(late)  # within its policy refresh period: it does not know it is late
    await env.dynamo.batch_write([env.layout.to_item(r) for r in late])
    await stale.flush()
    early = await env.archiver(now_ms=NOW_MS + 5 * 60_000).run_once()  # marks still settling
    assert (await archived_readings(env))[B2] == as_floats(OLD[3:])

    report = await env.archiver(now_ms=NOW_MS + HOUR_MS).run_once()
    await assert_archived_once(env, OLD + late, now_ms=NOW_MS + HOUR_MS)
    assert first.archived == 2
    assert await read_archive_policy(env.dynamo) == ArchivePolicy(
        horizon_ms=HORIZON_MS, bucket_ms=BUCKET_MS, settle_ms=420_000, since_ms=NOW_MS
    )
    assert stale.archive_policy is None and stale.late_pending == 0  # it marked nothing
    assert (early.rearchived, early.late, early.late_waiting) == (0, 0, 2)  # B1, B2: own marks
    assert report.ok and (report.rearchived, report.late, report.rows) == (1, 2, 1)
    mono[0] = 60.0  # the stale ingest refreshes its policy: it now marks late readings itself
    stale.observe(readings_of(B2, [7_500], v=81.0))
    await stale.flush()
    assert stale.archive_policy is not None
    assert [m.bucket_start_ms for m in await late_marks(env.dynamo)] == [B2]


Crash = Callable[[pytest.MonkeyPatch], None]


class Crashed(Exception):
    """The simulated crash (no ArchiveError: nothing in the archiver handles it)."""


def _crash_put(what: str) -> Crash:
    def install(mp: pytest.MonkeyPatch) -> None:
        real = S3Store.put

        async def put(self: S3Store, key: str, body: bytes, **kw: Any) -> str:
            if ("_manifests/" in key) == (what == "manifest"):
                raise Crashed(f"before the {what} put")
            return await real(self, key, body, **kw)

        mp.setattr(S3Store, "put", put)

    return install


def _crash_call(name: str, *, after: bool = False) -> Crash:
    """Crash in archiver_mod.<name> (after the real call with ``after``)."""

    def install(mp: pytest.MonkeyPatch) -> None:
        real: Callable[..., Awaitable[Any]] = getattr(archiver_mod, name)

        async def crashing(*args: Any, **kwargs: Any) -> Any:
            if after:
                await real(*args, **kwargs)
            raise Crashed(f"{'after' if after else 'in'} {name}")

        mp.setattr(archiver_mod, name, crashing)

    return install


STEPS: dict[str, Crash] = {
    "object-put": _crash_put("object"),
    "manifest-put": _crash_put("manifest"),
    "verify": _crash_call("verify_object"),
    "marker": _crash_call("put_marker"),
    "delete-started": _crash_call("mark_delete_started"),
    "items-deleted": _crash_call("delete_keys", after=True),
    "deleted-noted": _crash_call("mark_deleted"),
    "late-mark-cleared": _crash_call("clear_late_mark"),
}
DELETE_ONLY = {"delete-started", "items-deleted", "deleted-noted"}


@pytest.mark.parametrize(
    ("step", "delete"),
    [(s, True) for s in STEPS] + [(s, False) for s in STEPS if s not in DELETE_ONLY],
)
async def test_crash_at_each_step_of_a_rearchive_converges_on_the_next_pass(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch, step: str, delete: bool
) -> None:
    env = archive_env
    await env.put(OLD)
    # Deleted early before the late readings came, except where the re-archive's own
    # delete is the first one (so that it notes the start of a delete on the marker).
    await env.archiver(delete_archived=delete and step != "delete-started", settle_ms=0).run_once()
    late = readings_of(B1, [4_000, 4_500], v=30.0)
    await env.put(late, now_ms=NOW_MS + 60_000)
    crashed: BaseExceptionGroup[BaseException] | None = None
    with monkeypatch.context() as mp:
        STEPS[step](mp)
        crashing = env.archiver(now_ms=NOW_MS + HOUR_MS, delete_archived=delete, settle_ms=0)
        try:
            await crashing.run_once()
        except BaseExceptionGroup as eg:
            crashed = eg
    resumed = env.archiver(now_ms=NOW_MS + 2 * HOUR_MS, delete_archived=delete, settle_ms=0)
    report = await resumed.run_once()
    await assert_archived_once(env, OLD + late, now_ms=NOW_MS + 2 * HOUR_MS)
    assert report.ok, report.failed
    assert crashed is not None and crashed.subgroup(Crashed) is not None, "no crash injected"
    marker = await get_marker(env.dynamo, SID, B1)
    assert marker is not None and marker.rows == 5
    if delete:
        assert marker.deleted_at_ms is not None
        assert await env.count_items(SID, B1) == await env.count_items(SID, B2) == 0
    else:
        assert await env.count_items(SID, B1) == 5


async def test_a_late_mark_waits_for_the_settle_time_then_is_handled(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    await env.put(OLD)
    await env.archiver(settle_ms=600_000).run_once()
    late = readings_of(B1, [4_000], v=30.0)
    await env.put(late, now_ms=NOW_MS + HOUR_MS)  # its write may still be retried for a while
    waiting = env.archiver(now_ms=NOW_MS + HOUR_MS + 599_999, settle_ms=600_000)
    report = await waiting.run_once()
    assert (await archived_readings(env))[B1] == as_floats(OLD[:3])  # not yet
    done = await env.archiver(now_ms=NOW_MS + 2 * HOUR_MS, settle_ms=600_000).run_once()
    await assert_archived_once(env, OLD + late, now_ms=NOW_MS + 2 * HOUR_MS)
    # B2: the archiver's own mark from its first pass (a new policy), handled; B1 waited.
    assert (report.rearchived, report.late, report.late_waiting) == (0, 1, 1)
    assert done.ok and done.rearchived == 1


async def test_a_changed_policy_is_recorded_again_and_an_unchanged_one_is_not(
    archive_env: ArchiveEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = archive_env
    await env.archiver(settle_ms=0).run_once()
    recorded = await read_archive_policy(env.dynamo)
    assert recorded == ArchivePolicy(
        horizon_ms=HORIZON_MS, bucket_ms=BUCKET_MS, settle_ms=0, since_ms=NOW_MS
    )
    await env.archiver(now_ms=NOW_MS + HOUR_MS, settle_ms=0).run_once()
    assert await read_archive_policy(env.dynamo) == recorded  # since unchanged
    shorter = env.archiver(now_ms=NOW_MS + 2 * HOUR_MS, horizon_ms=HORIZON_MS // 2, settle_ms=0)
    await shorter.run_once()
    assert await read_archive_policy(env.dynamo) == ArchivePolicy(
        horizon_ms=HORIZON_MS // 2, bucket_ms=BUCKET_MS, settle_ms=0, since_ms=NOW_MS + 2 * HOUR_MS
    )
    assert "the table's archive policy changes" in caplog.text


async def test_a_run_that_lost_the_race_never_replaces_the_winners_object(
    archive_env: ArchiveEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a run's marker re-read and its put, another run re-archives the bucket
    (with a reading the first never saw) and deletes its items: the first run's
    conditional put fails, and the winner's object stands."""
    env = archive_env
    await env.put(OLD)
    await env.archiver(delete_archived=True, settle_ms=0).run_once()
    first_late = readings_of(B1, [4_000], v=40.0)
    await env.put(first_late, now_ms=NOW_MS + 60_000)
    second_late = readings_of(B1, [5_000], v=50.0)
    real = archiver_mod.get_marker
    calls = 0
    winner: list[Any] = []

    async def get_marker_then_another_run(client: Any, sid: str, bucket: int) -> Any:
        nonlocal calls
        got = await real(client, sid, bucket)
        calls += 1
        if calls == 2 and not winner:  # the slow run's re-read, just before its put
            await env.put(second_late, now_ms=NOW_MS + 2 * 60_000)
            other = env.archiver(now_ms=NOW_MS + HOUR_MS, delete_archived=True, settle_ms=0)
            winner.append(await other.run_once())
        return got

    monkeypatch.setattr(archiver_mod, "get_marker", get_marker_then_another_run)
    slow = env.archiver(now_ms=NOW_MS + HOUR_MS, delete_archived=True, settle_ms=0)
    lost = await slow.run_once()
    monkeypatch.setattr(archiver_mod, "get_marker", real)
    # The winner archived and deleted both late readings; the slow run wrote nothing.
    assert await env.count_items(SID, B1) == 0
    assert (await archived_readings(env))[B1] == as_floats(
        sorted(OLD[:3] + first_late + second_late, key=_ts)
    )
    assert winner and winner[0].ok and winner[0].rearchived == 1
    assert lost.ok and lost.rearchived == 0 and lost.skipped >= 1
    final = env.archiver(now_ms=NOW_MS + 2 * HOUR_MS, delete_archived=True, settle_ms=0)
    await final.run_once()
    await assert_archived_once(env, OLD + first_late + second_late, now_ms=NOW_MS + 2 * HOUR_MS)
