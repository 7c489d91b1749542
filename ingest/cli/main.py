"""The ``iot-ingest`` command: run, table, config, deadletters, and the other packages' commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from bench.cli import add_commands as bench_commands
from ingest import __version__
from ingest.cli.archive import add_commands as archive_commands
from ingest.config import (
    Config,
    add_config_flags,
    add_table_flags,
    config_from_args,
    reference_markdown,
    table_config,
)
from ingest.core.aio import leaf_exceptions, run_async
from ingest.core.argtypes import positive_float
from ingest.core.errors import ConfigError, IngestError
from ingest.core.logs import setup_logging
from queries.cli import add_commands as queries_commands
from simulator.cli import add_commands as simulator_commands

if TYPE_CHECKING:
    from ingest.storage.dynamo import DynamoClient
    from ingest.storage.windows import WindowScheme

__all__ = [
    "STOP_MARGIN_S",
    "build_parser",
    "cmd_config_reference",
    "cmd_config_show",
    "cmd_deadletters_list",
    "cmd_deadletters_replay",
    "cmd_demo",
    "cmd_run",
    "cmd_table_adopt_journal",
    "cmd_table_backup_create",
    "cmd_table_backup_list",
    "cmd_table_compact",
    "cmd_table_create",
    "main",
]

log = logging.getLogger("ingest")


async def _has_aws_credentials() -> bool:
    import botocore.session

    def check() -> bool:
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        return botocore.session.Session().get_credentials() is not None

    return await asyncio.to_thread(check)


# -- run ----------------------------------------------------------------------


STOP_MARGIN_S = 5.0
"""What ``run`` and ``demo`` may take beyond their drain deadline (``shutdown_timeout_s``)
to stop their embedded servers, before they are cancelled (see :mod:`ingest.core.lifecycle`)."""


async def _run(cfg: Config, stop: asyncio.Event) -> int:
    from ingest.core.lifecycle import StopRequested, unless_stopped
    from ingest.pipeline.service import IngestService
    from ingest.trial.servers import EmbeddedBroker, EmbeddedDynamo

    async with contextlib.AsyncExitStack() as stack:
        mqtt_url = cfg.mqtt.mqtt_url
        endpoint = cfg.aws.dynamodb_endpoint
        create = cfg.dynamodb.create_table
        try:
            if mqtt_url is None:
                broker = await unless_stopped(
                    stop,
                    stack.enter_async_context(
                        EmbeddedBroker(data_dir=Path(cfg.operations.data_dir) / "broker")
                    ),
                )
                mqtt_url = broker.url
                protocol = broker.protocol_for(cfg.mqtt.mqtt_protocol)
                if protocol != cfg.mqtt.mqtt_protocol:
                    cfg = cfg.replace(mqtt_protocol=protocol)
                log.warning(
                    "try it: mosquitto_pub -p %d -q 1 -t sensors/dev-1/telemetry -m %s",
                    broker.port,
                    "'{\"temperature\": 22.5}'",
                )
            trial_dynamo = endpoint is None and not cfg.aws.aws_access_key_id
            if trial_dynamo and not await unless_stopped(stop, _has_aws_credentials()):
                dynamo = await unless_stopped(stop, stack.enter_async_context(EmbeddedDynamo()))
                endpoint, create = dynamo.endpoint_url, True
                os.environ.setdefault("AWS_ACCESS_KEY_ID", "trial")
                os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "trial")
        except StopRequested:
            log.info("stopped while starting")
            return 0
        service = IngestService(
            cfg, mqtt_url=mqtt_url, dynamodb_endpoint=endpoint, create_table=create
        )
        ready = asyncio.Event()
        await service.run(stop, ready)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ingest.core.lifecycle import run_until_signalled

    cfg = config_from_args(args)
    setup_logging(cfg.operations.log_level, cfg.operations.log_format)
    return run_async(
        lambda: run_until_signalled(
            lambda stop: _run(cfg, stop),
            deadline_s=cfg.operations.shutdown_timeout_s + STOP_MARGIN_S,
            what="iot-ingest run",
        )
    )


# -- demo ---------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from ingest.core.lifecycle import run_until_signalled
    from ingest.demo import DemoOptions, run_demo

    setup_logging(args.log_level)
    opts = DemoOptions(
        **({} if args.devices is None else {"devices": args.devices}),
        rate_per_s=args.rate,
        layout=args.layout,
        duration_s=args.duration,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        mqtt_url=args.mqtt_url,
        mqtt_protocol=args.mqtt_protocol,
    )
    return run_async(
        lambda: run_until_signalled(
            lambda stop: run_demo(opts, stop),
            deadline_s=opts.shutdown_timeout_s + STOP_MARGIN_S,
            what="iot-ingest demo",
        )
    )


# -- table --------------------------------------------------------------------


def _region(value: str) -> str:
    from ingest.storage.table import REGION_PATTERN

    if not REGION_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an AWS region name (like eu-west-1 or ap-southeast-2)"
        )
    return value


def _backup_name(value: str) -> str:
    from ingest.storage.table import BACKUP_NAME_PATTERN

    if not BACKUP_NAME_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a backup name: 3 to 255 of the characters A-Z a-z 0-9 _ . -"
        )
    return value


def _feature_lines(features: dict[str, Any], args: argparse.Namespace) -> list[str]:
    from ingest.storage.table import TABLE_CLASSES

    lines = []
    if args.pitr:
        line = f"  point-in-time recovery: {features['pitr']}"
        if features.get("pitr_earliest"):
            line += f", restorable from {features['pitr_earliest']}"
        if features.get("pitr_days"):
            line += f", {features['pitr_days']} days"
        lines.append(line)
    if args.table_class:
        wanted = TABLE_CLASSES[args.table_class]
        reported = features["table_class"]
        if reported is None and wanted != "STANDARD":
            lines.append(f"  table class: not reported by this endpoint (asked for {wanted})")
        else:
            lines.append(f"  table class: {reported or 'STANDARD'}")
    if args.replica_region:
        lines.append(f"  stream: {features['stream']}")
        replicas = ", ".join(f"{r} {s}" for r, s in features["replicas"].items())
        lines.append(f"  replicas: {replicas}")
    return lines


def cmd_table_create(args: argparse.Namespace) -> int:
    from ingest.storage.table import TABLE_CLASSES, TableFeatures

    cfg = config_from_args(args)
    setup_logging(cfg.operations.log_level, cfg.operations.log_format)
    for region in args.replica_region or []:
        if region == cfg.aws.region:
            raise ConfigError(
                f"--replica-region {region} is the table's own region (--region {cfg.aws.region}): "
                "a replica goes to another region"
            )
    features = TableFeatures(
        pitr=args.pitr,
        table_class=TABLE_CLASSES[args.table_class] if args.table_class else None,
        replica_regions=tuple(args.replica_region or ()),
    )

    async def go() -> int:
        from ingest.pipeline.service import layout_from_config
        from ingest.storage.dynamo import DynamoClient
        from ingest.storage.table import create_table, describe_features

        async with DynamoClient.from_config(cfg) as client:
            created = await create_table(client, layout_from_config(cfg), features=features)
            report = await describe_features(client, pitr=args.pitr)
        print(
            f"table {cfg.dynamodb.table}: {'created' if created else 'already exists'}; TTL on attribute 'ttl'"
        )
        for line in _feature_lines(report, args):
            print(line)
        return 0

    return run_async(go)


async def _packed_scheme(client: DynamoClient, what: str) -> WindowScheme:
    """The windows of a ``packed`` table; a ConfigError naming the table otherwise."""
    from ingest.storage.table import read_layout
    from ingest.storage.windows import WindowScheme

    layout = await read_layout(client)
    if layout is None or layout.kind != "packed":
        kind = "no layout record" if layout is None else f"the {layout.kind!r} layout"
        raise ConfigError(f"table {client.table!r} has {kind}: only a packed table {what}")
    return WindowScheme(layout)


def cmd_table_compact(args: argparse.Namespace) -> int:
    """One compaction and rollup pass over a packed table's recent periods (exit 0), or the loop."""
    cfg = table_config(args)

    async def go() -> int:
        from ingest.core.aio import install_stop_signals
        from ingest.storage.compaction import compact_pass, settle_ms
        from ingest.storage.dynamo import DynamoClient
        from ingest.storage.rollpass import rollup_pass

        async with DynamoClient.from_config(cfg) as client:
            scheme = await _packed_scheme(client, "compacts")
            stop = asyncio.Event()
            install_stop_signals(stop)
            while True:
                window = {
                    "worker": f"compact-{socket.gethostname()}",
                    "now_ms": int(time.time() * 1000),
                    "lookback_ms": round(args.lookback_hours * 3_600_000),
                    "settle_ms": settle_ms(scheme),
                }
                report = await compact_pass(client, scheme, **window)
                print(report.summary(), flush=True)
                rolled = await rollup_pass(client, scheme, **window)
                print(rolled.summary(), flush=True)
                if args.every is None:
                    return 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.every):
                        await stop.wait()
                if stop.is_set():
                    return 0

    return run_async(go)


