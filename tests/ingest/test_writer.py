"""Unit tests of ingest.pipeline.writer: retries until durable, dead letters, acks; and Backoff.

The sink is a fake implementing the writer's ``BatchSink`` Protocol; the dead-letter
spool is the real one on a temporary directory; ``sleep`` is injected to record the
backoff delays instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

import ingest.pipeline.writer
from ingest.core.errors import DynamoRejected, DynamoRetriable
from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.pipeline.acks import AckTracker
from ingest.pipeline.batcher import Batch
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.pipeline.writer import Writer
from ingest.storage.dynamo import BatchSink
from ingest.storage.layout import Item, Reading, TableLayout
from ingest.storage.spool import DeadLetter, iter_dead_letters

TOPIC = "sensors/gw-1/telemetry"
NOW_MS = 1_763_780_000_000
LAYOUT = TableLayout(shards=4)

Key = tuple[str, str]
Plan = Callable[[int, list[Item]], list[Item]]
"""Given the call number (0-based) and the items sent: the items left unprocessed, or raise."""


def key(it: Item) -> Key:
    return it["pk"]["S"], it["sk"]["N"]


class FakeSink:
    """A BatchSink that follows a plan and counts what it durably wrote."""

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self.calls: list[list[Key]] = []
        self.written: Counter[Key] = Counter()

    async def batch_write(self, items: list[Item]) -> list[Item]:
        call = len(self.calls)
        self.calls.append([key(it) for it in items])
        left = self._plan(call, items)
        left_keys = {key(it) for it in left}
        self.written.update(key(it) for it in items if key(it) not in left_keys)
        return left


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.sent: list[int] = []
        self.acks = AckTracker(self.sent.extend)
        self.metrics = Metrics()
        self.spool = DeadLetterSpool(tmp_path / "deadletters", acks=self.acks, metrics=self.metrics)
        self.delays: list[float] = []
        self.now = 0.0  # the writer's monotonic clock, when a test fakes it

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.now += delay

    def writer(self, sink: BatchSink, *, deadline_s: float = 300.0, seed: int = 1) -> Writer:
        return Writer(
            sink=sink,
            acks=self.acks,
            deadletters=self.spool,
            metrics=self.metrics,
            backoff=Backoff(base_ms=100, cap_ms=1000, rng=random.Random(seed)),
            deadline_s=deadline_s,
            sleep=self.sleep,
        )

    def batch(self, messages: int, readings_per_message: int = 1, sensor: str = "dev") -> Batch:
        """Items for ``messages`` QoS 1 messages (packet ids 1..n), each tracked for acks."""
        out: Batch = []
        for m in range(messages):
            p = self.acks.add(TOPIC, m + 1, 1, self.acks.epoch, NOW_MS, readings_per_message)
            for r in range(readings_per_message):
                reading = Reading(f"{sensor}-{m}", NOW_MS + r, {"t": m + r / 10})
                out.append((LAYOUT.to_item(reading), [p]))
        return out

    def dead_letters(self) -> list[DeadLetter]:
        return [dl for _, dl in iter_dead_letters(self.spool.directory)]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"iot_ingest_{name}", labels)
        return 0.0 if value is None else value


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    task = asyncio.create_task(harness.spool.run(), name="deadletter-spool")
    try:
        yield harness
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def fake_clock(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Harness:
    """Make the writer's deadline clock advance only by the recorded sleeps."""
    clock = SimpleNamespace(monotonic=lambda: h.now, perf_counter=time.perf_counter, time=time.time)
    monkeypatch.setattr(ingest.pipeline.writer, "time", clock)
    return h


async def test_unprocessed_items_are_retried_until_written(h: Harness) -> None:
    batch = h.batch(25)
    keys = [key(it) for it, _ in batch]

    def plan(call: int, items: list[Item]) -> list[Item]:
        # DynamoDB writes a subset each time and returns the rest as UnprocessedItems.
        return [items[:15], items[::3], items[:1], []][call]

    sink = FakeSink(plan)
    await h.writer(sink).write(batch)
    await h.spool.drain()

    assert [len(c) for c in sink.calls] == [25, 15, 5, 1]
    assert sink.calls[1] == keys[:15]
    assert sink.written == Counter(keys)  # every item written exactly once
    assert len(h.delays) == 3
    assert h.sent == list(range(1, 26))
    assert h.dead_letters() == []
    assert h.metric("items_written_total") == 25
    assert h.metric("unprocessed_items_total") == 15 + 5 + 1
    assert h.metric("write_retries_total", cause="unprocessed") == 3


