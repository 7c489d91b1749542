"""The packed write stage's parts, each alone: journal batches, open windows, the window writer.

A small in-memory table stands in for DynamoDB (BatchWriteItem, GetItem, Query on one
partition's sort keys) so that failures can be injected at will; the end-to-end proofs
with real servers are in ``test_packed_service.py``.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.pipeline.acks import AckTracker, Pending
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.pipeline.packing import CHECKPOINT_SK, JournalPlacer, OpenWindows, WindowWriter
from ingest.storage.journal import JournalSequence, journal_items, parse_journal_item
from ingest.storage.layout import JOURNAL_PREFIX, Item, Reading, TableLayout, is_reserved_pk
from ingest.storage.spool import iter_dead_letters
from ingest.storage.windows import SEAL_GRACE_MS, WindowScheme, merge_parts, parse_part_item

LAYOUT = TableLayout(kind="packed", bucket_ms=3_600_000, window_ms=60_000, groups=4, stage_ms=1000)
SCHEME = WindowScheme(LAYOUT)
T0 = 1_800_000_000_000 - 1_800_000_000_000 % 3_600_000


def _r(sensor: str, ts: int, v: float = 1.0) -> Reading:
    return Reading(sensor, ts, {"v": v})


def _pending(i: int) -> Pending:
    return Pending(f"t/s{i}/telemetry", i, 1, 0, 0, 1)


class Table:
    """BatchWriteItem, GetItem and Query over dicts; ``fail`` calls raise first."""

    table = "t"

    def __init__(self) -> None:
        self.items: dict[tuple[str, int], Item] = {}
        self.fail = 0
        self.writes = 0

    async def batch_write(self, items: list[Item]) -> list[Item]:
        if self.fail:
            self.fail -= 1
            raise ConnectionResetError("injected")
        self.writes += 1
        for it in items:
            self.items[(it["pk"]["S"], int(it["sk"]["N"]))] = it
        return []

    async def call(self, operation: str, **kw: Any) -> dict[str, Any]:
        if operation == "get_item":
            key = (kw["Key"]["pk"]["S"], int(kw["Key"]["sk"]["N"]))
            return {"Item": self.items[key]} if key in self.items else {}
        assert operation == "query"
        values = kw["ExpressionAttributeValues"]
        pk = values[":pk"]["S"]
        assert kw["KeyConditionExpression"] == "pk = :pk AND sk >= :a"
        low = int(values[":a"]["N"])
        found = sorted((k[1], it) for k, it in self.items.items() if k[0] == pk and k[1] >= low)
        rows = [it for _, it in found]
        if kw.get("ScanIndexForward") is False:
            rows.reverse()
        return {"Items": rows[: kw.get("Limit", len(rows))]}

    def parts(self, sensor: str) -> list[Any]:
        return [
            parse_part_item(it, sensor)
            for (pk, _), it in self.items.items()
            if pk.startswith(sensor + "#")
        ]


def _writer(table: Table, windows: OpenWindows, clock: list[int]) -> WindowWriter:
    async def no_sleep(_: float) -> None:
        await asyncio.sleep(0)

    return WindowWriter(
        client=table,  # type: ignore[arg-type]
        windows=windows,
        worker="w1",
        journal_ttl_s=3600,
        metrics=Metrics(),
        backoff=Backoff(base_ms=1, cap_ms=1),
        now_ms=lambda: clock[0],
        sleep=no_sleep,
    )


def test_a_journal_batch_is_flushed_at_max_messages_with_one_pending_per_reading() -> None:
    windows = OpenWindows(SCHEME)
    placer = JournalPlacer(
        worker="w1",
        windows=windows,
        flush_interval_ms=60_000,
        max_messages=3,
        ttl_s=100,
        sequence=JournalSequence(),
        now_ms=lambda: T0,
    )
    p = [_pending(i) for i in range(3)]
    assert placer.add(_r("a", T0), p[0], T0) is None
    assert placer.add(_r("a", T0 + 1), p[0], T0) is None  # same message: still one
    assert placer.add(_r("b", T0), p[1], T0) is None
    batch = placer.add(_r("c", T0), p[2], T0)  # the third message fills it
    assert batch is not None and len(batch) == 1
    item, pendings = batch[0]
    assert pendings == [p[0], p[0], p[1], p[2]]
    assert item["pk"]["S"] == JOURNAL_PREFIX + "w1" and int(item["ttl"]["N"]) == T0 // 1000 + 100
    assert [r.ts_ms for r in parse_journal_item(item).readings] == [T0, T0 + 1, T0, T0]
    assert windows.readings == 4 and len(placer) == 0 and placer.take() is None


def test_a_large_flush_splits_into_items_whose_pendings_match_their_readings() -> None:
    windows = OpenWindows(SCHEME)
    seq = JournalSequence()
    placer = JournalPlacer(
        worker="w1",
        windows=windows,
        flush_interval_ms=60_000,
        max_messages=10**6,
        ttl_s=100,
        sequence=seq,
        now_ms=lambda: T0,
    )
    rng = random.Random(4)  # tags that do not compress away: several items of ≤ 300 KB
    for i in range(400):
        r = Reading(f"s{i}", T0 + i, {"v": i}, {"note": rng.randbytes(1500).hex()})
        placer.add(r, _pending(i), T0)
    batch = placer.take()
    assert batch is not None and len(batch) > 1
    keys = [int(it["sk"]["N"]) for it, _ in batch]
    assert keys == list(range(keys[0], keys[0] + len(batch)))
    assert seq.next(0) == keys[-1] + 1  # the split's keys were taken
    seen = []
    for item, pendings in batch:
        readings = parse_journal_item(item).readings
        assert [p.packet_id for p in pendings] == [int(r.sensor_id[1:]) for r in readings]
        seen += readings
    assert len(seen) == 400


def test_readings_arriving_while_a_window_is_sealed_survive_a_failed_seal_in_order() -> None:
    windows = OpenWindows(SCHEME)
    windows.add(_r("a", T0, 1.0), T0)
    key = ("a", T0)
    assert len(list(windows.stage(windows.fresh()))) == 1
    assert windows.begin_seal(key, {}) == [_r("a", T0, 1.0)]
    windows.add(_r("a", T0, 2.0), T0 + 5)  # a newer write of the same timestamp, meanwhile
    assert windows.checkpoint_ms(T0 + 10) == T0  # the sealing one still counts
    windows.end_seal(key, sealed=False)
    assert windows.readings == 2
    readings = windows.begin_seal(key, {})
    assert readings == [_r("a", T0, 1.0), _r("a", T0, 2.0)]  # older first: the later wins
    windows.end_seal(key, sealed=True)
    assert len(windows) == 0 and windows.readings == 0
    assert windows.checkpoint_ms(T0 + 99) == T0 + 99


async def test_only_windows_past_their_grace_are_sealed_and_the_checkpoint_follows() -> None:
    table, clock = Table(), [T0 + 30_000]
    windows = OpenWindows(SCHEME)
    writer = _writer(table, windows, clock)
    windows.add(_r("a", T0 + 1), T0 + 1_000)  # window T0
    windows.add(_r("a", T0 + 60_001), T0 + 61_000)  # window T0 + 60 s
    await writer.step()
    staged = [k for k in table.items if k[0].startswith("#stage#")]
    assert len(staged) == 1 and not table.parts("a")  # visible, nothing sealed
    clock[0] = T0 + 60_000 + SEAL_GRACE_MS  # the first window's grace is over
    table.fail = 2  # the seal is retried until it is durable
    await writer.step()
    parts = table.parts("a")
    assert [p.window_start_ms for p in parts] == [T0]
    assert [r.ts_ms for r in merge_parts(parts)] == [T0 + 1]
    assert len(windows) == 1
    checkpoint = table.items[(JOURNAL_PREFIX + "w1", CHECKPOINT_SK)]
    assert int(checkpoint["from"]["N"]) == T0 + 61_000  # the open window's first receipt
    await writer.seal_all()  # a stop seals the rest
    assert sorted(p.window_start_ms for p in table.parts("a")) == [T0, T0 + 60_000]
    assert len(windows) == 0


async def test_recovery_reads_the_journal_from_the_checkpoint_into_the_open_windows() -> None:
    table, clock = Table(), [T0 + 200_000]
    for sk, readings in [
        (T0 * 1000, [_r("a", T0 + 5)]),  # before the checkpoint: sealed already
        ((T0 + 100_000) * 1000, [_r("a", T0 + 100_000), _r("b", T0 + 100_001)]),
        ((T0 + 150_000) * 1000, [_r("a", T0 + 150_000)]),
    ]:
        for _, item in journal_items("w1", sk, readings, 0):
            await table.batch_write([item])
    await table.batch_write(
        [
            {
                "pk": {"S": JOURNAL_PREFIX + "w1"},
                "sk": {"N": str(CHECKPOINT_SK)},
                "from": {"N": str(T0 + 100_000)},
            }
        ]
    )
    windows = OpenWindows(SCHEME)
    sequence = await _writer(table, windows, clock).recover()
    assert windows.readings == 3 and len(windows) == 3
    assert sequence.next(0) == (T0 + 150_000) * 1000 + 1
    assert windows.checkpoint_ms(clock[0]) == T0 + 100_000


async def test_an_empty_journal_starts_the_sequence_after_its_last_item() -> None:
    table = Table()
    for _, item in journal_items("w1", 5_000, [_r("a", T0)], 0):
        await table.batch_write([item])
    await table.batch_write(
        [{"pk": {"S": JOURNAL_PREFIX + "w1"}, "sk": {"N": "0"}, "from": {"N": "999999"}}]
    )
    windows = OpenWindows(SCHEME)
    sequence = await _writer(table, windows, [T0]).recover()
    assert windows.readings == 0 and sequence.next(0) == 5_001


async def test_a_journal_item_that_cannot_be_written_is_dead_lettered_reading_by_reading(
    tmp_path: Path,
) -> None:
    acked: list[int] = []
    acks = AckTracker(acked.extend)
    epoch = acks.new_epoch()
    spool = DeadLetterSpool(tmp_path, acks=acks, metrics=Metrics())
    pendings = [acks.add(f"t/s{i}/telemetry", i + 1, 1, epoch, 0, 1) for i in range(3)]
    readings = [_r(f"s{i}", T0 + i, i) for i in range(3)]
    [(_, item)] = journal_items("w1", 1000, readings, 0)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(spool.run())
        await spool.put_item(item, pendings, "DynamoDB said no")
        await spool.drain()
        task.cancel()
    letters = [e for _, e in iter_dead_letters(tmp_path)]
    assert [(e.topic, e.reason) for e in letters] == [
        (f"t/s{i}/telemetry", "DynamoDB said no") for i in range(3)
    ]
    assert sorted(acked) == [1, 2, 3]


@pytest.mark.parametrize("pk", ["#journal#w1", "#stage#3#2026-12-03T10"])
def test_the_packed_layouts_own_items_are_reserved(pk: str) -> None:
    assert is_reserved_pk(pk)


async def test_a_staging_round_writes_one_item_per_sensor_group_whatever_the_sensor_count() -> None:
    table, clock = Table(), [T0 + 10_000]
    windows = OpenWindows(SCHEME)
    writer = _writer(table, windows, clock)
    for i in range(1_000):  # more sensors than a slice of the round
        windows.add(_r(f"s{i}", T0 + i), T0 + 1_000)
    await writer.step()
    staged = [it for (pk, _), it in table.items.items() if pk.startswith("#stage#")]
    assert len(staged) == LAYOUT.groups
    assert sum(int(it["n"]["N"]) for it in staged) == 1_000
