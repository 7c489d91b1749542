"""SQL over the archive: Athena's table definition, and DuckDB on a copy of the objects.

Two ways to query the Parquet objects the archiver writes (layout in
:mod:`ingest.storage.archive.paths`, columns in :mod:`ingest.storage.archive.parquet`):

* :func:`athena_ddl`: the ``CREATE EXTERNAL TABLE`` of the archive for Athena/Glue,
  with partition projection (``sensor_id`` injected or enumerated, ``date`` a day
  range), so no crawler and no ``MSCK REPAIR`` are needed. Metric and tag columns are
  named as stored (``m_{name}`` double, ``g_{name}`` string): the names come from
  flags or from the schemas of archived objects (:func:`discover_columns`).
* :func:`open_archive` + :func:`query`: the objects a query needs (narrowed by sensor
  and time range: :func:`select_keys`) are downloaded with the project's own
  :class:`~ingest.storage.archive.store.S3Store` into a directory that mirrors the
  key layout, and exposed in an in-memory DuckDB database as the views
  ``readings`` (each ``(sensor_id, ts)`` once) and ``archive_rows`` (every row of
  every object, with its object key). DuckDB's ``httpfs`` extension is not needed.

Columns of ``readings``: ``sensor_id`` VARCHAR, ``ts`` TIMESTAMP (UTC, millisecond
precision), ``ts_ms`` BIGINT (epoch ms), ``date`` DATE (the partition: UTC date of
the bucket start), then the ``m_*`` DOUBLE and ``g_*`` VARCHAR columns of every
object (NULL where an object has no such column or a reading did not send it).
A reading found in both the batch archiver's object and a Streams consumer's part
of its bucket is kept once, the batch object's copy (as
:func:`~ingest.storage.archive.reader.read_cold` does).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from ingest.storage.archive.errors import (
    ArchiveConfigError,
    ArchiveError,
    VerifyError,
    single_archive_error,
)
from ingest.storage.archive.paths import parse_key
from ingest.storage.archive.store import S3Store

__all__ = [
    "ArchiveSQL",
    "QueryResult",
    "SQLError",
    "athena_ddl",
    "athena_name_ok",
    "discover_columns",
    "download",
    "format_csv",
    "format_json",
    "format_table",
    "list_data_keys",
    "open_archive",
    "query",
    "select_keys",
]

_METRIC, _TAG = "m_", "g_"
# Athena/Glue column names: lowercase letters, digits, underscore (anything else needs
# quoting in every query and Glue lower-cases them anyway).
_ATHENA_NAME = re.compile(r"[a-z0-9_]{1,255}")


def athena_name_ok(name: str) -> bool:
    """True when ``name`` (a column as stored, e.g. ``m_temp``) can be an Athena column."""
    return _ATHENA_NAME.fullmatch(name) is not None


class SQLError(ArchiveError):
    """A statement DuckDB refused (syntax, unknown column, type error)."""


# --- Athena / Glue ------------------------------------------------------------------


def _column(prefix: str, name: str) -> str:
    col = prefix + name
    if not _ATHENA_NAME.fullmatch(col):
        raise ArchiveConfigError(
            f"column {col!r} cannot be an Athena column (lowercase a-z, 0-9 and _ only); "
            "leave that name out of --metric-name/--tag-name"
        )
    return col


def athena_ddl(
    *,
    bucket: str,
    prefix: str,
    metrics: Iterable[str] = (),
    tags: Iterable[str] = (),
    database: str = "default",
    table: str = "iot_archive",
    first_date: str = "2020-01-01",
    sensors: Sequence[str] = (),
) -> str:
    """The ``CREATE EXTERNAL TABLE`` statement of the archive, with partition projection.

    Args:
        bucket: S3 bucket of the archive.
        prefix: Its key prefix (``archive``).
        metrics: Metric names (columns ``m_{name}`` DOUBLE).
        tags: Tag names (columns ``g_{name}`` STRING).
        database: Glue database.
        table: Table name.
        first_date: First ``date`` partition of the projection (``YYYY-MM-DD``); the
            range ends at ``NOW``.
        sensors: Enumerate these sensor ids (``projection.sensor_id.type=enum``: any
            query works, only these sensors are read); empty: ``injected`` (every
            query must name its sensor ids: ``WHERE sensor_id = '…'`` or ``IN (…)``).

    Raises:
        ArchiveConfigError: a name Athena cannot take, a malformed ``first_date``.
    """
    for name, value in (("--database", database), ("--table-name", table)):
        if not _ATHENA_NAME.fullmatch(value):
            raise ArchiveConfigError(
                f"{name} {value!r}: Athena names are lowercase a-z, 0-9 and _ only"
            )
    try:
        time.strptime(first_date, "%Y-%m-%d")
    except ValueError:
        raise ArchiveConfigError(f"--first-date {first_date!r} is not YYYY-MM-DD") from None
    for sid in sensors:
        if "," in sid or not sid:
            raise ArchiveConfigError(f"sensor id {sid!r} cannot be enumerated")
    columns = [("ts", "timestamp")]
    columns += [(_column(_METRIC, n), "double") for n in sorted(set(metrics))]
    columns += [(_column(_TAG, n), "string") for n in sorted(set(tags))]
    root = f"s3://{bucket}/{prefix.strip('/')}"
    props: list[tuple[str, str]] = [("projection.enabled", "true")]
    if sensors:
        props += [
            ("projection.sensor_id.type", "enum"),
            ("projection.sensor_id.values", ",".join(sensors)),
        ]
    else:
        props.append(("projection.sensor_id.type", "injected"))
    props += [
        ("projection.date.type", "date"),
        ("projection.date.format", "yyyy-MM-dd"),
        ("projection.date.range", f"{first_date},NOW"),
        ("projection.date.interval", "1"),
        ("projection.date.interval.unit", "DAYS"),
        ("storage.location.template", root + "/sensor_id=${sensor_id}/date=${date}/"),
    ]
    width = max(len(n) for n, _ in columns)
    cols = ",\n".join(f"  `{n}`{' ' * (width - len(n))} {t}" for n, t in columns)
    tblprops = ",\n".join(f"  '{k}'='{v}'" for k, v in props)
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{table}` (\n{cols}\n)\n"
        "PARTITIONED BY (\n  `sensor_id` string,\n  `date` string\n)\n"
        "STORED AS PARQUET\n"
        f"LOCATION '{root}/'\n"
        f"TBLPROPERTIES (\n{tblprops}\n);\n"
    )


# --- which objects --------------------------------------------------------------------


async def list_data_keys(store: S3Store, sensors: Sequence[str] = ()) -> list[str]:
    """Keys of the archive's data objects (of ``sensors`` only, when given), sorted.

    Manifests, checkpoints and foreign files are left out.
    """
    prefixes = [f"{store.prefix}/sensor_id={s}/" for s in sorted(set(sensors))] or [
        f"{store.prefix}/sensor_id="
    ]
    out: list[str] = []
    for p in prefixes:
        out.extend([key async for key in store.keys(p) if parse_key(key) is not None])
    return sorted(out)


def _sensor_of(key: str) -> str:
    return key.split("/sensor_id=", 1)[1].split("/", 1)[0]


def select_keys(keys: Iterable[str], start_ms: int | None, end_ms: int | None) -> list[str]:
    """The data objects that can hold a reading with ``start_ms <= ts <= end_ms``.

    Buckets are aligned and never overlap, so per sensor these are the objects whose
    bucket starts in the range plus those of the last bucket starting before it (which
    may reach into the range, whatever the bucket width). ``None``: unbounded.
    """
    by_sensor: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        name = parse_key(key)
        if name is None:
            continue
        by_sensor.setdefault(_sensor_of(key), []).append((name.bucket_start_ms, key))
    out: list[str] = []
    for objs in by_sensor.values():
        starts = {b for b, _ in objs}
        before = [b for b in starts if start_ms is not None and b < start_ms]
        # A bucket starting at start_ms: the one before it ends before the range.
        first = max(before) if before and start_ms not in starts else None
        for b, key in objs:
            if end_ms is not None and b > end_ms:
                continue
            if start_ms is not None and b < start_ms and b != first:
                continue
            out.append(key)
    return sorted(out)


async def discover_columns(store: S3Store, *, limit: int = 200) -> tuple[list[str], list[str]]:
    """Metric and tag names found in the schemas of up to ``limit`` data objects.

    The objects are taken from the newest date partition of each sensor (one LIST of
    the archive's keys), round robin over sensors, so every sensor contributes.
    """
    import pyarrow.parquet as pq

    keys = await list_data_keys(store)
    by_sensor: dict[str, list[str]] = {}
    for key in keys:
        by_sensor.setdefault(_sensor_of(key), []).append(key)
    picked: list[str] = []
    queues = [list(reversed(v)) for v in by_sensor.values()]
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    metrics: set[str] = set()
    tags: set[str] = set()
    for key in picked:
        data = await store.get(key)
        if data is None:
            continue
        try:
            schema = await asyncio.to_thread(pq.read_schema, io.BytesIO(data))
        except Exception as exc:
            raise VerifyError(f"s3://{store.bucket}/{key} is not Parquet ({exc})", key=key) from exc
        for col in schema.names:
            if col.startswith(_METRIC):
                metrics.add(col[len(_METRIC) :])
            elif col.startswith(_TAG):
                tags.add(col[len(_TAG) :])
    return sorted(metrics), sorted(tags)


async def download(
    store: S3Store, keys: Sequence[str], dest: Path, *, concurrency: int = 16
) -> list[Path]:
    """Copy the objects to ``dest``, at their key below the archive prefix; the local paths.

    An object deleted between LIST and GET (a re-archive replaced it) is skipped.

    Raises:
        StorageError: S3 failed (the first error, not an exception group).
        VerifyError: a key that would lead outside ``dest``.
    """
    sem = asyncio.Semaphore(concurrency)
    cut = len(store.prefix) + 1

    async def one(key: str) -> Path | None:
        async with sem:
            data = await store.get(key)
        if data is None:
            return None
        path = dest / key[cut:]
        if ".." in Path(key[cut:]).parts:  # a foreign key must not write outside dest
            raise VerifyError(f"s3://{store.bucket}/{key}: not an archive key", key=key)
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, data)
        return path

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(k)) for k in keys]
    except BaseExceptionGroup as group:  # one of the archive's errors, not the wrapper
        found = single_archive_error(group)
        if found is None:
            raise
        raise found from group
    return [p for t in tasks if (p := t.result()) is not None]


# --- DuckDB ---------------------------------------------------------------------------


@dataclass
class ArchiveSQL:
    """An in-memory DuckDB database with the views ``readings`` and ``archive_rows``.

    Attributes:
        con: The DuckDB connection.
        objects: Objects the views read.
        stream_parts: How many of them are Streams consumer parts.
    """

    con: Any
    objects: int
    stream_parts: int

    def close(self) -> None:
        self.con.close()


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def open_archive(
    root: Path,
    files: Sequence[Path],
    *,
    key_prefix: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> ArchiveSQL:
    """DuckDB views over downloaded archive objects (see the module docstring).

    Args:
        root: The directory :func:`download` wrote to.
        files: The Parquet files under it.
        key_prefix: The archive's key prefix (to give each row its object key back).
        start_ms: ``readings`` holds only ``ts_ms >= start_ms`` (``None``: no bound).
        end_ms: ``readings`` holds only ``ts_ms <= end_ms``.
    """
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    streams = sum(1 for f in files if ".s-" in f.name)
    if not files:
        con.execute(
            "CREATE VIEW archive_rows AS SELECT NULL::VARCHAR AS sensor_id, "
            "NULL::TIMESTAMP AS ts, NULL::BIGINT AS ts_ms, NULL::DATE AS date, "
            "NULL::VARCHAR AS object WHERE false"
        )
        con.execute("CREATE VIEW readings AS SELECT * EXCLUDE (object) FROM archive_rows")
        return ArchiveSQL(con, 0, 0)
    file_list = "[" + ", ".join(_sql_str(str(f)) for f in sorted(files)) + "]"
    root_len = len(str(root)) + 2  # substr is 1-based, and the separator
    con.execute(
        f"""CREATE VIEW archive_rows AS
        SELECT sensor_id, CAST(ts AS TIMESTAMP) AS ts, epoch_ms(ts) AS ts_ms, "date",
               * EXCLUDE (sensor_id, ts, "date", filename),
               {_sql_str(key_prefix + "/")} || substr(filename, {root_len}) AS object
        FROM read_parquet({file_list}, hive_partitioning = true, union_by_name = true,
                          filename = true,
                          hive_types = {{'sensor_id': 'VARCHAR', 'date': 'DATE'}})"""
    )
    where = []
    if start_ms is not None:
        where.append(f"ts_ms >= {int(start_ms)}")
    if end_ms is not None:
        where.append(f"ts_ms <= {int(end_ms)}")
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    once = (
        # The batch object's copy first ('part-X.parquet' sorts before 'part-X.s-…').
        "QUALIFY row_number() OVER (PARTITION BY sensor_id, ts_ms ORDER BY object) = 1"
        if streams
        else ""
    )
    con.execute(
        f"CREATE VIEW readings AS SELECT * EXCLUDE (object) FROM archive_rows {cond} {once}"
    )
    return ArchiveSQL(con, len(files), streams)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names and rows of a statement."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def query(db: ArchiveSQL, sql: str) -> QueryResult:
    """Run one statement; its result (empty for a statement without one).

    Raises:
        SQLError: DuckDB refused or failed the statement (its message).
    """
    import duckdb

    try:
        cur = db.con.execute(sql)
        if cur.description is None:
            return QueryResult([], [])
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SQLError(
            f"SQL error: {first} (views: readings, archive_rows; "
            "columns: sensor_id, ts, ts_ms, date, m_<metric>, g_<tag>)"
        ) from exc
    return QueryResult(columns, rows)


# --- output ---------------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):  # TIMESTAMP columns are UTC (the session's time zone)
        text = v.isoformat(timespec="milliseconds")
        return text + "Z" if v.tzinfo is None else text
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


def _text(v: Any) -> str:
    v = _plain(v)
    return "NULL" if v is None else str(v)


def format_table(result: QueryResult) -> str:
    """An aligned text table (numbers right-aligned), with a row count."""
    cells = [[_text(v) for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        bool(result.rows)
        and all(isinstance(r[i], int | float | Decimal) or r[i] is None for r in result.rows)
        for i in range(len(result.columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(result.columns), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells]
    n = len(result.rows)
    out.append(f"({n} row{'s' if n != 1 else ''})")
    return "\n".join(out)


def format_json(result: QueryResult) -> str:
    """One JSON array of objects (timestamps as ISO 8601, ``Z`` for UTC)."""
    rows = [{c: _plain(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows]
    return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode()


def format_csv(result: QueryResult) -> str:
    """CSV with a header row (NULL as an empty field)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(result.columns)
    for row in result.rows:
        w.writerow(["" if v is None else _plain(v) for v in row])
    return buf.getvalue()
