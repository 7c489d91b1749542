"""Load-run outputs: ``result.json``, ``report.md`` and matplotlib plots (PNG).

``python -m bench.report DIR [DIR ...]`` prints one markdown table over several
runs' ``result.json`` (the table in docs/performance.md is made this way).

For each scenario in a result: ``throughput-<scenario>.png`` (readings/s made
durable, per second, from the workers' own counters: the service's Prometheus
metrics, the baseline's ``/stats``) and ``latency-<scenario>.png`` (the
publish → durable latency distribution, as a CDF with log-scaled time).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.scenarios import SCENARIOS

__all__ = [
    "LAYOUT_ROWS",
    "ROWS",
    "SUMMARY",
    "Row",
    "figure_table",
    "format_value",
    "layout_table",
    "main",
    "summary_table",
    "write_outputs",
]

Row = tuple[str, str, str]
ROWS: tuple[Row, ...] = (
    ("readings/s made durable", "readings_per_s", "{:,.0f}"),
    ("offered readings/s (publisher)", "offered_per_s", "{:,.0f}"),
    ("CPU µs per reading (ingest processes)", "cpu_us_per_reading", "{:,.1f}"),
    ("readings per CPU-second", "readings_per_cpu_s", "{:,.0f}"),
    ("CPU cores used (mean)", "cpu_cores", "{:.2f}"),
    ("latency p50 ms (publish → durable)", "latency_ms.p50", "{:,.0f}"),
    ("latency p95 ms", "latency_ms.p95", "{:,.0f}"),
    ("latency p99 ms", "latency_ms.p99", "{:,.0f}"),
    ("lost readings", "lost", "{:,}"),
    ("keys written more than once", "duplicates", "{:,}"),
    ("peak RSS MB (per worker)", "peak_rss_mb", "{:,.0f}"),
    ("write units per reading", "write_units_per_reading", "{:.3f}"),
    ("cost per million readings (USD)", "cost_per_million_usd", "{:.3f}"),
    ("items per reading", "items_per_reading", "{:.3f}"),
    ("BatchWriteItem requests per reading", "requests_per_reading", "{:.4f}"),
    ("all write requests per reading", "write_requests_per_reading", "{:.4f}"),
    ("registry updates", "registry_updates", "{:,}"),
    ("peak writes/s on one partition key (1 s)", "peak_partition_writes_per_s", "{:,}"),
    ("busiest partition key, mean writes/s", "hottest_partition_mean_writes_per_s", "{:,.0f}"),
    ("partition keys written", "partitions", "{:,}"),
    ("machine CPU busy (cores, all processes)", "machine_busy_cores", "{:.2f}"),
)


def _get(doc: dict[str, Any] | None, path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def format_value(value: Any, fmt: str) -> str:
    """``value`` formatted with ``fmt``, or ``–`` when it is missing."""
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def figure_table(result: dict[str, Any]) -> str:
    """A markdown table of one scenario's figures: ours, baseline, ratio."""
    base = result.get("baseline")
    lines = ["| figure | iot-ingest | baseline | ours / baseline |", "|---|---:|---:|---:|"]
    for label, path, fmt in ROWS:
        a, b = _get(result, path), _get(base, path)
        ratio = (
            f"{a / b:.2f}×"
            if isinstance(a, int | float) and isinstance(b, int | float) and b
            else "–"
        )
        lines.append(f"| {label} | {format_value(a, fmt)} | {format_value(b, fmt)} | {ratio} |")
    return "\n".join(lines)


LAYOUT_ROWS: tuple[Row, ...] = (
    ("readings made durable", "readings_durable", "{:,}"),
    ("write units per reading", "write_units_per_reading", "{:.4f}"),
    ("… journal", "write_units_per_reading_by_kind.journal", "{:.4f}"),
    ("… staging", "write_units_per_reading_by_kind.stage", "{:.4f}"),
    ("… sealed windows", "write_units_per_reading_by_kind.window", "{:.4f}"),
    ("… reading items", "write_units_per_reading_by_kind.reading", "{:.4f}"),
    ("… the table's records", "write_units_per_reading_by_kind.record", "{:.4f}"),
    ("items per reading", "items_per_reading", "{:.4f}"),
    ("CPU µs per reading", "cpu_us_per_reading", "{:,.1f}"),
    ("latency p99 ms (publish → durable)", "latency_ms.p99", "{:,.0f}"),
    ("latency p99 ms (publish → visible, staging)", "visible_ms.p99", "{:,.0f}"),
    ("lost readings", "lost", "{:,}"),
    ("cost per million readings (USD)", "cost_per_million_usd", "{:.4f}"),
)


