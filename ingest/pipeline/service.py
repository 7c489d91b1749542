"""The ingest service: every stage under one task group, started and drained in order.

Start: (embedded servers in trial mode) → health server → DynamoDB clients,
table check, known sensors → task group {receiver, decoder, writers×N,
dead-letter spool, registry}. While DynamoDB does not answer (unreachable,
throttled, 5xx, credentials not there yet) the start is retried with the write
backoff for up to ``startup_retry_deadline_s`` (0: forever), with ``/readyz``
false and saying why, and without subscribing, so the broker keeps the
session's messages; ``stop`` ends the wait at once
(:func:`ingest.core.lifecycle.unless_stopped`). What waiting cannot heal (a
missing table, another layout, access denied) fails at once.

The stages are built in the order data flows, each given its collaborators:
the receiver (which owns the ack tracker: its epochs are the receiver's
connections), the dead-letter spool, the registry, the writer, the decoder.
Nothing is wired in afterwards and no stage has its attributes set from outside.

Stop (SIGTERM/SIGINT → ``stop`` event) is one protocol, each step waiting for
the one before, all within ``shutdown_timeout_s``:

1. **Stop reading**: :meth:`Receiver.stop_intake` pauses the socket, stops
   reconnecting and closes the inbox. The connection stays open for the PUBACKs.
2. **Decode what is in the inbox**: closing the inbox is the decoder's end of
   stream; it decodes every chunk still there, flushes the open batch and returns
   (:meth:`DecodeStage.run`).
3. **Flush the batches**: the write queue is joined (every batch written or
   dead-lettered), then the dead-letter spool (every letter fsync'ed).
4. **Flush the registry**: before the acknowledgements, because a message may
   hold its acknowledgement for a registry write.
5. **Wait for the acks**: every tracked message complete, its PUBACK released in
   arrival order on the connection it came from.
6. **Disconnect**: every stage still running is cancelled and ended (writers,
   spool, registry: waiting for work, or cut short by the deadline), then
   :meth:`Receiver.aclose` sends DISCONNECT (keeping the session). No message
   completes after the DISCONNECT, so the last log line and the counters
   ``iot_ingest_messages_acknowledged_total`` / ``_unacknowledged_total`` are exact.

Whatever is not durable by the deadline stays unacknowledged, and the broker
redelivers it on the next start; what was written and acknowledged before is
sent (DISCONNECT runs in a ``finally``, also when the drain is cancelled). A
second ``stop`` changes nothing: the drain is under way and keeps its order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from pathlib import Path

from ingest.config import Config
from ingest.core.errors import DynamoError, DynamoUnreachable
from ingest.core.gctune import tuned_gc
from ingest.core.lifecycle import StopRequested, unless_stopped
from ingest.core.metrics import HealthServer, Metrics
from ingest.core.retry import Backoff
from ingest.mqtt.client import MqttSettings
from ingest.pipeline.acks import AckTracker
from ingest.pipeline.batcher import Batch, Batcher, Placer, ReadingPlacer
from ingest.pipeline.codec import Limits, PayloadDecoder
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.pipeline.decode import DecodeStage, Inbox
from ingest.pipeline.packing import JournalPlacer, OpenWindows, WindowWriter
from ingest.pipeline.receiver import Receiver
from ingest.pipeline.registry import SensorRegistry
from ingest.pipeline.writer import Writer
from ingest.storage.dynamo import DynamoClient, TableClient, is_transient
from ingest.storage.dynamohttp import LeanDynamoClient
from ingest.storage.journal import JournalSequence
from ingest.storage.layout import TableLayout
from ingest.storage.registry import known_sensors
from ingest.storage.spool import DeadLetter
from ingest.storage.table import create_table, ensure_layout
from ingest.storage.windows import WindowScheme

__all__ = ["PACKET_HEADROOM_BYTES", "IngestService", "layout_from_config", "mqtt_settings"]

PACKET_HEADROOM_BYTES = 65_536 + 64
"""MQTT packet bytes allowed beyond ``max_message_bytes``: a topic (≤ 65,535 bytes), the
packet id and properties."""

log = logging.getLogger(__name__)


def layout_from_config(cfg: Config) -> TableLayout:
    """The table layout of ``cfg``'s ``dynamodb`` section."""
    table = cfg.dynamodb
    return TableLayout(
        bucket_ms=table.bucket_minutes * 60_000,
        shards=table.shards,
        retention_days=table.retention_days,
        kind=table.layout,
        window_ms=table.window_seconds * 1000,
        groups=table.staging_groups,
        stage_ms=table.stage_interval_ms,
    )


