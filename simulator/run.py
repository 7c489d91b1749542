"""One simulation run: connect, publish tick by tick on schedule, drain, flush, write the manifest.

A single :class:`asyncio.TaskGroup` owns the run's tasks: the producer (the
scheduled-tick loop), the publisher's maintenance (reconnects) and, when
asked for, the progress reporter. The producer sends tick ``j`` when the wall
clock reaches the end of that tick, computed from the run's start (so errors
never accumulate); when it falls behind it catches up tick by tick and reports
how far behind it got (``max_lag_s``). Backpressure is the publisher's bounded
per-connection queues: a slow broker slows the producer down, it never makes
memory grow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.mqtt import proto as mp
from simulator.errors import SimConfigError
from simulator.fleet import Fleet
from simulator.generator import Outgoing, TrafficGenerator, TrafficOptions
from simulator.manifest import Manifest, save_manifest
from simulator.publisher import MqttPublisher, Publisher, parse_mqtt_url

__all__ = [
    "DEFAULT_TOPICS",
    "PROTOCOL_VERSIONS",
    "Progress",
    "RunSummary",
    "SimulationConfig",
    "run_simulation",
]

log = logging.getLogger(__name__)

PROTOCOL_VERSIONS = {"3.1.1": mp.V311, "5": mp.V5}
DEFAULT_TOPICS = {
    "device": "sensors/{sensor_id}/telemetry",
    "gateway": "sensors/{gateway_id}/telemetry",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationConfig:
    """Everything a run needs; validated by the constructors of its parts.

    Args:
        fleet: The devices.
        traffic: Seed, mode, limits, faults (see :class:`TrafficOptions`).
        mqtt_url: Broker URL.
        qos: 0 or 1.
        protocol_version: ``"3.1.1"`` or ``"5"``.
        topic_pattern: Topic of each connection, with ``{sensor_id}`` (device mode) or
            ``{gateway_id}`` (gateway mode); None for the defaults in :data:`DEFAULT_TOPICS`.
        client_id_prefix: MQTT client id = prefix + the device's or gateway's id.
        max_inflight: Unacknowledged QoS 1 messages per connection.
        max_pending: Queued messages per connection before the producer waits
            (None: 100 in device mode, 1000 in gateway mode).
        connect_concurrency: Connections opened at once.
        flush_timeout_s: How long to wait for the last acknowledgements.
        realtime: Follow the wall clock (False: send as fast as possible, for throughput tests).
        manifest_path: Where to write the manifest (None: not written).
    """

    fleet: Fleet
    traffic: TrafficOptions
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    qos: int = 1
    protocol_version: str = "3.1.1"
    topic_pattern: str | None = None
    client_id_prefix: str = "sim-"
    max_inflight: int = 100
    max_pending: int | None = None
    connect_concurrency: int = 64
    flush_timeout_s: float = 30.0
    realtime: bool = True
    manifest_path: Path | None = None

    def topic_for(self, conn_id: str) -> str:
        pattern = self.topic_pattern or DEFAULT_TOPICS[self.traffic.mode]
        try:
            topic = pattern.format(sensor_id=conn_id, gateway_id=conn_id, id=conn_id)
        except (KeyError, IndexError, ValueError) as exc:
            raise SimConfigError(
                f"--topic-pattern {pattern!r}: use {{sensor_id}} or {{gateway_id}} ({exc!r})"
            ) from None
        if "+" in topic or "#" in topic or not topic:
            raise SimConfigError(f"--topic-pattern {pattern!r} makes topic {topic!r}: no wildcards")
        return topic


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for the progress display."""

    elapsed_s: float
    readings: int
    messages: int
    acked: int
    errors: int
    rate_per_s: float
    target_rate_per_s: float
    lag_s: float
    queued: int


@dataclass(slots=True, kw_only=True)
class RunSummary:
    """What a run did (printed with ``--json``, and the manifest's ``run`` section)."""

    mode: str
    devices: int
    connections: int
    seed: int
    start_ts_ms: int
    target_rate_per_s: float
    scheduled_rate_per_s: float
    achieved_rate_per_s: float
    readings_generated: int
    valid_readings: int
    invalid_readings: int
    readings_sent: int
    messages_sent: int
    messages_acked: int
    messages_rejected: int
    unconfirmed_messages: int
    bytes_sent: int
    connections_lost: int
    reconnects: int
    connect_s: float
    elapsed_s: float
    logical_duration_s: float
    max_lag_s: float
    cpu_s: float
    interrupted: bool
    faults: dict[str, int] = field(default_factory=dict)
    manifest: str | None = None

    @property
    def complete(self) -> bool:
        """Every message reached the broker (acknowledged, for QoS 1)."""
        return self.unconfirmed_messages == 0 and self.messages_rejected == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["complete"] = self.complete
        return d


