"""One MQTT network connection (asyncio Protocol): connect, subscribe, receive, acknowledge.

The connection never acknowledges a QoS 1 PUBLISH by itself: the owner calls
:meth:`MqttConnection.ack` once the message's data is durable, in the order
the messages arrived. Incoming PUBLISH packets are handed over in chunks (one
list per network read) so the per-message overhead stays small. Chunks can
arrive as soon as CONNACK does — a broker resends its in-flight messages right
after CONNACK, before it answers SUBSCRIBE — so the owner must be ready to take
(and acknowledge) them before :meth:`MqttConnection.open` returns.

The broker's bytes are untrusted: anything that is not valid MQTT (a malformed
or truncated packet, QoS 3, a PUBLISH before CONNACK, a packet only a client may
send) drops the connection with a protocol-error DISCONNECT, and the owner
reconnects; unacknowledged messages are redelivered then. A QoS 2 PUBLISH (which
a broker should not send on our QoS 1 subscription) is still handled as the
protocol says: PUBREC once durable, PUBCOMP for PUBREL. A SUBACK granting QoS 0
is refused: at-most-once delivery would break the service's promise.

The CONNECT/CONNACK exchange, keepalive, packet ids and packet reading are
:class:`~ingest.mqtt.link.MqttLink`'s, shared with the simulator's publisher.
Keepalive runs on loop timers, not a task: the connection owns no task. While
the owner has paused reading (backpressure), PINGRESPs sit unread in the socket,
so silence is not held against the broker then; PINGREQs still go out (the
broker's own keepalive check stays happy), and ``TCP_USER_TIMEOUT`` drops a
connection whose peer stopped acknowledging them at the TCP level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ingest.core.lifecycle import StartClose
from ingest.mqtt import proto as mp
from ingest.mqtt.link import MqttConnectError, MqttError, MqttLink

# MqttError and MqttConnectError live in ingest.mqtt.link (the publisher raises them too);
# they are named here as well because this is where the service meets them.
__all__ = ["Message", "MqttConnection", "MqttSettings"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Message = tuple[str, bytes, int, int]
"""An incoming PUBLISH: (topic, payload, qos, packet id — 0 for QoS 0)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """What a connection needs; built from the service config."""

    host: str
    port: int
    client_id: str
    version: int = mp.V5
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    clean_start: bool = False
    session_expiry_s: int = 7 * 86_400
    receive_maximum: int = 10_000
    connect_timeout_s: float = 10.0
    max_packet_bytes: int = 268_435_455
    """Largest packet body accepted whole (advertised to MQTT 5 brokers as Maximum Packet
    Size); a larger PUBLISH is handed over as a :class:`~ingest.mqtt.proto.TruncatedPayload`."""


_CLIENT_ONLY_PACKETS = frozenset({0, mp.CONNECT, mp.SUBSCRIBE, mp.UNSUBSCRIBE, mp.PINGREQ})