def cmd_table_adopt_journal(args: argparse.Namespace) -> int:
    """Seal what a worker gone for good left only in its journal."""
    cfg = table_config(args)

    async def go() -> int:
        from ingest.pipeline.packing import adopt_journal
        from ingest.storage.dynamo import DynamoClient

        async with DynamoClient.from_config(cfg) as client:
            scheme = await _packed_scheme(client, "has journals")
            n = await adopt_journal(
                client,
                scheme,
                args.worker,
                journal_ttl_s=cfg.dynamodb.journal_ttl_hours * 3600,
            )
        print(f"journal of {args.worker!r}: {n} readings sealed, its checkpoint moved on")
        return 0

    return run_async(go)


def cmd_table_backup_create(args: argparse.Namespace) -> int:
    cfg = table_config(args)

    async def go() -> int:
        from ingest.storage.dynamo import DynamoClient
        from ingest.storage.table import create_backup, default_backup_name

        async with DynamoClient.from_config(cfg) as client:
            backup = await create_backup(
                client, args.name or default_backup_name(cfg.dynamodb.table)
            )
        print(
            f"backup {backup['name']} of table {cfg.dynamodb.table}: {backup['arn']} "
            f"({backup['status']}, {backup['created']})"
        )
        return 0

    return run_async(go)