def _build_publisher(config: SimulationConfig, gen: TrafficGenerator) -> MqttPublisher:
    conn_ids = gen.connection_ids()
    version = PROTOCOL_VERSIONS.get(config.protocol_version)
    if version is None:
        raise SimConfigError(
            f"--protocol-version {config.protocol_version!r}: "
            f"use one of {', '.join(PROTOCOL_VERSIONS)}"
        )
    default_pending = 1000 if gen.gateway else 100
    return MqttPublisher(
        parse_mqtt_url(config.mqtt_url),
        [config.client_id_prefix + c for c in conn_ids],
        [config.topic_for(c) for c in conn_ids],
        qos=config.qos,
        version=version,
        max_inflight=config.max_inflight,
        max_pending=config.max_pending or default_pending,
        connect_concurrency=config.connect_concurrency,
    )


class _Runner:
    """The state shared by the run's tasks."""

    def __init__(self, config: SimulationConfig, gen: TrafficGenerator, pub: Publisher) -> None:
        self.config = config
        self.gen = gen
        self.pub = pub
        self.stop = asyncio.Event()
        self.produced = asyncio.Event()
        self.t0 = 0.0
        self.t_last_send = 0.0
        self.max_lag_s = 0.0
        self.lag_s = 0.0
        self.readings = 0
        self.messages = 0

    async def send(self, messages: list[Outgoing]) -> None:
        pub = self.pub
        for m in messages:
            while not pub.publish_nowait(m.conn, m.payload):
                await pub.wait_room(m.conn)
        self.messages += len(messages)
        self.readings += sum(m.readings for m in messages)

    async def produce(self) -> None:
        loop = asyncio.get_running_loop()
        gen = self.gen
        tick_s = gen.options.tick_s
        realtime = self.config.realtime
        self.t0 = loop.time()
        try:
            while not gen.done and not self.stop.is_set():
                due = self.t0 + (gen.next_tick + 1) * tick_s
                now = loop.time()
                if realtime and due > now:
                    await asyncio.sleep(due - now)
                    continue
                self.lag_s = max(0.0, now - due) if realtime else 0.0
                self.max_lag_s = max(self.max_lag_s, self.lag_s)
                await self.send(gen.tick())
                self.t_last_send = loop.time()
                if not realtime or self.lag_s > tick_s:
                    await asyncio.sleep(0)  # let acknowledgements and progress in while catching up
            await self.send(gen.drain())
            self.t_last_send = loop.time()
        finally:
            self.produced.set()

    async def report(self, on_progress: Callable[[Progress], None], interval_s: float) -> None:
        loop = asyncio.get_running_loop()
        last_t, last_n = loop.time(), 0
        target = self.gen.fleet.total_rate_per_s
        while not self.produced.is_set():
            try:
                async with asyncio.timeout(interval_s):
                    await self.produced.wait()
            except TimeoutError:
                pass
            now = loop.time()
            stats = self.pub.stats
            rate = (self.readings - last_n) / max(now - last_t, 1e-9)
            last_t, last_n = now, self.readings
            on_progress(
                Progress(
                    elapsed_s=now - self.t0,
                    readings=self.readings,
                    messages=self.messages,
                    acked=stats.messages_acked,
                    errors=stats.errors,
                    rate_per_s=rate,
                    target_rate_per_s=target * self.gen.options.profile.multiplier(now - self.t0),
                    lag_s=self.lag_s,
                    queued=getattr(self.pub, "queued", 0),
                )
            )


