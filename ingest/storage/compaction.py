"""Compaction of a ``packed`` table: windows sealed in several sets merged into one.

Decision 0008. A window ends up in several sets when readings reach it after its seal
(late ones, a redelivery), when a stop sealed it before its end and the worker went on
after the restart, or when two workers of a shared subscription both had readings of
it. Readers merge sets correctly (:func:`~ingest.storage.windows.merge_parts`); what
compaction saves is their read cost and the duplicates' storage.

**Which windows.** Every sealing round writes, per window period it sealed, one **seal
log** item: the sensors whose windows it sealed (orjson + zstd, ≈ 2–3 B a sensor id
after compression), keyed ``#sealed#{period}`` / the round's millisecond · 2**24 + a
hash of the worker, so one Query per period finds every round of every worker. A
sensor that appears in two rounds of a period (and not in a compaction entry since)
has two sets there. Compaction entries (``kind`` ``c``) go in the same log. Cost: one
small item per period and round (a worker's round seals one period, usually), so
≈ one write unit per 15 minutes per worker.

**Compacting one window** (:func:`compact_window`): read its parts, merge them, write
the merge as one new set (sealed at the latest of its inputs' seal times, so two
compactors of the same parts write the same items), then delete the parts it replaced.
Idempotent at every step: a crash between the write and the deletes leaves
duplicates that readers remove and that the next pass deletes (the window still has
two sets); writing the same merge again overwrites it (content-addressed keys).

Item of a seal log entry (keys from :mod:`ingest.storage.layout`)::

    pk   S  "#sealed#{window start ms}"     sk N  round ms · 2**24 + worker hash · 16 + index
    ttl  N  window end + retention           k  S  "s" (a seal round) or "c" (compaction)
    b    B  zstd frame: orjson list of sensor ids
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from ingest.storage.dynamo import TableClient
from ingest.storage.items import Item, SealLogItem
from ingest.storage.layout import (
    WINDOW_PART_SPACE,
    binary_value,
    round_sk,
    seal_log_pk,
    window_sk,
)
from ingest.storage.packed import PackedDecodeError, inflate_frame
from ingest.storage.reads import key_query, query_pages
from ingest.storage.rollups import HOUR_MS
from ingest.storage.windows import (
    SEAL_GRACE_MS,
    Part,
    WindowScheme,
    merge_parts,
    needs_compaction,
    parse_part_item,
    seal,
)

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "MAX_LOG_SENSORS",
    "CompactionReport",
    "compact_pass",
    "compact_period",
    "compact_window",
    "needing_compaction",
    "parse_seal_log",
    "rollups_may_lack",
    "seal_log_items",
    "settle_ms",
    "window_parts",
]

MAX_LOG_SENSORS: Final = 20_000
"""Sensor ids in one seal log item (128 B each at most: ≤ 2.6 MB raw, compressed far below
the item limit for real ids; more make several items)."""


_compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.checksum_flag: 1})


def seal_log_items(
    scheme: WindowScheme,
    window_start_ms: int,
    worker: str,
    round_ms: int,
    sensors: Sequence[str],
    kind: str = "s",
) -> list[SealLogItem]:
    """The seal log items of one round's windows of one period (``kind`` ``c``: of a
    compaction)."""
    ttl = (window_start_ms + scheme.window_ms + scheme.layout.retention_ms) // 1000
    out: list[SealLogItem] = []
    for index, first in enumerate(range(0, len(sensors), MAX_LOG_SENSORS)):
        blob = _compressor.compress(
            orjson.dumps(list(sensors[first : first + MAX_LOG_SENSORS])),
            zstd.ZstdCompressor.FLUSH_FRAME,
        )
        out.append(
            {
                "pk": {"S": seal_log_pk(window_start_ms)},
                "sk": {"N": str(round_sk(round_ms, worker, index % 16))},
                "ttl": {"N": str(ttl)},
                "k": {"S": kind},
                "b": {"B": blob},
            }
        )
    return out


def parse_seal_log(item: SealLogItem) -> tuple[int, str, list[str]]:
    """(sort key, kind, sensor ids) of a seal log item.

    Raises:
        PackedDecodeError: Not a seal log item.
    """
    try:
        sk, kind = int(item["sk"]["N"]), str(item["k"]["S"])
        sensors = orjson.loads(inflate_frame(memoryview(binary_value(item["b"])), "seal log"))
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise PackedDecodeError(f"not a seal log item: {exc!r}") from exc
    if kind not in ("s", "c") or not isinstance(sensors, list):
        raise PackedDecodeError(f"seal log item {sk} is corrupt")
    return sk, kind, [str(s) for s in sensors]


def needing_compaction(entries: Iterable[tuple[int, str, list[str]]]) -> list[str]:
    """The sensors of one period whose window has more than one set: sealed in two rounds
    since its last compaction (entries in any order)."""
    sets: Counter[str] = Counter()
    for _, kind, sensors in sorted(entries, key=lambda e: e[0]):
        for s in sensors:
            sets[s] = 1 if kind == "c" else sets[s] + 1
    return sorted(s for s, n in sets.items() if n > 1)


async def window_parts(
    client: TableClient, scheme: WindowScheme, sensor_id: str, window_start_ms: int
) -> list[Part]:
    """Every part of one sensor's window (one Query)."""
    kwargs = key_query(
        client.table,
        scheme.layout.window_pk(sensor_id, window_start_ms),
        window_sk(window_start_ms, 0),
        window_sk(window_start_ms, WINDOW_PART_SPACE - 1),
        consistent=True,
    )
    return [
        parse_part_item(item, sensor_id)
        async for page in query_pages(client.call, kwargs)
        for item in page.get("Items", [])
    ]


