"""``iot-ingest archive``: archive closed buckets to S3 (one pass, or every N seconds).

Also ``iot-ingest archive streams``: archive what TTL deletes, from the table's
DynamoDB stream (one poll, or every N seconds), and ``iot-ingest archive
lifecycle``: put the S3 lifecycle rule that moves old archive objects to a
colder storage class. ``iot-ingest archive ddl`` prints the Athena/Glue table of
the archive (partition projection), ``iot-ingest archive sql "SELECT …"`` runs SQL
over the archive with DuckDB (the objects needed are downloaded first). The table, region, DynamoDB endpoint and credentials come
from the same configuration as ``iot-ingest run`` (config file <
``IOT_INGEST_*`` environment < flags); S3 options are this command's flags.
With ``--every``, ``--metrics-port`` serves ``/metrics`` (``iot_archive_*``),
``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ingest.config import add_table_flags
from ingest.core.argtypes import port, positive_float, positive_int

__all__ = [
    "add_commands",
    "cmd_archive",
    "cmd_ddl",
    "cmd_lifecycle",
    "cmd_sql",
    "cmd_streams",
    "default_horizon_ms",
]

log = logging.getLogger("ingest.archive")

_DAY_MS = 86_400_000


def _add_common(p: argparse.ArgumentParser, *, table: bool, require_bucket: bool = True) -> None:
    add_table_flags(p, table=table)
    # Not required=True on ``archive`` itself: argparse would demand it before a subcommand.
    p.add_argument("--s3-bucket", required=require_bucket, help="S3 bucket of the archive")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS's)")
    p.add_argument(
        "--s3-prefix", default="archive", help="key prefix of the archive (default: archive)"
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)


def _add_loop(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--every", type=positive_float, metavar="SECONDS", help=f"{what} every SECONDS")
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="with --every: serve /metrics (iot_archive_*), /healthz, /readyz on PORT (0: any)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="address of --metrics-port (127.0.0.1)"
    )


def add_commands(subparsers: Any) -> None:
    """Add ``archive`` (and ``archive streams``, ``archive lifecycle``) to ``iot-ingest``."""
    p = subparsers.add_parser(
        "archive",
        help="archive closed buckets to S3 as Parquet (before their TTL)",
        description="Archive every closed bucket older than the horizon to S3 (Parquet), "
        "verify it, mark it archived; optionally delete the archived items early. "
        "Idempotent: re-run it, or run it with --every.",
    )
    _add_common(p, table=True, require_bucket=False)
    p.add_argument(
        "--horizon-days",
        type=positive_float,
        help="archive a bucket this many days after it closed (default: 7, or less when the "
        "retention is short); must leave the bucket time before its TTL",
    )
    p.add_argument(
        "--delete-archived",
        action="store_true",
        help="delete the verified items from DynamoDB instead of waiting for their TTL",
    )
    _add_loop(p, "run a pass")
    p.add_argument(
        "--concurrency", type=positive_int, default=4, help="sensors at once (default 4)"
    )
    p.set_defaults(func=cmd_archive)
    sub = p.add_subparsers(dest="archive_cmd", metavar="SUBCOMMAND")
    st = sub.add_parser(
        "streams",
        help="archive readings as TTL deletes them, from the table's DynamoDB stream",
        description="Read the table's stream (view type OLD_IMAGE or NEW_AND_OLD_IMAGES) from "
        "the last checkpoint and write the readings TTL deleted to the archive's layout; "
        "run it at least every 24 hours (stream retention), e.g. with --every.",
    )
    _add_common(st, table=True)
    _add_loop(st, "poll the stream")
    st.add_argument(
        "--include-user-deletes",
        action="store_true",
        help="archive every REMOVE, not only TTL's (emulators whose stream records carry no "
        "userIdentity; also archives DeleteItem calls and --delete-archived's deletes)",
    )
    st.set_defaults(func=cmd_streams)
    lc = sub.add_parser(
        "lifecycle",
        help="put the S3 lifecycle rule moving old archive objects to a colder class",
    )
    _add_common(lc, table=False)
    lc.add_argument(
        "--days", type=positive_int, required=True, help="move objects this many days old"
    )
    lc.add_argument(
        "--storage-class",
        default="GLACIER_IR",
        help="target class (default GLACIER_IR: still instantly readable by the query API)",
    )
    lc.set_defaults(func=cmd_lifecycle)
    _add_sql_commands(sub)


def _time(text: str) -> int:
    """An argparse type: epoch ms, RFC 3339 with an offset, or now-<n><unit>."""
    from queries.errors import BadParameter
    from queries.read.params import parse_time

    try:
        return parse_time("time", text, now_ms=int(time.time() * 1000))
    except BadParameter as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sql_commands(sub: Any) -> None:
    dd = sub.add_parser(
        "ddl",
        help="print the Athena/Glue CREATE EXTERNAL TABLE of the archive (partition projection)",
        description="Print the CREATE EXTERNAL TABLE statement of the archive for Athena/Glue: "
        "Parquet columns as the archiver writes them, partitions sensor_id and date as in "
        "the object keys, partition projection (no crawler). Metric and tag columns come "
        "from --metric-name/--tag-name and, with --discover N, from the schemas of N archived objects.",
    )
    _add_common(dd, table=False)
    dd.add_argument("--database", default="default", help="Glue database (default: default)")
    dd.add_argument("--table-name", default="iot_archive", help="table name (default: iot_archive)")
    # Not --metric: argparse would take it for an abbreviation of archive's --metrics-port.
    dd.add_argument(
        "--metric-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a metric column, m_NAME (repeatable)",
    )
    dd.add_argument(
        "--tag-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a tag column, g_NAME (repeatable)",
    )
    dd.add_argument(
        "--discover",
        type=positive_int,
        metavar="N",
        help="also take the metric and tag names of N archived objects (reads S3)",
    )
    dd.add_argument(
        "--first-date",
        default="2020-01-01",
        help="first date partition of the projection, YYYY-MM-DD (default 2020-01-01)",
    )
    dd.add_argument(
        "--sensor-ids",
        help="comma-separated sensor ids: enum projection (default: injected, so every "
        "query must filter on sensor_id)",
    )
    dd.set_defaults(func=cmd_ddl)
    sq = sub.add_parser(
        "sql",
        help="run SQL over the archive with DuckDB (views readings, archive_rows)",
        description="Download the archive objects needed (all, or those of --sensor and "
        "--start/--end) into a temporary directory and run one SQL statement with DuckDB "
        "over the views readings (sensor_id, ts TIMESTAMP UTC, ts_ms BIGINT epoch ms, "
        "date DATE, m_<metric> DOUBLE, g_<tag> VARCHAR; each reading once) and "
        "archive_rows (every object's rows, with its key in object).",
    )
    _add_common(sq, table=False)
    sq.add_argument("statement", help='the SQL statement, e.g. "SELECT count(*) FROM readings"')
    sq.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="ID",
        help="only this sensor's objects (repeatable; default: every sensor)",
    )
    sq.add_argument(
        "--start", type=_time, help="readings from this time (epoch ms, RFC 3339, now-1d)"
    )
    sq.add_argument("--end", type=_time, help="readings up to this time, inclusive")
    out = sq.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON array of objects")
    out.add_argument("--csv", action="store_true", help="print CSV with a header row")
    sq.add_argument(
        "--keep", type=Path, metavar="DIR", help="download into DIR and keep it (default: temp)"
    )
    sq.add_argument(
        "--timing", action="store_true", help="print download and query times to stderr"
    )
    sq.set_defaults(func=cmd_sql)


def default_horizon_ms(bucket_ms: int, retention_days: int) -> int:
    """Seven days, or (retention - bucket width - one day) when that is shorter."""
    return min(7 * _DAY_MS, retention_days * _DAY_MS - bucket_ms - _DAY_MS)


def _settle_ms(cfg: Any, horizon_ms: int, layout: Any = None) -> int:
    """The settle time from the ingest's settings: its write retry deadline, two registry
    flushes (the policy refresh) and a minute of clock skew, at most a quarter of the horizon.
    On a ``packed`` table also the seal of a late reading's window (the seal grace and a
    staging interval): the archiver reads sealed windows, not the journal."""
    wanted = int(
        (cfg.pipeline.write_retry_deadline_s + 2 * cfg.pipeline.registry_interval_s + 60) * 1000
    )
    if layout is not None and layout.kind == "packed":
        from ingest.storage.windows import SEAL_GRACE_MS

        wanted += SEAL_GRACE_MS + layout.stage_ms
    cap = max(0, horizon_ms // 4)
    if wanted > cap:
        log.warning(
            "the ingest may retry a write for %g s (write_retry_deadline_s), but with a "
            "horizon of %.3g days late marks can only wait %.3g s (a quarter of it): a reading "
            "whose write takes longer and lands after its bucket was archived is missed",
            cfg.pipeline.write_retry_deadline_s,
            horizon_ms / _DAY_MS,
            cap / 1000,
        )
        return cap
    return wanted


def _check_late_limit(cfg: Any, layout: Any, settle_ms: int, every_s: float | None) -> None:
    """Say when a late reading can expire (TTL) before a pass archives it."""
    margin_ms = settle_ms + round((cfg.pipeline.registry_interval_s + (every_s or 0)) * 1000)
    limit_ms = layout.retention_ms - margin_ms
    late_ms = cfg.effective_max_past_ms
    if late_ms < limit_ms:
        return
    explicit = cfg.limits.max_past_ms is not None
    log.log(
        logging.WARNING if explicit else logging.INFO,
        "the ingest accepts readings up to %.3g days old (max_past_ms%s), and their items "
        "expire (TTL) %d days after their time: one arriving less than %.3g h before that "
        "may be deleted by TTL before a pass archives it (expired items DynamoDB has not "
        "deleted yet are still archived); set max_past_ms below %d",
        late_ms / _DAY_MS,
        "" if explicit else ", the default",
        layout.retention_days,
        margin_ms / 3_600_000,
        limit_ms,
    )


def _config(args: argparse.Namespace) -> Any:
    from ingest.config import table_config

    return table_config(args)


def _dynamo(cfg: Any) -> Any:
    from ingest.storage.dynamo import DynamoClient

    return DynamoClient.from_config(cfg)


def _check_loop_flags(args: argparse.Namespace) -> None:
    from ingest.storage.archive.errors import ArchiveConfigError

    if not args.s3_bucket:
        raise ArchiveConfigError("--s3-bucket is required: the S3 bucket of the archive")
    if args.metrics_port is not None and args.every is None:
        raise ArchiveConfigError(
            f"--metrics-port {args.metrics_port} needs --every: a single pass exits before "
            "anything could scrape it (its summary is printed instead)"
        )


async def _run_loop(
    args: argparse.Namespace,
    metrics: Any,
    loop: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Run ``loop(stop)`` until SIGINT/SIGTERM, with the metrics server when asked."""
    from ingest.archive.metrics import serve_metrics
    from ingest.core.aio import install_stop_signals

    stop = asyncio.Event()
    install_stop_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        if args.metrics_port is not None:
            server = await stack.enter_async_context(
                serve_metrics(metrics, host=args.metrics_host, port=args.metrics_port)
            )
            print(
                f"archive metrics on http://{args.metrics_host}:{server.port}/metrics",
                file=sys.stderr,
                flush=True,
            )
        await loop(stop)


