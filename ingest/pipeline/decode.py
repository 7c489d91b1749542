"""The decode stage and the inbox in front of it.

receive → **inbox** → **decode/validate → place → batch** → write queue → writers
                                  └──────────→ dead letters

The receiver appends whole chunks (one network read's worth of messages) to
the inbox; when the inbox holds ``inbox_max_messages`` the receiver stops
reading from the socket, so TCP and the broker's in-flight window push back
on the publishers. The decoder registers each message with the ack tracker
in arrival order, turns readings into items and fills batches; a full batch
waits for room in the bounded write queue, which is how a slow DynamoDB
slows intake instead of growing memory.

The inbox ends like a memory stream (anyio's): the receiver, its only writer,
closes it when intake stops; the decoder decodes what it still holds, flushes
the open batch and returns. No sentinel, no flag set from outside.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from ingest.core.errors import IngestError
from ingest.core.metrics import Metrics
from ingest.mqtt.client import Message
from ingest.pipeline.acks import AckTracker
from ingest.pipeline.batcher import Batch, Placer
from ingest.pipeline.codec import PayloadDecoder, Rejection
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.spool import DeadLetter

__all__ = ["DecodeStage", "Inbox", "InboxClosed"]

log = logging.getLogger(__name__)


class InboxClosed(IngestError):
    """A chunk was put into a closed inbox (a bug: the receiver stops putting when it closes it)."""


class Inbox:
    """Chunks of received messages waiting for the decoder (bounded by pausing the receiver).

    Closing it is the end of the stream: what it holds is still taken, nothing more
    may be put, and :meth:`wait` returns at once when it is empty.

    Args:
        max_messages: Depth at which :attr:`full` turns true.
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self.resume_below = max_messages // 2
        self._chunks: deque[tuple[int, int, list[Message]]] = deque()
        self.messages = 0
        self.closed = False
        self._event = asyncio.Event()

    def put(self, epoch: int, received_ms: int, chunk: list[Message]) -> None:
        """Append one chunk received on connection ``epoch``.

        Raises:
            InboxClosed: The inbox was closed.
        """
        if self.closed:
            raise InboxClosed(
                f"inbox closed: {len(chunk)} messages received after intake stopped "
                "(they are not tracked, so never acknowledged: the broker redelivers them)"
            )
        self._chunks.append((epoch, received_ms, chunk))
        self.messages += len(chunk)
        self._event.set()

    @property
    def full(self) -> bool:
        return self.messages >= self.max_messages

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def get_nowait(self) -> tuple[int, int, list[Message]]:
        item = self._chunks.popleft()
        self.messages -= len(item[2])
        return item

    def close(self) -> None:
        """End the stream: the decoder takes what is left, then returns. Safe to call twice."""
        self.closed = True
        self._event.set()

    async def wait(self) -> None:
        """Wait until the inbox holds a chunk, or is closed."""
        while not self._chunks and not self.closed:
            self._event.clear()
            await self._event.wait()


def _rejection_letter(topic: str, payload: bytes, rej: Rejection, now_ms: int) -> DeadLetter:
    if rej.index is None:  # the whole message (or its only reading): keep it as sent
        body = payload
    else:
        import orjson

        try:
            body = orjson.dumps({"readings": [rej.reading]})
        except TypeError:
            body = payload
    return DeadLetter(now_ms, "decode", rej.reason, topic, body, rej.index)


class DecodeStage:
    """Decodes messages, tracks them for acknowledgement and fills batches.

    Args:
        inbox: Where messages come from.
        decoder: Payload decoder.
        placer: Readings into batches, per the table's layout
            (:class:`~ingest.pipeline.batcher.ReadingPlacer`, or
            :class:`~ingest.pipeline.packing.JournalPlacer` for ``packed``).
        write_queue: Bounded queue of full batches for the writers.
        acks: Ack tracker.
        deadletters: Dead-letter spool.
        registry: Sensor registry (observations).
        metrics: Metrics.
        on_drained: Called after each chunk (lets the receiver resume reading).
    """

    def __init__(
        self,
        *,
        inbox: Inbox,
        decoder: PayloadDecoder,
        placer: Placer,
        write_queue: asyncio.Queue[Batch],
        acks: AckTracker,
        deadletters: DeadLetterSpool,
        registry: SensorRegistry | None,
        metrics: Metrics,
        on_drained: Callable[[], None] = lambda: None,
    ) -> None:
        self.inbox = inbox
        self._decoder = decoder
        self._placer = placer
        self._write_queue = write_queue
        self._acks = acks
        self._dead = deadletters
        self._registry = registry
        self._m = metrics
        self._on_drained = on_drained

    async def _flush(self) -> None:
        batch = self._placer.take()
        if batch:
            self._m.batch_size.observe(len(batch))
            await self._write_queue.put(batch)

    async def run(self) -> None:
        """Decode until the inbox is closed and empty; then flush the open batch and return.

        Every message taken from the inbox is tracked and its items are in a batch on
        the write queue (or its dead letters queued) when this returns.
        """
        inbox = self.inbox
        batcher = self._placer
        while True:
            if not inbox:
                if inbox.closed:
                    await self._flush()
                    return
                due = batcher.due_in_s()
                if due is None:
                    await inbox.wait()
                    continue
                if due > 0:
                    try:
                        async with asyncio.timeout(due):
                            await inbox.wait()
                    except TimeoutError:
                        pass
                if not inbox or batcher.due_in_s() == 0:
                    await self._flush()
                continue
            await self._decode_chunk(*inbox.get_nowait())
            self._m.inbox_depth.set(inbox.messages)
            self._on_drained()

    async def _decode_chunk(self, epoch: int, received_ms: int, chunk: list[Message]) -> None:
        decode = self._decoder.decode
        place = self._placer.add
        track = self._acks.add
        registry = self._registry
        n_readings = 0
        for topic, payload, qos, packet_id in chunk:
            readings, rejected = decode(topic, payload, received_ms)
            pending = track(
                topic, packet_id, qos, epoch, received_ms, len(readings) + len(rejected)
            )
            if readings and registry is not None:
                # Before any await: a hold adds units to a message none of which completed.
                registry.observe(readings, pending)
            for r in readings:
                full = place(r, pending, received_ms)
                if full is not None:
                    self._m.batch_size.observe(len(full))
                    await self._write_queue.put(full)
            if rejected:
                now_ms = int(time.time() * 1000)
                for rej in rejected:
                    await self._dead.put(_rejection_letter(topic, payload, rej, now_ms), [pending])
            n_readings += len(readings)
        self._m.messages_received.inc(len(chunk))
        self._m.readings_received.inc(n_readings)
