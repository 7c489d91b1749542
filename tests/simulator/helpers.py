"""Helpers of the simulator tests: what a subscriber received, summarised like a manifest."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingest.pipeline.codec import Limits, PayloadDecoder
from simulator.fleet import Fleet
from simulator.generator import TrafficGenerator, TrafficOptions
from simulator.manifest import Manifest, reading_digest

MASK = 0xFFFFFFFFFFFFFFFF
START_TS_MS = 1_763_780_000_000


@dataclass
class Received:
    """Readings decoded from messages with the ingest codec, per sensor, duplicates collapsed."""

    sensors: dict[str, dict[int, int]] = field(default_factory=dict)  # sid -> ts -> digest
    rejected_messages: int = 0
    messages: int = 0
    conflicts: list[tuple[str, int]] = field(default_factory=list)  # same key, other values

    def summary(self, sensor_id: str) -> dict[str, Any]:
        readings = self.sensors.get(sensor_id, {})
        return {
            "count": len(readings),
            "first_ts": min(readings) if readings else None,
            "last_ts": max(readings) if readings else None,
            "checksum": f"{sum(readings.values()) & MASK:016x}",
        }


def decode_messages(
    messages: Iterable[tuple[str, bytes]], *, received_ms: int | None = None, topic_level: int = 1
) -> Received:
    """Decode (topic, payload) pairs as the ingest service would."""
    decoder = PayloadDecoder(sensor_topic_level=topic_level, limits=Limits(max_past_ms=10**13))
    now_ms = received_ms if received_ms is not None else int(time.time() * 1000)
    out = Received()
    for topic, payload in messages:
        out.messages += 1
        readings, rejections = decoder.decode(topic, payload, now_ms)
        if rejections:
            assert not readings, f"a message mixes valid and invalid readings: {payload[:200]!r}"
            out.rejected_messages += 1
        for r in readings:
            digest = reading_digest(r.sensor_id, r.ts_ms, r.metrics, r.tags)
            per = out.sensors.setdefault(r.sensor_id, {})
            if per.get(r.ts_ms, digest) != digest:
                out.conflicts.append((r.sensor_id, r.ts_ms))
            per[r.ts_ms] = digest
    return out


def assert_matches_manifest(received: Received, manifest: Manifest) -> None:
    """The manifest records exactly what was received: per sensor and invalid messages."""
    assert received.conflicts == []
    mismatched = {
        sid: (received.summary(sid), rec)
        for sid, rec in manifest["sensors"].items()
        if received.summary(sid) != {k: v for k, v in rec.items() if k != "span"}
    }
    assert mismatched == {}
    assert set(received.sensors) <= set(manifest["sensors"])
    assert received.rejected_messages == manifest["invalid"]["messages"]


def generate_all(
    fleet: Fleet, options: TrafficOptions
) -> tuple[TrafficGenerator, list[tuple[int, bytes]]]:
    """Run a generator to its end without a network: (generator, [(connection, payload)])."""
    gen = TrafficGenerator(fleet, options)
    out: list[tuple[int, bytes]] = []
    while not gen.done:
        out += [(m.conn, m.payload) for m in gen.tick()]
    out += [(m.conn, m.payload) for m in gen.drain()]
    return gen, out


class Subscriber:
    """A paho-mqtt subscriber on a background thread (an independent MQTT implementation).

    Args:
        url: ``mqtt://host:port``.
        topic_filter: What to subscribe to (QoS 1).
    """

    def __init__(self, url: str, topic_filter: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:12]}"
        )
        self._client.on_message = lambda _c, _u, msg: self.messages.put(
            (msg.topic, bytes(msg.payload))
        )
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect(host, int(port))
        self._client.loop_start()
        self._client.subscribe(topic_filter, qos=1)
        if not self._subscribed.wait(10):
            self.close()
            raise TimeoutError("no SUBACK within 10 s")

    def collect(self, expected: int, *, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
        """Wait for ``expected`` messages (or the timeout), then take any stragglers (blocking)."""
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            try:
                out.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                break
        while True:  # anything beyond what was expected would be a bug: look for it briefly
            try:
                out.append(self.messages.get(timeout=0.3))
            except queue.Empty:
                return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def payload_readings(payload: bytes) -> list[dict[str, Any]]:
    """The reading objects of a valid payload (one, or a batch)."""
    doc = orjson.loads(payload)
    return list(doc["readings"]) if "readings" in doc else [doc]
