"""The ``iot-ingest plan`` command: capacity and monthly cost of a fleet, both layouts.

::

    iot-ingest plan --sensors 100000 --rate-hz 1 --metrics 5 [--layout reading|packed]
                    [--readings-per-message N] [--broker iot-core|mosquitto|emqx|vernemq]
                    [--replica-regions K] [--table-class standard|standard-ia]
                    [--dashboards N --dashboard-sensors N --dashboard-window-s S --refresh-s S]
                    [--bench RESULT ...] [--usd-per-million-wru P ...] [--json]

The arithmetic is :mod:`bench.plan` (pure); this module parses the flags, reads any
bench ``result.json`` given with ``--bench`` and prints. Exit status 0, or 2 for a bad
flag or an unreadable result file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.plan import (
    BROKERS,
    Dashboards,
    Figure,
    Fleet,
    LayoutFigures,
    Plan,
    Prices,
    default_figures,
    make_plan,
    plan_to_json,
    render_table,
)
from ingest.core.argtypes import fraction, positive_float, positive_int
from ingest.storage.layout import LAYOUT_KINDS, TableLayout

__all__ = ["add_plan_command", "cmd_plan", "load_bench_result"]

_DEFAULT = TableLayout()
_ONE_LAYOUT_FLAGS = ("wru_per_reading", "item_bytes", "stored_bytes_per_reading")


def _count(text: str) -> int:
    """An integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_plan_command(subparsers: Any) -> None:
    """Register ``plan`` on the ``iot-ingest`` command's subparsers."""
    p = subparsers.add_parser(
        "plan",
        help="capacity and monthly cost of a fleet: units, partitions, workers, storage, $",
        description=(
            "From the bench's measured figures and DynamoDB's rules: write and read units "
            "per second, partitions and the hottest key, ingest workers and broker "
            "connections (Little's law on the broker's in-flight window), storage growth and "
            "the monthly bill by line, for the reading layout and the packed one (modelled: "
            "not built yet, decision 0008)."
        ),
    )
    fleet = p.add_argument_group("fleet")
    fleet.add_argument("--sensors", type=positive_int, required=True, help="sensors in the fleet")
    fleet.add_argument(
        "--rate-hz", type=positive_float, required=True, help="readings per second per sensor"
    )
    fleet.add_argument("--metrics", type=positive_int, required=True, help="metrics per reading")
    fleet.add_argument(
        "--readings-per-message",
        type=positive_int,
        default=1,
        help="readings per MQTT message (1: each device publishes its own; gateways batch)",
    )
    table = p.add_argument_group("table")
    table.add_argument("--layout", choices=(*LAYOUT_KINDS, "both"), default="both")
    table.add_argument("--retention-days", type=positive_int, default=_DEFAULT.retention_days)
    table.add_argument(
        "--shards", type=positive_int, default=_DEFAULT.shards, help="reading layout"
    )
    table.add_argument(
        "--packed-window-s", type=positive_int, default=_DEFAULT.window_ms // 1000, help="packed"
    )
    table.add_argument("--packed-groups", type=positive_int, default=_DEFAULT.groups, help="packed")
    table.add_argument(
        "--packed-stage-s", type=positive_float, default=_DEFAULT.stage_ms / 1000, help="packed"
    )
    table.add_argument("--replica-regions", type=_count, default=0, help="Global Tables replicas")
    table.add_argument("--table-class", choices=("standard", "standard-ia"), default="standard")
    table.add_argument(
        "--archive-months",
        type=_count,
        default=12,
        help="months the S3 archive holds (12; 0: none)",
    )
    reads = p.add_argument_group("dashboard reads")
    reads.add_argument("--dashboards", type=_count, default=10, help="dashboards open at once (10)")
    reads.add_argument("--dashboard-sensors", type=positive_int, default=10, help="per dashboard")
    reads.add_argument("--dashboard-window-s", type=positive_float, default=3600.0)
    reads.add_argument("--refresh-s", type=positive_float, default=60.0)
    ingest = p.add_argument_group("ingest")
    ingest.add_argument("--broker", choices=sorted(BROKERS), default="iot-core")
    ingest.add_argument(
        "--inflight-limit", type=positive_int, help="the broker's window (override)"
    )
    ingest.add_argument(
        "--worker-utilization",
        type=fraction,
        default=0.6,
        help="share of one core a worker is planned at (0.6)",
    )
    figures = p.add_argument_group("figures (override the measured, computed or modelled ones)")
    figures.add_argument(
        "--bench",
        type=Path,
        action="append",
        default=[],
        metavar="RESULT",
        help="a bench result.json (or its directory); repeatable, one per layout",
    )
    figures.add_argument("--wru-per-reading", type=positive_float, help="needs --layout")
    figures.add_argument("--item-bytes", type=positive_float, help="needs --layout")
    figures.add_argument("--stored-bytes-per-reading", type=positive_float, help="needs --layout")
    figures.add_argument("--cpu-us-per-reading", type=positive_float)
    figures.add_argument("--latency-ms", type=positive_float, help="publish → durable p99")
    figures.add_argument("--archive-bytes-per-reading", type=positive_float)
    price = p.add_argument_group("prices, USD (default: on-demand us-east-1, the table class's)")
    price.add_argument("--usd-per-million-wru", type=positive_float)
    price.add_argument("--usd-per-million-rru", type=positive_float)
    price.add_argument("--usd-per-gb-month", type=positive_float, help="table storage")
    price.add_argument("--usd-per-million-rwru", type=positive_float, help="replicated writes")
    price.add_argument("--s3-usd-per-gb-month", type=positive_float, help="S3 archive storage")
    p.add_argument("--json", action="store_true", help="JSON instead of the table")
    p.set_defaults(func=cmd_plan)