class MqttConnection(MqttLink, StartClose):
    """A client connection to an MQTT broker.

    Args:
        settings: Connection settings.
        on_messages: Called synchronously with every chunk of incoming PUBLISH packets.
    """

    def __init__(
        self,
        settings: MqttSettings,
        on_messages: Callable[[list[Message]], None] | None = None,
    ) -> None:
        super().__init__(
            settings.client_id,
            version=settings.version,
            keepalive_s=settings.keepalive_s,
            max_packet_bytes=settings.max_packet_bytes,
        )
        self.settings = settings
        self._on_messages = on_messages
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._state = "new"
        self._qos2: set[int] = set()  # QoS 2 PUBLISH received, PUBREC not yet sent
        self._released: set[int] = set()  # PUBREC sent, PUBREL not yet received
        self._seen: set[int] = set()  # packet ids of QoS > 0 PUBLISHes on this connection
        self.session_present = False
        self.broker_receive_maximum = 65535
        self.shared_subscriptions = True
        self.wildcard_subscriptions = True
        self.resends_dropped = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """``async with``: :meth:`open` (the CONNACK is in :attr:`session_present` & co.)."""
        await self.open()

    async def open(self) -> mp.Connack:
        """Connect and wait for CONNACK; raise :class:`MqttConnectError` if refused."""
        if self._state != "new":
            raise RuntimeError(f"MqttConnection is {self._state}; create a new one to reconnect")
        self._state = "connecting"
        s = self.settings
        connect = mp.encode_connect(
            s.client_id,
            version=s.version,
            clean_start=s.clean_start,
            keepalive_s=s.keepalive_s,
            username=s.username,
            password=s.password,
            session_expiry_s=s.session_expiry_s,
            receive_maximum=s.receive_maximum,
            maximum_packet_size=s.max_packet_bytes + 5,  # + the fixed header
        )
        try:
            connack = await self.handshake(
                s.host,
                s.port,
                connect,
                tls=s.tls,
                timeout_s=s.connect_timeout_s,
                version_hint="set mqtt_protocol = {other!r}",
            )
        except BaseException:
            self._state = "closed"
            raise
        props = connack.properties
        self.session_present = connack.session_present
        self.broker_receive_maximum = int(props.get("receive_maximum", 65535))
        # MQTT 5: a Server Keep Alive replaces ours (MQTT-3.2.2-21), 0 meaning none.
        self.keepalive_s = int(props.get("server_keep_alive", s.keepalive_s))
        self._set_tcp_user_timeout()
        granted_expiry = props.get("session_expiry_interval")
        if granted_expiry is not None and granted_expiry < s.session_expiry_s:
            log.warning(
                "the MQTT broker keeps this session only %d s while we are away (asked for %d s): "
                "messages published during a longer outage are lost (see docs/brokers.md)",
                granted_expiry,
                s.session_expiry_s,
            )
        self.shared_subscriptions = bool(props.get("shared_subscription_available", 1))
        self.wildcard_subscriptions = bool(props.get("wildcard_subscription_available", 1))
        self._state = "open"
        self.start_keepalive()
        return connack

    async def aclose(self) -> None:
        """Send DISCONNECT (keeping a persistent session) and close; safe to call twice."""
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(mp.encode_disconnect(version=self.version))
            t.close()
        with contextlib.suppress(MqttError):
            await asyncio.shield(self._closed)

    async def wait_closed(self) -> None:
        """Wait until the connection is lost; raise :class:`MqttError` with the reason."""
        await asyncio.shield(self._closed)

    @property
    def is_open(self) -> bool:
        """Open and usable: not closing on either side (a DISCONNECT may be on its way)."""
        t = self.transport
        return (
            self._state == "open"
            and not self._closed.done()
            and t is not None
            and not t.is_closing()
        )

    # -- requests -------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            raise MqttError("MQTT connection is closed")
        t.write(data)

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe; return the granted QoS per filter; raise if any was refused.

        Filters the broker said in CONNACK it cannot serve (MQTT 5: shared or wildcard
        subscriptions not available) are refused here, before asking, not retried.
        """
        for f, _ in filters:
            if f.startswith("$share/") and not self.shared_subscriptions:
                raise MqttConnectError(
                    f"the broker does not support shared subscriptions ({f!r}): run one worker "
                    "without shared_group, or use a broker that has them (docs/brokers.md)",
                    retriable=False,
                )
            if ("+" in f or "#" in f) and not self.wildcard_subscriptions:
                raise MqttConnectError(
                    f"the broker does not support wildcard subscriptions ({f!r})",
                    retriable=False,
                )
        pid = self.next_packet_id(self._pending)
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._pending[pid] = fut
        self._send(mp.encode_subscribe(pid, filters, version=self.settings.version))
        try:
            granted = await self._reply(fut, "SUBACK")
        finally:
            self._pending.pop(pid, None)
        refused = [f for (f, _), g in zip(filters, granted, strict=False) if g >= 0x80]
        if refused:
            raise MqttConnectError(f"broker refused subscription to {refused}", retriable=False)
        downgraded = [f for (f, q), g in zip(filters, granted, strict=False) if g < q]
        if downgraded:
            raise MqttConnectError(
                f"broker granted QoS {min(granted)} for {downgraded} (asked for QoS 1): messages "
                "would be delivered at most once and lost on any failure, so the service refuses "
                "to run; allow QoS 1 for this client in the broker (its ACL or maximum QoS)",
                retriable=False,
            )
        return granted

    async def _reply(self, fut: asyncio.Future[_T], what: str) -> _T:
        """Wait for the broker's answer, at most ``connect_timeout_s`` of *reading* time.

        While reading is paused (a burst of redelivered messages filled the owner's
        inbox right after CONNACK) the answer sits unread behind them: that wait is
        backpressure, not a silent broker, so it does not count.
        """
        timeout_s = self.settings.connect_timeout_s
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    return await asyncio.shield(fut)
            except TimeoutError:
                if not self.reading_paused:
                    raise MqttError(f"no {what} from the broker within {timeout_s:g} s") from None

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish; for QoS 1 wait for the broker's PUBACK."""
        if qos == 0:
            self._send(
                mp.encode_publish(topic, payload, version=self.settings.version, retain=retain)
            )
            return
        pid = self.next_packet_id(self._pending)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._pending[pid] = fut
        try:
            self._send(
                mp.encode_publish(
                    topic,
                    payload,
                    qos=1,
                    packet_id=pid,
                    retain=retain,
                    version=self.settings.version,
                )
            )
            code = await asyncio.shield(fut)
        finally:
            self._pending.pop(pid, None)
        if code >= 0x80:
            raise MqttError(f"broker rejected PUBLISH to {topic!r} with reason 0x{code:02x}")

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 0 (fire and forget at the protocol level; raises if closed)."""
        self._send(mp.encode_publish(topic, payload, version=self.settings.version))

    def ack(self, packet_ids: list[int]) -> bool:
        """Acknowledge these packet ids, in this order; False if disconnected (none sent).

        PUBACK for QoS 1; PUBREC for a QoS 2 message (its PUBREL is answered at once).
        """
        t = self.transport
        if t is None or t.is_closing():
            return False
        if not packet_ids:
            return True
        if not self._qos2:
            t.write(mp.encode_pubacks(packet_ids))
            return True
        out = bytearray()
        for pid in packet_ids:
            if pid in self._qos2:
                self._qos2.discard(pid)
                self._released.add(pid)
                out += mp.encode_pubrec(pid)
            else:
                out += mp.encode_puback(pid)
        t.write(bytes(out))
        return True

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure); keepalive stops judging the broker."""
        t = self.transport
        if t is not None and not t.is_closing():
            self.reading_paused = True
            t.pause_reading()

    def resume_reading(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            self.reading_paused = False
            self.last_rx = time.monotonic()  # time spent paused is not the broker's silence
            t.resume_reading()

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._set_tcp_user_timeout()

    def _set_tcp_user_timeout(self) -> None:
        """Sent bytes (PINGREQs, PUBACKs) unacknowledged by the peer's TCP for 1.5×
        keepalive: the peer is gone, even while we are not reading."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.keepalive_s * 1500)
                )

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        err = self.lost_error(exc)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: the waiter may be gone
        if not self._closed.done():
            if self._state == "closed" and self.close_reason is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(err)
                self._closed.exception()
        self._state = "closed"

    def data_received(self, data: bytes) -> None:
        chunk: list[Message] = []
        for ptype, flags, body in self.read_packets(data):
            if ptype == mp.PUBLISH:
                try:
                    message = self._publish(flags, body, (flags >> 1) & 3)
                except mp.MqttProtocolError as exc:
                    self.protocol_error(str(exc), 0x81)
                    return
                if message is not None:
                    chunk.append(message)
            else:
                try:
                    self._control(ptype, body)
                except mp.MqttProtocolError as exc:
                    self.protocol_error(str(exc))
                    return
        if chunk and self._on_messages is not None:
            self._on_messages(chunk)

    def _publish(self, flags: int, body: bytes, qos: int) -> Message | None:
        if not self._connacked:
            raise mp.MqttProtocolError("PUBLISH before CONNACK")
        if qos == 3:
            raise mp.MqttProtocolError("PUBLISH with QoS 3")
        version = self.version
        if not flags & mp.TRUNCATED:
            topic, pid, payload = mp.parse_publish(flags, body, version)
        else:
            size = len(body)  # the size the broker sent (TruncatedPayload)
            head = bytes(body)
            topic, pid, rest = mp.parse_publish(flags & 0x0F, head, version)
            # Keep a little of the payload as evidence for the dead letter, not 70 kB of it.
            payload = mp.TruncatedPayload(rest[:1024], size - (len(head) - len(rest)))
            log.warning(
                "PUBLISH of %d bytes on %r exceeds the largest packet accepted (%d bytes): "
                "kept its first bytes only, to refuse it as oversize",
                size,
                topic,
                self.settings.max_packet_bytes,
            )
        if qos:
            if flags & 0x08 and pid in self._seen:
                # A resend on the same connection (NATS, EMQX, VerneMQ do it on a timer): its
                # first copy is being written and will be acknowledged. Tracking the copy too
                # would send a second PUBACK for this id, which the broker may by then have
                # given to another message, not yet durable.
                self.resends_dropped += 1
                return None
            self._seen.add(pid)
        if qos == 2:
            self._qos2.add(pid)
        return topic, payload, qos, pid

    def _control(self, ptype: int, body: bytes) -> None:
        version = self.version
        if ptype == mp.PUBACK:
            pid, code = mp.parse_puback(body)
            fut = self._pending.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(code)
        elif ptype == mp.PUBREL:
            pid = mp.parse_packet_id(body, "PUBREL")
            known = pid in self._released
            self._released.discard(pid)
            assert self.transport is not None
            self.transport.write(
                mp.encode_pubcomp(pid, reason_code=0 if known else 0x92, version=version)
            )
        elif ptype == mp.CONNACK:
            self.connack_received(body)
        elif ptype == mp.SUBACK:
            pid, granted = mp.parse_suback(body, version)
            fut = self._pending.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(granted)
        elif ptype in (mp.PINGRESP, mp.UNSUBACK):
            pass
        elif ptype == mp.DISCONNECT:
            self.disconnect_received(body)
        elif ptype in _CLIENT_ONLY_PACKETS or ptype == mp.AUTH:
            raise mp.MqttProtocolError(f"packet type {ptype}, which a broker may not send here")
        else:
            log.warning("ignoring unexpected MQTT packet type %d", ptype)