async def run_simulation(
    config: SimulationConfig,
    *,
    publisher: Publisher | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval_s: float = 0.25,
    stop: asyncio.Event | None = None,
) -> tuple[RunSummary, Manifest]:
    """Run a simulation to its duration or count limit (or until ``stop`` is set).

    Args:
        config: The run.
        publisher: Transport (None: an :class:`MqttPublisher` to ``config.mqtt_url``).
        on_progress: Called with a :class:`Progress` every ``progress_interval_s``.
        progress_interval_s: Progress period.
        stop: Set it to end the run early; what was generated is still drained,
            flushed and recorded.

    Returns:
        The summary and the manifest (also written to ``config.manifest_path``).

    Raises:
        SimConfigError: An option is invalid.
        PublishError: The broker cannot be reached or refuses the connections.
    """
    if config.traffic.duration_s is None and config.traffic.count_limit is None and stop is None:
        raise SimConfigError(
            "give --duration or --count-limit (or run it from the CLI and press Ctrl-C)"
        )
    gen = TrafficGenerator(config.fleet, config.traffic)
    pub: Publisher = publisher if publisher is not None else _build_publisher(config, gen)
    started_at = datetime.now(UTC)
    cpu0 = time.process_time()
    runner = _Runner(config, gen, pub)
    if stop is not None:
        runner.stop = stop
    loop = asyncio.get_running_loop()
    t_connect = loop.time()
    async with pub:
        connect_s = loop.time() - t_connect
        log.info(
            "simulating %d devices over %d connection(s), %s mode, %.0f readings/s",
            len(config.fleet),
            gen.connections,
            gen.options.mode,
            config.fleet.total_rate_per_s,
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(pub.maintain(), name="sim-publisher-maintenance")
            if on_progress is not None:
                tg.create_task(runner.report(on_progress, progress_interval_s), name="sim-progress")
            await runner.produce()
            unconfirmed = await pub.flush(config.flush_timeout_s)
            await pub.aclose()
    elapsed_s = max(runner.t_last_send - runner.t0, 1e-9)
    stats = pub.stats
    logical_s = gen.next_tick * gen.options.tick_s
    summary = RunSummary(
        mode=gen.options.mode,
        devices=len(config.fleet),
        connections=gen.connections,
        seed=gen.options.seed,
        start_ts_ms=gen.options.start_ts_ms,
        target_rate_per_s=config.fleet.total_rate_per_s,
        scheduled_rate_per_s=gen.readings_generated / logical_s if logical_s else 0.0,
        achieved_rate_per_s=gen.readings_generated / elapsed_s,
        readings_generated=gen.readings_generated,
        valid_readings=gen.manifest.valid_readings,
        invalid_readings=int(sum(gen.invalid_counts.values())),
        readings_sent=runner.readings,
        messages_sent=stats.messages_sent,
        messages_acked=stats.messages_acked,
        messages_rejected=stats.messages_rejected,
        unconfirmed_messages=unconfirmed,
        bytes_sent=stats.bytes_sent,
        connections_lost=stats.connections_lost,
        reconnects=stats.reconnects,
        connect_s=connect_s,
        elapsed_s=loop.time() - runner.t0,
        logical_duration_s=logical_s,
        max_lag_s=runner.max_lag_s,
        cpu_s=time.process_time() - cpu0,
        interrupted=runner.stop.is_set(),
        faults=gen.fault_summary(),
        manifest=str(config.manifest_path) if config.manifest_path else None,
    )
    run_info = {
        **{k: v for k, v in summary.to_dict().items() if k not in ("faults", "manifest")},
        "started_at": started_at.isoformat(),
        "mqtt_url": parse_mqtt_url(config.mqtt_url).url if publisher is None else None,
        "qos": config.qos,
        "protocol_version": config.protocol_version,
        "topic_pattern": config.topic_pattern or DEFAULT_TOPICS[gen.options.mode],
        "tick_ms": gen.options.tick_s * 1000,
        "gateways": gen.options.gateways if gen.gateway else None,
        "batch_size": gen.options.batch_size if gen.gateway else None,
        "sensor_id_separator": gen.options.sensor_id_separator if gen.gateway else None,
        "duration_s": gen.options.duration_s,
        "count_limit": gen.options.count_limit,
        "kinds": sorted(set(config.fleet.kinds)),
        "fault_config": asdict(gen.options.faults),
    }
    manifest = gen.build_manifest(
        run=run_info,
        totals={
            "messages_sent": stats.messages_sent,
            "messages_acked": stats.messages_acked,
            "unconfirmed_messages": unconfirmed,
        },
        complete=summary.complete,
    )
    if config.manifest_path is not None:
        await asyncio.to_thread(save_manifest, manifest, config.manifest_path)
    return summary, manifest