def _figure(value: float, note: str) -> Figure:
    return Figure(value, "measured", note)


def load_bench_result(path: Path) -> tuple[str, dict[str, Figure]]:
    """The layout and per-reading figures of one bench ``result.json``.

    Returns:
        (layout kind, {field of LayoutFigures: Figure}) with what the file has of
        ``cpu_us_per_reading``, ``latency_ms.p99``, ``write_units_per_reading``,
        ``item_bytes_mean`` and ``stored_bytes_per_reading``.

    Raises:
        OSError: The file cannot be read.
        ValueError: It is not a bench result.
    """
    file = path / "result.json" if path.is_dir() else path
    doc = orjson.loads(file.read_bytes())
    if not isinstance(doc, dict) or "readings_per_s" not in doc:
        raise ValueError(f"{file} is not a bench result.json (no readings_per_s)")
    args = [str(a) for a in doc.get("ingest_args") or []]
    # ``layout`` is the run's key parameters ({"layout": "packed", …}; older runs: absent).
    recorded = doc.get("layout")
    kind = str((recorded.get("layout") if isinstance(recorded, dict) else recorded) or "reading")
    for i, a in enumerate(args):
        if a.startswith("--layout="):
            kind = a.split("=", 1)[1]
        elif a == "--layout" and i + 1 < len(args):
            kind = args[i + 1]
    if kind not in LAYOUT_KINDS:
        raise ValueError(f"{file}: unknown layout {kind!r}")
    rate = doc.get("readings_per_s")
    where = f"{file} ({doc.get('scenario', '?')}, {rate or 0:,.0f} readings/s)"
    out: dict[str, Figure] = {}
    picks = (
        ("cpu_us_per_reading", doc.get("cpu_us_per_reading")),
        ("latency_p99_ms", (doc.get("latency_ms") or {}).get("p99")),
        ("write_units_per_reading", doc.get("write_units_per_reading")),
        ("item_bytes", doc.get("item_bytes_mean") if kind == "reading" else None),
        ("stored_bytes_per_reading", doc.get("stored_bytes_per_reading")),
    )
    for name, value in picks:
        if isinstance(value, int | float) and value > 0:
            out[name] = _figure(float(value), where)
    return kind, out


def _error(message: str) -> int:
    print(f"iot-ingest plan: {message}", file=sys.stderr)
    return 2


