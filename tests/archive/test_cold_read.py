"""The cold read (:func:`ingest.storage.archive.reader.read_cold`) on moto S3: its numbers
and its errors, as the query API receives them."""

from __future__ import annotations

import pytest

from ingest.storage.archive.errors import VerifyError
from ingest.storage.archive.reader import read_cold
from ingest.storage.layout import Reading, format_number, parse_number, stored_number
from tests.archive.conftest import BUCKET_MS, HORIZON_MS, NOW_MS, ArchiveEnv

FIRST = NOW_MS - HORIZON_MS - 2 * BUCKET_MS  # two archivable buckets
METRICS: dict[str, float | int] = {"whole": 22.0, "int": 7, "big": 2**60, "frac": 0.1 + 0.2}


async def _archive(env: ArchiveEnv, sid: str) -> list[Reading]:
    readings = [
        Reading(sid, bucket + 60_000 * i, dict(METRICS))
        for bucket in (FIRST, FIRST + BUCKET_MS)
        for i in range(1, 4)
    ]
    await env.put(readings)
    assert not (await env.archiver().run_once()).failed
    return readings


async def test_cold_readings_hold_the_numbers_the_table_gives_back(
    archive_env: ArchiveEnv,
) -> None:
    readings = await _archive(archive_env, "dev-n")
    cold = await read_cold(archive_env.store, archive_env.layout, "dev-n", 0, NOW_MS)
    # As the hot tier parses the items: 22.0 and 7 are stored as "22" and "7" (ints);
    # 2**60 is in float64 already, 0.1 + 0.2 keeps every bit.
    want = {"big": float(2**60), "frac": 0.1 + 0.2, "int": 7, "whole": 22}
    assert cold == [Reading("dev-n", r.ts_ms, want) for r in readings]
    for r in cold:
        assert {k: type(v) for k, v in r.metrics.items()} == {k: type(v) for k, v in want.items()}


@pytest.mark.parametrize(
    "value", [22.0, -0.0, 0.1 + 0.2, 1e-7, 1e15 - 1.0, 1e15, 2.0**60, 1.5e300, -3.25, 7, 2**60]
)
def test_stored_number_is_what_a_number_string_parses_back_to(value: float | int) -> None:
    back = parse_number(format_number(value))
    assert stored_number(value) == back
    assert type(stored_number(value)) is type(back)


async def test_a_failed_cold_read_raises_one_archive_error_not_a_group(
    archive_env: ArchiveEnv,
) -> None:
    env = archive_env
    await _archive(env, "dev-x")
    keys = [k async for k in env.store.keys(f"{env.store.prefix}/sensor_id=dev-x/")]
    assert len(keys) == 2  # one object per bucket: both fetched at once
    for key in keys:
        await env.store.put(key, b"not parquet", content_type="application/octet-stream")
    with pytest.raises(VerifyError, match="re-run `iot-ingest archive`") as caught:
        await read_cold(env.store, env.layout, "dev-x", 0, NOW_MS)
    assert caught.value.key in keys