def _store(args: argparse.Namespace, cfg: Any) -> Any:
    from ingest.storage.archive.store import S3Store

    return S3Store(
        bucket=args.s3_bucket,
        prefix=args.s3_prefix,
        aws=cfg.aws.client_settings().with_endpoint(args.s3_endpoint),
    )


def cmd_archive(args: argparse.Namespace) -> int:
    """One archive pass (exit 1 if a bucket failed), or the loop with ``--every``."""
    from ingest.archive.archiver import Archiver, ArchiveSettings
    from ingest.archive.metrics import ArchiveMetrics
    from ingest.core.aio import run_async
    from queries.read.reader import TableReader

    _check_loop_flags(args)
    cfg = _config(args)

    async def go() -> int:
        async with _dynamo(cfg) as dynamo, _store(args, cfg) as store:
            layout = (await TableReader.load(dynamo)).layout
            horizon_ms = (
                round(args.horizon_days * _DAY_MS)
                if args.horizon_days is not None
                else default_horizon_ms(layout.bucket_ms, layout.retention_days)
            )
            settle_ms = _settle_ms(cfg, horizon_ms, layout)
            _check_late_limit(cfg, layout, settle_ms, args.every)
            metrics = ArchiveMetrics()
            archiver = Archiver(
                dynamo,
                store,
                layout,
                ArchiveSettings(
                    horizon_ms=horizon_ms,
                    delete_archived=args.delete_archived,
                    concurrency=args.concurrency,
                    settle_ms=settle_ms,
                ),
                metrics=metrics,
            )
            if args.every is not None:
                every_s: float = args.every
                await _run_loop(args, metrics, lambda stop: archiver.run_every(every_s, stop))
                return 0
            report = await archiver.run_once()
            print(report.summary())
            for line in report.corrupt:
                print(f"corrupt (re-archived): {line}", file=sys.stderr)
            for line in report.failed:
                print(f"failed: {line}", file=sys.stderr)
            return 0 if report.ok else 1

    return run_async(go)