def _figures_for(
    kind: str, fleet: Fleet, args: argparse.Namespace, runs: dict[str, dict[str, Figure]]
) -> LayoutFigures:
    fig = default_figures(fleet)
    stand_in = runs.get("reading", {})
    own = runs.get(kind, {})
    shared = {k: v for k, v in stand_in.items() if k in ("cpu_us_per_reading", "latency_p99_ms")}
    picked = {**shared, **own} if kind == "packed" else own
    values: dict[str, Any] = {
        "cpu_us_per_reading": picked.get("cpu_us_per_reading", fig.cpu_us_per_reading),
        "latency_p99_ms": picked.get("latency_p99_ms", fig.latency_p99_ms),
        "item_bytes": picked.get("item_bytes"),
        "write_units_per_reading": picked.get("write_units_per_reading"),
        "stored_bytes_per_reading": picked.get("stored_bytes_per_reading"),
        "from_packed_run": kind == "packed" and bool(own),
    }
    flags = (
        ("cpu_us_per_reading", args.cpu_us_per_reading, "--cpu-us-per-reading"),
        ("latency_p99_ms", args.latency_ms, "--latency-ms"),
        ("item_bytes", args.item_bytes, "--item-bytes"),
        ("write_units_per_reading", args.wru_per_reading, "--wru-per-reading"),
        ("stored_bytes_per_reading", args.stored_bytes_per_reading, "--stored-bytes-per-reading"),
        (
            "archive_bytes_per_reading",
            args.archive_bytes_per_reading,
            "--archive-bytes-per-reading",
        ),
    )
    for name, value, flag in flags:
        if value is not None:
            values[name] = Figure(value, "flag", flag)
    return LayoutFigures(**values)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan the arguments describe; return the exit status."""
    kinds = list(LAYOUT_KINDS) if args.layout == "both" else [args.layout]
    for name in _ONE_LAYOUT_FLAGS:
        if getattr(args, name) is not None and len(kinds) > 1:
            flag = "--" + name.replace("_", "-")
            return _error(f"{flag} is one layout's figure: give --layout reading or packed")
    runs: dict[str, dict[str, Figure]] = {}
    for path in args.bench:
        try:
            kind, figs = load_bench_result(path)
        except (OSError, ValueError) as exc:
            return _error(f"--bench {path}: {exc}")
        runs[kind] = figs
    fleet = Fleet(
        sensors=args.sensors,
        rate_hz=args.rate_hz,
        metrics=args.metrics,
        readings_per_message=args.readings_per_message,
    )
    base = Prices.for_table_class(args.table_class)
    prices = Prices(
        wru_per_million=args.usd_per_million_wru or base.wru_per_million,
        rru_per_million=args.usd_per_million_rru or base.rru_per_million,
        storage_gb_month=args.usd_per_gb_month or base.storage_gb_month,
        rwru_per_million=args.usd_per_million_rwru or base.rwru_per_million,
        s3_gb_month=args.s3_usd_per_gb_month or base.s3_gb_month,
    )
    dashboards = Dashboards(
        count=args.dashboards,
        sensors=args.dashboard_sensors,
        window_s=args.dashboard_window_s,
        refresh_s=args.refresh_s,
    )
    if args.worker_utilization <= 0:
        return _error("--worker-utilization: must be > 0, got 0")
    plans: list[Plan] = []
    for kind in kinds:
        try:
            layout = TableLayout(
                shards=args.shards,
                retention_days=args.retention_days,
                kind=kind,
                window_ms=args.packed_window_s * 1000,
                groups=args.packed_groups,
                stage_ms=round(args.packed_stage_s * 1000),
            )
        except ValueError as exc:
            return _error(f"{_flag_of(str(exc))}: {exc}")
        plans.append(
            make_plan(
                fleet=fleet,
                layout=layout,
                figures=_figures_for(kind, fleet, args, runs),
                dashboards=dashboards,
                broker=BROKERS[args.broker],
                prices=prices,
                replica_regions=args.replica_regions,
                archive_months=args.archive_months,
                worker_utilization=args.worker_utilization,
                inflight_limit=args.inflight_limit,
            )
        )
    inputs = {
        "retention_days": args.retention_days,
        "replica_regions": args.replica_regions,
        "table_class": args.table_class,
        "broker": args.broker,
        "archive_months": args.archive_months,
        "worker_utilization": args.worker_utilization,
        "prices": {
            "usd_per_million_wru": prices.wru_per_million,
            "usd_per_million_rru": prices.rru_per_million,
            "usd_per_gb_month": prices.storage_gb_month,
            "usd_per_million_rwru": prices.rwru_per_million,
            "s3_usd_per_gb_month": prices.s3_gb_month,
        },
        "dashboards": {
            "count": dashboards.count,
            "sensors": dashboards.sensors,
            "window_s": dashboards.window_s,
            "refresh_s": dashboards.refresh_s,
        },
        "bench": [str(p) for p in args.bench],
    }
    if args.json:
        sys.stdout.write(
            orjson.dumps(plan_to_json(plans, inputs), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        print(render_table(plans, inputs))
    return 0


def _flag_of(message: str) -> str:
    """The flag of a TableLayout validation message (its first word names the field)."""
    field = message.split(" ", 1)[0]
    return {
        "shards": "--shards",
        "retention_days": "--retention-days",
        "window_ms": "--packed-window-s",
        "groups": "--packed-groups",
        "stage_ms": "--packed-stage-s",
    }.get(field, "--layout")