async def test_written_items_are_acked_while_the_rest_is_retried(h: Harness) -> None:
    batch = h.batch(3)
    acked_during_retry: list[int] = []

    def plan(call: int, items: list[Item]) -> list[Item]:
        if call == 0:
            return items[1:]
        acked_during_retry.extend(h.sent)
        return []

    await h.writer(FakeSink(plan)).write(batch)

    assert acked_during_retry == [1]
    assert h.sent == [1, 2, 3]


async def test_throttling_is_retried_with_backoff(h: Harness) -> None:
    batch = h.batch(10)

    def plan(call: int, items: list[Item]) -> list[Item]:
        if call < 3:
            raise DynamoRetriable("ThrottlingException: rate exceeded", cause="throttled")
        return []

    sink = FakeSink(plan)
    writer = h.writer(sink)
    await writer.write(batch)

    assert [len(c) for c in sink.calls] == [10, 10, 10, 10]
    assert sink.written == Counter(key(it) for it, _ in batch)
    assert len(h.delays) == 3
    assert all(0 <= d <= c / 1000 for d, c in zip(h.delays, [100, 200, 400], strict=True))
    assert h.metric("write_retries_total", cause="throttled") == 3
    assert writer.healthy
    assert h.sent == list(range(1, 11))


async def test_an_answer_naming_items_not_sent_is_distrusted_and_retried(h: Harness) -> None:
    # UnprocessedItems that lists an item this request never carried is not this
    # request's answer (a desynced connection, a confused proxy): taking the items it
    # does not list for written could acknowledge readings that never reached the table.
    batch = h.batch(3)
    foreign = LAYOUT.to_item(Reading("someone-else", NOW_MS, {"t": 0}))

    def plan(call: int, items: list[Item]) -> list[Item]:
        return [foreign] if call == 0 else []

    sink = FakeSink(plan)
    await h.writer(sink).write(batch)

    assert [len(c) for c in sink.calls] == [3, 3]  # the whole batch again
    assert h.metric("write_retries_total", cause="bad_response") == 1
    assert h.metric("items_written_total") == 3  # counted once, from the trusted answer
    assert h.sent == [1, 2, 3]


async def test_writer_reports_unhealthy_while_retrying(h: Harness) -> None:
    batch = h.batch(1)
    writer: Writer

    def plan(call: int, items: list[Item]) -> list[Item]:
        if call == 0:
            raise DynamoRetriable("ServiceUnavailable", cause="server_error")
        assert not writer.healthy
        return []

    writer = h.writer(FakeSink(plan))
    await writer.write(batch)

    assert writer.healthy


async def test_rejected_batch_dead_letters_only_the_bad_item(h: Harness) -> None:
    batch = h.batch(5)
    bad = key(batch[2][0])

    def plan(call: int, items: list[Item]) -> list[Item]:
        if bad in {key(it) for it in items}:
            raise DynamoRejected("ValidationException: Item size has exceeded the maximum")
        return []

    sink = FakeSink(plan)
    await h.writer(sink).write(batch)
    await h.spool.drain()

    assert [len(c) for c in sink.calls] == [5, 1, 1, 1, 1, 1]  # then one by one
    assert sink.written == Counter(key(it) for it, _ in batch if key(it) != bad)
    (letter,) = h.dead_letters()
    assert letter.stage == "write"
    assert letter.topic == TOPIC
    assert letter.reason == (
        "DynamoDB rejected the item: ValidationException: Item size has exceeded the maximum"
    )
    assert orjson.loads(letter.payload) == {"sensor_id": "dev-2", "ts": NOW_MS, "t": 2}
    assert h.sent == [1, 2, 3, 4, 5]  # the bad one too, once its dead letter is on disk
    assert h.metric("write_rejected_total") == 2
    assert h.metric("dead_letters_total", stage="write") == 1


async def test_retry_deadline_dead_letters_what_is_left(fake_clock: Harness) -> None:
    h = fake_clock
    batch = h.batch(4)

    def plan(call: int, items: list[Item]) -> list[Item]:
        raise DynamoRetriable("ThrottlingException: rate exceeded", cause="throttled")

    sink = FakeSink(plan)
    await h.writer(sink, deadline_s=3.0).write(batch)
    await h.spool.drain()

    assert sink.written == Counter()
    assert len(sink.calls) == len(h.delays) + 1 >= 4
    assert sum(h.delays) <= 3.0
    letters = h.dead_letters()
    assert sorted(orjson.loads(dl.payload)["sensor_id"] for dl in letters) == [
        "dev-0",
        "dev-1",
        "dev-2",
        "dev-3",
    ]
    for dl in letters:
        assert f"write failed after {len(sink.calls)} attempts" in dl.reason
        assert "(write_retry_deadline_s=3.0)" in dl.reason
        assert dl.reason.endswith("ThrottlingException: rate exceeded")
    assert h.metric("write_gave_up_total") == 4
    assert h.sent == [1, 2, 3, 4]


