"""Publishing: a small transport interface, and its lean asyncio MQTT implementation.

The run loop talks to a :class:`Publisher`: a set of numbered connections, a
non-blocking :meth:`~Publisher.publish_nowait` (false when that connection's
bounded queue is full), :meth:`~Publisher.wait_room` for backpressure and
:meth:`~Publisher.flush` to wait for the broker's acknowledgements. Any
transport with these methods fits (:class:`MemoryPublisher` is one for tests).

:class:`MqttPublisher` is the real one: one :class:`asyncio.Protocol` per
connection that writes PUBLISH packets (encoded by :mod:`ingest.mqtt.proto`)
straight to the socket and counts PUBACKs in ``data_received``. There is no
task per connection and no future per message, which is what lets one process
hold thousands of device connections or push 100k+ readings/s through a few
gateway connections. QoS 1 messages stay in a per-connection in-flight window
(MQTT 5 Receive Maximum respected) until acknowledged; after a lost connection
the maintenance coroutine reconnects with backoff and jitter and re-sends them
with the DUP flag, so every generated message reaches the broker at least once.
The connection mechanics (CONNECT/CONNACK and its refusal rules, keepalive pings,
packet ids, reading packets) are :class:`ingest.mqtt.link.MqttLink`'s, the same as
the service's; its errors are translated into this package's where they enter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import unquote, urlsplit

from ingest.core.lifecycle import AsyncResource, StartClose
from ingest.mqtt import proto as mp
from ingest.mqtt.link import MqttConnectError, MqttError, MqttLink
from simulator.errors import BrokerRefused, PublishError, SimConfigError

__all__ = [
    "BrokerAddress",
    "MemoryPublisher",
    "MqttPublisher",
    "PublishStats",
    "Publisher",
    "parse_mqtt_url",
]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PublishStats:
    """Counters of a publisher (cumulative)."""

    messages_sent: int = 0
    messages_acked: int = 0
    messages_rejected: int = 0
    bytes_sent: int = 0
    resent: int = 0
    connections_lost: int = 0
    reconnects: int = 0

    @property
    def errors(self) -> int:
        return self.messages_rejected + self.connections_lost


class Publisher(Protocol):
    """What the run loop needs from a transport (see the module docstring)."""

    stats: PublishStats

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def publish_nowait(self, conn: int, payload: bytes) -> bool:
        """Queue or send ``payload`` on connection ``conn``; False if its queue is full."""
        ...

    async def wait_room(self, conn: int) -> None:
        """Wait until connection ``conn`` accepts another message."""
        ...

    async def maintain(self) -> None:
        """Keep the connections up until closed (run it as a task of the run's task group)."""
        ...

    async def aclose(self) -> None:
        """Disconnect (safe to call twice); ends :meth:`maintain`."""
        ...

    async def flush(self, timeout_s: float) -> int:
        """Wait until everything is sent and acknowledged; return the messages still unconfirmed."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAddress:
    """Where the broker is, from ``mqtt://[user:password@]host:port`` (or ``mqtts://``)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """Parse a broker URL.

    Raises:
        SimConfigError: Not an ``mqtt://`` or ``mqtts://`` URL with a host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise SimConfigError(f"--mqtt-url {url!r}: expected mqtt://HOST:PORT (or mqtts://)")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise SimConfigError(f"--mqtt-url {url!r}: the port is not a number 1-65535") from None
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class _Connection(MqttLink):
    """One MQTT connection; all the work happens in protocol callbacks."""

    def __init__(self, pool: MqttPublisher, index: int, client_id: str, topic: str) -> None:
        # Thousands of connections opened together: spread their pings.
        super().__init__(
            client_id, version=pool.version, keepalive_s=pool.keepalive_s, ping_jitter=0.2
        )
        self.pool = pool
        self.index = index
        self.topic = topic.encode()
        self.up = False
        self.paused = False
        self.window = pool.max_inflight
        self.inflight: dict[int, bytes] = {}  # packet id → payload (QoS 1, not yet acknowledged)
        self.pending: deque[bytes] = deque()  # payloads not yet written
        self.room: asyncio.Event | None = None

    # -- sending ----------------------------------------------------------------

    def can_send(self) -> bool:
        return self.up and not self.paused and len(self.inflight) < self.window

    def send(self, payload: bytes, *, dup: bool = False, packet_id: int = 0) -> None:
        pool = self.pool
        transport = self.transport
        assert transport is not None
        if pool.qos:
            if not packet_id:
                packet_id = self.next_packet_id(self.inflight)
            self.inflight[packet_id] = payload
        packet = mp.encode_publish(
            self.topic, payload, qos=pool.qos, packet_id=packet_id, dup=dup, version=pool.version
        )
        transport.write(packet)
        stats = pool.stats
        stats.bytes_sent += len(packet)
        if dup:
            stats.resent += 1
        else:
            stats.messages_sent += 1
            if not pool.qos:
                pool._settled(1)

    def pump(self) -> None:
        """Move queued payloads onto the wire while the window and the socket allow."""
        pending = self.pending
        while pending and self.can_send():
            self.send(pending.popleft())
        room = self.room
        if room is not None and len(pending) < self.pool.max_pending:
            room.set()
            self.room = None

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        was_up = self.up
        self.up = False
        super().connection_lost(exc)
        if was_up:
            self.pool._lost(self, exc)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def data_received(self, data: bytes) -> None:
        acked = rejected = 0
        inflight = self.inflight
        try:
            for ptype, _flags, body in self.read_packets(data):
                if ptype == mp.PUBACK:
                    pid, code = mp.parse_puback(body)
                    if inflight.pop(pid, None) is not None:
                        acked += 1
                        if code >= 0x80:
                            rejected += 1
                elif ptype == mp.CONNACK:
                    self.connack_received(body)
                elif ptype == mp.DISCONNECT:
                    self.disconnect_received(body)
        except mp.MqttProtocolError as exc:
            # The acknowledgements before the bad packet still count; the rest is re-sent.
            self.protocol_error(str(exc))
        if acked:
            stats = self.pool.stats
            stats.messages_acked += acked - rejected
            stats.messages_rejected += rejected
            if rejected:
                log.warning("broker rejected %d message(s) on %s", rejected, self.client_id)
            self.pool._settled(acked)
            transport = self.transport
            if transport is not None and not transport.is_closing():
                self.pump()


class MqttPublisher(StartClose):
    """Many MQTT connections to one broker, each with its own topic.

    Args:
        broker: Broker address.
        client_ids: Client id of each connection.
        topics: Topic of each connection (aligned with ``client_ids``).
        qos: 0 or 1.
        version: ``mp.V311`` or ``mp.V5``.
        max_inflight: QoS 1 messages a connection may have unacknowledged.
        max_pending: Messages a connection queues before publish_nowait refuses.
        keepalive_s: MQTT keepalive.
        connect_concurrency: Connections opened at once (the broker's accept backlog is small).
        connect_timeout_s: Timeout of one connection attempt.
    """

    def __init__(
        self,
        broker: BrokerAddress,
        client_ids: Sequence[str],
        topics: Sequence[str],
        *,
        qos: int = 1,
        version: int = mp.V311,
        max_inflight: int = 100,
        max_pending: int = 1000,
        keepalive_s: int = 60,
        connect_concurrency: int = 64,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if qos not in (0, 1):
            raise SimConfigError(f"--qos must be 0 or 1, got {qos}")
        if version not in (mp.V311, mp.V5):
            raise SimConfigError(f"MQTT protocol version must be 4 (3.1.1) or 5, got {version}")
        if len(client_ids) != len(topics) or not client_ids:
            raise SimConfigError("one topic per client id, at least one connection")
        if not 1 <= max_inflight <= 65535 or max_pending < 1:
            raise SimConfigError("max_inflight must be 1..65535 and max_pending >= 1")
        self.broker = broker
        self.qos = qos
        self.version = version
        self.max_inflight = max_inflight
        self.max_pending = max_pending
        self.keepalive_s = keepalive_s
        self.connect_concurrency = connect_concurrency
        self.connect_timeout_s = connect_timeout_s
        self.stats = PublishStats()
        self._conns = [
            _Connection(self, i, cid, topic)
            for i, (cid, topic) in enumerate(zip(client_ids, topics, strict=True))
        ]
        self._ssl = ssl.create_default_context() if broker.tls else None
        # Each connection is queued at most once while down, plus the closing sentinel.
        self._lost_queue: asyncio.Queue[_Connection | None] = asyncio.Queue(
            maxsize=len(self._conns) + 1
        )
        self._unsettled = 0  # generated messages not yet acknowledged (QoS 1) or written (QoS 0)
        self._settled_event = asyncio.Event()
        self._state = "new"

    def __len__(self) -> int:
        return len(self._conns)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open every connection (``async with`` does it); raise if one is refused."""
        if self._state != "new":
            raise RuntimeError(f"MqttPublisher is {self._state}; create a new one")
        self._state = "opening"
        try:
            await self._connect_all()
        except BaseException:
            self._abort_all()
            self._state = "closed"
            raise
        self._state = "open"

    async def aclose(self) -> None:
        """Send DISCONNECT on every connection and close it (safe to call twice)."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._lost_queue.put_nowait(None)  # wakes maintain(), which then returns
        disconnect = mp.encode_disconnect(version=self.version)
        for c in self._conns:
            c.up = False
            c.stop_keepalive()
            if c.transport is not None and not c.transport.is_closing():
                c.transport.write(disconnect)
                c.transport.close()
            if c.room is not None:
                c.room.set()
        self._settled_event.set()

    def _abort_all(self) -> None:
        for c in self._conns:
            c.up = False
            c.abort()

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def one(c: _Connection) -> None:
            async with gate:
                await self._connect(c)

        async with asyncio.TaskGroup() as tg:
            for c in self._conns:
                tg.create_task(one(c), name=f"mqtt-connect-{c.client_id}")

    async def _connect(self, c: _Connection) -> None:
        b = self.broker
        connect = mp.encode_connect(
            c.client_id,
            version=self.version,
            clean_start=True,
            keepalive_s=self.keepalive_s,
            username=b.username,
            password=b.password,
        )
        try:
            connack = await c.handshake(
                b.host,
                b.port,
                connect,
                tls=self._ssl,
                timeout_s=self.connect_timeout_s,
                version_hint="use --protocol-version {other}",
            )
        except MqttConnectError as exc:
            raise BrokerRefused(str(exc), retriable=exc.retriable) from exc
        except MqttError as exc:
            raise PublishError(str(exc)) from exc
        rm = int(connack.properties.get("receive_maximum", 65535))
        c.window = max(1, min(self.max_inflight, rm))
        c.up = True
        c.start_keepalive()

    # -- publishing ---------------------------------------------------------------

    def publish_nowait(self, conn: int, payload: bytes) -> bool:
        c = self._conns[conn]
        if c.pending:
            if len(c.pending) >= self.max_pending:
                return False
            c.pending.append(payload)
        elif c.can_send():
            self._unsettled += 1
            c.send(payload)
            return True
        else:
            c.pending.append(payload)
        self._unsettled += 1
        return True

    async def wait_room(self, conn: int) -> None:
        c = self._conns[conn]
        while len(c.pending) >= self.max_pending:
            if self._state == "closed":
                raise PublishError("the publisher is closed")
            if c.room is None:
                c.room = asyncio.Event()
            await c.room.wait()

    def _settled(self, n: int) -> None:
        self._unsettled -= n
        if self._unsettled <= 0:
            self._settled_event.set()

    async def flush(self, timeout_s: float) -> int:
        try:
            async with asyncio.timeout(timeout_s):
                while self._unsettled > 0 and self._state != "closed":
                    self._settled_event.clear()
                    await self._settled_event.wait()
        except TimeoutError:
            log.warning(
                "%d message(s) still unacknowledged after %.1f s", self._unsettled, timeout_s
            )
        return max(0, self._unsettled)

    @property
    def unsettled(self) -> int:
        """Messages accepted but not yet acknowledged (QoS 1) or written (QoS 0)."""
        return self._unsettled

    @property
    def queued(self) -> int:
        """Messages waiting in connection queues (not yet written)."""
        return sum(len(c.pending) for c in self._conns)

    # -- reconnecting ---------------------------------------------------------------

    def _lost(self, c: _Connection, exc: Exception | None) -> None:
        if self._state != "open":
            return
        self.stats.connections_lost += 1
        log.debug("MQTT connection %s lost (%r)", c.client_id, exc)
        self._lost_queue.put_nowait(c)

    async def maintain(self) -> None:
        """Reconnect lost connections (backoff with jitter) and re-send what was in flight.

        Connections lost together (a broker restart) reconnect together, at most
        ``connect_concurrency`` at a time.
        """
        gate = asyncio.Semaphore(self.connect_concurrency)
        while self._state == "open":
            first = await self._lost_queue.get()
            if first is None:
                return
            lost = [first]
            while not self._lost_queue.empty():
                c = self._lost_queue.get_nowait()
                if c is None:
                    return
                lost.append(c)
            log.warning(
                "%d MQTT connection(s) to %s lost: reconnecting", len(lost), self.broker.url
            )
            async with asyncio.TaskGroup() as tg:
                for c in lost:
                    tg.create_task(self._reconnect(c, gate), name=f"mqtt-reconnect-{c.client_id}")
            back = sum(c.up for c in lost)
            if back:
                log.warning("%d MQTT connection(s) back; in-flight messages re-sent", back)

    async def _reconnect(self, c: _Connection, gate: asyncio.Semaphore) -> None:
        delay_s = 0.05
        while self._state == "open" and not c.up:
            try:
                async with gate:
                    await self._connect(c)
            except BrokerRefused as exc:
                if not exc.retriable:
                    raise
                log.warning("%s", exc)
            except PublishError as exc:
                log.info("reconnect failed: %s", exc)
            if not c.up:
                await asyncio.sleep(random.uniform(0, delay_s))
                delay_s = min(delay_s * 2, 5.0)
        if c.up:
            self.stats.reconnects += 1
            inflight = list(c.inflight.items())
            c.inflight.clear()
            for pid, payload in inflight:
                c.send(payload, dup=True, packet_id=pid)
            c.pump()


@dataclass(slots=True)
class MemoryPublisher(AsyncResource):
    """A publisher that keeps messages in memory (for tests of the run loop).

    Args:
        connections: Number of connections.
        max_pending: Bound of ``messages`` beyond which publish_nowait refuses.
    """

    connections: int
    max_pending: int = 1_000_000
    stats: PublishStats = field(default_factory=PublishStats)
    messages: list[tuple[int, bytes]] = field(default_factory=list)

    def publish_nowait(self, conn: int, payload: bytes) -> bool:
        if not 0 <= conn < self.connections:
            raise IndexError(f"no connection {conn}")
        if len(self.messages) >= self.max_pending:
            return False
        self.messages.append((conn, payload))
        self.stats.messages_sent += 1
        self.stats.messages_acked += 1
        self.stats.bytes_sent += len(payload)
        return True

    async def wait_room(self, conn: int) -> None:
        if len(self.messages) >= self.max_pending:
            raise PublishError("MemoryPublisher is full")

    async def maintain(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def flush(self, timeout_s: float) -> int:
        return 0
