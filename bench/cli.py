"""The ``iot-ingest bench`` command: end-to-end load runs with a report.

``ingest.cli.main`` calls :func:`add_commands` when this package is installed::

    iot-ingest bench --scenario gateway --duration 60 [--output DIR] [--workers N]
                     [--rate R] [--target sink|moto|dynalite] [--no-baseline]
    iot-ingest bench --quick --output DIR     # ≤ 60 s smoke run, no speed asserted
    iot-ingest plan --sensors N --rate-hz R --metrics M   # capacity and cost (bench.plancmd)

Exit status: 0 when every expected reading was durable and none was lost (both
pipelines), 1 when some were lost or not drained, 2 when the run could not be
carried out (a server or worker failed to start, a deadline passed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench.capacity import US_EAST_1_USD_PER_MILLION_WRU
from bench.errors import BenchError
from bench.scenarios import QUICK_SCENARIOS, SCENARIOS, get_scenario
from ingest.core.aio import leaf_exceptions
from ingest.storage.layout import TableLayout

__all__ = ["RESULTS_DIR", "add_commands", "cmd_bench"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"

log = logging.getLogger(__name__)


def add_commands(subparsers: Any) -> None:
    """Register ``bench`` and ``plan`` on the ``iot-ingest`` command's subparsers."""
    from bench.plancmd import add_plan_command

    add_plan_command(subparsers)
    p = subparsers.add_parser(
        "bench",
        help="end-to-end load run: broker, DynamoDB target, workers, simulator; report",
        description=(
            "Start Mosquitto, a DynamoDB target (the bench sink: a protocol-checking "
            "benchmark fixture; or moto/dynalite through it), N ingest workers in one shared "
            "subscription and the simulator; run a scenario for a bounded time; stop "
            "everything; measure throughput made durable, CPU per reading, publish → durable "
            "latency, write units and cost, loss; then the same for the naive baseline."
        ),
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="gateway")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of publishing (60)")
    p.add_argument("--rate", type=float, help="readings/s offered (default: the scenario's)")
    p.add_argument("--workers", type=int, default=1, help="worker processes per pipeline (1)")
    p.add_argument("--devices", type=int, help="fleet size (default: the scenario's)")
    p.add_argument("--target", choices=("sink", "moto", "dynalite"), default="sink")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline pipeline")
    p.add_argument("--quick", action="store_true", help="≤ 60 s smoke run (gateway + single)")
    p.add_argument("--output", type=Path, help="output directory (default bench/results/…)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the last readings after the publisher ends (300)",
    )
    p.add_argument(
        "--usd-per-million-wru",
        type=float,
        default=US_EAST_1_USD_PER_MILLION_WRU,
        help=f"on-demand write price (default {US_EAST_1_USD_PER_MILLION_WRU}, us-east-1)",
    )
    p.add_argument(
        "--ingest-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `iot-ingest run` (repeatable), e.g. --ingest-arg=--shards=8",
    )
    p.add_argument(
        "--layout",
        choices=("reading", "packed", "both"),
        default="reading",
        help="table layout of our pipeline (both: one phase each, side by side)",
    )
    p.add_argument(
        "--window-seconds",
        type=int,
        default=900,
        help="packed: sealed window width (900; shorter runs see seals sooner)",
    )
    p.add_argument(
        "--stage-interval-ms", type=int, default=10_000, help="packed: staging interval (10000)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=cmd_bench)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s bench: %(message)s"))
    for name in ("bench",):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _all_phases(result: dict[str, Any]) -> list[dict[str, Any]]:
    docs = list(result["scenarios"].values()) if "scenarios" in result else [result]
    out = []
    for doc in docs:
        out.append(doc)
        if doc.get("baseline"):
            out.append(doc["baseline"])
    return out