async def test_deadline_dead_letters_only_the_unwritten_items(fake_clock: Harness) -> None:
    h = fake_clock
    batch = h.batch(2, readings_per_message=3)
    stuck = key(batch[4][0])

    def plan(call: int, items: list[Item]) -> list[Item]:
        return [it for it in items if key(it) == stuck]

    sink = FakeSink(plan)
    await h.writer(sink, deadline_s=2.0).write(batch)

    assert h.sent == [1]  # message 2 waits for its dead letter
    await h.spool.drain()

    assert sink.written == Counter(key(it) for it, _ in batch if key(it) != stuck)
    (letter,) = h.dead_letters()
    assert "(write_retry_deadline_s=2.0): UnprocessedItems" in letter.reason
    assert orjson.loads(letter.payload)["ts"] == int(stuck[1])
    assert h.sent == [1, 2]
    assert len(h.acks) == 0


async def test_collapsed_duplicates_ack_every_waiting_message(h: Harness) -> None:
    p1 = h.acks.add(TOPIC, 1, 1, 0, NOW_MS, 1)
    p2 = h.acks.add(TOPIC, 2, 1, 0, NOW_MS, 1)
    it = LAYOUT.to_item(Reading("dev-1", NOW_MS, {"t": 1}))
    sink = FakeSink(lambda call, items: [])

    await h.writer(sink).write([(it, [p1, p2])])

    assert sink.written == Counter([key(it)])
    assert h.sent == [1, 2]


async def test_run_writes_batches_from_the_queue(h: Harness) -> None:
    queue: asyncio.Queue[Batch] = asyncio.Queue(4)
    sink = FakeSink(lambda call, items: [])
    task = asyncio.create_task(h.writer(sink).run(queue), name="writer")
    try:
        await queue.put(h.batch(2))
        await queue.put(h.batch(3, sensor="other"))
        await asyncio.wait_for(queue.join(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert [len(c) for c in sink.calls] == [2, 3]
    assert h.sent == [1, 2, 1, 2, 3]


# -- Backoff -----------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_ms=25, cap_ms=5000)

    assert [backoff.ceiling_ms(n) for n in range(10)] == [
        25,
        50,
        100,
        200,
        400,
        800,
        1600,
        3200,
        5000,
        5000,
    ]
    assert backoff.ceiling_ms(10_000) == 5000  # no overflow on long outages


@settings(max_examples=200, deadline=None)
@given(
    base_ms=st.floats(0.1, 1000),
    cap_ms=st.floats(1, 60_000),
    attempt=st.integers(0, 100),
    seed=st.integers(0, 2**32),
)
def test_backoff_full_jitter_stays_within_bounds(
    base_ms: float, cap_ms: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(base_ms=base_ms, cap_ms=cap_ms, rng=random.Random(seed))
    ceiling_s = min(cap_ms, base_ms * 2 ** min(attempt, 32)) / 1000

    for _ in range(20):
        assert 0 <= backoff.delay_s(attempt) <= ceiling_s


def test_backoff_delays_grow_with_attempts_and_use_the_whole_range() -> None:
    backoff = Backoff(base_ms=10, cap_ms=2000, rng=random.Random(42))
    samples = {n: [backoff.delay_s(n) for _ in range(500)] for n in range(10)}
    means = [sum(s) / len(s) for s in samples.values()]

    for n in range(8):  # the ceiling doubles up to 1280 ms, then hits the 2000 ms cap
        ceiling_s = backoff.ceiling_ms(n) / 1000
        assert min(samples[n]) < 0.1 * ceiling_s  # full jitter: close to 0 happens
        assert max(samples[n]) > 0.9 * ceiling_s
        assert 0.4 * ceiling_s < means[n] < 0.6 * ceiling_s
        assert means[n + 1] > means[n]
    assert max(samples[9]) <= 2.0


def test_backoff_with_a_seeded_rng_is_reproducible() -> None:
    def delays(seed: int) -> list[float]:
        backoff = Backoff(base_ms=25, cap_ms=5000, rng=random.Random(seed))
        return [backoff.delay_s(n) for n in range(12)]

    assert delays(7) == delays(7)
    assert delays(7) != delays(8)
