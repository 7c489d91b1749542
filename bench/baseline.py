"""The baseline: the naive MQTT → DynamoDB pipeline a user would write with the same libraries.

It is what the load run compares the service with, in the same run, on the same
traffic and machine. Deliberately ordinary, and correct on valid data:

* **aiomqtt 2.5** with its defaults: QoS 1 messages are acknowledged as soon as
  they arrive (before anything is stored), and queued without bound;
* ``json.loads(payload, parse_float=Decimal)`` (the boto3 idiom: the type
  serializer refuses floats), one reading or ``{"readings": [...]}``;
* one item per reading, keys from :class:`ingest.storage.layout.TableLayout` (the same
  key layout, so the sink and ``verify`` see the same keys), values converted
  with boto3's ``TypeSerializer``;
* boto3-style batching: collect 25 items, ``batch_write_item`` with an
  **aiobotocore client on its default config**, resend ``UnprocessedItems``
  with a doubling sleep; one write at a time; a partial batch is flushed every
  200 ms so the tail of a run is not held back;
* ``asyncio.run`` (no uvloop).

It does not validate input beyond what it needs, does not dead-letter, and
loses whatever it acknowledged but had not written when it dies: that is the
point of comparison, not a recommendation.

For the harness it serves ``GET /stats`` (JSON counters: messages, readings,
items, requests) on ``--stats-port`` and prints ``READY`` once subscribed; on
SIGTERM it flushes what it holds and exits.

Run: ``python -m bench.baseline --mqtt-url mqtt://127.0.0.1:1883 --topic
'$share/bench/sensors/+/telemetry' --table T --dynamodb-endpoint URL --stats-port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ingest.storage.layout import TableLayout

__all__ = [
    "BATCH_ITEMS",
    "FLUSH_EVERY_S",
    "BaselineConfig",
    "BaselineStats",
    "NaiveConverter",
    "main",
    "plain_serialize",
    "run_baseline",
]

BATCH_ITEMS = 25
FLUSH_EVERY_S = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineConfig:
    """Where the baseline reads and writes.

    Attributes:
        mqtt_url: Broker, ``mqtt://HOST:PORT``.
        topic: Subscription (a ``$share/...`` filter for several workers).
        sensor_topic_level: Topic level of the sensor id, counted in the topic *name*.
        table: DynamoDB table.
        endpoint_url: DynamoDB endpoint.
        region: AWS region.
        client_id: MQTT client id.
    """

    mqtt_url: str
    topic: str
    table: str
    endpoint_url: str | None
    region: str = "us-east-1"
    sensor_topic_level: int = 1
    client_id: str = "baseline"


@dataclass(slots=True)
class BaselineStats:
    """Counters of a baseline run."""

    messages: int = 0
    readings: int = 0
    items_written: int = 0
    write_requests: int = 0
    unprocessed_resent: int = 0
    errors: int = 0
    started_s: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "readings": self.readings,
            "items_written": self.items_written,
            "write_requests": self.write_requests,
            "unprocessed_resent": self.unprocessed_resent,
            "errors": self.errors,
            "uptime_s": time.time() - self.started_s,
        }


def plain_serialize(value: Any) -> dict[str, Any]:
    """A plain Python value → DynamoDB attribute value (the part of TypeSerializer used here)."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | Decimal):
        return {"N": str(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {k: plain_serialize(v) for k, v in value.items()}}
    raise TypeError(f"unsupported type {type(value).__name__} for a DynamoDB attribute")


class NaiveConverter:
    """Payload → DynamoDB items, the way the boto3 documentation suggests.

    Args:
        layout: Key layout (shared with the service, so keys are identical).
        sensor_topic_level: Topic level of the sensor id.
    """

    def __init__(self, layout: TableLayout, sensor_topic_level: int = 1) -> None:
        self.layout = layout
        self.level = sensor_topic_level
        try:
            # boto3 is not a dependency of the project; moto brings it. Imported by name
            # because it ships no type information.
            types = importlib.import_module("boto3.dynamodb.types")
            self.serialize: Callable[[Any], dict[str, Any]] = types.TypeSerializer().serialize
        except ModuleNotFoundError:
            self.serialize = plain_serialize

    def items(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        """The items of one message (one per reading)."""
        doc = json.loads(payload, parse_float=Decimal)
        readings = doc.get("readings", [doc])
        topic_sensor = topic.split("/")[self.level]
        out = []
        for r in readings:
            sensor_id = r.get("sensor_id") or doc.get("sensor_id") or topic_sensor
            ts = int(r.get("ts") or time.time() * 1000)
            metrics = {}
            tags = {}
            for k, v in r.items():
                if k in ("ts", "sensor_id"):
                    continue
                if isinstance(v, str):
                    tags[k] = v
                elif isinstance(v, int | Decimal) and not isinstance(v, bool):
                    metrics[k] = v
            item: dict[str, Any] = {
                "pk": self.layout.partition_key(sensor_id, ts),
                "sk": ts,
                "ttl": self.layout.ttl_of(ts),
                "m": metrics,
            }
            if tags:
                item["g"] = tags
            out.append({k: self.serialize(v) for k, v in item.items()})
        return out


async def _write(
    client: Any, table: str, items: list[dict[str, Any]], stats: BaselineStats
) -> None:
    request: dict[str, Any] = {table: [{"PutRequest": {"Item": it}} for it in items]}
    attempt = 0
    while request:
        sent = sum(len(v) for v in request.values())
        resp = await client.batch_write_item(RequestItems=request)
        stats.write_requests += 1
        request = resp.get("UnprocessedItems") or {}
        left = sum(len(v) for v in request.values())
        stats.items_written += sent - left
        if request:
            stats.unprocessed_resent += left
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
            attempt += 1


async def run_baseline(
    cfg: BaselineConfig,
    stop: asyncio.Event,
    *,
    stats: BaselineStats | None = None,
    on_ready: Any = None,
) -> BaselineStats:
    """Consume until ``stop`` is set, then write what is held and return the counters."""
    import aiomqtt
    from aiobotocore.session import get_session

    stats = stats if stats is not None else BaselineStats()
    layout = TableLayout()
    convert = NaiveConverter(layout, cfg.sensor_topic_level)
    url = urlsplit(cfg.mqtt_url)
    buffer: list[dict[str, Any]] = []
    lock = asyncio.Lock()

    session = get_session()
    async with (
        session.create_client(
            "dynamodb", region_name=cfg.region, endpoint_url=cfg.endpoint_url
        ) as dynamodb,
        aiomqtt.Client(
            url.hostname or "127.0.0.1", url.port or 1883, identifier=cfg.client_id
        ) as mqtt,
    ):

        async def flush(all_items: bool) -> None:
            async with lock:
                while len(buffer) >= BATCH_ITEMS or (all_items and buffer):
                    chunk = buffer[:BATCH_ITEMS]
                    del buffer[:BATCH_ITEMS]
                    await _write(dynamodb, cfg.table, chunk, stats)

        async def consume() -> None:
            async for message in mqtt.messages:
                stats.messages += 1
                items = convert.items(str(message.topic), bytes(message.payload))
                stats.readings += len(items)
                buffer.extend(items)
                if len(buffer) >= BATCH_ITEMS:
                    await flush(False)

        async def flush_periodically() -> None:
            while True:
                await asyncio.sleep(FLUSH_EVERY_S)
                await flush(True)

        await mqtt.subscribe(cfg.topic, qos=1)
        if on_ready is not None:
            on_ready()
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(consume(), name="baseline-consume")
            flusher = tg.create_task(flush_periodically(), name="baseline-flush")
            await stop.wait()
            # Holding the lock, the tasks can only be waiting for a message or for the
            # lock: a write in flight finishes (and is counted) before they are cancelled.
            async with lock:
                consumer.cancel()
                flusher.cancel()
        await flush(True)
    return stats


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = BaselineStats()
    app = web.Application()

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats.as_dict())

    app.router.add_get("/stats", get_stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", args.stats_port).start()
        cfg = BaselineConfig(
            mqtt_url=args.mqtt_url,
            topic=args.topic,
            table=args.table,
            endpoint_url=args.dynamodb_endpoint,
            region=args.region,
            sensor_topic_level=args.sensor_topic_level,
            client_id=args.client_id,
        )
        await run_baseline(cfg, stop, stats=stats, on_ready=lambda: print("READY", flush=True))
    finally:
        await runner.cleanup()
    print(json.dumps(stats.as_dict()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Baseline: the naive aiomqtt + aiobotocore pipeline (for benchmarks)"
    )
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--topic", default="sensors/+/telemetry")
    parser.add_argument("--sensor-topic-level", type=int, default=1)
    parser.add_argument("--table", required=True)
    parser.add_argument("--dynamodb-endpoint")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--client-id", default="baseline")
    parser.add_argument("--stats-port", type=int, required=True)
    args = parser.parse_args(argv)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