def _layouts(args: argparse.Namespace) -> tuple[TableLayout, ...]:
    reading = TableLayout()
    packed = TableLayout(
        kind="packed", window_ms=args.window_seconds * 1000, stage_ms=args.stage_interval_ms
    )
    return {"reading": (reading,), "packed": (packed,), "both": (reading, packed)}[args.layout]


async def _run(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from bench.loadrun import LoadSpec, run_bench

    common: dict[str, Any] = {
        "workers": args.workers,
        "target": args.target,
        "seed": args.seed,
        "usd_per_million_wru": args.usd_per_million_wru,
        "ingest_args": tuple(args.ingest_arg),
        "layouts": _layouts(args),
    }
    if not args.quick:
        scenario = get_scenario(args.scenario)
        spec = LoadSpec(
            scenario=scenario,
            duration_s=args.duration,
            rate_per_s=args.rate or scenario.rate_per_s,
            baseline=not args.no_baseline,
            devices=args.devices,
            drain_timeout_s=args.drain_timeout,
            **common,
        )
        return await run_bench(spec, out_dir)
    results: dict[str, dict[str, Any]] = {}
    for name, duration_s, rate in QUICK_SCENARIOS:
        scenario = get_scenario(name)
        spec = LoadSpec(
            scenario=scenario,
            duration_s=duration_s,
            rate_per_s=rate,
            baseline=not args.no_baseline,
            devices=min(scenario.devices, 500),
            drain_timeout_s=20.0,
            stall_timeout_s=10.0,
            **common,
        )
        results[name] = await run_bench(spec, out_dir)
    first = next(iter(results.values()))
    ours_lost = sum(int(r["lost"]) for r in results.values())
    base_lost = [int(r["baseline"]["lost"]) for r in results.values() if r.get("baseline")]
    top = {k: v for k, v in first.items() if k not in ("timeline", "latency_hist_ms")}
    top["baseline"] = (
        {k: v for k, v in first["baseline"].items() if k not in ("timeline", "latency_hist_ms")}
        | {"lost": sum(base_lost)}
        if first.get("baseline")
        else None
    )
    return top | {"quick": True, "lost": ours_lost, "scenarios": results}


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the load run the arguments describe; write the outputs; return the exit status."""
    _setup_logging()
    if args.workers < 1:
        print("iot-ingest bench: --workers must be at least 1", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir: Path = (
        args.output or RESULTS_DIR / f"{'quick' if args.quick else args.scenario}-{stamp}"
    )
    command = (
        "iot-ingest " + shlex.join(sys.argv[1:])
        if sys.argv[1:2] == ["bench"]
        else "iot-ingest bench"
    )
    t0 = time.monotonic()
    try:
        result = asyncio.run(_run(args, out_dir))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # Servers that cannot start raise the ingest package's errors; ours is BenchError.
        from ingest.core.errors import IngestError

        leaves = leaf_exceptions(exc)
        if not all(isinstance(e, BenchError | IngestError) for e in leaves):
            raise
        for e in leaves:
            print(f"iot-ingest bench: {e}", file=sys.stderr)
        return 2
    from bench.report import figure_table, layout_table, write_outputs

    paths = write_outputs(result, out_dir, command, plots=not args.no_plots)
    for name, doc in (result.get("scenarios") or {result["scenario"]: result}).items():
        print(f"\n{name} ({doc['duration_s']:g} s at {doc['rate_per_s']:,.0f} readings/s)")
        print(figure_table(doc))
        if doc.get("layouts"):
            print("\nper table layout:\n" + layout_table(doc))
    print(f"\nwrote {', '.join(str(p) for p in paths)} in {time.monotonic() - t0:.0f} s")
    phases = _all_phases(result)
    bad = [p for p in phases if int(p["lost"]) or not p.get("drained", True)]
    if bad:
        print(
            "iot-ingest bench: readings lost or not drained: "
            + ", ".join(
                f"{p.get('pipeline', 'ours')} lost {p['lost']}, drained {p.get('drained')}"
                for p in bad
            ),
            file=sys.stderr,
        )
        return 1
    return 0
