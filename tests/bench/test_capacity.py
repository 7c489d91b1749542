"""bench.capacity.MeteredClient: the units a client's calls consume, by DynamoDB's rules."""

from __future__ import annotations

from typing import Any

from bench.capacity import MeteredClient, item_size_bytes, read_units
from ingest.storage.layout import Item


def _item(key: int, blob_bytes: int) -> Item:
    return {"pk": {"S": "p"}, "sk": {"N": str(key)}, "b": {"B": b"x" * blob_bytes}}


class _Table:
    """Answers with fixed items; leaves the last item of a batch unprocessed."""

    table = "t"

    def __init__(self, returned: list[Item]) -> None:
        self.returned = returned

    async def batch_write(self, items: list[Item]) -> list[Item]:
        return list(items[-1:])

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        if operation == "query":
            return {"Items": self.returned}
        if operation == "get_item":
            return {"Item": self.returned[0]} if self.returned else {}
        return {}


async def test_writes_count_a_unit_per_started_kb_of_each_item_processed() -> None:
    meter = MeteredClient(_Table([]))
    await meter.call("put_item", TableName="t", Item=_item(1, 1500))  # ≈ 1.5 KB: 2 units
    left = await meter.batch_write([_item(2, 100), _item(3, 3000), _item(4, 5000)])
    assert len(left) == 1  # the 5 KB item came back unprocessed: not billed
    assert (meter.write_units, meter.items_written) == (2 + 1 + 3, 3)
    await meter.call("update_item", TableName="t", Key={})
    assert meter.write_units == 7


async def test_reads_count_started_4_kb_of_what_came_back_half_when_eventually_consistent() -> None:
    items = [_item(i, 2000) for i in range(3)]  # ≈ 6 KB in all
    assert 4096 < sum(item_size_bytes(it) for it in items) <= 8192
    meter = MeteredClient(_Table(items))
    await meter.call("query", TableName="t", ConsistentRead=True)
    assert meter.read_units == 2.0
    await meter.call("query", TableName="t")
    assert meter.read_units == 3.0
    await meter.call("get_item", TableName="t", Key={}, ConsistentRead=True)
    assert meter.read_units == 4.0  # one item of 2 KB: a unit
    assert read_units(0, consistent=False) == 0.5  # a read that finds nothing still costs
