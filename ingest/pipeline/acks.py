"""Acknowledgements: a QoS 1 message is acknowledged only once all its data is durable.

Every received message becomes a :class:`Pending` with a count of outstanding
units (one per reading written, one per dead letter kept). When the count
reaches zero the message is complete; PUBACKs are released strictly in the
order messages arrived (MQTT requires in-order acknowledgement), so a later
message that completes early waits for the earlier ones.

Messages received on an earlier connection are never acknowledged on a later
one: the broker redelivers them (persistent session) and the copy is
acknowledged when it completes; the deterministic keys make the second write
an overwrite. Such a message is *stale*: complete, and left to the broker
(``on_stale`` counts them, so that "acknowledged" and "left unacknowledged"
add up to what completed).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["AckTracker", "Pending"]


class Pending:
    """One received message whose data is not yet all durable."""

    __slots__ = ("epoch", "packet_id", "qos", "received_ms", "remaining", "topic")

    def __init__(
        self, topic: str, packet_id: int, qos: int, epoch: int, received_ms: int, remaining: int
    ) -> None:
        self.topic = topic
        self.packet_id = packet_id
        self.qos = qos
        self.epoch = epoch
        self.received_ms = received_ms
        self.remaining = remaining


class AckTracker:
    """Releases PUBACKs in arrival order as messages complete.

    Args:
        send: Called with packet ids to acknowledge, in order, for the current epoch.
        on_complete: Called with the number of messages completed (for metrics).
        on_stale: Called with the number of QoS 1/2 messages completed that are not
            acknowledged because they came on an earlier connection.
    """

    def __init__(
        self,
        send: Callable[[list[int]], None],
        on_complete: Callable[[int], None] | None = None,
        on_stale: Callable[[int], None] | None = None,
    ) -> None:
        self._send = send
        self._on_complete = on_complete
        self._on_stale = on_stale
        self._queue: deque[Pending] = deque()
        self.epoch = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._queue)

    def new_epoch(self) -> int:
        """Start a new connection epoch; returns it."""
        self.epoch += 1
        return self.epoch

    def add(
        self, topic: str, packet_id: int, qos: int, epoch: int, received_ms: int, remaining: int
    ) -> Pending:
        """Track a message received on connection ``epoch`` with ``remaining`` outstanding units.

        Messages must be added in arrival order; 0 units completes the message at once.
        """
        p = Pending(topic, packet_id, qos, epoch, received_ms, remaining)
        self._queue.append(p)
        self._idle.clear()
        if remaining == 0:
            self._release()
        return p

    def done(self, pendings: Iterable[Pending]) -> None:
        """Mark one unit of each given message durable (a message may appear several times)."""
        for p in pendings:
            p.remaining -= 1
        self._release()

    def _release(self) -> None:
        q = self._queue
        ids: list[int] = []
        n = stale = 0
        epoch = self.epoch
        while q and q[0].remaining <= 0:
            p = q.popleft()
            n += 1
            if p.qos:
                if p.epoch == epoch:
                    ids.append(p.packet_id)
                else:
                    stale += 1
        if ids:
            self._send(ids)
        if n and self._on_complete is not None:
            self._on_complete(n)
        if stale and self._on_stale is not None:
            self._on_stale(stale)
        if not q:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until every tracked message is complete."""
        await self._idle.wait()
