"""The hot-sensor publisher: one sensor's readings at a rate above 1,000/s, in batches.

One sensor cannot *produce* more than 1,000 distinct readings per second of
timestamps (the sort key is the timestamp in milliseconds), so a hot sensor
delivering 2,000 readings/s is modelled as its gateway uploading a backlog:
reading ``i`` has timestamp ``ts0 + i`` (1 ms apart) and is scheduled for
``wall0 + i / rate``. ``ts0`` lies far enough in the past that no timestamp is
ever ahead of the clock (:func:`timeline`). Below 1,000/s the readings are
spaced as a live sensor's would be.

Messages are gateway batches ``{"readings": [{"sensor_id": "gw-hot:hot-00000", "ts": …,
"temperature": …, "humidity": …}]}`` on ``sensors/gw-hot/telemetry`` (QoS 1),
published by the simulator's :class:`~simulator.publisher.MqttPublisher`. The
run writes a simulator manifest (so ``iot-ingest verify`` can check the table)
and prints a JSON summary with the simulator's field names.

Run: ``python -m bench.hotsensor --mqtt-url URL --rate 2000 --duration 30
--manifest FILE [--clock-url http://SINK/_clock]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ingest.core.aio import run
from simulator.manifest import ManifestBuilder, save_manifest
from simulator.publisher import MqttPublisher, parse_mqtt_url

__all__ = ["GATEWAY_ID", "SENSOR_ID", "HotTimeline", "main", "publish", "timeline"]

GATEWAY_ID = "gw-hot"
SENSOR_ID = f"{GATEWAY_ID}:hot-00000"  # under its gateway's id: the service's default rule


@dataclass(frozen=True, slots=True)
class HotTimeline:
    """Where reading ``i`` sits in time.

    Attributes:
        ts0_ms: Timestamp of reading 0.
        step_ms: Timestamp spacing.
        wall0_ms: Scheduled publish time of reading 0 (epoch ms).
        rate_per_s: Readings per second of wall-clock time.
    """

    ts0_ms: int
    step_ms: int
    wall0_ms: int
    rate_per_s: float

    @property
    def speed(self) -> float:
        """How much faster than the clock the timestamps run (ms of ts per ms of wall)."""
        return self.rate_per_s * self.step_ms / 1000

    def ts(self, i: int) -> int:
        return self.ts0_ms + i * self.step_ms

    def scheduled_ms(self, ts_ms: float) -> float:
        """Scheduled publish time of the reading with timestamp ``ts_ms``."""
        return self.wall0_ms + (ts_ms - self.ts0_ms) / self.speed


def timeline(rate_per_s: float, duration_s: float, wall0_ms: int) -> HotTimeline:
    """The timeline of a hot-sensor run starting (scheduled) at ``wall0_ms``."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    step = max(1, int(1000 // rate_per_s))
    ahead_ms_per_s = rate_per_s * step - 1000  # how fast timestamps outrun the clock
    ts0 = wall0_ms - max(0, int(ahead_ms_per_s * duration_s) + step)
    return HotTimeline(ts0_ms=ts0, step_ms=step, wall0_ms=wall0_ms, rate_per_s=rate_per_s)


def _payload(tl: HotTimeline, first: int, n: int) -> bytes:
    readings = [
        {
            "sensor_id": SENSOR_ID,
            "ts": tl.ts(i),
            "temperature": 20.0 + (i % 200) / 16,
            "humidity": 40.0 + (i % 64) / 4,
        }
        for i in range(first, first + n)
    ]
    return orjson.dumps({"readings": readings})


async def _post_clock(url: str, tl: HotTimeline) -> None:
    """Tell the benchmark sink how timestamps map to scheduled publish times."""
    import aiohttp

    doc = {"ts0_ms": tl.ts0_ms, "wall0_ms": tl.wall0_ms, "speed": tl.speed}
    async with aiohttp.ClientSession() as http, http.post(url, json=doc) as resp:
        resp.raise_for_status()


