"""The decode stage's end: closing the inbox ends the decoder once everything in it is handed on."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from ingest.core.metrics import Metrics
from ingest.mqtt.client import Message
from ingest.pipeline.acks import AckTracker
from ingest.pipeline.batcher import Batch, Batcher, ReadingPlacer
from ingest.pipeline.codec import Limits, PayloadDecoder
from ingest.pipeline.decode import DecodeStage, Inbox, InboxClosed
from ingest.storage.layout import TableLayout
from tests.ingest.harness import wait_until

NOW_MS = int(time.time() * 1000)


class _NoDeadLetters:
    async def put(self, *args: object) -> None:
        raise AssertionError(f"unexpected dead letter: {args}")

    async def put_item(self, *args: object) -> None:
        raise AssertionError(f"unexpected dead letter: {args}")


def _messages(n: int, first_id: int = 1) -> list[Message]:
    return [
        (
            f"s/dev-{i % 3}/telemetry",
            orjson.dumps({"ts": NOW_MS - 60_000 + i, "temperature": i}),
            1,
            first_id + i,
        )
        for i in range(n)
    ]


def _stage(
    inbox: Inbox, queue: asyncio.Queue[Batch], acks: AckTracker, *, flush_interval_ms: int = 60_000
) -> DecodeStage:
    return DecodeStage(
        inbox=inbox,
        decoder=PayloadDecoder(sensor_topic_level=1, limits=Limits()),
        placer=ReadingPlacer(TableLayout(), Batcher(flush_interval_ms=flush_interval_ms)),
        write_queue=queue,
        acks=acks,
        deadletters=_NoDeadLetters(),  # type: ignore[arg-type]
        registry=None,
        metrics=Metrics(),
    )


async def test_closing_a_full_inbox_ends_the_decoder_only_after_every_reading_is_handed_on() -> (
    None
):
    inbox = Inbox(10_000)
    queue: asyncio.Queue[Batch] = asyncio.Queue(2)  # the decoder waits for room: slow writers
    acked: list[int] = []
    acks = AckTracker(acked.extend)
    epoch = acks.new_epoch()
    messages = _messages(140)
    for i in range(0, 140, 20):
        inbox.put(epoch, NOW_MS, messages[i : i + 20])
    inbox.close()  # before the decoder even starts: what is in it still counts

    decoder = asyncio.create_task(_stage(inbox, queue, acks).run())
    batches: list[Batch] = []
    while not decoder.done() or not queue.empty():
        getter = asyncio.ensure_future(queue.get())
        await asyncio.wait([getter, decoder], return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            batches.append(getter.result())
            await asyncio.sleep(0.01)  # a slow writer
        else:
            getter.cancel()
    await decoder  # returned, not cancelled

    items = [item for batch in batches for item, _ in batch]
    assert len(items) == 140
    assert len({(it["pk"]["S"], it["sk"]["N"]) for it in items}) == 140
    assert [len(b) for b in batches] == [25, 25, 25, 25, 25, 15]  # the open batch flushed
    assert inbox.messages == 0 and not inbox
    assert len(acks) == 140 and acked == []  # each tracked once, none durable yet
    acks.done([p for batch in batches for _, ps in batch for p in ps])
    assert acked == list(range(1, 141))


async def test_closing_ends_the_decoder_at_once_with_the_open_batch_flushed() -> None:
    inbox = Inbox(100)
    queue: asyncio.Queue[Batch] = asyncio.Queue(10)
    acks = AckTracker(lambda ids: None)
    epoch = acks.new_epoch()
    decoder = asyncio.create_task(_stage(inbox, queue, acks, flush_interval_ms=60_000).run())
    inbox.put(epoch, NOW_MS, _messages(3))
    # Decoded, and sitting in the open batch (due in a minute).
    await wait_until(lambda: len(acks) == 3, 5, "3 messages decoded")
    assert queue.empty()
    t0 = time.monotonic()
    inbox.close()
    await asyncio.wait_for(decoder, 2)
    assert time.monotonic() - t0 < 1.0
    assert queue.qsize() == 1 and len(queue.get_nowait()) == 3


async def test_a_decoder_on_a_closed_empty_inbox_returns_and_hands_on_nothing() -> None:
    inbox = Inbox(100)
    inbox.close()
    inbox.close()  # twice is the same
    queue: asyncio.Queue[Batch] = asyncio.Queue(10)
    acks = AckTracker(lambda ids: None)
    await asyncio.wait_for(_stage(inbox, queue, acks).run(), 2)
    assert queue.qsize() == 0 and len(acks) == 0


async def test_a_waiting_decoder_wakes_when_the_inbox_is_closed() -> None:
    inbox = Inbox(100)
    queue: asyncio.Queue[Batch] = asyncio.Queue(10)
    acks = AckTracker(lambda ids: None)
    decoder = asyncio.create_task(_stage(inbox, queue, acks).run())
    await asyncio.sleep(0.05)
    assert not decoder.done()
    inbox.close()
    await asyncio.wait_for(decoder, 2)
    assert queue.qsize() == 0


def test_putting_into_a_closed_inbox_is_refused_and_keeps_what_it_holds() -> None:
    inbox = Inbox(100)
    inbox.put(1, NOW_MS, _messages(2))
    inbox.close()
    assert inbox.closed
    with pytest.raises(InboxClosed, match="closed"):
        inbox.put(1, NOW_MS, _messages(1, first_id=3))
    assert inbox.messages == 2
    epoch, _, chunk = inbox.get_nowait()
    assert (epoch, [m[3] for m in chunk]) == (1, [1, 2])
