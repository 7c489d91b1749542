"""``iot-ingest archive``: archive closed buckets to S3 (one pass, or every N seconds).

Also ``iot-ingest archive lifecycle``: put the S3 lifecycle rule that moves old
archive objects to a colder storage class. The table, region, DynamoDB endpoint
and credentials come from the same configuration as ``iot-ingest run`` (config
file < ``IOT_INGEST_*`` environment < flags); S3 options are this command's flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from ingest.cli import add_table_flags

__all__ = ["add_commands", "cmd_archive", "cmd_lifecycle", "default_horizon_ms"]

log = logging.getLogger("ingest.archive")

_DAY_MS = 86_400_000


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_common(p: argparse.ArgumentParser, *, table: bool) -> None:
    add_table_flags(p, table=table)
    # Not required=True on ``archive`` itself: argparse would demand it before ``lifecycle``.
    p.add_argument("--s3-bucket", required=not table, help="S3 bucket of the archive")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS's)")
    p.add_argument(
        "--s3-prefix", default="archive", help="key prefix of the archive (default: archive)"
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)


def add_commands(subparsers: Any) -> None:
    """Add ``archive`` (and ``archive lifecycle``) to the ``iot-ingest`` command's subparsers."""
    p = subparsers.add_parser(
        "archive",
        help="archive closed buckets to S3 as Parquet (before their TTL)",
        description="Archive every closed bucket older than the horizon to S3 (Parquet), "
        "verify it, mark it archived; optionally delete the archived items early. "
        "Idempotent: re-run it, or run it with --every.",
    )
    _add_common(p, table=True)
    p.add_argument(
        "--horizon-days",
        type=_positive_float,
        help="archive a bucket this many days after it closed (default: 7, or less when the "
        "retention is short); must leave the bucket time before its TTL",
    )
    p.add_argument(
        "--delete-archived",
        action="store_true",
        help="delete the verified items from DynamoDB instead of waiting for their TTL",
    )
    p.add_argument(
        "--every", type=_positive_float, metavar="SECONDS", help="run a pass every SECONDS"
    )
    p.add_argument(
        "--concurrency", type=_positive_int, default=4, help="sensors at once (default 4)"
    )
    p.set_defaults(func=cmd_archive)
    sub = p.add_subparsers(dest="archive_cmd", metavar="SUBCOMMAND")
    lc = sub.add_parser(
        "lifecycle",
        help="put the S3 lifecycle rule moving old archive objects to a colder class",
    )
    _add_common(lc, table=False)
    lc.add_argument(
        "--days", type=_positive_int, required=True, help="move objects this many days old"
    )
    lc.add_argument(
        "--storage-class",
        default="GLACIER_IR",
        help="target class (default GLACIER_IR: still instantly readable by the query API)",
    )
    lc.set_defaults(func=cmd_lifecycle)


def default_horizon_ms(bucket_ms: int, retention_days: int) -> int:
    """Seven days, or (retention - bucket width - one day) when that is shorter."""
    return min(7 * _DAY_MS, retention_days * _DAY_MS - bucket_ms - _DAY_MS)


def _config(args: argparse.Namespace) -> Any:
    from ingest.cli import setup_logging
    from ingest.config import load_config

    cfg = load_config(
        file=args.config,
        flags={
            "table": getattr(args, "table", None),
            "dynamodb_endpoint": getattr(args, "dynamodb_endpoint", None),
            "region": args.region,
            "aws_access_key_id": args.aws_access_key_id,
            "aws_secret_access_key": args.aws_secret_access_key,
            "log_level": args.log_level,
        },
    )
    setup_logging(cfg.log_level, cfg.log_format)
    return cfg


def _store(args: argparse.Namespace, cfg: Any) -> Any:
    from .store import S3Store

    return S3Store(
        bucket=args.s3_bucket,
        prefix=args.s3_prefix,
        region=cfg.region,
        endpoint_url=args.s3_endpoint,
        aws_access_key_id=cfg.aws_access_key_id,
        aws_secret_access_key=cfg.aws_secret_access_key,
    )


def cmd_archive(args: argparse.Namespace) -> int:
    """One archive pass (exit 1 if a bucket failed), or the loop with ``--every``."""
    from ingest.cli import install_stop_signals, run_async
    from ingest.dynamo import DynamoClient
    from queries.reader import TableReader

    from .archiver import Archiver, ArchiveSettings
    from .errors import ArchiveConfigError

    if not args.s3_bucket:
        raise ArchiveConfigError("--s3-bucket is required: the S3 bucket of the archive")
    cfg = _config(args)

    async def go() -> int:
        async with (
            DynamoClient(
                table=cfg.table,
                region=cfg.region,
                endpoint_url=cfg.dynamodb_endpoint,
                aws_access_key_id=cfg.aws_access_key_id,
                aws_secret_access_key=cfg.aws_secret_access_key,
            ) as dynamo,
            _store(args, cfg) as store,
        ):
            layout = (await TableReader.load(dynamo)).layout
            horizon_ms = (
                round(args.horizon_days * _DAY_MS)
                if args.horizon_days is not None
                else default_horizon_ms(layout.bucket_ms, layout.retention_days)
            )
            late_ms = cfg.max_past_ms if cfg.max_past_ms is not None else layout.retention_ms
            if late_ms >= horizon_ms:
                log.warning(
                    "the ingest service accepts readings up to %.3g days old (max_past_ms) but "
                    "buckets are archived %.3g days after they close: a reading arriving later "
                    "than the horizon stays hot only; set max_past_ms below the horizon",
                    late_ms / _DAY_MS,
                    horizon_ms / _DAY_MS,
                )
            archiver = Archiver(
                dynamo,
                store,
                layout,
                ArchiveSettings(
                    horizon_ms=horizon_ms,
                    delete_archived=args.delete_archived,
                    concurrency=args.concurrency,
                ),
            )
            if args.every is not None:
                stop = asyncio.Event()
                install_stop_signals(stop)
                await archiver.run_every(args.every, stop)
                return 0
            report = await archiver.run_once()
            print(report.summary())
            for line in report.corrupt:
                print(f"corrupt (re-archived): {line}", file=sys.stderr)
            for line in report.failed:
                print(f"failed: {line}", file=sys.stderr)
            return 0 if report.ok else 1

    return run_async(go)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """Put the lifecycle rule; print the bucket's rules."""
    from ingest.cli import run_async

    from .lifecycle import apply_lifecycle

    cfg = _config(args)

    async def go() -> int:
        async with _store(args, cfg) as store:
            rules = await apply_lifecycle(store, days=args.days, storage_class=args.storage_class)
        for rule in rules:
            print(f"{rule.get('ID')}: {rule.get('Filter')} → {rule.get('Transitions')}")
        return 0

    return run_async(go)
