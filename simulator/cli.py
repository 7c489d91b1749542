"""The `simulate` and `verify` subcommands of `iot-ingest` (added by :func:`add_commands`).

``python -m simulator.cli`` runs them standalone too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from rich.console import Console

from ingest.core.aio import leaf_exceptions, run
from ingest.core.argtypes import fraction, positive_float
from simulator.errors import SimulatorError
from simulator.faults import FaultConfig
from simulator.fleet import Fleet, load_fleet_file
from simulator.generator import TrafficOptions
from simulator.manifest import load_manifest
from simulator.run import PROTOCOL_VERSIONS, Progress, RunSummary, SimulationConfig, run_simulation
from simulator.schedule import RateProfile, Spike
from simulator.signals import kind_names

__all__ = [
    "EXIT_FAIL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_commands",
    "config_from_args",
    "main",
    "simulate_command",
    "verify_command",
]

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in kind_names()]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {bad}; use {','.join(kind_names())}")
    return kinds


def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="publish simulated sensor traffic over MQTT and write a run manifest",
        description="Simulate a fleet of devices publishing readings over MQTT, at a scheduled "
        "rate, with optional data faults; write a manifest of exactly what was sent.",
    )
    g = p.add_argument_group("broker")
    g.add_argument(
        "--mqtt-url", default="mqtt://127.0.0.1:1883", help="broker, mqtt://[USER:PASS@]HOST:PORT"
    )
    g.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    g.add_argument(
        "--protocol-version", choices=tuple(PROTOCOL_VERSIONS), default="3.1.1", help="MQTT version"
    )
    g.add_argument(
        "--topic-pattern",
        help="topic with {sensor_id} or {gateway_id} (default sensors/{id}/telemetry)",
    )
    g.add_argument(
        "--client-id-prefix", default="sim-", help="MQTT client id prefix (default sim-)"
    )
    g.add_argument(
        "--max-inflight", type=int, default=100, help="unacknowledged messages per connection"
    )
    g.add_argument("--connect-concurrency", type=int, default=64, help="connections opened at once")

    g = p.add_argument_group("fleet")
    g.add_argument("--devices", type=int, default=100, help="number of devices (default 100)")
    g.add_argument(
        "--rate", type=positive_float, help="total readings/s of the fleet (default 1 per device)"
    )
    g.add_argument(
        "--kinds",
        type=_kinds,
        default=["env"],
        help=f"sensor kinds to mix: {','.join(kind_names())}",
    )
    g.add_argument(
        "--fleet-file", type=Path, help="TOML fleet description (replaces --devices/--kinds)"
    )
    g.add_argument("--id-prefix", help="sensor id prefix (default: the kind, e.g. env-)")
    g.add_argument(
        "--device-offset",
        type=int,
        default=0,
        help="first device index (disjoint fleets per process)",
    )
    g.add_argument(
        "--mode",
        choices=("device", "gateway"),
        default="device",
        help="one connection per device, or gateways with batches",
    )
    g.add_argument("--gateways", type=int, default=4, help="gateway connections (gateway mode)")
    g.add_argument(
        "--batch-size", type=int, default=100, help="readings per gateway message, at most"
    )
    g.add_argument(
        "--sensor-id-separator",
        choices=(":", ".", "_", "none"),
        default=":",
        help="gateway mode: sensor ids are GATEWAY_ID + this + the fleet id (gw-0000:env-00000), "
        "as the service's sensor_id_separator; none: the fleet ids (service on sensor_id_rule=any)",
    )

    g = p.add_argument_group("schedule")
    g.add_argument("--duration", type=positive_float, help="seconds to run")
    g.add_argument("--count-limit", type=int, help="stop after this many readings")
    g.add_argument(
        "--ramp-s", type=float, default=0.0, help="linear ramp-up from 0 over this many seconds"
    )
    g.add_argument(
        "--spike",
        action="append",
        default=[],
        metavar="AT:DURATION:FACTOR",
        help="rate burst, e.g. 30:30:10 (repeatable)",
    )
    g.add_argument(
        "--tick-ms", type=positive_float, default=10.0, help="scheduling tick (default 10 ms)"
    )
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument(
        "--start-ts-ms",
        type=int,
        help="timestamp of the run's start (default: now); fix it to reproduce a run",
    )
    g.add_argument(
        "--as-fast-as-possible",
        action="store_true",
        help="ignore the wall clock (throughput tests)",
    )

    g = p.add_argument_group("faults (rates are per reading, 0..1)")
    g.add_argument("--fault-duplicates", type=fraction, default=0.0, help="readings sent twice")
    g.add_argument(
        "--fault-late", type=fraction, default=0.0, help="readings held back (out of order)"
    )
    g.add_argument("--late-max-s", type=positive_float, default=5.0, help="largest hold-back")
    g.add_argument(
        "--fault-skew", type=fraction, default=0.0, help="fraction of devices with a skewed clock"
    )
    g.add_argument(
        "--skew-max-s", type=positive_float, default=60.0, help="largest clock offset (±)"
    )
    g.add_argument(
        "--fault-malformed", type=fraction, default=0.0, help="readings sent as malformed payloads"
    )
    g.add_argument(
        "--fault-missing", type=fraction, default=0.0, help="readings sent without metrics"
    )
    g.add_argument(
        "--fault-oversize", type=fraction, default=0.0, help="readings sent as oversize messages"
    )
    g.add_argument(
        "--oversize-bytes", type=int, default=300_000, help="size of an oversize message"
    )
    g.add_argument(
        "--fault-dropout",
        type=fraction,
        default=0.0,
        help="chance per reading that a device goes silent",
    )
    g.add_argument("--dropout-s", type=positive_float, default=10.0, help="length of a silence")

    g = p.add_argument_group("output")
    g.add_argument("--manifest", type=Path, help="write the run manifest (JSON) here")
    g.add_argument(
        "--manifest-readings",
        action="store_true",
        help="list every reading in the manifest (small runs)",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress line, no report")
    g.add_argument("--json", action="store_true", help="print a JSON summary on stdout at the end")
    p.set_defaults(func=simulate_command)


def _add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="check that a table holds exactly the valid readings of a simulate manifest",
        description="Read every sensor of the manifest back from the table (Query per shard "
        "partition) and compare counts, first/last timestamps and checksums. Exit status 0 "
        "only when everything matches.",
    )
    p.add_argument("--manifest", type=Path, required=True, help="manifest written by simulate")
    p.add_argument("--table", required=True, help="DynamoDB table name")
    p.add_argument("--dynamodb-endpoint", help="DynamoDB-API endpoint URL (default: AWS)")
    p.add_argument("--region", default="us-east-1", help="AWS region (default us-east-1)")
    p.add_argument("--concurrency", type=int, default=16, help="queries in flight")
    p.add_argument(
        "--no-registry-check",
        action="store_true",
        help="do not report registry sensors absent from the manifest",
    )
    p.add_argument(
        "--dead-letters",
        type=Path,
        metavar="DIR",
        help="also check that this dead-letter spool ({data_dir}/deadletters of the run) "
        "holds exactly the run's invalid messages",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=verify_command)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` and ``verify`` subcommands to ``iot-ingest``."""
    _add_simulate(subparsers)
    _add_verify(subparsers)


