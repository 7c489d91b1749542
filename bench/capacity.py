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
item. On-demand tables bill write request units: ``US_EAST_1_USD_PER_MILLION_WRU``
is the us-east-1 price (Standard table class) since the 50 % reduction of
on-demand throughput prices on 1 November 2024; see docs/performance.md for
the source, and pass another price where it differs.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

__all__ = [
    "US_EAST_1_USD_PER_MILLION_WRU",
    "cost_per_million_readings_usd",
    "item_size_bytes",
    "number_size_bytes",
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


def cost_per_million_readings_usd(
    write_units_total: int, readings: int, usd_per_million_wru: float
) -> float | None:
    """On-demand write cost of a million readings at the measured write units per reading."""
    if readings <= 0:
        return None
    return write_units_total / readings * usd_per_million_wru