def cmd_streams(args: argparse.Namespace) -> int:
    """One poll of the table's stream (prints the readings archived), or the loop with --every."""
    from ingest.archive.metrics import ArchiveMetrics
    from ingest.archive.streams import StreamArchiver, StreamsClient, find_stream_arn
    from ingest.core.aio import run_async
    from queries.read.reader import TableReader

    _check_loop_flags(args)
    cfg = _config(args)

    async def go() -> int:
        async with (
            _dynamo(cfg) as dynamo,
            _store(args, cfg) as store,
            StreamsClient(aws=cfg.aws.client_settings()) as streams,
        ):
            layout = (await TableReader.load(dynamo)).layout
            arn = await find_stream_arn(dynamo)
            metrics = ArchiveMetrics()
            consumer = StreamArchiver(
                streams.client,
                arn,
                store,
                layout,
                include_user_deletes=args.include_user_deletes,
                metrics=metrics,
            )
            if args.every is not None:
                every_s: float = args.every
                await _run_loop(args, metrics, lambda stop: consumer.run_every(every_s, stop))
                return 0
            await store.check()
            n = await consumer.poll_once()
            print(f"{n} readings archived from the stream of {cfg.dynamodb.table}")
            return 0

    return run_async(go)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """Put the lifecycle rule; print the bucket's rules."""
    from ingest.archive.lifecycle import apply_lifecycle
    from ingest.core.aio import run_async

    cfg = _config(args)

    async def go() -> int:
        async with _store(args, cfg) as store:
            rules = await apply_lifecycle(store, days=args.days, storage_class=args.storage_class)
        for rule in rules:
            print(f"{rule.get('ID')}: {rule.get('Filter')} → {rule.get('Transitions')}")
        return 0

    return run_async(go)


