"""One MQTT network connection (asyncio Protocol): connect, subscribe, receive, acknowledge.

The connection never acknowledges a QoS 1 PUBLISH by itself: the owner calls
:meth:`MqttConnection.ack` once the message's data is durable, in the order
the messages arrived. Incoming PUBLISH packets are handed over in chunks (one
list per network read) so the per-message overhead stays small.

Keepalive runs on loop timers, not a task: the connection owns no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from . import mqttproto as mp
from .errors import IngestError

__all__ = ["Message", "MqttConnectError", "MqttConnection", "MqttError", "MqttSettings"]

log = logging.getLogger(__name__)

Message = tuple[str, bytes, int, int]
"""An incoming PUBLISH: (topic, payload, qos, packet id — 0 for QoS 0)."""


class MqttError(IngestError):
    """The MQTT connection failed or was lost (retriable: reconnect)."""

    retriable = True


class MqttConnectError(MqttError):
    """The broker refused the connection (bad credentials are not retriable)."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


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


class MqttConnection(asyncio.Protocol):
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
        self.settings = settings
        self._on_messages = on_messages
        self._reader = mp.PacketReader()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[mp.Connack] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._last_rx = time.monotonic()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._state = "new"
        self.session_present = False
        self.broker_receive_maximum = 65535

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> MqttConnection:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> mp.Connack:
        """Connect and wait for CONNACK; raise :class:`MqttConnectError` if refused."""
        if self._state != "new":
            raise RuntimeError(f"MqttConnection is {self._state}; create a new one to reconnect")
        self._state = "connecting"
        s = self.settings
        try:
            async with asyncio.timeout(s.connect_timeout_s):
                await self._loop.create_connection(
                    lambda: self,
                    s.host,
                    s.port,
                    ssl=s.tls,
                    server_hostname=s.host if s.tls else None,
                )
                assert self._transport is not None
                self._transport.write(
                    mp.encode_connect(
                        s.client_id,
                        version=s.version,
                        clean_start=s.clean_start,
                        keepalive_s=s.keepalive_s,
                        username=s.username,
                        password=s.password,
                        session_expiry_s=s.session_expiry_s,
                        receive_maximum=s.receive_maximum,
                    )
                )
                connack = await asyncio.shield(self._connack)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._abort()
            raise MqttError(f"cannot connect to mqtt://{s.host}:{s.port}: {exc!r}") from exc
        if connack.reason_code:
            self._abort()
            code = connack.reason_code
            raise MqttConnectError(
                f"broker at {s.host}:{s.port} refused the connection: {connack.reason(s.version)}",
                retriable=code not in (4, 5, 0x86, 0x87, 0x84, 0x85, 0x8A, 0x8C, 1, 2),
            )
        self.session_present = connack.session_present
        self.broker_receive_maximum = int(connack.properties.get("receive_maximum", 65535))
        self._state = "open"
        self._schedule_ping()
        return connack

    async def close(self) -> None:
        """Send DISCONNECT (keeping a persistent session) and close; safe to call twice."""
        if self._state in ("closed", "new"):
            self._state = "closed"
            return
        self._state = "closed"
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(mp.encode_disconnect(version=self.settings.version))
            self._transport.close()
        with contextlib.suppress(MqttError):
            await asyncio.shield(self._closed)

    def _abort(self) -> None:
        self._state = "closed"
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection is lost; raise :class:`MqttError` with the reason."""
        await asyncio.shield(self._closed)

    @property
    def is_open(self) -> bool:
        return self._state == "open" and not self._closed.done()

    # -- requests -------------------------------------------------------------

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttError("no free packet identifier (65535 requests in flight)")

    def _send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise MqttError("MQTT connection is closed")
        self._transport.write(data)

    async def subscribe(self, filters: list[tuple[str, int]]) -> list[int]:
        """Subscribe; return the granted QoS per filter; raise if any was refused."""
        pid = self._packet_id()
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._pending[pid] = fut
        self._send(mp.encode_subscribe(pid, filters, version=self.settings.version))
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                granted = await asyncio.shield(fut)
        finally:
            self._pending.pop(pid, None)
        refused = [f for (f, _), g in zip(filters, granted, strict=False) if g >= 0x80]
        if refused:
            raise MqttConnectError(f"broker refused subscription to {refused}", retriable=False)
        return granted

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish; for QoS 1 wait for the broker's PUBACK."""
        if qos == 0:
            self._send(
                mp.encode_publish(topic, payload, version=self.settings.version, retain=retain)
            )
            return
        pid = self._packet_id()
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

    def ack(self, packet_ids: list[int]) -> None:
        """Send PUBACKs for these packet ids, in this order (nothing if disconnected)."""
        t = self._transport
        if t is not None and not t.is_closing() and packet_ids:
            t.write(mp.encode_pubacks(packet_ids))

    def pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- keepalive ------------------------------------------------------------

    def _schedule_ping(self) -> None:
        ka = self.settings.keepalive_s
        if ka > 0 and not self._closed.done():
            self._ping_timer = self._loop.call_later(ka / 2, self._ping)

    def _ping(self) -> None:
        if self._closed.done() or self._transport is None:
            return
        if time.monotonic() - self._last_rx > self.settings.keepalive_s * 1.5:
            log.warning(
                "MQTT broker silent for %.0f s: dropping the connection",
                time.monotonic() - self._last_rx,
            )
            self._transport.abort()
            return
        self._transport.write(mp.PINGREQ_PACKET)
        self._schedule_ping()

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
        err = MqttError(f"MQTT connection lost: {exc!r}" if exc else "MQTT connection closed")
        for fut in (self._connack, *self._pending.values()):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: the waiter may be gone
        if not self._closed.done():
            if self._state == "closed":
                self._closed.set_result(None)
            else:
                self._closed.set_exception(err)
                self._closed.exception()
        self._state = "closed"

    def data_received(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        try:
            packets = self._reader.feed(data)
        except mp.MqttProtocolError as exc:
            log.error("MQTT protocol error from broker: %s", exc)
            assert self._transport is not None
            self._transport.abort()
            return
        chunk: list[Message] = []
        version = self.settings.version
        for ptype, flags, body in packets:
            if ptype == mp.PUBLISH:
                qos = (flags >> 1) & 3
                if version == mp.V311 and qos == 0:
                    (tlen,) = struct.unpack_from("!H", body, 0)
                    chunk.append(
                        (body[2 : 2 + tlen].decode("utf-8", "replace"), body[2 + tlen :], 0, 0)
                    )
                    continue
                try:
                    topic, pid, payload = mp.parse_publish(flags, body, version)
                except (mp.MqttProtocolError, struct.error) as exc:
                    log.error("malformed PUBLISH from broker: %s", exc)
                    assert self._transport is not None
                    self._transport.abort()
                    return
                chunk.append((topic, payload, qos, pid))
            else:
                self._control(ptype, body)
        if chunk and self._on_messages is not None:
            self._on_messages(chunk)

    def _control(self, ptype: int, body: bytes) -> None:
        if ptype == mp.PUBACK:
            pid, code = mp.parse_puback(body)
            fut = self._pending.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(code)
        elif ptype == mp.CONNACK:
            if not self._connack.done():
                self._connack.set_result(mp.parse_connack(body, self.settings.version))
        elif ptype == mp.SUBACK:
            pid, granted = mp.parse_suback(body, self.settings.version)
            fut = self._pending.get(pid)
            if fut is not None and not fut.done():
                fut.set_result(granted)
        elif ptype == mp.PINGRESP:
            pass
        elif ptype == mp.DISCONNECT:
            reason = body[0] if body else 0
            log.warning("MQTT broker sent DISCONNECT (reason 0x%02x)", reason)
            if self._transport is not None:
                self._transport.close()
        else:
            log.warning("ignoring unexpected MQTT packet type %d", ptype)
