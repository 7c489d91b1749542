"""The rollup pass of a ``packed`` table: which sensor-hours to roll up, and doing it.

Decision 0008; the bins and their items are :mod:`ingest.storage.rollups`. The pass
runs beside compaction (``iot-ingest table compact``, once or ``--every``), over the
hours that closed between ``lookback`` and ``settle`` ago.

**Which sensor-hours.** The seal log (:mod:`ingest.storage.compaction`) says, per window
period, which sensors each sealing round sealed. A pass that rolls an hour up writes a
**rollup log** item for it (``#rolled#{hour}``): the seal log entries it has folded in
(their sort keys) and the sensors it rolled. The next pass over that hour rolls up
again only the sensors of seal rounds it has not folded in yet: late readings, a
redelivery sealed after a restart, a worker that could seal only after an outage. A
compaction entry changes no reading, so it causes no new rollup. The log is written
last: a crash before it makes the next pass redo the same work, which writes the same
items (bins are computed from the merged windows: the same readings give the same
blob).

**Minute bins** of a sensor-hour: its windows overlapping the hour, merged (each
timestamp once), one item (ConsistentRead: the windows a seal log entry names are
durable before the entry is written). **Hour bins** of a sensor-day: once the day has
closed (its last hour rolled up), from the day's minute items, one item saying which
hours it covers (``h``); computed again when a minute item of a closed day changes, with
a condition on the version it read, so two passes at once cannot leave a day item
older than its minute items. A day not closed yet is read from its minute items.

**Stale marks.** A worker that seals a set of an hour the rollups may already cover
(:func:`~ingest.storage.compaction.rollups_may_lack`: at least
:func:`~ingest.storage.compaction.settle_ms` after the hour's end) marks that
sensor-hour stale once the set is durable, and series read a stale hour as readings
(:mod:`queries.read.rollread`). A pass reads the marks of the sensors named by such
late seal rounds before reading their windows, and deletes each mark it read, on the
condition that its ``t`` is unchanged, after writing the minute item and the day's hour
items: a set sealed meanwhile moves ``t`` and keeps its mark for the next pass. A pass
run with a settle time shorter than ``settle_ms`` could roll an hour up before a normal
seal and miss it unmarked (``table compact`` and the demo use ``settle_ms``). A crash
between the items and the delete leaves a mark: that hour is read as readings (exact,
slower) until a later set of it is rolled up.

Cost, per sensor with readings in the hour: one Query of its windows (a few KB: the
hour's readings), one write of ≈ 1–3 KB (1–3 write units); per sensor-day, a Query of
24 minute items and one write of ≈ 1 KB; per hour, a Query per window period and one
of the rollup log, and one log write.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from ingest.core.errors import DynamoError
from ingest.storage.compaction import MAX_LOG_SENSORS, parse_seal_log, rollups_may_lack
from ingest.storage.dynamo import TableClient, is_condition_failure, put_all
from ingest.storage.items import (
    DayLogItem,
    ItemKey,
    RollupBinsItem,
    RollupLogItem,
    SealLogItem,
    StaleMarkItem,
)
from ingest.storage.layout import (
    binary_value,
    rollup_day_log_key,
    rollup_log_pk,
    rollup_pk,
    rollup_stale_key,
    round_ms_of,
    round_sk,
    seal_log_pk,
)
from ingest.storage.packed import PackedDecodeError, inflate_frame
from ingest.storage.reads import (
    bucket_spans,
    key_query,
    merge_staged,
    packed_windows,
    query_pages,
)
from ingest.storage.rollups import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    Bins,
    bins_of_readings,
    combine,
    parse_rollup_item,
    rollup_item,
)
from ingest.storage.windows import WindowScheme

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

__all__ = [
    "RollupReport",
    "clear_stale",
    "day_hour_bins",
    "parse_rollup_log",
    "rollup_hour",
    "rollup_log_items",
    "rollup_pass",
    "sensor_hour_bins",
]

_VERSION_RETRIES: Final = 5
_compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.checksum_flag: 1})


@dataclass(slots=True)
class RollupReport:
    """What a rollup pass did."""

    hours: int = 0
    sensor_hours: int = 0
    days: int = 0
    readings: int = 0
    items_written: int = 0
    stale_cleared: int = 0

    def summary(self) -> str:
        return (
            f"rollups: {self.sensor_hours} sensor-hours in {self.hours} hours "
            f"({self.readings} readings), {self.days} sensor-days, "
            f"{self.items_written} items written, {self.stale_cleared} stale marks cleared"
        )


def rollup_log_items(
    scheme: WindowScheme,
    hour_ms: int,
    worker: str,
    pass_ms: int,
    seen: Sequence[int],
    sensors: Sequence[str],
) -> list[RollupLogItem]:
    """The rollup log items of one pass over one hour (the first holds ``seen``)."""
    ttl = (hour_ms + HOUR_MS + scheme.layout.retention_ms) // 1000
    out: list[RollupLogItem] = []
    chunks = range(0, max(len(sensors), 1), MAX_LOG_SENSORS)
    for index, first in enumerate(chunks):
        body = {
            "seen": [str(x) for x in seen] if index == 0 else [],
            "sensors": list(sensors[first : first + MAX_LOG_SENSORS]),
        }
        out.append(
            {
                "pk": {"S": rollup_log_pk(hour_ms)},
                "sk": {"N": str(round_sk(pass_ms, worker, index % 16))},
                "ttl": {"N": str(ttl)},
                "b": {
                    "B": _compressor.compress(orjson.dumps(body), zstd.ZstdCompressor.FLUSH_FRAME)
                },
            }
        )
    return out


def parse_rollup_log(item: RollupLogItem) -> tuple[set[int], list[str]]:
    """(seal log sort keys folded in, sensors rolled up) of a rollup log item.

    Raises:
        PackedDecodeError: Not a rollup log item.
    """
    try:
        body = orjson.loads(inflate_frame(memoryview(binary_value(item["b"])), "rollup log"))
        return {int(x) for x in body["seen"]}, [str(s) for s in body["sensors"]]
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise PackedDecodeError(f"not a rollup log item: {exc!r}") from exc


async def _items(
    client: TableClient, pk: str, lo: int | None = None, hi: int | None = None
) -> list[Any]:
    """Every item of partition ``pk`` (in ``[lo, hi]``), of its partition's kind: the
    caller types them."""
    kwargs = key_query(client.table, pk, lo, hi, consistent=True)
    return [
        item async for page in query_pages(client.call, kwargs) for item in page.get("Items", [])
    ]


async def sensor_hour_bins(
    client: TableClient, scheme: WindowScheme, sensor_id: str, hour_ms: int, now_ms: int
) -> tuple[dict[str, Bins], int]:
    """A sensor's minute bins of one hour from its sealed windows (merged), and how many
    readings they hold."""

    async def consistent(operation: str, **kwargs: Any) -> dict[str, Any]:
        return await client.call(operation, **kwargs, ConsistentRead=True)

    windows: dict[int, list[Any]] = {}
    end = hour_ms + HOUR_MS - 1
    for lo, hi in bucket_spans(scheme.layout, hour_ms, end):
        windows.update(
            await packed_windows(consistent, client.table, scheme, sensor_id, lo, hi, now_ms)
        )
    readings = merge_staged(windows, [], hour_ms, end)
    return bins_of_readings(readings, MINUTE_MS), len(readings)


async def day_hour_bins(
    client: TableClient, sensor_id: str, day_ms: int, covered: int
) -> dict[str, Bins]:
    """A sensor's hour bins of one day, from its minute items of the hours in ``covered``
    (bit i: hour i)."""
    merged: dict[str, list[Bins]] = {}
    minutes: list[RollupBinsItem] = await _items(
        client, rollup_pk(MINUTE_MS, sensor_id), day_ms, day_ms + DAY_MS - 1
    )
    for item in minutes:
        r = parse_rollup_item(item, sensor_id, MINUTE_MS)
        if covered >> ((r.period_start_ms - day_ms) // HOUR_MS) & 1:
            for name, b in r.bins.items():
                merged.setdefault(name, []).append(combine(b, HOUR_MS))
    return {name: _concat(parts) for name, parts in sorted(merged.items())}


def _concat(parts: list[Bins]) -> Bins:
    parts.sort(key=lambda b: int(b.start[0]))
    return Bins(
        start=np.concatenate([b.start for b in parts]),
        count=np.concatenate([b.count for b in parts]),
        min=np.concatenate([b.min for b in parts]),
        max=np.concatenate([b.max for b in parts]),
        first=np.concatenate([b.first for b in parts]),
        last=np.concatenate([b.last for b in parts]),
        sum_k=[k for b in parts for k in b.sum_k],
        scale=[d for b in parts for d in b.scale],
        fsum=np.concatenate([b.fsum for b in parts]),
    )


async def _write_day(
    client: TableClient, scheme: WindowScheme, sensor_id: str, day_ms: int, covered: int
) -> int:
    """(Re)compute one sensor-day's hour item, conditionally on the version it replaces;
    write units are the caller's to count (returns 1 item written)."""
    key: ItemKey = {"pk": {"S": rollup_pk(HOUR_MS, sensor_id)}, "sk": {"N": str(day_ms)}}
    for _ in range(_VERSION_RETRIES):
        got = await client.call("get_item", TableName=client.table, Key=key, ConsistentRead=True)
        old: RollupBinsItem | None = got.get("Item")
        version = int(old["v"]["N"]) if old and "v" in old else 0
        bins = await day_hour_bins(client, sensor_id, day_ms, covered)
        item = rollup_item(
            scheme.layout, sensor_id, HOUR_MS, day_ms, bins, hours=covered, version=version + 1
        )
        condition: dict[str, Any] = (
            {
                "ConditionExpression": "v = :v",
                "ExpressionAttributeValues": {":v": {"N": str(version)}},
            }
            if old
            else {"ConditionExpression": "attribute_not_exists(pk)"}
        )
        try:
            await client.call("put_item", TableName=client.table, Item=item, **condition)
            return 1
        except DynamoError as exc:
            if not is_condition_failure(exc):
                raise
    raise DynamoError(
        f"the hour rollups of {sensor_id!r} for day {day_ms} changed under {_VERSION_RETRIES} "
        "recomputations in a row (another pass is writing them): left to the next pass"
    )


