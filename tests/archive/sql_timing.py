"""Time ``iot-ingest archive sql`` over an archive the size the demo produces.

Not a test (pytest does not collect it): ``python -m tests.archive.sql_timing``.

The demo runs 100 devices at 100 readings/s in total (one a second each) into
five-minute buckets, so an hour of it is 100 sensors x 12 buckets = 1,200 objects
and 360,000 readings. The objects are written to moto S3 with the archiver's own
encoder (``ingest.storage.archive.parquet.encode``) at the archiver's keys
(``data_key``): running the real archiver over 360,000 items in moto DynamoDB
would take hours (moto's Query reads its whole table), and the bytes are the same.
Then the download (LIST + GETs through ``S3Store``), the DuckDB views and a few
statements are timed, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.servers import MotoServer
from ingest.archive.sql import download, list_data_keys, open_archive, query, select_keys
from ingest.aws.settings import AwsSettings
from ingest.storage.archive.parquet import encode
from ingest.storage.archive.paths import data_key
from ingest.storage.archive.store import S3Store
from ingest.storage.layout import Reading

BUCKET_MS = 300_000
T0 = 1_795_348_800_000  # 2026-11-22T12:00Z
STATEMENTS = {
    "count": "SELECT count(*) FROM readings",
    "hourly avg per sensor": (
        "SELECT sensor_id, date_trunc('hour', ts) AS h, avg(m_temperature), max(m_pressure) "
        "FROM readings GROUP BY ALL ORDER BY ALL"
    ),
    "one sensor, 10 min": (
        "SELECT * FROM readings WHERE sensor_id = 'dev-0042' "
        f"AND ts_ms BETWEEN {T0 + 600_000} AND {T0 + 1_200_000} ORDER BY ts"
    ),
    "top 5 hottest minutes": (
        "SELECT sensor_id, time_bucket(INTERVAL 1 minute, ts) AS m, avg(m_temperature) AS t "
        "FROM readings GROUP BY ALL ORDER BY t DESC LIMIT 5"
    ),
}


def bucket_readings(rng: random.Random, sid: str, start: int) -> list[Reading]:
    base = rng.uniform(17, 26)
    return [
        Reading(
            sid,
            start + s * 1000 + rng.randrange(1000),
            {
                "temperature": round(base + rng.gauss(0, 0.5), 2),
                "humidity": round(rng.uniform(35, 60), 1),
                "pressure": round(rng.uniform(1005, 1020), 2),
            },
        )
        for s in range(BUCKET_MS // 1000)
    ]


async def fill(store: S3Store, sensors: int, buckets: int) -> int:
    rng = random.Random(1)
    sem = asyncio.Semaphore(16)
    n = 0

    async def put(sid: str, start: int) -> None:
        nonlocal n
        readings = bucket_readings(rng, sid, start)
        body = await asyncio.to_thread(encode, readings)
        async with sem:
            await store.put(
                data_key(store.prefix, sid, start),
                body,
                content_type="application/vnd.apache.parquet",
            )
        n += len(readings)

    async with asyncio.TaskGroup() as tg:
        for i in range(sensors):
            for b in range(buckets):
                tg.create_task(put(f"dev-{i:04d}", T0 + b * BUCKET_MS))
    return n


async def fetch(store: S3Store, root: Path, sensors: list[str]) -> list[Path]:
    keys = select_keys(await list_data_keys(store, sensors), None, None)
    return await download(store, keys, root)


async def run(sensors: int, buckets: int, repeat: int) -> None:
    server = MotoServer()
    await server.start()
    try:
        aws = AwsSettings(
            region="us-east-1",
            endpoint_url=server.endpoint_url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        async with S3Store(bucket="timing", aws=aws) as store:
            await store.client.create_bucket(Bucket="timing")
            t = time.perf_counter()
            n = await fill(store, sensors, buckets)
            print(
                f"archive: {sensors * buckets} objects, {n} readings "
                f"(written in {time.perf_counter() - t:.1f} s)"
            )
            size = 0
            fetch_s: list[float] = []
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    files = await fetch(store, Path(tmp), [])
                    fetch_s.append(time.perf_counter() - t)
                    size = sum(f.stat().st_size for f in files)
            print(
                f"download (LIST + {len(files)} GETs from moto): best {min(fetch_s):.2f} s, "
                f"median {statistics.median(fetch_s):.2f} s; {size / 1e6:.1f} MB"
            )
            with tempfile.TemporaryDirectory() as tmp:
                files = await fetch(store, Path(tmp), [])
                for name, sql in STATEMENTS.items():
                    times, rows = [], 0
                    for _ in range(repeat):
                        t = time.perf_counter()
                        db = open_archive(Path(tmp), files, key_prefix=store.prefix)
                        rows = len(query(db, sql).rows)
                        times.append(time.perf_counter() - t)
                        db.close()
                    print(
                        f"query {name!r}: best {min(times) * 1000:.0f} ms, "
                        f"median {statistics.median(times) * 1000:.0f} ms ({rows} rows)"
                    )
                db = open_archive(Path(tmp), files, key_prefix=store.prefix)
                assert query(db, STATEMENTS["count"]).rows[0][0] == n
                db.close()
            # Narrowed as `--sensor dev-0042 --start … --end …` does: download and query.
            start, end = T0 + 600_000, T0 + 1_200_000
            times, rows, got = [], 0, 0
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    keys = await list_data_keys(store, ["dev-0042"])
                    picked = select_keys(keys, start, end)
                    files = await download(store, picked, Path(tmp))
                    db = open_archive(
                        Path(tmp), files, key_prefix=store.prefix, start_ms=start, end_ms=end
                    )
                    rows = len(query(db, "SELECT * FROM readings ORDER BY ts").rows)
                    times.append(time.perf_counter() - t)
                    got = len(files)
                    db.close()
            print(
                f"--sensor dev-0042, 10 min: {got} objects downloaded and queried: best "
                f"{min(times) * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f} ms "
                f"({rows} rows)"
            )
    finally:
        await server.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=100)
    p.add_argument("--buckets", type=int, default=12, help="five-minute buckets per sensor")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    asyncio.run(run(a.sensors, a.buckets, a.repeat))


if __name__ == "__main__":
    main()
