"""The ``sensor/metric`` names Grafana lists, from one shared, bounded, short-lived registry read.

Grafana asks for metric names (``/grafana/metrics``, ``/search``, ``/variable``)
on every query-editor load and every dashboard-variable refresh. The registry is
keyed by a hash of the sensor id, so a key's scope (id prefixes) cannot be read
on its own: listing the names of a narrow key used to read the whole registry on
every call. Instead one snapshot of the registry (every sensor id and its metric
names) is read at most once per :data:`NAMES_TTL_S`, shared by every key, and
each key's names are cut out of it (sorted ids, one bisection per prefix): cost
in DynamoDB is one registry read per TTL for the whole server, whatever the keys
and the call rate; a new sensor shows within the TTL.

The read Queries each of the registry partitions with 1 MB pages and a
projection (``sid``, ``m``), through :meth:`~queries.read.reader.TableReader.call`, so
it is counted against the request that triggers it (the others wait for it and
pay nothing). Bounded: at most :data:`MAX_CACHED_SENSORS` sensors and
:data:`MAX_CACHED_NAMES` names are kept (a larger registry is listed in part,
logged; Grafana still queries any target typed by hand).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ingest.storage.layout import registry_partition_keys
from ingest.storage.reads import query_pages
from queries.api.apikeys import Principal
from queries.read.reader import ReadStats, TableReader

__all__ = ["MAX_CACHED_NAMES", "MAX_CACHED_SENSORS", "NAMES_TTL_S", "MetricNames"]

log = logging.getLogger(__name__)

NAMES_TTL_S = 30.0
"""How long a registry snapshot serves name lists before the next request reads it again."""
MAX_CACHED_SENSORS = 50_000
"""Most sensors kept in a snapshot."""
MAX_CACHED_NAMES = 200_000
"""Most ``sensor/metric`` names kept in a snapshot."""
_MAX_SCOPES = 256  # distinct key scopes whose lists are kept per snapshot


@dataclass(frozen=True, slots=True)
class _Snapshot:
    ids: tuple[str, ...]  # sorted
    metrics: tuple[tuple[str, ...], ...]  # each sensor's metric names, sorted
    taken_s: float


class MetricNames:
    """The server's shared source of Grafana name lists.

    Args:
        clock: Monotonic seconds (injected in tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = asyncio.Lock()
        self._snapshot: _Snapshot | None = None
        self._lists: dict[tuple[int | str, ...], tuple[str, ...]] = {}

    async def names(
        self, reader: TableReader, principal: Principal, stats: ReadStats, *, limit: int
    ) -> tuple[str, ...]:
        """``sensor/metric`` of every sensor the principal may read, sorted, at most ``limit``.

        Raises:
            ReadFailed: the registry read failed (nothing is cached then).
            TooManyCalls: the registry read exceeded the request's call budget.
        """
        snap = await self._current(reader, stats)
        scope = principal.sensor_prefixes if not principal.reads_all else ("*",)
        found = self._lists.get((limit, *scope))
        if found is None:
            found = _names(snap, None if principal.reads_all else scope, limit)
            if len(self._lists) >= _MAX_SCOPES:
                self._lists.clear()
            self._lists[(limit, *scope)] = found
        return found

    def _fresh(self) -> _Snapshot | None:
        snap = self._snapshot
        if snap is not None and self._clock() - snap.taken_s < NAMES_TTL_S:
            return snap
        return None

    async def _current(self, reader: TableReader, stats: ReadStats) -> _Snapshot:
        snap = self._fresh()
        if snap is not None:
            return snap
        async with self._lock:  # one read at a time; the others then find it fresh
            snap = self._fresh()
            if snap is None:
                snap = await _read_registry(reader, stats, self._clock)
                self._snapshot = snap
                self._lists = {}
            return snap


def _names(snap: _Snapshot, prefixes: tuple[str, ...] | None, limit: int) -> tuple[str, ...]:
    picked: Iterable[int] = range(len(snap.ids))
    if prefixes is not None:
        hits: set[int] = set()
        for prefix in prefixes:
            i = bisect.bisect_left(snap.ids, prefix)
            while i < len(snap.ids) and snap.ids[i].startswith(prefix):
                hits.add(i)
                i += 1
        picked = sorted(hits)
    out: list[str] = []
    for i in picked:
        sid = snap.ids[i]
        out.extend(f"{sid}/{m}" for m in snap.metrics[i])
        if len(out) >= limit:
            break
    return tuple(out[:limit])


async def _read_registry(
    reader: TableReader, stats: ReadStats, clock: Callable[[], float]
) -> _Snapshot:
    partitions = registry_partition_keys()
    per_partition = math.ceil(MAX_CACHED_SENSORS / len(partitions))
    interned: dict[str, str] = {}  # metric names repeat across sensors: keep one copy

    async def read(pk: str) -> tuple[list[tuple[str, tuple[str, ...]]], bool]:
        kwargs: dict[str, Any] = {
            "TableName": reader.table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "pk", "#sid": "sid", "#m": "m"},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ProjectionExpression": "#sid, #m",
        }
        found: list[tuple[str, tuple[str, ...]]] = []
        async for resp in query_pages(functools.partial(reader.call, stats=stats), kwargs):
            for item in resp.get("Items", ()):
                sid = item.get("sid", {}).get("S")
                if sid is None:
                    continue
                names = sorted(item.get("m", {}).get("M", {}))
                found.append((sid, tuple(interned.setdefault(n, n) for n in names)))
            if len(found) >= per_partition and "LastEvaluatedKey" in resp:
                return found[:per_partition], False
        return found, True

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(read(pk), name="grafana-names") for pk in partitions]
    entries = sorted(e for t in tasks for e in t.result()[0])
    complete = all(t.result()[1] for t in tasks)
    kept: list[tuple[str, tuple[str, ...]]] = []
    total = 0
    for sid, names in entries:
        if len(kept) >= MAX_CACHED_SENSORS or total + len(names) > MAX_CACHED_NAMES:
            complete = False
            break
        kept.append((sid, names))
        total += len(names)
    if not complete:
        log.warning(
            "Grafana name lists: the registry holds more than %d sensors or %d metric names; "
            "lists show %d sensors (targets typed by hand still work)",
            MAX_CACHED_SENSORS,
            MAX_CACHED_NAMES,
            len(kept),
        )
    return _Snapshot(
        ids=tuple(sid for sid, _ in kept),
        metrics=tuple(names for _, names in kept),
        taken_s=clock(),
    )
