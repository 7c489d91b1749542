"""The demo's replayed history and its live fleet meet without a step in any chart.

Both runs are generated here exactly as ``iot-ingest demo`` configures them (no
broker: the payloads are decoded directly), and for every sensor and metric the
change across the seam (last replayed reading to first live one) is compared with
the changes between consecutive readings inside the history.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import orjson

from ingest.demo import DemoOptions, _history_run, _live_run
from simulator.generator import TrafficGenerator
from simulator.run import SimulationConfig

NOW_MS = 1_764_000_000_000
_TAGS = {"sensor_id", "ts"}


def _readings(cfg: SimulationConfig, *, max_ticks: int | None = None) -> list[dict[str, Any]]:
    gen = TrafficGenerator(cfg.fleet, cfg.traffic)
    out: list[dict[str, Any]] = []
    ticks = 0
    topic_ids = gen.connection_ids()
    while not gen.done and (max_ticks is None or ticks < max_ticks):
        ticks += 1
        for msg in gen.tick():
            doc = orjson.loads(msg.payload)
            # Device mode: one reading per message, its sensor the topic's (connection's) id.
            batch = doc.get("readings", [doc])
            out.extend({"sensor_id": topic_ids[msg.conn], **r} for r in batch)
    return out


def _by_series(readings: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in readings:
        for name, value in r.items():
            if name not in _TAGS and isinstance(value, int | float):
                series[r["sensor_id"], name].append((int(r["ts"]), float(value)))
    for points in series.values():
        points.sort()
    return series


def test_live_readings_continue_the_replayed_history_without_a_jump() -> None:
    opts = DemoOptions(devices=6, rate_per_s=6.0, history_minutes=10.0)
    history_cfg = _history_run(opts, "mqtt://unused", "3.1.1", NOW_MS, flush_timeout_s=1.0)
    assert history_cfg is not None
    live_cfg = _live_run(opts, "mqtt://unused", "3.1.1", NOW_MS, flush_timeout_s=1.0)
    history = _by_series(_readings(history_cfg))
    live = _by_series(_readings(live_cfg, max_ticks=1_000))  # the first 10 s of the live run
    assert history.keys() == live.keys()
    assert len({sid for sid, _ in history}) == 6

    ratios = []
    for key, past in history.items():
        assert past[-1][0] < NOW_MS <= live[key][0][0], key  # no overlap in time
        assert live[key][0][0] - past[-1][0] <= 10_000, key  # and no gap either
        values = np.array([v for _, v in past])
        typical = float(np.percentile(np.abs(np.diff(values)), 95))
        seam = abs(live[key][0][1] - past[-1][1])
        ratios.append((seam / typical if typical else float(seam > 0), key, seam, typical))
    worst = max(ratios)
    # A step at the seam would be many typical steps (a different level, phase or drift).
    assert worst[0] <= 2.0, worst
