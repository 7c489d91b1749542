"""Payload bytes: readings as the ingest contract's JSON, and the invalid payloads of faults.

Device mode sends one reading per message, ``{"ts": 1763780000123,
"temperature": 22.5, ...}``, on the device's own topic. Gateway mode sends
batches ``{"readings": [{"sensor_id": "gw-0000:env-00001", "ts": ..., ...}, ...]}``
on the gateway's topic (ids under the gateway's, see :mod:`simulator.generator`).
Metrics are JSON numbers, tags strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import orjson

from simulator.faults import MalformedKind

__all__ = [
    "ReadingDict",
    "batch_payload",
    "malformed_payload",
    "missing_fields_payload",
    "oversize_payload",
    "reading_dicts",
    "reading_payload",
]

ReadingDict = dict[str, Any]
"""One reading as sent: ``ts``, metrics, tags, and ``sensor_id`` in gateway mode."""


@lru_cache(maxsize=64)
def _row_builder(keys: tuple[str, ...]) -> Callable[[Sequence[list[Any]]], list[ReadingDict]]:
    # A literal dict display in a comprehension is about twice as fast as dict(zip(...)),
    # and this is the hot loop of gateway mode. Keys are repr()-quoted: nothing is injected.
    names = [f"v{i}" for i in range(len(keys))]
    items = ", ".join(f"{k!r}: {v}" for k, v in zip(keys, names, strict=True))
    src = f"lambda cols: [{{{items}}} for {', '.join(names)}, in zip(*cols)]"
    builder: Callable[[Sequence[list[Any]]], list[ReadingDict]] = eval(src, {"zip": zip})
    return builder


def reading_dicts(
    keys: Sequence[str], columns: Sequence[list[Any]], tags: Mapping[str, str] | None = None
) -> list[ReadingDict]:
    """Readings from aligned columns (e.g. ``("ts", "temperature")`` and their value lists)."""
    if len(keys) != len(columns):
        raise ValueError(f"{len(keys)} keys for {len(columns)} columns")
    rows = _row_builder(tuple(keys))(columns)
    if tags:
        for r in rows:
            r.update(tags)
    return rows


def reading_payload(reading: ReadingDict) -> bytes:
    """A device-mode message: one reading."""
    return orjson.dumps(reading)


def batch_payload(readings: Iterable[ReadingDict]) -> bytes:
    """A gateway-mode message: a batch of readings (each with its ``sensor_id``)."""
    return orjson.dumps({"readings": list(readings)})


def _wrap(reading: ReadingDict, gateway: bool) -> bytes:
    return batch_payload([reading]) if gateway else reading_payload(reading)


def malformed_payload(kind: MalformedKind, reading: ReadingDict, *, gateway: bool) -> bytes:
    """A payload that no correct decoder accepts, derived from a real reading.

    Args:
        kind: Which way it is malformed.
        reading: The reading it replaces (metrics are taken from it).
        gateway: Shape it as a gateway batch (the bad part then is the one reading).
    """
    if kind is MalformedKind.TRUNCATED_JSON:
        text = _wrap(reading, gateway)
        return text[: max(1, len(text) // 2)]
    if kind is MalformedKind.NOT_JSON:
        parts = [f"{k}={v}" for k, v in reading.items()]
        return ("\x00" + ";".join(parts)).encode()
    if kind is MalformedKind.NAN_VALUE:
        # JSON has no NaN; some encoders still write it.
        text = _wrap({**_without_metrics(reading), "value": 0.0}, gateway)
        return text.replace(b'"value":0.0', b'"value":NaN')
    if kind is MalformedKind.BAD_TIMESTAMP:
        return _wrap({**reading, "ts": "yesterday at noon"}, gateway)
    if kind is MalformedKind.WRONG_TYPE:
        metric = next((k for k, v in reading.items() if k != "ts" and not isinstance(v, str)), "v")
        return _wrap({**reading, metric: True}, gateway)
    return orjson.dumps([reading])  # NOT_AN_OBJECT


def _without_metrics(reading: ReadingDict) -> ReadingDict:
    return {k: v for k, v in reading.items() if k in ("sensor_id", "ts") or isinstance(v, str)}


def missing_fields_payload(reading: ReadingDict, *, gateway: bool) -> bytes:
    """The reading without any metric (only its id, timestamp and tags)."""
    return _wrap(_without_metrics(reading), gateway)


def oversize_payload(reading: ReadingDict, *, gateway: bool, size_bytes: int) -> bytes:
    """The reading padded with a long ``pad`` tag to exactly ``size_bytes`` bytes."""
    base = _wrap({**reading, "pad": ""}, gateway)
    pad = "x" * max(0, size_bytes - len(base))
    return _wrap({**reading, "pad": pad}, gateway)
