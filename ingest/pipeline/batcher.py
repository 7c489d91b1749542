"""Batching: items into BatchWriteItem-sized groups, duplicate keys collapsed.

DynamoDB rejects a BatchWriteItem holding two requests for the same key, so a
second reading with the same (pk, sk) replaces the first in the open batch;
both messages' acknowledgements then wait for that one write.
"""

from __future__ import annotations

import time
from typing import Protocol

from ingest.pipeline.acks import Pending
from ingest.storage.items import KeyedItem
from ingest.storage.layout import Reading, TableLayout

__all__ = ["MAX_BATCH_ITEMS", "Batch", "Batcher", "Placer", "ReadingPlacer"]

MAX_BATCH_ITEMS = 25

Batch = list[tuple[KeyedItem, list[Pending]]]
"""Items to write (reading items, journal items: typed as far as the writer needs, by
their key), each with the messages waiting for it."""


class Batcher:
    """Groups items into batches of at most ``max_items`` distinct keys.

    Args:
        max_items: Items per batch (DynamoDB allows 25).
        flush_interval_ms: Age after which a partial batch should be flushed.
    """

    __slots__ = ("_entries", "_opened", "flush_interval_ms", "max_items")

    def __init__(self, *, max_items: int = MAX_BATCH_ITEMS, flush_interval_ms: int = 100) -> None:
        if not 1 <= max_items <= MAX_BATCH_ITEMS:
            raise ValueError(f"max_items must be 1..{MAX_BATCH_ITEMS}, got {max_items}")
        self.max_items = max_items
        self.flush_interval_ms = flush_interval_ms
        self._entries: dict[tuple[str, str], tuple[KeyedItem, list[Pending]]] = {}
        self._opened = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: KeyedItem, pending: Pending) -> Batch | None:
        """Add an item; return a full batch when this one filled it."""
        entries = self._entries
        if not entries:
            self._opened = time.monotonic()
        key = (item["pk"]["S"], item["sk"]["N"])
        old = entries.get(key)
        if old is None:
            entries[key] = (item, [pending])
        else:
            old[1].append(pending)
            entries[key] = (item, old[1])
        if len(entries) >= self.max_items:
            return self.take()
        return None

    def take(self) -> Batch | None:
        """Return the open batch (possibly partial) and start a new one."""
        if not self._entries:
            return None
        batch = list(self._entries.values())
        self._entries = {}
        return batch

    def due_in_s(self) -> float | None:
        """Seconds until the open batch is due for a flush (None when empty)."""
        if not self._entries:
            return None
        return max(0.0, self._opened + self.flush_interval_ms / 1000 - time.monotonic())


class Placer(Protocol):
    """Where the decoder puts readings: items in batches, per the table's layout.

    :class:`ReadingPlacer` (one item per reading) or
    :class:`ingest.pipeline.packing.JournalPlacer` (``packed``: journal items).
    """

    def add(self, reading: Reading, pending: Pending, received_ms: int) -> Batch | None:
        """Place a reading of message ``pending``; a full batch when this one filled it."""
        ...

    def take(self) -> Batch | None:
        """The open batch (possibly partial), a new one started."""
        ...

    def due_in_s(self) -> float | None:
        """Seconds until the open batch is due (None when empty)."""
        ...


class ReadingPlacer:
    """A ``reading`` table's placer: each reading is its own item, in batches of 25.

    Args:
        layout: The table's layout (reading → item).
        batcher: Batch assembly.
    """

    __slots__ = ("_add", "_to_item", "batcher")

    def __init__(self, layout: TableLayout, batcher: Batcher) -> None:
        self.batcher = batcher
        self._to_item = layout.to_item
        self._add = batcher.add

    def add(self, reading: Reading, pending: Pending, received_ms: int) -> Batch | None:
        return self._add(self._to_item(reading), pending)

    def take(self) -> Batch | None:
        return self.batcher.take()

    def due_in_s(self) -> float | None:
        return self.batcher.due_in_s()
