"""Write capacity and cost: DynamoDB item sizes, write units, on-demand prices.

Item size follows the rules DynamoDB documents ("DynamoDB item sizes and
formats", Amazon DynamoDB Developer Guide): the sum of attribute name lengths
and value sizes, where

* a string is its UTF-8 bytes, a binary its raw (base64-decoded) bytes;
* a number is about 1 byte per two significant digits, plus 1 byte (leading
  and trailing zeros trimmed);
* a Boolean or null is 1 byte;
* a List or Map is 3 bytes plus its elements, each element 1 byte more
  (a Map element also counts its key);
* a set is the sum of its elements.

A standard write consumes one write unit per started KB (1,024 bytes) of the
item; a read one unit per started 4 KB of the items it returns (a Query: of their sum),
half of that when eventually consistent. :class:`MeteredClient` counts both on a
client's calls, for a figure measured on real items instead of computed by hand.

On-demand tables bill write request units: ``US_EAST_1_USD_PER_MILLION_WRU`` is the
us-east-1 price (Standard table class) since the 50 % reduction of
on-demand throughput prices on 1 November 2024; see docs/performance.md for
the source, and pass another price where it differs.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from ingest.storage.dynamo import TableClient
from ingest.storage.layout import Item

__all__ = [
    "US_EAST_1_USD_PER_MILLION_WRU",
    "MeteredClient",
    "cost_per_million_readings_usd",
    "item_size_bytes",
    "number_size_bytes",
    "read_units",
    "write_units",
]

US_EAST_1_USD_PER_MILLION_WRU = 0.625
"""On-demand price of one million write request units, us-east-1, Standard table class."""


def number_size_bytes(text: str) -> int:
    """Approximate stored size of a DynamoDB number given as its decimal text."""
    mantissa = text.lstrip("+-").lower().split("e", 1)[0].replace(".", "")
    digits = mantissa.strip("0")
    return (len(digits) + 1) // 2 + 1


def _value_size(value: dict[str, Any]) -> int:
    ((kind, v),) = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return number_size_bytes(v)
    if kind == "B":
        return len(base64.b64decode(v)) if isinstance(v, str) else len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_size(e) + 1 for k, e in v.items())
    if kind == "L":
        return 3 + sum(_value_size(e) + 1 for e in v)
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(number_size_bytes(s) for s in v)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in v)
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def item_size_bytes(item: Mapping[str, Any]) -> int:
    """Size of an item (DynamoDB wire format) by DynamoDB's documented rules.

    Args:
        item: ``{"name": {"S": "..."}, ...}``.

    Returns:
        The size in bytes.

    Raises:
        ValueError: An attribute value is not a DynamoDB attribute value.
    """
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def write_units(size_bytes: int) -> int:
    """Write units of one standard write of an item of ``size_bytes`` (1 per started KB)."""
    return max(1, -(-size_bytes // 1024))


def read_units(size_bytes: int, *, consistent: bool) -> float:
    """Read units of one read returning ``size_bytes`` (1 per started 4 KB; half of that
    when eventually consistent)."""
    units = max(1, -(-size_bytes // 4096))
    return float(units) if consistent else units / 2


class MeteredClient:
    """A table client that counts the write and read units its calls consume, by the rules
    above (what DynamoDB bills for the items sent and returned): puts and batch writes by
    each item's size, Query and GetItem by the size of what came back. An UpdateItem is
    counted as a write of one unit (its bill depends on the stored item: not known here).

    Args:
        client: The client to call.
    """

    def __init__(self, client: TableClient) -> None:
        self._client = client
        self.write_units = 0
        self.read_units = 0.0
        self.items_written = 0

    @property
    def table(self) -> str:
        return self._client.table

    def _wrote(self, items: Sequence[Item]) -> None:
        self.items_written += len(items)
        self.write_units += sum(write_units(item_size_bytes(it)) for it in items)

    async def batch_write(self, items: Sequence[Item]) -> list[Item]:
        left = await self._client.batch_write(items)
        self._wrote([it for it in items if it not in left])
        return left

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self._client.call(operation, **kwargs)
        consistent = bool(kwargs.get("ConsistentRead"))
        if operation == "put_item":
            self._wrote([kwargs["Item"]])
        elif operation in ("update_item", "delete_item"):
            self.write_units += 1
        elif operation == "query":
            size = sum(item_size_bytes(it) for it in resp.get("Items", []))
            self.read_units += read_units(size, consistent=consistent)
        elif operation == "get_item":
            size = item_size_bytes(resp["Item"]) if "Item" in resp else 0
            self.read_units += read_units(size, consistent=consistent)
        return resp


def cost_per_million_readings_usd(
    write_units_total: int, readings: int, usd_per_million_wru: float
) -> float | None:
    """On-demand write cost of a million readings at the measured write units per reading."""
    if readings <= 0:
        return None
    return write_units_total / readings * usd_per_million_wru