def cmd_table_backup_list(args: argparse.Namespace) -> int:
    cfg = table_config(args)

    async def go() -> int:
        from ingest.storage.dynamo import DynamoClient
        from ingest.storage.table import list_backups

        async with DynamoClient.from_config(cfg) as client:
            backups = await list_backups(client)
        if args.json:
            for b in backups:
                print(orjson.dumps(b).decode())
            return 0
        rows = [
            (
                b["name"],
                b["created"],
                "-" if b["size_bytes"] is None else str(b["size_bytes"]),
                b["status"],
                b["arn"],
            )
            for b in backups
        ]
        rows.insert(0, ("NAME", "CREATED", "SIZE", "STATUS", "ARN"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[4])
        print(f"{len(backups)} backups of table {cfg.dynamodb.table}", file=sys.stderr)
        return 0

    return run_async(go)


# -- config -------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    print(orjson.dumps(cfg.masked(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return 0


def cmd_config_reference(_: argparse.Namespace) -> int:
    print(reference_markdown(), end="")
    return 0


# -- dead letters -------------------------------------------------------------


def cmd_deadletters_list(args: argparse.Namespace) -> int:
    from ingest.storage.spool import TornLine, iter_dead_letters

    cfg = config_from_args(args)
    n = 0
    torn: list[TornLine] = []
    for path, dl in iter_dead_letters(Path(cfg.operations.data_dir) / "deadletters", torn=torn):
        if args.reason and args.reason not in dl.reason:
            continue
        n += 1
        if args.json:
            print(dl.to_json().decode())
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(dl.time_ms / 1000))
            print(f"{when}Z {path.name} [{dl.stage}] {dl.topic}: {dl.reason}")
    for t in torn:
        print(f"iot-ingest: skipped a torn line at {t}", file=sys.stderr)
    summary = f"{n} dead letters"
    if torn:
        where = ", ".join(f"{t.path.name}:{t.offset}" for t in torn[:5])
        more = f" and {len(torn) - 5} more" if len(torn) > 5 else ""
        summary += f"; {len(torn)} torn lines skipped ({where}{more})"
    print(summary, file=sys.stderr)
    return 0


