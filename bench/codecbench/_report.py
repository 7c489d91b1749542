"""The report: Markdown tables of the figures, and the command line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.codecbench._data import PRECISIONS
from bench.codecbench._runner import ITEM_OVERHEAD_BYTES, ROLLUP_STEPS, run
from simulator.signals import KINDS, kind_names

__all__ = ["HOT", "READ_BUDGET_BYTES", "Row", "main", "render"]

HOT = "vibration@1kHz"
READ_BUDGET_BYTES = 80 * 1024
"""10 eventually consistent read units: the 24 h, 500-point series goal."""
_FOCUS = ("np-dec+zstd3", "pcodec-wrapped-L8", "pcodec-L8", "np-xor+zstd3", "raw+zstd3")
Row = Mapping[str, Any]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _aggregate(rows: Sequence[Row], key: Sequence[str]) -> dict[tuple[Any, ...], dict[str, float]]:
    """Sum over the rows sharing ``key``: bytes and µs per reading, weighted by readings."""
    acc: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in rows:
        a = acc.setdefault(tuple(r[k] for k in key), {"n": 0, "bytes": 0, "e": 0.0, "d": 0.0})
        a["n"] += r["readings"]
        a["bytes"] += r["bytes"]
        a["e"] += r.get("encode_us_per_reading", 0.0) * r["readings"]
        a["d"] += r.get("decode_us_per_reading", 0.0) * r["readings"]
    return {
        k: {"bpr": a["bytes"] / a["n"], "e": a["e"] / a["n"], "d": a["d"] / a["n"]}
        for k, a in acc.items()
    }


def _windows(win: Sequence[Row]) -> list[str]:
    out: list[str] = []
    sizes = sorted({r["size"] for r in win if r["kind"] != HOT})
    cands = list(dict.fromkeys(r["candidate"] for r in win))
    per = _aggregate([r for r in win if r["kind"] != HOT], ("candidate", "precision", "size"))
    hot = _aggregate([r for r in win if r["kind"] == HOT], ("candidate", "precision"))
    for precision in PRECISIONS:
        out.append(
            f"\n### Windows, {precision} values: bytes per reading "
            "(four kinds; a reading = timestamp + its kind's 3-5 metrics)\n"
        )
        rows = [
            [c, *(per[(c, precision, s)]["bpr"] for s in sizes), hot[(c, precision)]["bpr"]]
            for c in sorted(cands, key=lambda c: per[(c, precision, max(sizes))]["bpr"])
        ]
        out.append(_table(["candidate", *(f"{s:,}" for s in sizes), "hot 1 kHz"], rows))
    for precision in ("published", "full"):
        out.append(f"\n### Windows, {precision} values: CPU µs per reading, encode / decode\n")

        def cell(t: Mapping[str, float]) -> str:
            return f"{t['e']:.3f} / {t['d']:.3f}"

        rows = [
            [c, *(cell(per[(c, precision, s)]) for s in sizes), cell(hot[(c, precision)])]
            for c in sorted(cands, key=lambda c: per[(c, precision, sizes[0])]["e"])
        ]
        out.append(_table(["candidate", *(f"{s:,}" for s in sizes), "hot 1 kHz"], rows))
    size = 3_600 if 3_600 in sizes else max(sizes)
    by_kind = _aggregate([r for r in win if r["size"] == size], ("candidate", "precision", "kind"))
    kinds = kind_names()
    for precision in ("published", "full"):
        out.append(f"\n### Windows of {size:,}, {precision}: bytes per reading by kind\n")
        rows = [
            [c, *(by_kind[(c, precision, k)]["bpr"] for k in kinds)]
            for c in sorted(cands, key=lambda c: by_kind[(c, precision, "power")]["bpr"])
        ]
        out.append(_table(["candidate", *(f"{k} ({len(KINDS[k].metrics)})" for k in kinds)], rows))
    return out


def _columns(ts: Sequence[Row], cols: Sequence[Row], cands: Sequence[str]) -> list[str]:
    out: list[str] = []
    if ts:
        agg = _aggregate(ts, ("candidate", "timestamps", "size"))
        keys = sorted({(r["timestamps"], r["size"]) for r in ts})
        out.append("\n### Timestamps alone (env, 1 Hz): bytes per reading\n")
        rows = [[c, *(agg[(c, *k)]["bpr"] for k in keys)] for c in cands if (c, *keys[0]) in agg]
        out.append(_table(["candidate", *(f"{v} {s:,}" for v, s in keys)], rows))
    shown = [c for c in _FOCUS if c in cands][:4]
    if cols and shown:
        out.append(
            "\n### Bytes per value by metric (3,600 readings; the timestamps' share taken off)\n"
        )
        idx = {
            (r["precision"], r["kind"], r["metric"], r["candidate"]): r["bytes_per_value"]
            for r in cols
        }
        rows = [
            [f"{kind}.{m}", *(idx[(p, kind, m, c)] for p in ("published", "full") for c in shown)]
            for kind in kind_names()
            for m in KINDS[kind].metrics
        ]
        heads = [f"{p[:4]} {c}" for p in ("published", "full") for c in shown]
        out.append(_table(["metric", *heads], rows))
    return out


def _tags_and_missing(report: Mapping[str, Any]) -> list[str]:
    out = ["\n### Tags (3 keys: 2 constant, 1 changing once a day), dictionary + runs\n"]
    out.append(
        _table(
            ["window", "bytes/window", "bytes/reading", "encode µs/r", "decode µs/r"],
            [
                [
                    t["size"],
                    t["bytes_per_window"],
                    t["bytes_per_reading"],
                    t["encode_us_per_reading"],
                    t["decode_us_per_reading"],
                ]
                for t in report["tags"]
            ],
        )
    )
    out.append("\n### Missing metrics: marking which of 3,600 readings lack one\n")
    out.append(
        _table(
            ["missing", "bitmap", "bitmap + zstd", "index list (varint deltas)"],
            [
                [
                    f"{m['missing_rate']:.1%} ({m['missing']})",
                    m["bitmap_bytes"],
                    m["bitmap_zstd_bytes"],
                    m["index_list_bytes"],
                ]
                for m in report["missing_metrics"]
            ],
        )
    )
    return out


def _journal(jr: Sequence[Row]) -> list[str]:
    out = [
        "\n### Journal chunks (3,000 sensors, arrival order): "
        "bytes / encode µs / decode µs per reading\n"
    ]
    sizes = sorted({r["size"] for r in jr if r["size"] != "payload"})
    for precision in ("published", "full"):
        mine = [r for r in jr if r["precision"] == precision]
        names = list(dict.fromkeys(r["candidate"] for r in mine if r["size"] != "payload"))
        idx = {(r["candidate"], r["size"]): r for r in mine}
        rows = []
        for name in names:
            cells = []
            for s in sizes:
                r = idx.get((name, s))
                cells.append(
                    "-"
                    if r is None
                    else f"{r['bytes_per_reading']:.2f} / {r['encode_us_per_reading']:.2f} / "
                    f"{r['decode_us_per_reading']:.2f}"
                )
            rows.append([name, *cells])
        payload = next(r for r in mine if r["size"] == "payload")["bytes_per_reading"]
        out.append(f"\n{precision} values (a reading as gateway JSON: {payload:.1f} bytes)\n")
        out.append(_table(["candidate", *(f"{s:,}" for s in sizes)], rows))
    return out


def _rollups(ro: Sequence[Row], cands: Sequence[str]) -> list[str]:
    out: list[str] = []
    kinds = kind_names()
    steps = [s for s in ROLLUP_STEPS if any(r["step"] == s for r in ro)]
    for step in steps:
        mine = [r for r in ro if r["step"] == step]
        idx = {(r["candidate"], r["precision"], r["kind"]): r for r in mine}
        bins = mine[0]["bins"]
        out.append(
            f"\n### Rollups per {step} ({bins:,} bins), one day of one sensor: bytes per "
            "metric-day (item bytes / metrics), and power's item in bytes (read units: "
            "1 day / rolling 24 h = 2 items)\n"
        )
        rows = []
        for c in [*cands, "raw float64"]:
            if c != "raw float64" and (c, "published", "power") not in idx:
                continue
            cells: list[Any] = []
            for p in PRECISIONS:
                if c == "raw float64":
                    r = idx[(cands[0], p, "power")]
                    cells += [r["raw_bytes"] / r["metrics"], f"{r['raw_bytes']:,}"]
                    continue
                per_metric = [
                    idx[(c, p, k)]["item_bytes"] / idx[(c, p, k)]["metrics"] for k in kinds
                ]
                r = idx[(c, p, "power")]
                cells += [
                    sum(per_metric) / len(per_metric),
                    f"{r['item_bytes']:,} ({r['read_units_1_day']:g} / {r['read_units_rolling_24h']:g})",
                ]
            rows.append([c, *cells])
        heads = [h for p in PRECISIONS for h in (f"{p} B/metric-day", f"{p} power item")]
        out.append(_table(["candidate", *heads], rows))
    out.append(
        "\nMetrics of one sensor whose per-day rollups fit 80 KB (10 read units), for one "
        "day item / for a rolling 24 h (two items)\n"
    )
    rows = []
    for c in [c for c in _FOCUS if any(r["candidate"] == c for r in ro)]:
        cells = []
        for step in steps:
            for p in PRECISIONS:
                rs = [
                    r
                    for r in ro
                    if r["candidate"] == c and r["step"] == step and r["precision"] == p
                ]
                worst = max(r["bytes"] / r["metrics"] for r in rs)  # the costliest kind
                fit1 = math.floor((READ_BUDGET_BYTES - ITEM_OVERHEAD_BYTES) / worst)
                fit2 = math.floor((READ_BUDGET_BYTES / 2 - ITEM_OVERHEAD_BYTES) / worst)
                cells.append(f"{fit1} / {fit2}")
        rows.append([c, *cells])
    out.append(_table(["candidate", *(f"{s}, {p}" for s in steps for p in PRECISIONS)], rows))
    return out


def _checks(report: Mapping[str, Any]) -> list[str]:
    ck = report["checks"]
    out = [
        "\n### Checks\n",
        f"- JSON round trip (orjson out, orjson in): {ck['json_not_bit_identical']} of "
        f"{ck['json_columns']} columns not bit-identical",
    ]
    out += [f"- rejected {name}: {why}" for name, why in report["rejected"].items()]
    out += [f"- unavailable: {note}" for note in report["unavailable"]]
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    out.append(
        f"- {env['cpu']} x{env['cpus']}, Python {env['python']}, load average "
        f"{env['loadavg_start'][0]:.1f} at the start, {env['loadavg_end'][0]:.1f} at the end, "
        f"{env['elapsed_s']} s; {versions}"
    )
    return out


def render(report: Mapping[str, Any]) -> str:
    """The report's tables, in Markdown."""
    cands = list(dict.fromkeys(r["candidate"] for r in report["windows"]))
    out = _windows(report["windows"])
    out += _columns(report["timestamps"], report["columns"], cands)
    out += _tags_and_missing(report)
    out += _journal(report["journal"])
    out += _rollups(report["rollups"], cands)
    out += _checks(report)
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.codecbench [--quick] [--json PATH] [--seed N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.codecbench",
        description="Bytes and CPU per reading of candidate encodings for packed items.",
    )
    parser.add_argument("--quick", action="store_true", help="small data, few repeats (tests)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the whole report as JSON")
    parser.add_argument("--seed", type=int, default=13, help="seed of every simulated signal")
    args = parser.parse_args(argv)
    report = run(quick=args.quick, seed=args.seed)
    if args.json:
        args.json.write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
    print(render(report))
    return 0
