"""Unit tests of ingest.pipeline.batcher: BatchWriteItem-sized batches without duplicate keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ingest.pipeline.batcher
from ingest.pipeline.acks import Pending
from ingest.pipeline.batcher import MAX_BATCH_ITEMS, Batch, Batcher
from ingest.storage.layout import Item


def item(pk: str, sk: int, value: int = 0) -> Item:
    return {"pk": {"S": pk}, "sk": {"N": str(sk)}, "m": {"M": {"v": {"N": str(value)}}}}


def pending(packet_id: int) -> Pending:
    return Pending("sensors/dev-1/telemetry", packet_id, 1, 0, 0, 1)


def keys(batch: Batch) -> list[tuple[str, str]]:
    return [(it["pk"]["S"], it["sk"]["N"]) for it, _ in batch]


def test_batches_hold_exactly_25_items_in_arrival_order() -> None:
    batcher = Batcher()
    full: list[Batch] = []

    for i in range(60):
        batch = batcher.add(item("dev-1#2026-01-01#0", i), pending(i))
        if batch is not None:
            full.append(batch)
            assert i in (24, 49)  # returned by the add that filled it
    rest = batcher.take()

    assert [len(b) for b in full] == [25, 25]
    assert rest is not None
    assert len(rest) == 10
    assert [int(sk) for b in [*full, rest] for _, sk in keys(b)] == list(range(60))
    assert len(batcher) == 0
    assert batcher.take() is None


def test_duplicate_key_keeps_the_last_item_and_both_pendings() -> None:
    batcher = Batcher()
    first, other, second = pending(1), pending(2), pending(3)

    batcher.add(item("a#d#0", 7, value=1), first)
    batcher.add(item("b#d#0", 7), other)
    batcher.add(item("a#d#0", 7, value=2), second)
    batch = batcher.take()

    assert batch is not None
    assert keys(batch) == [("a#d#0", "7"), ("b#d#0", "7")]
    (written, pendings), (_, other_pendings) = batch
    assert written == item("a#d#0", 7, value=2)
    assert pendings == [first, second]
    assert other_pendings == [other]


def test_duplicates_do_not_count_towards_the_batch_size() -> None:
    batcher = Batcher()

    for i in range(24):
        assert batcher.add(item("s#d#0", i), pending(i)) is None
    for i in range(10):
        assert batcher.add(item("s#d#0", i), pending(100 + i)) is None
    batch = batcher.add(item("s#d#0", 24), pending(24))

    assert batch is not None
    assert len(batch) == 25
    assert sum(len(ps) for _, ps in batch) == 35


def test_same_timestamp_on_another_partition_is_not_a_duplicate() -> None:
    batcher = Batcher()
    batcher.add(item("dev-1#d#0", 5), pending(1))
    batcher.add(item("dev-2#d#0", 5), pending(2))

    batch = batcher.take()

    assert batch is not None
    assert len(batch) == 2


@settings(max_examples=200, deadline=None)
@given(
    max_items=st.integers(1, MAX_BATCH_ITEMS),
    adds=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), max_size=200),
)
def test_no_batch_ever_holds_duplicate_keys(max_items: int, adds: list[tuple[int, int]]) -> None:
    batcher = Batcher(max_items=max_items)
    batches: list[Batch] = []
    expected_last: list[dict[tuple[str, str], int]] = [{}]

    for n, (p, ts) in enumerate(adds):
        it = item(f"dev-{p}#d#0", ts, value=n)
        expected_last[-1][(it["pk"]["S"], it["sk"]["N"])] = n
        full = batcher.add(it, pending(n))
        if full is not None:
            assert len(full) == max_items
            batches.append(full)
            expected_last.append({})
    rest = batcher.take()
    if rest is not None:
        batches.append(rest)

    for batch, last in zip(batches, expected_last, strict=False):
        assert len(set(keys(batch))) == len(batch) <= max_items
        # The item kept for a key is the last one added while the batch was open.
        assert {
            k: int(it["m"]["M"]["v"]["N"]) for k, (it, _) in zip(keys(batch), batch, strict=True)
        } == last
    # Every message waits on exactly one batch entry.
    packet_ids = [p.packet_id for b in batches for _, ps in b for p in ps]
    assert sorted(packet_ids) == list(range(len(adds)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(ingest.pipeline.batcher, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_due_in_s_counts_down_from_the_first_item(clock: FakeClock) -> None:
    batcher = Batcher(flush_interval_ms=100)
    assert batcher.due_in_s() is None

    batcher.add(item("s#d#0", 1), pending(1))
    assert batcher.due_in_s() == pytest.approx(0.1)

    clock.now += 0.04
    batcher.add(item("s#d#0", 2), pending(2))  # a later item does not restart the clock
    assert batcher.due_in_s() == pytest.approx(0.06)

    clock.now += 1.0
    assert batcher.due_in_s() == 0.0  # overdue, never negative

    batcher.take()
    assert batcher.due_in_s() is None

    clock.now += 5.0
    batcher.add(item("s#d#0", 3), pending(3))
    assert batcher.due_in_s() == pytest.approx(0.1)  # a new batch starts a new clock


def test_due_in_s_restarts_after_a_full_batch(clock: FakeClock) -> None:
    batcher = Batcher(max_items=2, flush_interval_ms=50)
    batcher.add(item("s#d#0", 1), pending(1))
    clock.now += 10.0
    assert batcher.add(item("s#d#0", 2), pending(2)) is not None

    assert batcher.due_in_s() is None
    batcher.add(item("s#d#0", 3), pending(3))
    assert batcher.due_in_s() == pytest.approx(0.05)


@pytest.mark.parametrize("max_items", [0, -1, 26, 100])
def test_max_items_must_fit_one_batch_write(max_items: int) -> None:
    with pytest.raises(ValueError, match=rf"max_items must be 1\.\.25, got {max_items}$"):
        Batcher(max_items=max_items)


def test_max_items_of_one_returns_every_item_at_once() -> None:
    batcher = Batcher(max_items=1)

    batch = batcher.add(item("s#d#0", 1), pending(1))

    assert batch is not None
    assert keys(batch) == [("s#d#0", "1")]
    assert len(batcher) == 0
