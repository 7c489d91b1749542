"""The sensor registry: one small item per sensor, so dashboards list sensors without a Scan.

Observations are coalesced in memory and written at most once per sensor per
``registry_interval_s``: last seen, latest metric values, readings counted.
The latest values only move forward in time (a condition on ``ls``), so a
late backfill never replaces a newer reading; its count still adds up.
Expressions use placeholders only; no input text is ever spliced into one.
"""

from __future__ import annotations

import asyncio
import logging

from .dynamo import DynamoClient
from .dynamohttp import LeanDynamoClient
from .errors import WriteError
from .layout import Reading, format_number, registry_key, registry_partition_keys
from .metrics import Metrics

__all__ = ["SensorRegistry", "known_sensor_ids"]

log = logging.getLogger(__name__)


class SensorRegistry:
    """Coalesces per-sensor observations and flushes them as UpdateItem calls.

    Args:
        client: DynamoDB client of the table.
        metrics: Metrics.
        concurrency: Parallel UpdateItem calls during a flush.
        max_sensors: Distinct sensors held between flushes (older ones are flushed early).
    """

    def __init__(
        self, client: DynamoClient | LeanDynamoClient, metrics: Metrics, *, concurrency: int = 8
    ) -> None:
        self._client = client
        self._m = metrics
        self._concurrency = concurrency
        # sensor id -> [last ts, count since flush, latest metrics]
        self._seen: dict[str, list[object]] = {}

    def observe(self, readings: list[Reading]) -> None:
        seen = self._seen
        for r in readings:
            entry = seen.get(r.sensor_id)
            if entry is None:
                seen[r.sensor_id] = [r.ts_ms, 1, r.metrics]
            else:
                entry[1] = entry[1] + 1  # type: ignore[operator]
                if r.ts_ms >= entry[0]:  # type: ignore[operator]
                    entry[0] = r.ts_ms
                    entry[2] = r.metrics

    def __len__(self) -> int:
        return len(self._seen)

    async def flush(self) -> int:
        """Write every pending observation; return the number of sensors updated."""
        pending, self._seen = self._seen, {}
        if not pending:
            return 0
        sem = asyncio.Semaphore(self._concurrency)

        async def one(sid: str, entry: list[object]) -> None:
            async with sem:
                await self._update(sid, int(entry[0]), int(entry[1]), entry[2])  # type: ignore[call-overload, arg-type]

        async with asyncio.TaskGroup() as tg:
            for sid, entry in pending.items():
                tg.create_task(one(sid, entry), name=f"registry-{sid}")
        self._m.registry_updates.inc(len(pending))
        return len(pending)

    async def _update(
        self, sid: str, ts_ms: int, count: int, metrics: dict[str, float | int]
    ) -> None:
        pk, sk = registry_key(sid)
        key = {"pk": {"S": pk}, "sk": {"N": str(sk)}}
        names = {"#sid": "sid", "#ls": "ls", "#m": "m", "#n": "n"}
        values = {
            ":sid": {"S": sid},
            ":ls": {"N": str(ts_ms)},
            ":m": {"M": {k: {"N": format_number(v)} for k, v in metrics.items()}},
            ":n": {"N": str(count)},
        }
        try:
            await self._client.call(
                "update_item",
                TableName=self._client.table,
                Key=key,
                UpdateExpression="SET #sid = :sid, #ls = :ls, #m = :m ADD #n :n",
                ConditionExpression="attribute_not_exists(#ls) OR #ls <= :ls",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except WriteError as exc:
            if "ConditionalCheckFailed" not in str(exc):
                log.warning("registry update for %s failed: %s", sid, exc)
                return
            try:
                await self._client.call(
                    "update_item",
                    TableName=self._client.table,
                    Key=key,
                    UpdateExpression="ADD #n :n",
                    ExpressionAttributeNames={"#n": "n"},
                    ExpressionAttributeValues={":n": values[":n"]},
                )
            except WriteError as exc2:
                log.warning("registry count update for %s failed: %s", sid, exc2)

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:
                log.exception("sensor registry flush failed")


async def known_sensor_ids(client: DynamoClient | LeanDynamoClient) -> set[str]:
    """Every sensor id in the registry (8 paged Queries, never a Scan).

    The decoder admits these without counting them against
    ``max_new_sensors_per_minute``, so a restart does not look like a flood.
    """
    ids: set[str] = set()
    for pk in registry_partition_keys():
        kwargs: dict[str, object] = {
            "TableName": client.table,
            "KeyConditionExpression": "#pk = :pk",
            "ProjectionExpression": "#sid",
            "ExpressionAttributeNames": {"#pk": "pk", "#sid": "sid"},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        while True:
            resp = await client.call("query", **kwargs)
            ids.update(it["sid"]["S"] for it in resp.get("Items", []) if "sid" in it)
            last = resp.get("LastEvaluatedKey")
            if not last:
                break
            kwargs["ExclusiveStartKey"] = last
    return ids
