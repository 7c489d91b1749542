"""The report: Markdown tables of the figures, and the command line."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from simulator.signals import KINDS, kind_names

from ._data import PRECISIONS
from ._runner import run

__all__ = ["main", "render"]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _aggregate(
    rows: Sequence[Mapping[str, Any]], key: Sequence[str]
) -> dict[tuple[Any, ...], dict[str, float]]:
    """Sum over the rows sharing ``key``: bytes and µs per reading, weighted by readings."""
    acc: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in rows:
        a = acc.setdefault(
            tuple(r[k] for k in key), {"readings": 0, "bytes": 0, "e": 0.0, "d": 0.0}
        )
        a["readings"] += r["readings"]
        a["bytes"] += r["bytes"]
        a["e"] += r.get("encode_us_per_reading", 0.0) * r["readings"]
        a["d"] += r.get("decode_us_per_reading", 0.0) * r["readings"]
    return {
        k: {
            "bpr": a["bytes"] / a["readings"],
            "e": a["e"] / a["readings"],
            "d": a["d"] / a["readings"],
        }
        for k, a in acc.items()
    }


def render(report: Mapping[str, Any]) -> str:
    """The report's tables, in Markdown."""
    out: list[str] = []
    win = report["windows"]
    sizes = sorted({r["size"] for r in win if r["kind"] != "vibration@1kHz"})
    cands = list(dict.fromkeys(r["candidate"] for r in win))
    per = _aggregate(
        [r for r in win if r["kind"] != "vibration@1kHz"], ("candidate", "precision", "size")
    )
    hot = _aggregate([r for r in win if r["kind"] == "vibration@1kHz"], ("candidate", "precision"))
    ref = max(sizes)
    for precision in PRECISIONS:
        out.append(
            f"\n### Windows, {precision} values: bytes per reading "
            "(all four kinds; a reading = timestamp + its kind's 3-5 metrics)\n"
        )
        rows = [
            [c, *(per[(c, precision, s)]["bpr"] for s in sizes), hot[(c, precision)]["bpr"]]
            for c in sorted(cands, key=lambda c: per[(c, precision, ref)]["bpr"])
        ]
        out.append(_table(["candidate", *(f"{s:,}" for s in sizes), "hot 1 kHz"], rows))
    for precision in ("published", "full"):
        out.append(f"\n### Windows, {precision} values: CPU µs per reading, encode / decode\n")
        rows = [
            [
                c,
                *(
                    f"{per[(c, precision, s)]['e']:.3f} / {per[(c, precision, s)]['d']:.3f}"
                    for s in sizes
                ),
            ]
            for c in sorted(cands, key=lambda c: per[(c, precision, sizes[0])]["e"])
        ]
        out.append(_table(["candidate", *(f"{s:,}" for s in sizes)], rows))
    kinds = kind_names()
    size_k = 3_600 if 3_600 in sizes else ref
    by_kind = _aggregate(
        [r for r in win if r["size"] == size_k], ("candidate", "precision", "kind")
    )
    for precision in ("published", "full"):
        out.append(f"\n### Windows of {size_k:,}, {precision}: bytes per reading by kind\n")
        rows = [
            [c, *(by_kind[(c, precision, k)]["bpr"] for k in kinds)]
            for c in sorted(cands, key=lambda c: by_kind[(c, precision, "power")]["bpr"])
        ]
        out.append(
            _table(
                ["candidate", *(f"{k} ({len(KINDS[k].metrics)})" for k in kinds)],
                rows,
            )
        )
    ts = report["timestamps"]
    if ts:
        agg = _aggregate(ts, ("candidate", "timestamps", "size"))
        keys = sorted({(r["timestamps"], r["size"]) for r in ts})
        out.append("\n### Timestamps alone (env, 1 Hz): bytes per reading\n")
        rows = [[c, *(agg[(c, *k)]["bpr"] for k in keys)] for c in cands if (c, *keys[0]) in agg]
        out.append(_table(["candidate", *(f"{v} {s:,}" for v, s in keys)], rows))
    cols = report["columns"]
    shown = [c for c in ("np-dec+zstd3", "pcodec-L8", "np-xor+zstd3", "raw+zstd3") if c in cands]
    if cols and shown:
        out.append(
            "\n### Bytes per value by metric (3,600 readings; minus the timestamps' share)\n"
        )
        idx = {
            (r["precision"], r["kind"], r["metric"], r["candidate"]): r["bytes_per_value"]
            for r in cols
        }
        rows = []
        for kind in kinds:
            for metric in KINDS[kind].metrics:
                rows.append(
                    [
                        f"{kind}.{metric}",
                        *(idx[(p, kind, metric, c)] for p in ("published", "full") for c in shown),
                    ]
                )
        heads = [f"{p[:4]} {c}" for p in ("published", "full") for c in shown]
        out.append(_table(["metric", *heads], rows))
    out.append("\n### Tags (3 keys: 2 constant, 1 changing once a day), dictionary + runs\n")
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
    jr = report["journal"]
    out.append(
        "\n### Journal chunks (3,000 sensors, arrival order): bytes / encode µs / decode µs per reading\n"
    )
    jsizes = sorted({r["size"] for r in jr if r["size"] != "payload"})
    for precision in ("published", "full"):
        names = list(
            dict.fromkeys(
                r["candidate"] for r in jr if r["precision"] == precision and r["size"] != "payload"
            )
        )
        jidx = {(r["candidate"], r["size"]): r for r in jr if r["precision"] == precision}
        rows = []
        for name in names:
            cells = []
            for s in jsizes:
                r = jidx.get((name, s))
                cells.append(
                    "-"
                    if r is None
                    else f"{r['bytes_per_reading']:.2f} / {r['encode_us_per_reading']:.2f} / {r['decode_us_per_reading']:.2f}"
                )
            rows.append([name, *cells])
        payload = next(r for r in jr if r["precision"] == precision and r["size"] == "payload")
        out.append(
            f"\n{precision} values (readings as gateway JSON: {payload['bytes_per_reading']:.1f} bytes each)\n"
        )
        out.append(_table(["candidate", *(f"{s:,}" for s in jsizes)], rows))
    ro = report["rollups"]
    for step in ("minute", "hour"):
        out.append(
            f"\n### Rollups per {step}, one day of one sensor: item bytes (read units for 1 day / rolling 24 h)\n"
        )
        rows = []
        ridx = {(r["candidate"], r["precision"], r["kind"]): r for r in ro if r["step"] == step}
        for c in cands:
            if (c, "published", "power") not in ridx:
                continue
            cells = []
            for p in PRECISIONS:
                for k in kinds:
                    r = ridx[(c, p, k)]
                    cells.append(
                        f"{r['item_bytes']:,} ({r['read_units_1_day']:g}/{r['read_units_rolling_24h']:g})"
                    )
            rows.append([c, *cells])
        raw = [f"{ridx[(cands[0], p, k)]['raw_bytes']:,}" for p in PRECISIONS for k in kinds]
        rows.append(["raw float64", *raw])
        out.append(
            _table(["candidate", *(f"{p[:4]} {k}" for p in PRECISIONS for k in kinds)], rows)
        )
    out.append("\n### Checks\n")
    ck = report["checks"]
    out.append(
        f"- JSON round trip (orjson out, orjson in): {ck['json_not_bit_identical']} of "
        f"{ck['json_columns']} columns not bit-identical"
    )
    out += [f"- rejected {name}: {why}" for name, why in report["rejected"].items()]
    out += [f"- unavailable: {note}" for note in report["unavailable"]]
    env = report["environment"]
    out.append(
        f"- {env['cpu']} ×{env['cpus']}, Python {env['python']}, load {env['loadavg_start'][0]:.1f}"
        f"→{env['loadavg_end'][0]:.1f}, {env['elapsed_s']} s; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.codecbench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small data, few repeats (for tests)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the full report as JSON")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    report = run(quick=args.quick, seed=args.seed)
    if args.json:
        args.json.write_bytes(
            orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
    print(render(report))
    return 0