def cmd_ddl(args: argparse.Namespace) -> int:
    """Print the Athena/Glue DDL of the archive."""
    from ingest.archive.sql import athena_ddl, athena_name_ok, discover_columns
    from ingest.core.aio import run_async

    cfg = _config(args)
    metrics: set[str] = set(args.metric_name)
    tags: set[str] = set(args.tag_name)
    if args.discover:

        async def go() -> int:
            async with _store(args, cfg) as store:
                found_m, found_t = await discover_columns(store, limit=args.discover)
            for found, kind, into in ((found_m, "m_", metrics), (found_t, "g_", tags)):
                for name in found:
                    if athena_name_ok(kind + name):
                        into.add(name)
                    else:
                        print(
                            f"column {kind + name!r} left out: Athena columns are "
                            "lowercase a-z, 0-9 and _",
                            file=sys.stderr,
                        )
            return 0

        run_async(go)
    sensors = [s.strip() for s in (args.sensor_ids or "").split(",") if s.strip()]
    print(
        athena_ddl(
            bucket=args.s3_bucket,
            prefix=args.s3_prefix,
            metrics=metrics,
            tags=tags,
            database=args.database,
            table=args.table_name,
            first_date=args.first_date,
            sensors=sensors,
        ),
        end="",
    )
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Download the objects needed, run the statement with DuckDB, print the result."""
    import tempfile

    from ingest.archive.sql import (
        download,
        format_csv,
        format_json,
        format_table,
        list_data_keys,
        open_archive,
        query,
        select_keys,
    )
    from ingest.core.aio import run_async
    from ingest.storage.archive.errors import ArchiveConfigError

    if args.start is not None and args.end is not None and args.end < args.start:
        raise ArchiveConfigError("--end is before --start")
    cfg = _config(args)
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="iot-archive-")))
        t0 = time.perf_counter()
        files: list[Path] = []

        async def fetch() -> int:
            async with _store(args, cfg) as store:
                await store.check()
                keys = select_keys(await list_data_keys(store, args.sensor), args.start, args.end)
                files.extend(await download(store, keys, root))
            return 0

        run_async(fetch)
        t1 = time.perf_counter()
        db = open_archive(
            root, files, key_prefix=args.s3_prefix.strip("/"), start_ms=args.start, end_ms=args.end
        )
        stack.callback(db.close)
        result = query(db, args.statement)
        t2 = time.perf_counter()
        if args.json:
            print(format_json(result))
        elif args.csv:
            print(format_csv(result), end="")
        else:
            print(format_table(result))
        if args.timing:
            print(
                f"{len(files)} objects downloaded in {t1 - t0:.3f} s, query {t2 - t1:.3f} s",
                file=sys.stderr,
            )
    return 0