def cmd_deadletters_replay(args: argparse.Namespace) -> int:
    from ingest.pipeline.replay import ReplayReport, replay

    cfg = config_from_args(args)
    setup_logging(cfg.operations.log_level, cfg.operations.log_format)
    if cfg.mqtt.mqtt_url is None and not args.dry_run:
        raise ConfigError("deadletters replay needs --mqtt-url: the broker to re-publish to")

    async def go() -> int:
        from ingest.pipeline.service import mqtt_settings

        settings = mqtt_settings(cfg, cfg.mqtt.mqtt_url or "mqtt://127.0.0.1:1883")
        report = ReplayReport()
        try:
            await replay(
                Path(cfg.operations.data_dir) / "deadletters",
                settings,
                reason_filter=args.reason,
                topic_override=args.to_topic,
                dry_run=args.dry_run,
                report=report,
            )
        except BaseException:
            print(
                f"iot-ingest: replay interrupted: {report.summary()}; the letters re-published "
                "are recorded, run replay again to resume",
                file=sys.stderr,
            )
            raise
        finally:
            for t in report.torn:
                print(f"iot-ingest: skipped a torn line at {t}", file=sys.stderr)
        print(report.summary(dry_run=args.dry_run))
        return 0

    return run_async(go)


# -- entry --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iot-ingest", description="IoT time-series ingestion: MQTT → DynamoDB."
    )
    parser.add_argument("--version", action="version", version=f"iot-ingest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run", help="run the ingest service (embedded broker and DynamoDB if none given)"
    )
    add_config_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="everything on embedded defaults: broker, DynamoDB, ingest, a fleet, the dashboard",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="simulated devices, a reading a second each (default: DemoOptions.devices, "
        "what the demo sustains on moto: README)",
    )
    p.add_argument(
        "--rate", type=float, default=None, help="total readings/s (default: one per device)"
    )
    p.add_argument(
        "--layout",
        choices=["packed", "reading"],
        default="packed",
        help="table layout (default packed; reading: one item per reading, as before "
        "decision 0008: far more items for the embedded moto to hold and read)",
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--host", default="127.0.0.1", help="dashboard address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="dashboard port (default 8080; 0: any)")
    p.add_argument(
        "--data-dir", type=Path, default=Path("data/demo"), help="dead letters, broker data"
    )
    p.add_argument(
        "--mqtt-url", default=None, help="a broker of your own (default: start an embedded one)"
    )
    p.add_argument(
        "--mqtt-protocol",
        choices=["5", "3.1.1"],
        default="5",
        help="MQTT version of the service and the fleet (default 5; 3.1.1 with the embedded "
        "amqtt broker, which speaks nothing else)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=cmd_demo)

    table = sub.add_parser("table", help="manage the DynamoDB table").add_subparsers(
        dest="table_cmd", required=True
    )
    p = table.add_parser(
        "create",
        help="create the table (on-demand) and enable TTL, with backups, a table class and "
        "replicas on request; idempotent",
    )
    add_config_flags(p)
    p.add_argument(
        "--pitr",
        action="store_true",
        help="enable point-in-time recovery (continuous backups, 35 days)",
    )
    p.add_argument(
        "--table-class",
        choices=["standard", "standard-ia"],
        help="DynamoDB table class (standard-ia: storage 60%% cheaper, requests 25%% dearer); "
        "changes an existing table's class",
    )
    p.add_argument(
        "--replica-region",
        action="append",
        type=_region,
        metavar="REGION",
        help="add a Global Tables replica in REGION (repeatable); turns the stream on "
        "(NEW_AND_OLD_IMAGES)",
    )
    p.set_defaults(func=cmd_table_create)
    p = table.add_parser(
        "compact",
        help="packed tables: merge the windows sealed in several sets (late readings, "
        "restarts, shared workers) into one, and roll the closed hours up into minute "
        "and hour bins (for /series), idempotently",
    )
    add_config_flags(p)
    p.add_argument(
        "--lookback-hours",
        type=positive_float,
        default=24.0,
        help="compact and roll up the periods of the last H hours (24)",
    )
    p.add_argument(
        "--every", type=positive_float, help="repeat every S seconds until SIGTERM/SIGINT"
    )
    p.set_defaults(func=cmd_table_compact)
    p = table.add_parser(
        "adopt-journal",
        help="packed tables: seal what a worker that will not start again (scaled down, its "
        "stop cut short) left only in its journal; never for a running worker",
    )
    add_config_flags(p)
    p.add_argument("--worker", required=True, help="the worker's MQTT client id")
    p.set_defaults(func=cmd_table_adopt_journal)
    backup = table.add_parser("backup", help="on-demand backups").add_subparsers(
        dest="backup_cmd", required=True
    )
    p = backup.add_parser("create", help="make an on-demand backup of the table")
    add_table_flags(p)
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    p.add_argument("--name", type=_backup_name, help="backup name (default: {table}-{UTC time})")
    p.set_defaults(func=cmd_table_backup_create)
    p = backup.add_parser(
        "list", help="list the table's backups (name, ARN, created, size, status)"
    )
    add_table_flags(p)
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_table_backup_list)

    conf = sub.add_parser("config", help="configuration").add_subparsers(
        dest="config_cmd", required=True
    )
    p = conf.add_parser("show", help="print the effective configuration, secrets masked")
    add_config_flags(p)
    p.set_defaults(func=cmd_config_show)
    p = conf.add_parser("reference", help="print the configuration reference (markdown)")
    p.set_defaults(func=cmd_config_reference)

    dl = sub.add_parser("deadletters", help="inspect and replay dead letters").add_subparsers(
        dest="dl_cmd", required=True
    )
    p = dl.add_parser("list", help="list dead letters with their reasons")
    add_config_flags(p)
    p.add_argument("--reason", help="only those whose reason contains this text")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_deadletters_list)
    p = dl.add_parser("replay", help="re-publish dead letters to the broker (after a fix)")
    add_config_flags(p)
    p.add_argument("--reason", help="only those whose reason contains this text")
    p.add_argument("--to-topic", help="publish to this topic instead of each letter's own")
    p.add_argument("--dry-run", action="store_true", help="count, publish nothing")
    p.set_defaults(func=cmd_deadletters_replay)

    for add_commands in (simulator_commands, queries_commands, bench_commands, archive_commands):
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (Exception, KeyboardInterrupt) as exc:
        leaves = leaf_exceptions(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 130
        if not all(isinstance(e, IngestError) for e in leaves):
            raise
        for e in leaves:
            print(f"iot-ingest: {e}", file=sys.stderr)
        return 2 if any(isinstance(e, ConfigError) for e in leaves) else 1


if __name__ == "__main__":
    sys.exit(main())
