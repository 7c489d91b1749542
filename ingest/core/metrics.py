"""Prometheus metrics and the health endpoints (/metrics, /healthz, /readyz).

Each service instance owns its registry, so tests can run several side by side.
Counters are bumped per chunk or per batch, not per reading, to keep the hot
path lean.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, cast

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ingest.core.lifecycle import StartClose

__all__ = ["Exposition", "HealthServer", "Metrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """All metrics of one ingest service."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "iot_ingest_"
        self.messages_received = Counter(
            p + "messages_received", "MQTT messages received", registry=r
        )
        self.messages_acked = Counter(
            p + "messages_completed",
            "Messages fully durable (and acknowledged if QoS 1 and still connected)",
            registry=r,
        )
        self.messages_acknowledged = Counter(
            p + "messages_acknowledged",
            "QoS 1/2 messages acknowledged (PUBACK or PUBREC written to the connection)",
            registry=r,
        )
        self.messages_unacknowledged = Counter(
            p + "messages_unacknowledged",
            "QoS 1/2 messages complete but not acknowledged (their connection had ended: "
            "the broker redelivers them, and their rewrite is an overwrite)",
            registry=r,
        )
        self.readings_received = Counter(
            p + "readings_decoded", "Valid readings decoded", registry=r
        )
        self.items_written = Counter(
            p + "items_written", "Items durably written to DynamoDB", registry=r
        )
        self.write_requests = Counter(
            p + "write_requests", "Successful BatchWriteItem calls", registry=r
        )
        self.write_retries = Counter(
            p + "write_retries", "Write retries by cause", ["cause"], registry=r
        )
        self.startup_retries = Counter(
            p + "startup_retries",
            "Start attempts that failed and were retried (DynamoDB not answering), by cause",
            ["cause"],
            registry=r,
        )
        self.unprocessed_items = Counter(
            p + "unprocessed_items", "Items returned as UnprocessedItems", registry=r
        )
        self.write_rejected = Counter(
            p + "write_rejected", "Batches DynamoDB rejected as invalid", registry=r
        )
        self.write_gave_up = Counter(
            p + "write_gave_up", "Items dead-lettered after the retry deadline", registry=r
        )
        self.dead_letters = Counter(
            p + "dead_letters", "Dead letters kept, by stage", ["stage"], registry=r
        )
        self.deadletter_errors = Counter(
            p + "deadletter_errors", "Failed dead-letter spool writes", registry=r
        )
        self.deadletter_rollbacks = Counter(
            p + "deadletter_rollbacks",
            "Failed spool writes whose bytes were removed (truncated back) before retrying",
            registry=r,
        )
        self.deadletter_write_seconds = Histogram(
            p + "deadletter_write_seconds",
            "Dead-letter spool append + fsync duration per group",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.deadletter_write_pending = Gauge(
            p + "deadletter_write_pending_seconds",
            "Age of the spool write in progress (0 when idle): a stalled disk shows here",
            registry=r,
        )
        self.batch_size = Histogram(
            p + "batch_items",
            "Items per BatchWriteItem",
            buckets=(1, 2, 5, 10, 15, 20, 25),
            registry=r,
        )
        self.write_seconds = Histogram(
            p + "write_seconds",
            "BatchWriteItem call duration",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.durable_latency = Histogram(
            p + "receive_to_durable_seconds",
            "Receive → durable latency per message",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inbox_depth = Gauge(
            p + "inbox_messages", "Received messages waiting to decode", registry=r
        )
        self.write_queue_depth = Gauge(
            p + "write_queue_batches", "Batches waiting for a writer", registry=r
        )
        self.unacked = Gauge(
            p + "unacked_messages", "Messages received and not yet complete", registry=r
        )
        self.mqtt_connected = Gauge(
            p + "mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.mqtt_reconnects = Counter(p + "mqtt_reconnects", "Reconnect attempts", registry=r)
        self.mqtt_resends_dropped = Counter(
            p + "mqtt_resends_dropped",
            "PUBLISH copies a broker resent on the same connection while the first was pending "
            "or done (not tracked twice; counted when the connection ends)",
            registry=r,
        )
        self.registry_updates = Counter(
            p + "registry_updates", "Sensor registry item updates", registry=r
        )
        # The packed layout's write stage (decision 0008).
        self.windows_open = Gauge(
            p + "windows_open", "Sensor windows held in memory, not sealed yet", registry=r
        )
        self.window_oldest_seconds = Gauge(
            p + "window_oldest_seconds",
            "Age of the oldest reading not sealed yet (its journal items must outlive it)",
            registry=r,
        )
        self.stage_items = Counter(
            p + "stage_items", "Staging items written (packed layout)", registry=r
        )
        self.sealed_parts = Counter(
            p + "sealed_parts", "Sealed window parts written (packed layout)", registry=r
        )
        self.journal_recovered = Counter(
            p + "journal_recovered_readings",
            "Readings read back from the journal into open windows at start",
            registry=r,
        )
        self.window_write_retries = Counter(
            p + "window_write_retries",
            "Retried staging, seal and checkpoint writes, by what was written",
            ["what"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Exposition(Protocol):
    """Anything with a Prometheus text exposition (:class:`Metrics`, the archive's metrics)."""

    def render(self) -> bytes: ...


class HealthServer(StartClose):
    """Serves /metrics, /healthz (process alive) and /readyz (able to ingest).

    Args:
        metrics: What /metrics renders.
        ready: Returns (ready, reasons-not-ready).
        host: Bind address.
        port: Port (0: a free one; see ``.port`` after start).
    """

    def __init__(
        self,
        metrics: Exposition,
        ready: Callable[[], tuple[bool, list[str]]],
        *,
        host: str,
        port: int,
    ) -> None:
        self._metrics = metrics
        self._ready = ready
        self._host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Serve (``async with`` does it); :attr:`port` is the bound one afterwards."""
        app = web.Application()
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/healthz", self._get_health)
        app.router.add_get("/readyz", self._get_ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self.port)
        await site.start()
        server = cast(asyncio.Server | None, site._server)
        if server is not None and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        log.info("metrics and health on http://%s:%d/metrics", self._host, self.port)

    async def aclose(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _get_metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _get_health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _get_ready(self, _: web.Request) -> web.Response:
        ok, reasons = self._ready()
        return web.json_response({"ready": ok, "reasons": reasons}, status=200 if ok else 503)