# -- simulate -------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Build a run's configuration from parsed ``simulate`` arguments.

    Raises:
        SimulatorError: An option or the fleet file is invalid.
    """
    if args.fleet_file is not None:
        fleet = load_fleet_file(args.fleet_file, device_offset=args.device_offset)
        if args.rate is not None:
            fleet = fleet.with_total_rate(args.rate)
    else:
        fleet = Fleet.uniform(
            devices=args.devices,
            rate_per_s=args.rate if args.rate is not None else float(args.devices),
            kinds=args.kinds,
            id_prefix=args.id_prefix,
            device_offset=args.device_offset,
        )
    faults = FaultConfig(
        duplicate_rate=args.fault_duplicates,
        late_rate=args.fault_late,
        late_max_s=args.late_max_s,
        skew_rate=args.fault_skew,
        skew_max_s=args.skew_max_s,
        malformed_rate=args.fault_malformed,
        missing_rate=args.fault_missing,
        oversize_rate=args.fault_oversize,
        oversize_bytes=args.oversize_bytes,
        dropout_rate=args.fault_dropout,
        dropout_s=args.dropout_s,
    )
    traffic = TrafficOptions(
        seed=args.seed,
        start_ts_ms=args.start_ts_ms if args.start_ts_ms is not None else int(time.time() * 1000),
        tick_s=args.tick_ms / 1000.0,
        mode=args.mode,
        gateways=args.gateways,
        batch_size=args.batch_size,
        sensor_id_separator=None
        if args.sensor_id_separator == "none"
        else args.sensor_id_separator,
        profile=RateProfile(ramp_s=args.ramp_s, spikes=tuple(Spike.parse(s) for s in args.spike)),
        faults=faults,
        duration_s=args.duration,
        count_limit=args.count_limit,
        manifest_detail=args.manifest_readings,
    )
    return SimulationConfig(
        fleet=fleet,
        traffic=traffic,
        mqtt_url=args.mqtt_url,
        qos=args.qos,
        protocol_version=args.protocol_version,
        topic_pattern=args.topic_pattern,
        client_id_prefix=args.client_id_prefix,
        max_inflight=args.max_inflight,
        connect_concurrency=args.connect_concurrency,
        realtime=not args.as_fast_as_possible,
        manifest_path=args.manifest,
    )


async def _simulate(config: SimulationConfig, args: argparse.Namespace) -> RunSummary:
    from simulator.progress import LiveProgress

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    presses = 0

    def on_signal() -> None:
        # First Ctrl-C: finish cleanly (drain, flush, manifest). Second: abort.
        nonlocal presses
        presses += 1
        if presses == 1:
            stop.set()
            if not args.quiet:
                Console(stderr=True).print("finishing… (Ctrl-C again to abort without a manifest)")
        elif main_task is not None:
            main_task.cancel()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        live = not args.quiet and sys.stderr.isatty()
        with LiveProgress() if live else contextlib.nullcontext() as progress:
            on_progress: Callable[[Progress], None] | None = (
                progress.update if isinstance(progress, LiveProgress) else None
            )
            summary, _ = await run_simulation(config, on_progress=on_progress, stop=stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return summary


def _error(message: str) -> int:
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False)
    return EXIT_USAGE


def simulate_command(args: argparse.Namespace) -> int:
    """``iot-ingest simulate``: exit 0 if every message was confirmed, 1 if not, 2 on errors."""
    try:
        config = config_from_args(args)
        if (
            config.traffic.duration_s is None
            and config.traffic.count_limit is None
            and not args.quiet
        ):
            Console(stderr=True).print("no --duration or --count-limit: running until Ctrl-C")
        summary: RunSummary = run(_simulate(config, args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        Console(stderr=True).print("aborted: no manifest written")
        return EXIT_INTERRUPTED
    except SimulatorError as exc:
        return _error(str(exc))
    except BaseExceptionGroup as group:  # raised out of the run's task group
        errors, rest = group.split(SimulatorError)
        if errors is None or rest is not None:
            raise
        return _error("; ".join(str(e) for e in leaf_exceptions(errors)))
    if args.json:
        sys.stdout.write(
            orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    elif not args.quiet:
        from simulator.progress import print_summary

        print_summary(summary, Console(stderr=True))
    return EXIT_OK if summary.complete else EXIT_FAIL


# -- verify ---------------------------------------------------------------------


def verify_command(args: argparse.Namespace) -> int:
    """``iot-ingest verify``: exit 0 when the table holds exactly the valid readings, else 1."""
    from simulator.verify import format_report, verify_table

    try:
        manifest = load_manifest(args.manifest)
        report = run(
            verify_table(
                manifest,
                table=args.table,
                endpoint_url=args.dynamodb_endpoint,
                region=args.region,
                concurrency=args.concurrency,
                check_registry=not args.no_registry_check,
            )
        )
    except SimulatorError as exc:
        return _error(str(exc))
    if args.dead_letters is not None:
        report.check_dead_letters(manifest, args.dead_letters)
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        console = Console()
        for i, line in enumerate(format_report(report)):
            style = ("green" if report.ok else "red") if i == 0 else None
            console.print(line, style=style, highlight=False, markup=False)
    return EXIT_OK if report.ok else EXIT_FAIL


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m simulator.cli simulate …``)."""
    parser = argparse.ArgumentParser(prog="iot-ingest", description="iot-ingest simulator commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
