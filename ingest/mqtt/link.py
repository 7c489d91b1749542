"""What every MQTT client connection of the project shares, below its own packet handling.

:class:`MqttLink` is an :class:`asyncio.Protocol` holding the mechanics the service's
connection (:class:`ingest.mqtt.client.MqttConnection`) and the simulator's publisher
connections (``simulator.publisher``) both need, written once:

* the CONNECT/CONNACK exchange (:meth:`MqttLink.handshake`) and its refusal rules: a
  refusal in :data:`~ingest.mqtt.proto.NOT_RETRIABLE_CONNACK` is final, any other may
  pass on a later attempt; the socket is aborted on every failure, cancellation included;
* keepalive pings on loop timers, not a task (:meth:`MqttLink.start_keepalive`): a
  PINGREQ every half keepalive, and a broker silent for 1.5 × keepalive is dropped,
  except while the owner has paused reading (its bytes sit unread then);
* packet-id allocation (:meth:`MqttLink.next_packet_id`), on the publisher's per-message
  path: the common case is one modulo and one lookup;
* reading packets off the stream (:meth:`MqttLink.read_packets`) and the answer to bytes
  that are not MQTT: a DISCONNECT saying why (MQTT 5 reason code), then the connection
  is dropped, never an exception out of a protocol callback.

Each subclass dispatches its own packets (a subscriber and a publisher need different
ones) and calls :meth:`MqttLink.connack_received` and
:meth:`MqttLink.disconnect_received` for the two every client handles alike.

Errors::

    IngestError                 (ingest.core.errors)
    └── MqttError               connection failed or lost (retriable: reconnect)
        └── MqttConnectError    the broker refused; ``retriable`` from the reason code
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Container
from typing import cast

from ingest.core.errors import IngestError
from ingest.mqtt import proto as mp

__all__ = ["MqttConnectError", "MqttError", "MqttLink", "Packet"]

log = logging.getLogger(__name__)


class MqttError(IngestError):
    """The MQTT connection failed or was lost (retriable: reconnect)."""

    retriable = True


class MqttConnectError(MqttError):
    """The broker refused the connection (bad credentials are not retriable).

    Args:
        message: What was refused, and what to do.
        retriable: Whether a later attempt may succeed.
        reason_code: The CONNACK reason code, when the refusal came from CONNACK.
    """

    def __init__(self, message: str, *, retriable: bool, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.reason_code = reason_code


Packet = tuple[int, int, bytes]
"""(packet type, flags, body), as :class:`~ingest.mqtt.proto.PacketReader` returns them."""


class MqttLink(asyncio.Protocol):
    """One client connection's shared mechanics (see the module docstring).

    Args:
        client_id: The MQTT client identifier (named in logs and errors).
        version: ``mp.V311`` or ``mp.V5``.
        keepalive_s: Keepalive interval; 0 for none. The owner may replace it after
            CONNACK (an MQTT 5 Server Keep Alive).
        max_packet_bytes: Largest packet body the reader accepts whole (see
            :class:`~ingest.mqtt.proto.PacketReader`); ``None`` for the protocol maximum.
        ping_jitter: Fraction of the ping interval drawn at random, so that many
            connections opened together do not ping together.
    """

    def __init__(
        self,
        client_id: str,
        *,
        version: int,
        keepalive_s: int,
        max_packet_bytes: int | None = None,
        ping_jitter: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.version = version
        self.keepalive_s = keepalive_s
        self.transport: asyncio.Transport | None = None
        self.reader = self._new_reader(max_packet_bytes)
        self.last_rx = time.monotonic()
        self.reading_paused = False
        self.close_reason: str | None = None
        """Why the connection ends, once known (a protocol error, the broker's DISCONNECT)."""
        self._max_packet_bytes = max_packet_bytes
        self._ping_jitter = ping_jitter
        self._ping_timer: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[mp.Connack] | None = None
        self._connacked = False
        self._last_packet_id = 0

    @staticmethod
    def _new_reader(max_packet_bytes: int | None) -> mp.PacketReader:
        return mp.PacketReader() if max_packet_bytes is None else mp.PacketReader(max_packet_bytes)

    # -- CONNECT / CONNACK ------------------------------------------------------

    async def handshake(
        self,
        host: str,
        port: int,
        connect: bytes,
        *,
        tls: ssl.SSLContext | None,
        timeout_s: float,
        version_hint: str | None = None,
    ) -> mp.Connack:
        """Open the connection, send ``connect`` and wait for a successful CONNACK.

        Args:
            host: Broker host (also the TLS server name).
            port: Broker port.
            connect: The CONNECT packet (:func:`~ingest.mqtt.proto.encode_connect`).
            tls: TLS context, or ``None`` for plain TCP.
            timeout_s: Deadline for the connection and the CONNACK together.
            version_hint: What to tell a user whose broker refused the protocol
                version, a format string with ``{other}`` (the other version); for
                example ``"set mqtt_protocol = {other!r}"``.

        Returns:
            The broker's CONNACK (reason code 0).

        Raises:
            MqttConnectError: The broker refused; ``retriable`` follows
                :func:`~ingest.mqtt.proto.connack_retriable`.
            MqttError: No connection, the connection was lost, or no CONNACK in time.
        """
        loop = asyncio.get_running_loop()
        self.reader = self._new_reader(self._max_packet_bytes)
        self.close_reason = None
        self._connacked = False
        self._connack = loop.create_future()
        url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(
                    lambda: self, host, port, ssl=tls, server_hostname=host if tls else None
                )
                assert self.transport is not None
                self.transport.write(connect)
                connack = await asyncio.shield(self._connack)
        except (OSError, TimeoutError, ssl.SSLError, MqttError) as exc:
            self.abort()
            raise MqttError(f"cannot connect {self.client_id!r} to {url}: {exc!r}") from exc
        except BaseException:  # cancelled (a stop while connecting): leave no socket behind
            self.abort()
            raise
        code = connack.reason_code
        if code:
            self.abort()
            hint = ""
            if code in mp.VERSION_REFUSED:
                other = "3.1.1" if self.version == mp.V5 else "5"
                todo = (version_hint or "use MQTT {other}").format(other=other)
                hint = f" (the broker does not speak this MQTT version: {todo})"
            raise MqttConnectError(
                f"broker at {url} refused client id {self.client_id!r}: "
                f"{connack.reason(self.version)}{hint}",
                retriable=mp.connack_retriable(code),
                reason_code=code,
            )
        return connack

    def connack_received(self, body: bytes) -> None:
        """Handle a CONNACK packet: the handshake's answer (a second one is a protocol error)."""
        if self._connacked:
            raise mp.MqttProtocolError("a second CONNACK")
        connack = mp.parse_connack(body, self.version)
        self._connacked = True
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_result(connack)

    def disconnect_received(self, body: bytes) -> None:
        """Handle the broker's DISCONNECT: say why, and close our side."""
        code, text = mp.parse_disconnect(body, self.version)
        self.close_reason = f"MQTT broker sent DISCONNECT: {text} (0x{code:02x})"
        taken_over = code == 0x8E
        log.log(
            logging.ERROR if taken_over else logging.WARNING,
            "%s%s",
            self.close_reason,
            f"; is another process using client id {self.client_id!r}?" if taken_over else "",
        )
        if self.transport is not None:
            self.transport.close()

    # -- packet ids ---------------------------------------------------------------

    def next_packet_id(self, in_use: Container[int]) -> int:
        """The next packet identifier (1..65535, wrapping) not in ``in_use``.

        Raises:
            MqttError: All 65,535 are in use.
        """
        pid = self._last_packet_id % 65535 + 1
        if pid in in_use:
            pid = self._free_packet_id(pid, in_use)
        self._last_packet_id = pid
        return pid

    @staticmethod
    def _free_packet_id(pid: int, in_use: Container[int]) -> int:
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in in_use:
                return pid
        raise MqttError("no free packet identifier (65535 requests in flight)")

    # -- reading ------------------------------------------------------------------

    def read_packets(self, data: bytes) -> list[Packet]:
        """The complete packets ``data`` finishes; none if it is not MQTT (then the link drops)."""
        self.last_rx = time.monotonic()
        try:
            return self.reader.feed(data)
        except mp.MqttProtocolError as exc:
            self.protocol_error(str(exc), 0x81)
            return []

    def protocol_error(self, what: str, reason_code: int = 0x82) -> None:
        """The broker broke the protocol: tell it why (MQTT 5) and drop the connection."""
        log.error(
            "MQTT protocol error from the broker on %s: %s; dropping the connection",
            self.client_id,
            what,
        )
        self.close_reason = f"MQTT protocol error from broker: {what}"
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(mp.encode_disconnect(version=self.version, reason_code=reason_code))
            t.abort()

    def abort(self) -> None:
        """Drop the connection at once (no DISCONNECT)."""
        if self.transport is not None:
            self.transport.abort()

    # -- keepalive ------------------------------------------------------------------

    def start_keepalive(self) -> None:
        """Send a PINGREQ every half keepalive until the connection is lost."""
        ka = self.keepalive_s
        if ka > 0:
            delay_s = ka / 2
            if self._ping_jitter:
                delay_s *= 1 - self._ping_jitter * random.random()
            self._ping_timer = asyncio.get_running_loop().call_later(delay_s, self._ping)

    def stop_keepalive(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def _ping(self) -> None:
        self._ping_timer = None
        t = self.transport
        if t is None or t.is_closing():
            return
        silent_s = time.monotonic() - self.last_rx
        if not self.reading_paused and silent_s > self.keepalive_s * 1.5:
            log.warning(
                "MQTT broker silent for %.0f s on %s: dropping the connection",
                silent_s,
                self.client_id,
            )
            t.abort()
            return
        t.write(mp.PINGREQ_PACKET)
        self.start_keepalive()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        self.last_rx = time.monotonic()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_keepalive()
        self.transport = None
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_exception(self.lost_error(exc))
            fut.exception()  # mark retrieved: the waiter may be gone

    def data_received(self, data: bytes) -> None:
        """The least a client handles, CONNACK and DISCONNECT; subclasses handle their own."""
        try:
            for ptype, _, body in self.read_packets(data):
                if ptype == mp.CONNACK:
                    self.connack_received(body)
                elif ptype == mp.DISCONNECT:
                    self.disconnect_received(body)
        except mp.MqttProtocolError as exc:
            self.protocol_error(str(exc))

    def lost_error(self, exc: Exception | None) -> MqttError:
        """The error that tells a waiter why the connection ended."""
        if self.close_reason is not None:
            return MqttError(self.close_reason)
        return MqttError(f"MQTT connection lost: {exc!r}" if exc else "MQTT connection closed")