def settle_ms(scheme: WindowScheme) -> int:
    """How long after a period ends a pass takes it (compaction, rollups): its seal grace
    and two staging rounds have passed, and a minute more, so no worker seals it in the
    normal course any more."""
    return SEAL_GRACE_MS + 2 * scheme.layout.stage_ms + 60_000


def rollups_may_lack(scheme: WindowScheme, hour_ms: int, sealed_ms: int) -> bool:
    """Whether a set of hour ``hour_ms`` sealed at ``sealed_ms`` may come after the rollup
    pass rolled that hour up (passes take an hour :func:`settle_ms` after its end): the
    sealer then marks the hour stale, and the pass looks for that mark."""
    return sealed_ms >= hour_ms + HOUR_MS + settle_ms(scheme)


@dataclass(slots=True)
class CompactionReport:
    """What a pass did (read units are the caller's to count from the responses)."""

    periods: int = 0
    windows: int = 0
    parts_written: int = 0
    parts_deleted: int = 0
    readings: int = 0

    def summary(self) -> str:
        return (
            f"compaction: {self.windows} windows in {self.periods} periods: "
            f"{self.parts_written} parts written, {self.parts_deleted} deleted, "
            f"{self.readings} readings"
        )


async def compact_window(
    client: TableClient,
    scheme: WindowScheme,
    sensor_id: str,
    window_start_ms: int,
    report: CompactionReport,
) -> bool:
    """Merge a window's sets into one (see the module docstring); whether it had to."""
    parts = await window_parts(client, scheme, sensor_id, window_start_ms)
    if not parts or not needs_compaction(parts):
        return False
    merged = merge_parts(parts)
    new = seal(scheme, merged, max(p.sealed_ms for p in parts))
    items: Sequence[Item] = [scheme.part_item(p) for p in new]
    while items:  # durable first: a crash here leaves duplicates, never a loss
        items = await client.batch_write(items)
    keep = {p.part for p in new}
    for p in parts:
        if p.part not in keep:
            await client.call(
                "delete_item",
                TableName=client.table,
                Key={
                    "pk": {"S": scheme.layout.window_pk(sensor_id, window_start_ms)},
                    "sk": {"N": str(window_sk(window_start_ms, p.part))},
                },
            )
            report.parts_deleted += 1
    report.windows += 1
    report.parts_written += len(new)
    report.readings += len(merged)
    return True


async def compact_period(
    client: TableClient,
    scheme: WindowScheme,
    window_start_ms: int,
    worker: str,
    now_ms: int,
    report: CompactionReport,
) -> list[str]:
    """Compact every window of one period that the seal log shows in several sets; the
    sensors compacted (logged as a compaction entry)."""
    kwargs = key_query(client.table, seal_log_pk(window_start_ms), consistent=True)
    entries = [
        parse_seal_log(item)
        async for page in query_pages(client.call, kwargs)
        for item in page.get("Items", [])
    ]
    report.periods += 1
    sensors = needing_compaction(entries)
    done = [s for s in sensors if await compact_window(client, scheme, s, window_start_ms, report)]
    if sensors:  # also those found single already: the log stops naming them
        items: Sequence[Item] = seal_log_items(
            scheme, window_start_ms, worker, now_ms, sensors, "c"
        )
        while items:
            items = await client.batch_write(items)
    return done


async def compact_pass(
    client: TableClient,
    scheme: WindowScheme,
    *,
    worker: str,
    now_ms: int,
    lookback_ms: int,
    settle_ms: int,
) -> CompactionReport:
    """Compact the periods that ended between ``lookback_ms`` and ``settle_ms`` ago (no
    worker seals them in the normal course any more: their grace and a staging round
    have passed); a late set in an older period waits for the next pass that covers it."""
    report = CompactionReport()
    last = scheme.window_start(now_ms - settle_ms) - scheme.window_ms
    first = scheme.window_start(now_ms - lookback_ms)
    for start in range(first, last + 1, scheme.window_ms):
        await compact_period(client, scheme, start, worker, now_ms, report)
    return report
