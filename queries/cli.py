"""``iot-ingest serve``: the query API and the dashboard.

The table, region, endpoint and credentials come from the same configuration as
``iot-ingest run`` (config file < ``IOT_INGEST_*`` environment < flags), so one
config file serves both; the HTTP address and the limits are this command's flags.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]

_DAY_MS = 86_400_000


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_commands(subparsers: Any) -> None:
    """Add ``serve`` to the ``iot-ingest`` command's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="serve the query API and the dashboard (HTTP)",
        description="Serve the range-query HTTP API, the Grafana endpoint and the dashboard "
        "page for one table. The API is described at /openapi.json.",
    )
    p.add_argument("--config", type=Path, help="TOML config file (or IOT_INGEST_CONFIG)")
    p.add_argument("--table", help="DynamoDB table name [env IOT_INGEST_TABLE]")
    p.add_argument(
        "--dynamodb-endpoint", help="DynamoDB endpoint URL [env IOT_INGEST_DYNAMODB_ENDPOINT]"
    )
    p.add_argument("--region", help="AWS region [env IOT_INGEST_REGION]")
    p.add_argument(
        "--aws-access-key-id", help="explicit AWS key id [env IOT_INGEST_AWS_ACCESS_KEY_ID]"
    )
    p.add_argument("--aws-secret-access-key", help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument(
        "--max-range-days",
        type=_positive_int,
        default=31,
        help="longest time range of one request, days (default 31)",
    )
    p.add_argument(
        "--max-points",
        type=_positive_int,
        default=10_000,
        help="most windows of one series (default 10000)",
    )
    p.add_argument(
        "--query-concurrency",
        type=_positive_int,
        default=16,
        help="DynamoDB calls in flight across all requests (default 16)",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; return the exit status."""
    from ingest.cli import setup_logging
    from ingest.config import load_config

    from .server import run
    from .settings import ServeSettings

    cfg = load_config(
        file=args.config,
        flags={
            "table": args.table,
            "dynamodb_endpoint": args.dynamodb_endpoint,
            "region": args.region,
            "aws_access_key_id": args.aws_access_key_id,
            "aws_secret_access_key": args.aws_secret_access_key,
            "log_level": args.log_level,
        },
    )
    setup_logging(cfg.log_level, cfg.log_format)
    settings = ServeSettings(
        table=cfg.table,
        region=cfg.region,
        endpoint_url=cfg.dynamodb_endpoint,
        aws_access_key_id=cfg.aws_access_key_id,
        aws_secret_access_key=cfg.aws_secret_access_key,
        max_range_ms=args.max_range_days * _DAY_MS,
        max_points=args.max_points,
        default_points=min(500, args.max_points),
        query_concurrency=args.query_concurrency,
    )
    run(settings, host=args.host, port=args.port, log_level=cfg.log_level)
    return 0