async def rollup_hour(
    client: TableClient,
    scheme: WindowScheme,
    hour_ms: int,
    *,
    worker: str,
    now_ms: int,
    report: RollupReport,
    stale: list[tuple[str, int, str]] | None = None,
) -> list[str]:
    """Roll up the sensors of one hour whose seal rounds are not folded in yet (see the
    module docstring); the sensors rolled up. The stale marks read (sensor, hour, ``t``)
    are appended to ``stale``, for the caller to clear once it has written the day items
    (:func:`clear_stale`)."""
    window_ms = scheme.window_ms
    periods = range(scheme.window_start(hour_ms), hour_ms + HOUR_MS, window_ms)
    logs: list[SealLogItem] = [
        item for start in periods for item in await _items(client, seal_log_pk(start))
    ]
    entries = [parse_seal_log(item) for item in logs]
    seen: set[int] = set()
    rolled: list[RollupLogItem] = await _items(client, rollup_log_pk(hour_ms))
    for item in rolled:
        seen |= parse_rollup_log(item)[0]
    report.hours += 1
    fresh = [e for e in entries if e[0] not in seen]
    if not fresh:
        return []
    sensors = sorted({s for sk, kind, names in fresh if kind == "s" for s in names})
    late = {
        s
        for sk, kind, names in fresh
        if kind == "s" and rollups_may_lack(scheme, hour_ms, round_ms_of(sk))
        for s in names
    }
    items: list[RollupBinsItem] = []
    for sensor in sensors:
        if sensor in late and stale is not None:  # before its windows are read
            mark = await _stale_mark(client, sensor, hour_ms)
            if mark is not None:
                stale.append((sensor, hour_ms, mark))
        bins, n = await sensor_hour_bins(client, scheme, sensor, hour_ms, now_ms)
        if not bins:
            continue
        items.append(rollup_item(scheme.layout, sensor, MINUTE_MS, hour_ms, bins))
        report.sensor_hours += 1
        report.readings += n
    report.items_written += len(items)
    await put_all(client, items)
    await put_all(
        client,
        rollup_log_items(scheme, hour_ms, worker, now_ms, sorted(e[0] for e in entries), sensors),
    )
    return sensors