def layout_table(result: dict[str, Any]) -> str:
    """A markdown table of one scenario's figures per table layout (``--layout both``)."""
    layouts: dict[str, dict[str, Any]] = result.get("layouts") or {}
    kinds = list(layouts)
    lines = [
        "| figure | " + " | ".join(kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    for label, path, fmt in LAYOUT_ROWS:
        cells = [format_value(_get(layouts[k], path), fmt) for k in kinds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _scenarios(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nested = result.get("scenarios")
    if isinstance(nested, dict):
        return nested
    return {str(result["scenario"]): result}


def _rate(samples: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Per-second rate of a cumulative counter of the timeline."""
    xs, ys = [], []
    for a, b in itertools.pairwise(samples):
        if key in a and key in b:
            xs.append(float(b["t_s"]))
            ys.append((b[key] - a[key]) / max(b["t_s"] - a["t_s"], 1e-9))
    return xs, ys


def _plot_throughput(name: str, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, cpu) = plt.subplots(
        2, 1, figsize=(8, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    for label, doc in (("iot-ingest", result), ("baseline", result.get("baseline"))):
        if not doc:
            continue
        samples = doc.get("timeline") or []
        line = ax.plot(*_rate(samples, "items_written"), label=f"{label} (workers' counters)")
        color = line[0].get_color()
        cpu.plot(*_rate(samples, "cpu_s"), color=color, label=f"{label} workers")
        cpu.plot(*_rate(samples, "machine_busy_s"), color=color, linestyle=":", linewidth=0.9,
                 label=f"whole machine ({label} phase)")  # fmt: skip
    scenario = SCENARIOS.get(name)
    if scenario is not None:
        duration, rate = float(result["duration_s"]), float(result["rate_per_s"])
        ts = [i * duration / 400 for i in range(401)]
        ax.plot(
            ts,
            [scenario.offered_rate(t, duration, rate) for t in ts],
            "k--",
            linewidth=0.8,
            label="scheduled rate (from publisher start)",
        )
    ax.set_ylabel("items written per second")
    ax.set_title(f"{name}: throughput made durable")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    cpu.set_xlabel("seconds since the publisher started")
    cpu.set_ylabel("CPU cores")
    cpu.grid(alpha=0.3)
    cpu.legend(loc="best", fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_latency(name: str, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for label, doc in (("iot-ingest", result), ("baseline", result.get("baseline"))):
        hist = (doc or {}).get("latency_hist_ms") or {}
        pairs = sorted((int(k), int(v)) for k, v in hist.items())
        total = sum(n for _, n in pairs)
        if not total:
            continue
        xs, ys, seen = [], [], 0
        for ms, n in pairs:
            seen += n
            xs.append(max(ms, 0.5))
            ys.append(seen / total)
        p99 = _get(doc, "latency_ms.p99")
        ax.step(xs, ys, where="post", label=f"{label} (p99 {format_value(p99, '{:,.0f}')} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("publish → durable latency, ms (log)")
    ax.set_ylabel("fraction of readings")
    ax.set_title(f"{name}: latency distribution")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _markdown(result: dict[str, Any], images: dict[str, list[str]], command: str) -> str:
    env = result.get("environment") or {}
    lines = [
        "# iot-ingest load run",
        "",
        f"Command: `{command}`",
        "",
        f"Commit `{env.get('commit')}`{' (working tree modified)' if env.get('worktree_modified') else ''}, "
        f"{env.get('cpus')} CPUs, Python {env.get('python')}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in env.get('loadavg_at_start', []))}; started {result.get('started_at')}. "
        "Other processes may have been running: the CPU-per-reading figures are the ingest "
        "processes' own accounting and do not depend on them, the rates and latencies do.",
        "",
        f"DynamoDB target: {result.get('target_note')}.",
        "",
    ]
    for name, doc in _scenarios(result).items():
        lines += [
            f"## {name}: {doc.get('scenario_summary', '')}",
            "",
            f"{doc.get('duration_s')} s at {format_value(doc.get('rate_per_s'), '{:,.0f}')} readings/s "
            f"offered, {doc.get('workers')} worker(s) per pipeline. All readings drained: "
            f"ours {doc.get('drained')}, baseline {_get(doc, 'baseline.drained')}.",
            "",
            figure_table(doc),
            "",
        ]
        if doc.get("layouts"):
            lines += ["Our pipeline per table layout, in this run:", "", layout_table(doc), ""]
        lines += [f"![{img}]({img})" for img in images.get(name, [])]
        lines.append("")
    lines += [
        "## How to read this",
        "",
        "- *readings/s made durable*: distinct readings the sink acknowledged, divided by the time "
        "from its first to its last accepted write. Below saturation it equals the offered rate.",
        "- *CPU µs per reading*: user + system CPU of the worker processes (from /proc) between "
        "'all workers ready' and 'every reading durable', divided by the readings.",
        "- *latency*: for each item, the time the sink accepted it minus the reading's scheduled "
        "publish time (its `ts`, less the simulator's connect time: `latency_offset_ms`), so "
        "publisher lag is included.",
        "- *write units*: DynamoDB's item-size rules, 1 unit per started KB per item, plus 1 per "
        "registry UpdateItem; cost at the price in result.json (`usd_per_million_wru`).",
        "- *lost*: per sensor, manifest readings whose key never reached the table.",
        "",
        "Details: docs/performance.md.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(
    result: dict[str, Any], out_dir: Path, command: str, *, plots: bool = True
) -> list[Path]:
    """Write ``result.json``, ``report.md`` and the plots; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "result.json"]
    written[0].write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    images: dict[str, list[str]] = {}
    if plots:
        plotters: tuple[tuple[str, Callable[[str, dict[str, Any], Path], None]], ...] = (
            ("throughput", _plot_throughput),
            ("latency", _plot_latency),
        )
        for name, doc in _scenarios(result).items():
            for kind, plot in plotters:
                path = out_dir / f"{kind}-{name}.png"
                plot(name, doc, path)
                images.setdefault(name, []).append(path.name)
                written.append(path)
    report = out_dir / "report.md"
    report.write_text(_markdown(result, images, command), encoding="utf-8")
    written.append(report)
    return written


SUMMARY: tuple[Row, ...] = (
    ("readings/s durable", "readings_per_s", "{:,.0f}"),
    ("CPU µs/reading", "cpu_us_per_reading", "{:,.1f}"),
    ("readings/CPU-s", "readings_per_cpu_s", "{:,.0f}"),
    ("p50 ms", "latency_ms.p50", "{:,.0f}"),
    ("p95 ms", "latency_ms.p95", "{:,.0f}"),
    ("p99 ms", "latency_ms.p99", "{:,.0f}"),
    ("lost", "lost", "{:,}"),
    ("dup keys", "duplicates", "{:,}"),
    ("peak RSS MB", "peak_rss_mb", "{:,.0f}"),
    ("WU/reading", "write_units_per_reading", "{:.3f}"),
    ("$/M readings", "cost_per_million_usd", "{:.3f}"),
    ("items/reading", "items_per_reading", "{:.2f}"),
    ("requests/reading", "requests_per_reading", "{:.4f}"),
)


def summary_table(results: list[dict[str, Any]]) -> str:
    """One markdown table over several runs: a row per scenario and pipeline."""
    head = ["scenario", "pipeline", *(label for label, _, _ in SUMMARY)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(SUMMARY)]
    for result in results:
        for name, doc in _scenarios(result).items():
            target = "" if doc.get("target", "sink") == "sink" else f", {doc.get('target')}"
            target += "".join(f", {arg}" for arg in doc.get("ingest_args") or [])
            offered = (
                f"{name} ({format_value(doc.get('rate_per_s'), '{:,.0f}')}/s, "
                f"{doc.get('duration_s'):g} s{target})"
            )
            for label, figures in (("iot-ingest", doc), ("baseline", doc.get("baseline"))):
                if not figures:
                    continue
                cells = [format_value(_get(figures, path), fmt) for _, path, fmt in SUMMARY]
                lines.append("| " + " | ".join([offered, label, *cells]) + " |")
            ratio = _get(doc, "ratio.readings_per_cpu_s")
            if ratio is not None:
                lines.append(
                    f"| {offered} | ratio | readings per CPU-second: **{ratio:.2f}×** |"
                    + " |" * (len(SUMMARY) - 1)
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print :func:`summary_table` of the ``result.json`` in each directory given."""
    import sys

    dirs = sys.argv[1:] if argv is None else argv
    if not dirs:
        print("usage: python -m bench.report RESULT_DIR [RESULT_DIR ...]", file=sys.stderr)
        return 2
    results = [orjson.loads((Path(d) / "result.json").read_bytes()) for d in dirs]
    print(summary_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
