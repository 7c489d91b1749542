"""The receive stage: one MQTT session, kept alive across reconnects.

A stable client id and a persistent session (clean start off, a session
expiry in MQTT 5) make the broker keep our QoS 1 messages while we are away
and redeliver unacknowledged ones when we return. Reconnects back off
exponentially with full jitter, capped. A refusal that retrying cannot fix
(bad credentials, not authorised, a subscription granted only QoS 0) stops the
service with the broker's reason.

Each connection is its own ack epoch, begun *before* CONNECT: a broker resends
its in-flight messages right after CONNACK, before SUBACK, and those must be
stamped with the new connection (and acknowledged on it), or the broker keeps
them in flight forever. The inbox bound holds from the first byte too: the
connection is the receiver's current one from the start, so a burst during
connect pauses it like any other.

The receiver owns the ack tracker (:attr:`Receiver.acks`): its epochs are the
receiver's connections and its PUBACKs go out on the current one, so nothing
has to be wired into the receiver after it is built. Its end, in the drain's
order: :meth:`Receiver.stop_intake` stops reading and closes the inbox (the
decoder ends once it has taken what is there) while acknowledgements still go
out; :meth:`Receiver.aclose` sends DISCONNECT, keeping the persistent session,
and :meth:`Receiver.run` returns. A cancelled receiver disconnects too, so the
PUBACKs already released reach the broker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from ingest.core.lifecycle import AsyncResource
from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.mqtt.client import Message, MqttConnection, MqttSettings
from ingest.mqtt.link import MqttError
from ingest.pipeline.acks import AckTracker
from ingest.pipeline.decode import Inbox

__all__ = ["Receiver"]

log = logging.getLogger(__name__)


class Receiver(AsyncResource):
    """Keeps one subscription alive, feeds the inbox and sends the acknowledgements.

    An async context manager: leaving it closes the receiver (:meth:`aclose`).

    Args:
        settings: MQTT connection settings.
        subscription: Topic filter (possibly ``$share/GROUP/…``).
        inbox: Where message chunks go; the receiver is its only writer and closes it.
        metrics: Metrics.
        backoff: Reconnect backoff.
    """

    def __init__(
        self,
        *,
        settings: MqttSettings,
        subscription: str,
        inbox: Inbox,
        metrics: Metrics,
        backoff: Backoff,
    ) -> None:
        self._settings = settings
        self._subscription = subscription
        self._inbox = inbox
        self._m = metrics
        self._backoff = backoff
        self._conn: MqttConnection | None = None
        self._stopping = False
        self._closed = False
        self._paused = False
        self.acks = AckTracker(
            self._send_acks,
            on_complete=metrics.messages_acked.inc,
            on_stale=self._left_to_broker,
        )
        """The ack tracker: every stage that completes messages is given this one."""
        self.acknowledged = 0
        """QoS 1/2 messages acknowledged (written to their open connection) so far."""
        self.left_unacknowledged = 0
        """QoS 1/2 messages complete but not acknowledged: their connection had ended."""
        self.connected = asyncio.Event()
        self.last_error: str | None = None

    def _on_messages(self, epoch: int, chunk: list[Message]) -> None:
        if self._inbox.closed:
            # Read after intake stopped (reading is paused then, so this is not expected):
            # not tracked, so never acknowledged, and the broker redelivers them.
            log.debug("%d messages received after intake stopped: left to the broker", len(chunk))
            return
        self._inbox.put(epoch, int(time.time() * 1000), chunk)
        if self._inbox.full and not self._paused and self._conn is not None:
            self._paused = True
            self._conn.pause_reading()

    def maybe_resume(self) -> None:
        """Resume reading once the inbox has drained below half (called by the decoder)."""
        if self._paused and self._inbox.messages <= self._inbox.resume_below and not self._stopping:
            self._paused = False
            if self._conn is not None:
                self._conn.resume_reading()

    def _send_acks(self, packet_ids: list[int]) -> None:
        """PUBACKs for the current connection (the tracker filters older epochs).

        Counted as acknowledged once written to the open connection (TCP delivers them
        before the DISCONNECT that follows); with the connection gone, as left to the
        broker, which redelivers them.
        """
        if self._conn is not None and self._conn.ack(packet_ids):
            self.acknowledged += len(packet_ids)
            self._m.messages_acknowledged.inc(len(packet_ids))
        else:
            self._left_to_broker(len(packet_ids))

    def _left_to_broker(self, n: int) -> None:
        self.left_unacknowledged += n
        self._m.messages_unacknowledged.inc(n)

    def republish(self, topic: str, payloads: list[bytes]) -> None:
        """Best-effort QoS 0 copies (dead letters) on the current connection, if any.

        Best effort means a connection closing under us drops the copies (they stay
        in the spool, which is what the acknowledgement promised), never an error.
        """
        conn = self._conn
        if conn is None or not conn.is_open:
            return
        try:
            for p in payloads:
                conn.publish_nowait(topic, p)
        except MqttError as exc:
            log.info("dead-letter copies to %r not published: %s", topic, exc)

    async def run(self) -> None:
        """Connect, subscribe, wait for the connection to drop, reconnect; until stopped.

        Returns once intake has stopped and the connection is closed (:meth:`aclose`, or
        the broker went away while stopping).

        Raises:
            RuntimeError: The receiver was closed already (make a new one).
            MqttError: The broker refused us for a reason retrying cannot fix.
        """
        if self._closed:
            raise RuntimeError("the receiver is closed: make a new one to receive again")
        attempt = 0
        s = self._settings
        first = True
        while not self._stopping:
            if not first:
                self._m.mqtt_reconnects.inc()
            first = False
            epoch = self.acks.new_epoch()
            conn = MqttConnection(s, functools.partial(self._on_messages, epoch))
            self._conn, self._paused = conn, False
            try:
                await conn.open()
                await conn.subscribe([(self._subscription, 1)])
            except BaseException as exc:  # also cancelled while connecting: close the socket
                self._conn = None
                await conn.aclose()
                if not isinstance(exc, MqttError) or not exc.retriable:
                    raise
                self.last_error = str(exc)
                delay = self._backoff.delay_s(attempt)
                log.warning("MQTT connect failed (%s); retrying in %.2f s", exc, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.last_error = None
            self._m.mqtt_connected.set(1)
            self.connected.set()
            log.info(
                "subscribed to %r on %s:%d as %r (MQTT %s, session present: %s)",
                self._subscription,
                s.host,
                s.port,
                s.client_id,
                "5" if s.version == 5 else "3.1.1",
                conn.session_present,
            )
            try:
                await conn.wait_closed()
            except MqttError as exc:
                self.last_error = str(exc)
                log.warning("%s; %s", exc, "stopping" if self._stopping else "reconnecting")
            finally:
                self._conn = None
                self.connected.clear()
                self._m.mqtt_connected.set(0)
                if conn.resends_dropped:
                    self._m.mqtt_resends_dropped.inc(conn.resends_dropped)
                # Cancelled while connected: DISCONNECT, so the PUBACKs already written
                # reach the broker (a no-op when the connection is closed already).
                await conn.aclose()
            if not self._stopping:
                await asyncio.sleep(self._backoff.delay_s(0))

    def stop_intake(self) -> None:
        """Stop reading, stop reconnecting and close the inbox; acks still go out. Idempotent."""
        self._stopping = True
        self._inbox.close()
        if self._conn is not None:
            self._conn.pause_reading()

    async def aclose(self) -> None:
        """Stop intake and DISCONNECT, keeping the persistent session; safe to call twice."""
        self.stop_intake()
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()
