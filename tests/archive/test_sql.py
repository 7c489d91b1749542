"""``iot-ingest archive ddl`` and ``archive sql``: on archives the archiver wrote on moto."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from ingest.archive.sql import athena_ddl, select_keys
from ingest.cli.main import main
from ingest.storage.archive.parquet import to_table
from ingest.storage.archive.paths import data_key
from ingest.storage.archive.reader import read_cold
from ingest.storage.layout import Reading
from tests.archive.conftest import DAY_MS, HOUR_MS, NOW_MS, ArchiveEnv
from tests.archive.test_archive_integration import FIRST_MS, SENSORS, archivable, make_readings

# --- DDL ------------------------------------------------------------------------------


def _parse_ddl(ddl: str) -> tuple[dict[str, str], dict[str, str], dict[str, str], str]:
    """Columns, partition columns, TBLPROPERTIES and LOCATION of the DDL (name → type)."""
    cols_text = re.search(r"\((.*?)\)\nPARTITIONED BY", ddl, re.S)
    parts_text = re.search(r"PARTITIONED BY \((.*?)\)\nSTORED AS PARQUET", ddl, re.S)
    props_text = re.search(r"TBLPROPERTIES \((.*?)\);", ddl, re.S)
    location = re.search(r"LOCATION '([^']+)'", ddl)
    assert cols_text and parts_text and props_text and location, ddl

    def columns(text: str) -> dict[str, str]:
        return dict(re.findall(r"`([^`]+)`\s+(\w+)", text))

    props = dict(re.findall(r"'([^']+)'='([^']*)'", props_text.group(1)))
    return columns(cols_text.group(1)), columns(parts_text.group(1)), props, location.group(1)


def _java_to_strftime(fmt: str) -> str:
    return fmt.replace("yyyy", "%Y").replace("MM", "%m").replace("dd", "%d")


_ARROW_TO_ATHENA = {
    pa.timestamp("ms", tz="UTC"): "timestamp",
    pa.float64(): "double",
    pa.string(): "string",
}


def test_ddl_columns_match_the_parquet_schema_and_projection_the_keys() -> None:
    readings = [
        Reading("dev-1", 1_795_348_800_000, {"temp": 1.5, "hum": 3}, {"site": "a"}),
        Reading("dev-1", 1_795_348_800_001, {"pressure": 1013}, {"room": "b"}),
    ]
    schema = to_table(readings).schema
    ddl = athena_ddl(
        bucket="my-archive",
        prefix="arch/v1",
        metrics=["temp", "hum", "pressure"],
        tags=["site", "room"],
        database="iot",
        table="readings_archive",
    )
    assert ddl.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS `iot`.`readings_archive` (")
    cols, parts, props, location = _parse_ddl(ddl)
    # Every Parquet column the archiver writes, with its Athena type; nothing else.
    assert cols == {f.name: _ARROW_TO_ATHENA[f.type] for f in schema}
    # The partition columns are the key=value segments of the object keys.
    key = data_key("arch/v1", "dev-1", 1_795_348_800_000)
    segments = [s.split("=")[0] for s in key.split("/") if "=" in s]
    assert list(parts) == segments == ["sensor_id", "date"]
    assert all(t == "string" for t in parts.values())
    assert location == "s3://my-archive/arch/v1/"
    assert props["projection.enabled"] == "true"
    assert props["projection.sensor_id.type"] == "injected"
    assert props["projection.date.type"] == "date"
    assert (props["projection.date.interval"], props["projection.date.interval.unit"]) == (
        "1",
        "DAYS",
    )
    first, last = props["projection.date.range"].split(",")
    assert last == "NOW"
    template = props["storage.location.template"]
    assert set(re.findall(r"\$\{(\w+)\}", template)) == set(parts)
    fmt = _java_to_strftime(props["projection.date.format"])

    # Keys the archiver (and the Streams consumer) write, over day boundaries and widths:
    # the template filled in with the projected values is the key's folder.
    starts = [
        1_795_348_800_000 + k * 5 * 60_000 for k in range(-3, 400, 7)
    ] + [  # five-minute buckets around midnights
        1_700_000_000_000 - 1_700_000_000_000 % DAY_MS + d * DAY_MS for d in range(0, 20, 3)
    ]
    for sid in ("dev-1", "007", "a.b:c_d-e"):
        for start in starts:
            for tag in ("", "shard-0001-49"):
                key = data_key("arch/v1", sid, start, stream_tag=tag)
                day = time.strftime(fmt, time.gmtime(start // 1000))
                assert first <= day  # inside the projected range (ISO dates sort as strings)
                folder = template.replace("${sensor_id}", sid).replace("${date}", day)
                assert "${" not in folder
                assert f"s3://my-archive/{key}".rpartition("/")[0] + "/" == folder
                assert folder.startswith(location)


def test_ddl_enum_sensors_and_bad_names() -> None:
    _, _, props, _ = _parse_ddl(
        athena_ddl(
            bucket="b", prefix="archive", sensors=["dev-1", "dev-2"], first_date="2026-01-01"
        )
    )
    assert props["projection.sensor_id.type"] == "enum"
    assert props["projection.sensor_id.values"] == "dev-1,dev-2"
    assert props["projection.date.range"] == "2026-01-01,NOW"
    from ingest.storage.archive.errors import ArchiveConfigError

    with pytest.raises(ArchiveConfigError, match="Athena column"):
        athena_ddl(bucket="b", prefix="archive", metrics=["Temp"])
    with pytest.raises(ArchiveConfigError, match="YYYY-MM-DD"):
        athena_ddl(bucket="b", prefix="archive", first_date="2026-13-01")


async def test_ddl_command_discovers_the_archived_columns(
    archive_env: ArchiveEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = archive_env
    readings = make_readings()
    await env.put(readings)
    assert (await env.archiver(grace_ms=0).run_once()).ok
    archived = [r for r in readings if archivable(r)]
    # A Streams part of another sensor with a name Athena cannot take, and a new one.
    from ingest.storage.archive.parquet import encode

    odd = Reading("dev-z", FIRST_MS, {"Bad Name": 1.0, "extra": 2.0}, {"floor": "3"})
    await env.store.put(
        data_key(env.store.prefix, "dev-z", FIRST_MS, stream_tag="s-1"),
        encode([odd]),
        content_type="application/vnd.apache.parquet",
    )
    archived.append(Reading("dev-z", FIRST_MS, {"extra": 2.0}, {"floor": "3"}))
    creds(monkeypatch)
    argv = ["archive", "ddl", *s3_flags(env), "--discover", "500", "--table-name", "t1"]
    argv += ["--metric-name", "given", "--tag-name", "given_tag", "--database", "iot"]
    assert await asyncio.to_thread(main, argv) == 0
    captured = capsys.readouterr()
    assert "'m_Bad Name' left out" in captured.err
    cols, _, _, location = _parse_ddl(captured.out)
    assert captured.out.startswith("CREATE EXTERNAL TABLE IF NOT EXISTS `iot`.`t1` (")
    want = {"ts": "timestamp", "m_given": "double", "g_given_tag": "string"}
    want |= {f"m_{k}": "double" for r in archived for k in r.metrics}
    want |= {f"g_{k}": "string" for r in archived for k in r.tags}
    assert cols == want
    assert location == f"s3://{env.store.bucket}/archive/"


# --- which objects --------------------------------------------------------------------


def test_select_keys_takes_the_bucket_reaching_into_the_range() -> None:
    day = 1_795_305_600_000  # a midnight
    width = 3 * DAY_MS  # buckets wider than a day start on an earlier date
    keys = [data_key("a", "s", day + k * width) for k in range(5)]
    keys.append(data_key("a", "s", day + width, stream_tag="x-1"))
    keys.append(data_key("a", "t", day))
    got = select_keys(keys, day + width + DAY_MS, day + 3 * width - 1)
    assert got == sorted(
        [
            data_key("a", "s", day + width),
            data_key("a", "s", day + width, stream_tag="x-1"),
            data_key("a", "s", day + 2 * width),
            data_key("a", "t", day),
        ]
    )
    # A bucket starting at the range's start: the one before is not needed.
    assert select_keys(keys[:5], day + width, day + width) == [data_key("a", "s", day + width)]
    assert select_keys(keys, None, None) == sorted(keys)


# --- SQL ------------------------------------------------------------------------------


def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


def s3_flags(env: ArchiveEnv) -> list[str]:
    return [
        "--s3-bucket",
        env.store.bucket,
        "--s3-endpoint",
        env.endpoint,
        "--region",
        "us-east-1",
    ]


async def test_sql_equals_the_cold_reader_for_a_sensor_and_range(
    archive_env: ArchiveEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    env = archive_env
    readings = make_readings(seed=7, per_bucket=9)
    await env.put(readings)
    report = await env.archiver(grace_ms=0).run_once()
    assert report.ok and report.rows > 0
    creds(monkeypatch)

    # A range cutting buckets in the middle (3-hour buckets).
    start = FIRST_MS + 4 * HOUR_MS + 1234
    end = start + 11 * HOUR_MS
    sid = "dev-a"
    want = await read_cold(env.store, env.layout, sid, start, end)
    assert len(want) > 20 and {r.ts_ms for r in want} != set()
    keep = tmp_path / "objs"
    argv = [
        "archive",
        "sql",
        *s3_flags(env),
        "--sensor",
        sid,
        "--start",
        str(start),
        "--end",
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end // 1000)) + f".{end % 1000:03d}Z",
        "--json",
        "--keep",
        str(keep),
        "SELECT * FROM readings ORDER BY ts",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert len(rows) == len(want)
    for row, r in zip(rows, want, strict=True):
        assert row["sensor_id"] == sid
        assert row["ts_ms"] == r.ts_ms
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.ts_ms // 1000))
        assert row["ts"] == f"{stamp}.{r.ts_ms % 1000:03d}Z"
        metrics = {k[2:]: v for k, v in row.items() if k.startswith("m_") and v is not None}
        tags = {k[2:]: v for k, v in row.items() if k.startswith("g_") and v is not None}
        assert metrics == {k: float(v) for k, v in r.metrics.items()}
        assert tags == r.tags
    # Only that sensor's objects that overlap the range were downloaded.
    width = env.layout.bucket_ms
    overlapping = {
        b
        for r in readings
        if r.sensor_id == sid and archivable(r)
        if (b := r.ts_ms - r.ts_ms % width) + width > start and b <= end
    }
    assert len(overlapping) > 2
    got_files = sorted(p.name for p in keep.rglob("*.parquet"))
    assert all(f"sensor_id={sid}" in str(p) for p in keep.rglob("*.parquet"))
    assert got_files == sorted(data_key("x", sid, b).rpartition("/")[2] for b in overlapping)

    # The whole archive: counts per sensor equal the archiver's, and what it archived.
    archived = [r for r in readings if archivable(r)]
    argv = [
        "archive",
        "sql",
        *s3_flags(env),
        "--csv",
        "SELECT sensor_id, count(*) AS n, sum(m_temp) AS t FROM readings GROUP BY 1 ORDER BY 1",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "sensor_id,n,t"
    got = {
        line.split(",")[0]: (int(line.split(",")[1]), float(line.split(",")[2]))
        for line in lines[1:]
    }
    assert set(got) == set(SENSORS)
    assert sum(n for n, _ in got.values()) == report.rows == len(archived)
    for s in SENSORS:
        mine = [r for r in archived if r.sensor_id == s]
        assert got[s][0] == len(mine)
        assert got[s][1] == pytest.approx(sum(float(r.metrics["temp"]) for r in mine))

    # The default output: a table with the row count.
    argv = ["archive", "sql", *s3_flags(env), "--sensor", sid, "SELECT count(*) AS n FROM readings"]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].strip() == "n" and out[-1] == "(1 row)"
    assert int(out[2]) == len([r for r in archived if r.sensor_id == sid])


async def test_sql_bad_statement_is_a_clear_error(
    archive_env: ArchiveEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = archive_env
    await env.put(make_readings())
    assert (await env.archiver(grace_ms=0).run_once()).ok
    creds(monkeypatch)
    for statement, words in (
        ("SELEC count(*) FROM readings", "syntax error"),
        ("SELECT no_such_column FROM readings", "no_such_column"),
    ):
        code = await asyncio.to_thread(main, ["archive", "sql", *s3_flags(env), statement])
        captured = capsys.readouterr()
        assert code == 1
        assert captured.out == ""
        # (Log lines of the archiver's pass may precede it: logging goes to stderr.)
        errors = [line for line in captured.err.splitlines() if line.startswith("iot-ingest:")]
        assert len(errors) == 1 and errors[0].startswith("iot-ingest: SQL error: ")
        assert words in errors[0]
        assert "Traceback" not in captured.err
    # An empty archive is an empty view, not an error.
    code = await asyncio.to_thread(
        main,
        [
            "archive",
            "sql",
            *s3_flags(env),
            "--sensor",
            "nobody",
            "--csv",
            "SELECT count(*) AS n FROM readings",
        ],
    )
    assert code == 0
    assert capsys.readouterr().out.splitlines() == ["n", "0"]


async def test_sql_keeps_a_reading_in_a_batch_object_and_a_stream_part_once(
    archive_env: ArchiveEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest.storage.archive.parquet import encode

    env = archive_env
    readings = make_readings(seed=3)
    await env.put(readings)
    assert (await env.archiver(grace_ms=0).run_once()).ok
    sid = "dev-b"
    mine = sorted(
        (r for r in readings if r.sensor_id == sid and archivable(r)), key=lambda r: r.ts_ms
    )
    dup, width = mine[0], env.layout.bucket_ms
    bucket = dup.ts_ms - dup.ts_ms % width
    free = next(t for t in range(bucket, bucket + width) if t not in {r.ts_ms for r in mine})
    # A Streams consumer's part of that bucket (as StreamArchiver._write puts it): the
    # batch object's first reading (another value) and one the batch object lacks.
    part = [Reading(sid, dup.ts_ms, {"temp": -999.0}), Reading(sid, free, {"temp": 7.25})]
    await env.store.put(
        data_key(env.store.prefix, sid, bucket, stream_tag="shard-0001-42"),
        encode(part),
        content_type="application/vnd.apache.parquet",
    )
    want = await read_cold(env.store, env.layout, sid, FIRST_MS - DAY_MS, NOW_MS)
    assert len(want) == len(mine) + 1
    creds(monkeypatch)
    argv = [
        "archive",
        "sql",
        *s3_flags(env),
        "--sensor",
        sid,
        "--json",
        "SELECT ts_ms, m_temp FROM readings ORDER BY ts_ms",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    rows = orjson.loads(capsys.readouterr().out)
    assert [(r["ts_ms"], r["m_temp"]) for r in rows] == [
        (r.ts_ms, float(r.metrics["temp"])) for r in want
    ]
    assert (dup.ts_ms, float(dup.metrics["temp"])) in [(r["ts_ms"], r["m_temp"]) for r in rows]
    argv = [
        "archive",
        "sql",
        *s3_flags(env),
        "--sensor",
        sid,
        "--csv",
        "SELECT count(*) AS n, count(DISTINCT object) AS o FROM archive_rows",
    ]
    assert await asyncio.to_thread(main, argv) == 0
    n_objects = len({r.ts_ms - r.ts_ms % width for r in mine}) + 1
    assert capsys.readouterr().out.splitlines()[1] == f"{len(mine) + 2},{n_objects}"


async def test_download_refuses_a_key_leading_outside_its_directory(
    archive_env: ArchiveEnv, tmp_path: Path
) -> None:
    from ingest.archive.sql import download, list_data_keys
    from ingest.storage.archive.errors import VerifyError

    env = archive_env
    key = f"{env.store.prefix}/sensor_id=x/../../evil/part-20261122T1200Z.parquet"
    await env.store.put(key, b"PAR1", content_type="application/octet-stream")
    keys = await list_data_keys(env.store)
    assert keys == [key]
    with pytest.raises(VerifyError, match="not an archive key"):
        await download(env.store, keys, tmp_path / "d")
    assert not (tmp_path / "evil").exists()


def test_views_keep_numeric_sensor_ids_as_text_and_type_the_columns(tmp_path: Path) -> None:
    from ingest.archive.sql import open_archive, query
    from ingest.storage.archive.parquet import encode

    files = []
    t0 = 1_795_348_800_000
    for sid in ("42", "a.b:c_d-e"):
        key = data_key("archive", sid, t0)
        path = tmp_path / key.removeprefix("archive/")
        path.parent.mkdir(parents=True)
        path.write_bytes(encode([Reading(sid, t0 + 1, {"v": 2}, {"k": "x"})]))
        files.append(path)
    db = open_archive(tmp_path, files, key_prefix="archive")
    types = dict(query(db, "SELECT column_name, column_type FROM (DESCRIBE readings)").rows)
    assert types == {
        "sensor_id": "VARCHAR",
        "ts": "TIMESTAMP",
        "ts_ms": "BIGINT",
        "date": "DATE",
        "m_v": "DOUBLE",
        "g_k": "VARCHAR",
    }
    rows = query(db, "SELECT sensor_id, ts_ms, epoch_ms(ts), m_v FROM readings ORDER BY 1").rows
    assert rows == [("42", t0 + 1, t0 + 1, 2.0), ("a.b:c_d-e", t0 + 1, t0 + 1, 2.0)]
    objects = query(db, "SELECT object FROM archive_rows ORDER BY 1").rows
    assert objects == [(data_key("archive", "42", t0),), (data_key("archive", "a.b:c_d-e", t0),)]
    db.close()
    # Alone (nothing else to make the column text), 42 is still the text '42'.
    db = open_archive(tmp_path, files[:1], key_prefix="archive")
    assert query(db, "SELECT sensor_id, typeof(sensor_id) FROM readings").rows == [
        ("42", "VARCHAR")
    ]
    db.close()