def mqtt_settings(cfg: Config, url: str) -> MqttSettings:
    """Connection settings from the ``mqtt`` section and the (possibly embedded) broker URL.

    Packets have room for the topic and properties around the largest payload accepted; a
    larger payload arrives truncated and is refused as oversize (never buffered whole).
    """
    return cfg.mqtt.client_settings(
        url, max_packet_bytes=cfg.limits.max_message_bytes + PACKET_HEADROOM_BYTES
    )


class IngestService:
    """One ingest worker.

    Args:
        config: Validated configuration.
        mqtt_url: Broker URL (defaults to ``config.mqtt.mqtt_url``; the CLI passes the embedded one).
        dynamodb_endpoint: DynamoDB endpoint (defaults to ``config.aws.dynamodb_endpoint``).
        create_table: Create the table if missing (defaults to ``config.dynamodb.create_table``).
    """

    def __init__(
        self,
        config: Config,
        *,
        mqtt_url: str | None = None,
        dynamodb_endpoint: str | None = None,
        create_table: bool | None = None,
    ) -> None:
        self.config = config
        url = mqtt_url or config.mqtt.mqtt_url
        if url is None:
            raise ValueError("IngestService needs a broker URL (the CLI starts an embedded one)")
        self.mqtt_url = url
        self._endpoint = dynamodb_endpoint or config.aws.dynamodb_endpoint
        self._create = config.dynamodb.create_table if create_table is None else create_table
        self.metrics = Metrics()
        self.layout = layout_from_config(config)
        self.health_port: int | None = None
        self._receiver: Receiver | None = None
        self._writer: Writer | None = None
        self._spool: DeadLetterSpool | None = None
        self._packed: tuple[WindowWriter, JournalSequence] | None = None
        self._starting: str | None = f"starting: checking DynamoDB table {config.dynamodb.table!r}"

    def readiness(self) -> tuple[bool, list[str]]:
        if self._starting is not None:
            return False, [self._starting]
        reasons = []
        if self._receiver is None or not self._receiver.connected.is_set():
            last = self._receiver.last_error if self._receiver else None
            reasons.append(f"not connected to the MQTT broker{': ' + last if last else ''}")
        if self._writer is not None and not self._writer.healthy:
            reasons.append("DynamoDB writes are failing (retrying)")
        if self._packed is not None and not self._packed[0].healthy:
            reasons.append("staging or seal writes are failing (retrying; the journal holds them)")
        if self._spool is not None and not self._spool.healthy:
            reasons.append(f"dead-letter spool cannot write: {self._spool.last_error}")
        return not reasons, reasons

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, then drain and return.

        Raises:
            TableError: The table is missing (without ``create_table``), has another
                layout, or may not be read (access denied).
            DynamoUnreachable: DynamoDB did not answer within ``startup_retry_deadline_s``.
        """
        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            # First, so that /healthz and /readyz answer while DynamoDB is waited for.
            health = await stack.enter_async_context(
                HealthServer(
                    self.metrics,
                    self.readiness,
                    host=cfg.operations.metrics_host,
                    port=cfg.operations.metrics_port,
                )
            )
            self.health_port = health.port
            opened = await self._open_dynamodb(stack, stop)
            if opened is None:
                log.info("stopped while waiting for DynamoDB")
                return
            hot, known = opened
            await self._run_stages(hot, known, stop, ready)

    async def _open_dynamodb(
        self, outer: contextlib.AsyncExitStack, stop: asyncio.Event
    ) -> tuple[TableClient, dict[str, int]] | None:
        """Open the clients and check the table, retrying what waiting can heal.

        Returns the hot path's client and the known sensor ids (their clients stay open
        on ``outer``), or None when ``stop`` was set first.
        """
        cfg = self.config
        limit_s = cfg.pipeline.startup_retry_deadline_s
        backoff = Backoff(
            base_ms=cfg.pipeline.write_retry_base_ms, cap_ms=cfg.pipeline.write_retry_max_ms
        )
        where = self._endpoint or f"https://dynamodb.{cfg.aws.region}.amazonaws.com"
        started = time.monotonic()
        error: BaseException | None = None
        for attempt in itertools.count():
            elapsed = time.monotonic() - started
            deadline = asyncio.timeout(None if limit_s == 0 else max(0.0, limit_s - elapsed))
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with deadline:
                        opened = await unless_stopped(stop, self._connect(stack))
                except StopRequested:
                    return None
                except (DynamoError, TimeoutError) as exc:
                    if isinstance(exc, DynamoError) and not is_transient(exc):
                        raise
                    if not deadline.expired():
                        error = exc
                else:
                    outer.push_async_callback(stack.pop_all().aclose)
                    if attempt:
                        log.info("DynamoDB answered after %.1f s", time.monotonic() - started)
                    self._starting = None
                    return opened
            elapsed = time.monotonic() - started
            delay = backoff.delay_s(attempt)
            if deadline.expired() or (limit_s and elapsed + delay >= limit_s):
                raise DynamoUnreachable(
                    f"DynamoDB at {where} did not answer for {elapsed:.0f} s "
                    f"(startup_retry_deadline_s={limit_s:g}): {_cause(error)}. Check "
                    "dynamodb_endpoint, region, the network and the credentials, or wait "
                    "longer with a larger startup_retry_deadline_s"
                ) from error
            self.metrics.startup_retries.labels(
                error.cause if isinstance(error, DynamoError) else "timeout"
            ).inc()
            self._starting = (
                f"DynamoDB unreachable at {where}: {_cause(error)} (tried {attempt + 1} "
                f"time{'s' if attempt else ''} in {elapsed:.0f} s; retrying)"
            )
            if attempt == 0 or attempt % 10 == 0:
                log.warning("not started: %s", self._starting)
            if await _stopped_within(stop, delay):
                return None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(
        self, stack: contextlib.AsyncExitStack
    ) -> tuple[TableClient, dict[str, int]]:
        """One start attempt: clients on ``stack``, the table checked, the known sensors."""
        cfg = self.config
        client = await stack.enter_async_context(
            DynamoClient(
                table=cfg.dynamodb.table,
                max_connections=cfg.pipeline.write_concurrency + 4,
                aws=cfg.aws.client_settings().with_endpoint(self._endpoint),
            )
        )
        if self._create:
            await create_table(client, self.layout)
        self.layout = await ensure_layout(client, self.layout)
        hot: TableClient = client
        if cfg.pipeline.writer == "lean":
            hot = await stack.enter_async_context(
                LeanDynamoClient(
                    table=cfg.dynamodb.table,
                    max_connections=cfg.pipeline.write_concurrency + 4,
                    aws=cfg.aws.client_settings().with_endpoint(self._endpoint),
                )
            )
        known = await known_sensors(hot)
        if self.layout.kind == "packed":
            # The journal since the checkpoint back into the open windows, before the first
            # journal flush (its keys go on after the journal's last) and before intake.
            windows = OpenWindows(WindowScheme(self.layout))
            packer = WindowWriter(
                client=hot,
                windows=windows,
                worker=cfg.mqtt.mqtt_client_id,
                journal_ttl_s=cfg.dynamodb.journal_ttl_hours * 3600,
                metrics=self.metrics,
                backoff=Backoff(
                    base_ms=cfg.pipeline.write_retry_base_ms, cap_ms=cfg.pipeline.write_retry_max_ms
                ),
            )
            self._packed = (packer, await packer.recover())
        return hot, known

    async def _run_stages(
        self,
        client: TableClient,
        known_sensors: dict[str, int],
        stop: asyncio.Event,
        ready: asyncio.Event | None,
    ) -> None:
        cfg, m = self.config, self.metrics
        inbox = Inbox(cfg.pipeline.inbox_max_messages)
        write_queue: asyncio.Queue[Batch] = asyncio.Queue(cfg.pipeline.write_queue_batches)
        receiver = self._receiver = Receiver(
            settings=mqtt_settings(cfg, self.mqtt_url),
            subscription=cfg.mqtt.subscription,
            inbox=inbox,
            metrics=m,
            backoff=Backoff(
                base_ms=cfg.mqtt.mqtt_reconnect_min_ms, cap_ms=cfg.mqtt.mqtt_reconnect_max_ms
            ),
        )
        acks = receiver.acks
        topic = cfg.operations.deadletter_topic
        spool = self._spool = DeadLetterSpool(
            Path(cfg.operations.data_dir) / "deadletters",
            acks=acks,
            metrics=m,
            on_kept=None if not topic else functools.partial(_republish, receiver, topic),
        )
        registry = SensorRegistry(
            client, m, refresh_s=cfg.effective_registry_refresh_s, acks=acks, floors=known_sensors
        )
        writer = self._writer = Writer(
            sink=client,
            acks=acks,
            deadletters=spool,
            metrics=m,
            backoff=Backoff(
                base_ms=cfg.pipeline.write_retry_base_ms, cap_ms=cfg.pipeline.write_retry_max_ms
            ),
            deadline_s=cfg.pipeline.write_retry_deadline_s,
        )
        if self._packed is not None:
            packer, sequence = self._packed
            placer: Placer = JournalPlacer(
                worker=cfg.mqtt.mqtt_client_id,
                windows=packer.windows,
                flush_interval_ms=cfg.pipeline.flush_interval_ms,
                # Half the Receive Maximum: a batch never waits for its interval with the
                # broker's in-flight window full (AWS IoT Core allows 100).
                max_messages=cfg.mqtt.mqtt_receive_maximum // 2,
                ttl_s=cfg.dynamodb.journal_ttl_hours * 3600,
                sequence=sequence,
            )
        else:
            placer = ReadingPlacer(
                self.layout, Batcher(flush_interval_ms=cfg.pipeline.flush_interval_ms)
            )
        decoder = DecodeStage(
            inbox=inbox,
            decoder=PayloadDecoder(
                sensor_topic_level=cfg.mqtt.topic_sensor_level,
                sensor_id_rule=cfg.limits.sensor_id_rule,
                sensor_id_separator=cfg.limits.sensor_id_separator,
                limits=Limits.from_config(cfg),
                known_sensors=known_sensors,
            ),
            placer=placer,
            write_queue=write_queue,
            acks=acks,
            deadletters=spool,
            registry=registry,
            metrics=m,
            on_drained=receiver.maybe_resume,
        )

        async with asyncio.TaskGroup() as tg:
            receiving = tg.create_task(receiver.run(), name="receiver")
            decoding = tg.create_task(decoder.run(), name="decoder")
            stages = [
                decoding,
                tg.create_task(spool.run(), name="deadletters"),
                tg.create_task(registry.run(cfg.pipeline.registry_interval_s), name="registry"),
                tg.create_task(self._gauges(inbox, write_queue, acks), name="gauges"),
            ]
            stages += [
                tg.create_task(writer.run(write_queue), name=f"writer-{i}")
                for i in range(cfg.pipeline.write_concurrency)
            ]
            packing = None
            if self._packed is not None:
                packing = tg.create_task(self._packed[0].run(), name="windows")
                stages.append(packing)
            connected = tg.create_task(receiver.connected.wait(), name="wait-connected")
            stopped = tg.create_task(stop.wait(), name="wait-stop")
            await asyncio.wait([connected, stopped], return_when=asyncio.FIRST_COMPLETED)
            if ready is not None and connected.done():
                ready.set()
                log.info("ingest ready: %s → table %s", cfg.mqtt.subscription, cfg.dynamodb.table)
            with tuned_gc(cfg.pipeline.gc_young_threshold):
                await stopped
            connected.cancel()
            await self._drain(
                receiver, decoding, stages, write_queue, spool, registry, acks, packing
            )
            receiving.cancel()

    async def _drain(
        self,
        receiver: Receiver,
        decoding: asyncio.Task[None],
        stages: list[asyncio.Task[None]],
        write_queue: asyncio.Queue[Batch],
        spool: DeadLetterSpool,
        registry: SensorRegistry,
        acks: AckTracker,
        packing: asyncio.Task[None] | None,
    ) -> None:
        """The stop protocol (the module docstring): each step waits for the one before.
        ``stages``: every task but the receiver's (the decoder and ``packing`` among them),
        all ended before the DISCONNECT."""
        log.info("stopping: draining (deadline %.0f s)", self.config.operations.shutdown_timeout_s)
        receiver.stop_intake()  # 1. stop reading: the inbox is closed
        try:
            async with asyncio.timeout(self.config.operations.shutdown_timeout_s):
                await asyncio.wait([decoding])  # 2. the decoder returns once the inbox is empty
                await write_queue.join()  # 3. every batch written or dead-lettered
                await spool.drain()
                with contextlib.suppress(Exception):  # 4. before the acks (see the docstring)
                    await registry.flush(everything=True)
                await acks.wait_idle()  # 5. every PUBACK released
                if packing is not None and self._packed is not None:
                    packing.cancel()  # 5b. packed: seal every open window
                    await asyncio.wait([packing])
                    if self.config.operations.seal_at_stop:
                        await self._packed[0].seal_all()
                    elif len(self._packed[0].windows):
                        log.info(
                            "seal_at_stop is off: %d open windows left in the journal of %r, "
                            "for its next start (or `iot-ingest table adopt-journal`)",
                            len(self._packed[0].windows),
                            self.config.mqtt.mqtt_client_id,
                        )
        except TimeoutError:
            log.warning(
                "shutdown deadline passed with %d messages not durable: they stay unacknowledged "
                "and the broker will redeliver them",
                len(acks),
            )
            if self._packed is not None and len(self._packed[0].windows):
                log.warning(
                    "shutdown deadline passed with %d windows not sealed: their readings stay in "
                    "the journal of %r, for its next start (or `iot-ingest table adopt-journal`)",
                    len(self._packed[0].windows),
                    self.config.mqtt.mqtt_client_id,
                )
        finally:
            # 6. Every stage ends before the DISCONNECT, so that no message completes
            # after it: what was acknowledged and what is left to the broker are exact.
            for t in stages:
                t.cancel()
            await asyncio.wait(stages)
            await receiver.aclose()  # DISCONNECT, keeping the session
        log.info(
            "stopped: %d messages acknowledged, %d complete but left unacknowledged (their "
            "connection had ended), %d not durable; the broker redelivers the last two",
            receiver.acknowledged,
            receiver.left_unacknowledged,
            len(acks),
        )

    async def _gauges(
        self, inbox: Inbox, write_queue: asyncio.Queue[Batch], acks: AckTracker
    ) -> None:
        m = self.metrics
        while True:
            m.inbox_depth.set(inbox.messages)
            m.write_queue_depth.set(write_queue.qsize())
            m.unacked.set(len(acks))
            await asyncio.sleep(1.0)


def _cause(error: BaseException | None) -> str:
    if isinstance(error, DynamoError):
        return f"{error.cause}: {error}"
    return "no answer" if error is None else f"{type(error).__name__}: {error}"


def _republish(receiver: Receiver, topic: str, entries: list[DeadLetter]) -> None:
    """Copies of the dead letters just kept, best effort, to ``deadletter_topic``."""
    receiver.republish(topic, [e.to_json() for e in entries])


async def _stopped_within(stop: asyncio.Event, delay_s: float) -> bool:
    """Sleep ``delay_s``, or less if ``stop`` is set meanwhile; whether it was."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay_s):
            await stop.wait()
    return stop.is_set()