async def publish(
    *,
    mqtt_url: str,
    rate_per_s: float,
    duration_s: float,
    batch_size: int,
    client_id: str,
    tl: HotTimeline | None = None,
    clock_url: str | None = None,
    flush_timeout_s: float = 60.0,
) -> tuple[dict[str, Any], ManifestBuilder, HotTimeline]:
    """Publish the run; return the summary, the manifest builder and the timeline.

    Args:
        mqtt_url: Broker.
        rate_per_s: Readings per second.
        duration_s: Seconds to publish.
        batch_size: Readings per message.
        client_id: MQTT client id.
        tl: A fixed timeline (default: one starting once connected, so that a slow
            start-up is not counted as publisher lag).
        clock_url: POST the timeline here (the sink's ``/_clock``) before publishing.
        flush_timeout_s: How long to wait for the last acknowledgements.
    """
    total = int(rate_per_s * duration_s)
    builder = ManifestBuilder([SENSOR_ID], [{}])
    pub = MqttPublisher(
        parse_mqtt_url(mqtt_url),
        [client_id],
        [f"sensors/{GATEWAY_ID}/telemetry"],
        qos=1,
        max_inflight=1000,
        max_pending=1000,
    )
    cpu0 = time.process_time()
    loop = asyncio.get_running_loop()
    max_lag_s = 0.0
    messages = sent = 0
    async with pub, asyncio.TaskGroup() as tg:
        tg.create_task(pub.maintain(), name="hotsensor-maintenance")
        if tl is None:
            tl = timeline(rate_per_s, duration_s, int(time.time() * 1000) + 50)
        if clock_url:
            await _post_clock(clock_url, tl)
        delay_s = tl.wall0_ms / 1000 - time.time()
        t0 = loop.time() + delay_s
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        while sent < total:
            n = min(batch_size, total - sent)
            due = t0 + (sent + n) / rate_per_s
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                max_lag_s = max(max_lag_s, now - due)
            while not pub.publish_nowait(0, _payload(tl, sent, n)):
                await pub.wait_room(0)
            idx = np.arange(sent, sent + n, dtype=np.int64)
            builder.add_valid(
                np.zeros(n, dtype=np.int64),
                tl.ts0_ms + idx * tl.step_ms,
                {
                    "temperature": 20.0 + (idx % 200) / 16,
                    "humidity": 40.0 + (idx % 64) / 4,
                },
            )
            sent += n
            messages += 1
        elapsed_s = loop.time() - t0
        unconfirmed = await pub.flush(flush_timeout_s)
        await pub.aclose()
    summary: dict[str, Any] = {
        "mode": "hot-sensor",
        "devices": 1,
        "connections": 1,
        "start_ts_ms": tl.ts0_ms,
        "target_rate_per_s": rate_per_s,
        "achieved_rate_per_s": sent / max(elapsed_s, 1e-9),
        "readings_generated": sent,
        "valid_readings": builder.valid_readings,
        "invalid_readings": 0,
        "messages_sent": messages,
        "messages_acked": pub.stats.messages_acked,
        "unconfirmed_messages": unconfirmed,
        "elapsed_s": elapsed_s,
        "max_lag_s": max_lag_s,
        "cpu_s": time.process_time() - cpu0,
        "complete": unconfirmed == 0,
    }
    return summary, builder, tl


async def _main(args: argparse.Namespace) -> int:
    fixed = timeline(args.rate, args.duration, args.start_wall_ms) if args.start_wall_ms else None
    summary, builder, tl = await publish(
        mqtt_url=args.mqtt_url,
        rate_per_s=args.rate,
        duration_s=args.duration,
        batch_size=args.batch_size,
        client_id=args.client_id,
        tl=fixed,
        clock_url=args.clock_url,
    )
    manifest = builder.build(
        run={**summary, "ts0_ms": tl.ts0_ms, "step_ms": tl.step_ms, "wall0_ms": tl.wall0_ms},
        totals={
            "readings_generated": summary["readings_generated"],
            "valid_readings": summary["valid_readings"],
            "invalid_readings": 0,
            "messages_sent": summary["messages_sent"],
            "messages_acked": summary["messages_acked"],
            "unconfirmed_messages": summary["unconfirmed_messages"],
        },
        faults={},
        invalid={"messages": 0},
        complete=bool(summary["complete"]),
    )
    if args.manifest:
        await asyncio.to_thread(save_manifest, manifest, Path(args.manifest))
    if args.json:
        print(orjson.dumps(summary).decode(), flush=True)
    return 0 if summary["complete"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Publish one hot sensor's readings (a gateway backlog) at a fixed rate."
    )
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--rate", type=float, default=2000.0, help="readings/s (default 2000)")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--batch-size", type=int, default=20, help="readings per message")
    parser.add_argument(
        "--start-wall-ms", type=int, help="scheduled start, epoch ms (default: once connected)"
    )
    parser.add_argument("--clock-url", help="POST the timeline here first (the sink's /_clock)")
    parser.add_argument("--client-id", default=f"sim-{GATEWAY_ID}")
    parser.add_argument("--manifest", help="write a simulator manifest here")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    args = parser.parse_args(argv)
    try:
        return run(_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