async def _rolled_sensors(client: TableClient, day_ms: int) -> tuple[int, set[str]]:
    """(hours of the day with a rollup log, as bits; every sensor those logs rolled up)."""
    covered, sensors = 0, set()
    for h in range(24):
        logs: list[RollupLogItem] = await _items(client, rollup_log_pk(day_ms + h * HOUR_MS))
        for item in logs:
            covered |= 1 << h
            sensors.update(parse_rollup_log(item)[1])
    return covered, sensors


async def rollup_pass(
    client: TableClient,
    scheme: WindowScheme,
    *,
    worker: str,
    now_ms: int,
    lookback_ms: int,
    settle_ms: int,
) -> RollupReport:
    """Roll up the hours that ended between ``lookback_ms`` and ``settle_ms`` ago, then the
    hour bins of the closed days among them: every sensor's the first time (or when an
    hour of the day was rolled up for the first time since), the sensors rolled up again
    otherwise. The day log (``#rolled#day`` / day) records which hours a day's items
    cover, written after them."""
    report = RollupReport()
    stale: list[tuple[str, int, str]] = []
    last = (now_ms - settle_ms) // HOUR_MS * HOUR_MS - HOUR_MS
    first = (now_ms - lookback_ms) // HOUR_MS * HOUR_MS
    touched: dict[int, set[str]] = {}
    for hour in range(first, last + 1, HOUR_MS):
        rolled = await rollup_hour(
            client, scheme, hour, worker=worker, now_ms=now_ms, report=report, stale=stale
        )
        touched.setdefault(hour - hour % DAY_MS, set()).update(rolled)
    for day, sensors in sorted(touched.items()):
        if day + DAY_MS - HOUR_MS > last:
            continue  # not closed yet: readers use its minute items
        covered, everyone = await _rolled_sensors(client, day)
        key = rollup_day_log_key(day)
        got = await client.call("get_item", TableName=client.table, Key=key, ConsistentRead=True)
        day_log: DayLogItem | None = got.get("Item")
        before = int(day_log["h"]["N"]) if day_log is not None else None
        if before == covered and not sensors:
            continue
        todo = everyone if before != covered else sensors
        for sensor in sorted(todo):
            report.items_written += await _write_day(client, scheme, sensor, day, covered)
            report.days += 1
        ttl = (day + DAY_MS + scheme.layout.retention_ms) // 1000
        day_item: DayLogItem = {
            "pk": key["pk"],
            "sk": key["sk"],
            "h": {"N": str(covered)},
            "ttl": {"N": str(ttl)},
        }
        await client.call("put_item", TableName=client.table, Item=day_item)
    report.stale_cleared = await clear_stale(client, stale)
    return report


async def _stale_mark(client: TableClient, sensor_id: str, hour_ms: int) -> str | None:
    """The ``t`` of a sensor-hour's stale mark, or None (a strongly consistent read)."""
    key = rollup_stale_key(sensor_id, hour_ms)
    got = await client.call("get_item", TableName=client.table, Key=key, ConsistentRead=True)
    mark: StaleMarkItem | None = got.get("Item")
    return None if mark is None else mark["t"]["N"]


async def clear_stale(client: TableClient, marks: Sequence[tuple[str, int, str]]) -> int:
    """Delete the stale marks (sensor, hour, ``t`` as read) whose ``t`` is unchanged; how
    many were deleted (a mark moved by a seal since stays for the next pass)."""
    cleared = 0
    for sensor, hour_ms, t in marks:
        try:
            await client.call(
                "delete_item",
                TableName=client.table,
                Key=rollup_stale_key(sensor, hour_ms),
                ConditionExpression="#t = :t",
                ExpressionAttributeNames={"#t": "t"},
                ExpressionAttributeValues={":t": {"N": t}},
            )
            cleared += 1
        except DynamoError as exc:
            if not is_condition_failure(exc):
                raise
    return cleared
