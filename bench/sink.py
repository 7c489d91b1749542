"""BENCHMARK FIXTURE — a minimal, protocol-checking DynamoDB-API sink. Not a database.

The local DynamoDB-API servers (moto ≈ 1.5k items/s, dynalite ≈ 3k) are far
slower than the ingest service, so a throughput run against them measures
them. This sink validates every BatchWriteItem the way DynamoDB would —
request shape, at most 25 requests, no duplicate keys in one call, item size
≤ 400 KB, key attributes present with the right types — and acknowledges it,
counting items and keys. It keeps the small items that the service reads
back (layout record, registry) and otherwise stores only key counts, so a
run can check "every reading once" without storing readings.

Correctness tests use moto and dynalite; this is for throughput runs only.
With ``--upstream URL`` the sink is a *tap* instead: it validates and accounts
the same way but forwards every request to a real DynamoDB-API server (moto,
dynalite) and counts only what that server accepted, so correctness runs get
the same figures as throughput runs.

Accounting, per item acknowledged by a BatchWriteItem (``GET /_stats``):

* ``distinct_keys`` and ``rewritten_keys`` (keys written more than once);
  with ``?sensors=1`` also the distinct keys per sensor id (``pk`` up to ``#``).
  A ``packed`` table's readings are counted where they become durable, in its
  journal items (decoded), as the keys (sensor id, timestamp);
* ``write_units`` and ``item_bytes``: item size by DynamoDB's rules
  (:mod:`bench.capacity`), one write unit per started KB; PutItem counts the
  same way, UpdateItem (registry) one unit each (those items are small); and
  the same per kind of item (``write_units.journal`` …, :func:`item_kind`);
* ``latency_ms``: a histogram ``{ms: count}`` of *durable time − scheduled
  publish time*, where the scheduled time is the item's sort key (the
  reading's ``ts``, which the simulator sets to the scheduled publish time;
  for a journal item, each of its readings' ``ts``); ``visible_ms`` the same for
  the readings of a packed table's staging items (publish → visible to readers);
  ``POST /_clock {"ts0_ms": T, "wall0_ms": W, "speed": s}`` maps it instead
  to ``W + (sk - T) / s`` for publishers whose timestamps run faster than
  the clock (the hot-sensor backlog);
* ``peak_partition_writes_per_s``: most items one partition key received in
  one wall-clock second; ``hottest_partitions``: most items per key overall;
* ``first_write_s``/``last_write_s``: wall-clock times of the first and last
  accepted BatchWriteItem.

``GET /_stats?light=1`` returns only the counters (cheap enough to poll every
second); the full document adds the latency histogram, rewritten keys and the
hottest partitions. Besides BatchWriteItem the sink answers what the service
and the harness call at start: CreateTable, DescribeTable, the TTL calls,
PutItem/GetItem (small items, kept), UpdateItem (counted, not kept) and Query
(the kept small items of a partition).

Run: ``python -m bench.sink --port P [--upstream URL]`` (prints ``READY <port>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import web

from bench.capacity import item_size_bytes, write_units
from bench.histogram import MsHistogram
from ingest.core.aio import run
from ingest.storage.items import JournalItem
from ingest.storage.journal import parse_journal_item
from ingest.storage.layout import JOURNAL_PREFIX, STAGE_PREFIX, WINDOW_PART_SPACE, binary_value
from ingest.storage.windows import decode_stage

__all__ = [
    "Sink",
    "item_kind",
    "main",
    "make_app",
]

log = logging.getLogger(__name__)

_PREFIX = "DynamoDB_20120810."
_MAX_ITEM_BYTES = 400 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"}
)
_RESPONSE_SKIP = _HOP_BY_HOP | {"server", "date"}


def _error(kind: str, message: str, status: int = 400) -> web.Response:
    body = orjson.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{kind}", "message": message})
    return web.Response(status=status, body=body, content_type="application/x-amz-json-1.0")


def _ok(doc: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/x-amz-json-1.0")


class Sink:
    """The sink's state: counts, the keys seen, and the few items read back.

    Args:
        track_keys: Count every (pk, sk) written (needed for loss and rewrite checks).
        upstream: Forward every request to this DynamoDB-API endpoint (tap mode).
        clock: Wall clock, epoch seconds (injected by tests).
    """

    def __init__(
        self,
        *,
        track_keys: bool = True,
        upstream: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        self.small_items: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.track_keys = track_keys
        self.keys: Counter[tuple[str, str]] = Counter()
        self.partition_writes: Counter[str] = Counter()
        self.latency = MsHistogram()
        self.visible = MsHistogram()
        self.upstream = upstream.rstrip("/") if upstream else None
        self.started = time.monotonic()
        self.first_write_s: float | None = None
        self.last_write_s: float | None = None
        self.max_item_bytes = 0
        self._ts_map: tuple[float, float, float] | None = None  # ts0, wall0, speed
        self._second = 0
        self._second_writes: Counter[str] = Counter()
        self.peak_partition_writes_per_s = 0
        self.peak_partition = ""
        self._client: aiohttp.ClientSession | None = None
        self._clock_s = clock

    # -- HTTP entry -------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if not target.startswith(_PREFIX):
            return _error("UnknownOperationException", f"unknown target {target!r}")
        op = target[len(_PREFIX) :]
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error("SerializationException", "body is not JSON")
        self.counts["requests." + op] += 1
        if op == "BatchWriteItem":
            return await self._batch_write(request, raw, body)
        if self.upstream is not None:
            status, headers, data = await self._forward(request, raw)
            if status == 200 and op == "PutItem":
                self._account_put(body["Item"])
            elif status == 200 and op == "UpdateItem":
                self._account_update()
            return web.Response(status=status, headers=headers, body=data)
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            return _error(
                "UnknownOperationException", f"{op} is not supported by the benchmark sink"
            )
        result: web.Response = handler(body)
        return result

    async def _forward(self, request: web.Request, raw: bytes) -> tuple[int, Any, bytes]:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        try:
            async with self._client.post(
                f"{self.upstream}{request.path_qs}", data=raw, headers=headers
            ) as up:
                data = await up.read()
                out = [(k, v) for k, v in up.headers.items() if k.lower() not in _RESPONSE_SKIP]
                return up.status, out, data
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counts["upstream_errors"] += 1
            body = orjson.dumps({"__type": "SinkUpstreamError", "message": f"upstream: {exc!r}"})
            return 502, [("Content-Type", "application/x-amz-json-1.0")], body

    async def aclose(self) -> None:
        """Close the upstream connection pool (tap mode); safe to call twice."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- BatchWriteItem -----------------------------------------------------------

    def check_batch(self, body: dict[str, Any]) -> web.Response | dict[str, list[dict[str, Any]]]:
        """Validate a BatchWriteItem as DynamoDB would: an error, or the items per table."""
        request_items = body.get("RequestItems")
        if not isinstance(request_items, dict) or not request_items:
            return _error("ValidationException", "RequestItems must be a non-empty map")
        total = sum(len(v) for v in request_items.values())
        if total > 25:
            return _error(
                "ValidationException",
                "1 validation error detected: Value at 'requestItems' failed to satisfy constraint: "
                "Map value must satisfy constraint: [Member must have length less than or equal to 25]",
            )
        out: dict[str, list[dict[str, Any]]] = {}
        for table, requests in request_items.items():
            if self.upstream is None and table not in self.tables:
                return _error("ResourceNotFoundException", f"Requested resource not found: {table}")
            seen: set[tuple[str, str]] = set()
            items = out[table] = []
            for req in requests:
                item = req.get("PutRequest", {}).get("Item")
                if not isinstance(item, dict):
                    return _error(
                        "ValidationException", "only PutRequest with an Item is supported"
                    )
                pk, sk = item.get("pk", {}).get("S"), item.get("sk", {}).get("N")
                if not isinstance(pk, str) or not isinstance(sk, str) or not pk:
                    return _error(
                        "ValidationException", "The provided key element does not match the schema"
                    )
                if (pk, sk) in seen:
                    return _error(
                        "ValidationException", "Provided list of item keys contains duplicates"
                    )
                seen.add((pk, sk))
                items.append(item)
        return out

    async def _batch_write(
        self, request: web.Request, raw: bytes, body: dict[str, Any]
    ) -> web.Response:
        checked = self.check_batch(body)
        if isinstance(checked, web.Response):
            self.counts["rejected_batches"] += 1
            return checked
        sizes: dict[int, int] = {}
        for items in checked.values():
            for item in items:
                size = item_size_bytes(item)
                if size > _MAX_ITEM_BYTES:
                    self.counts["rejected_batches"] += 1
                    return _error(
                        "ValidationException", "Item size has exceeded the maximum allowed size"
                    )
                sizes[id(item)] = size
        if self.upstream is None:
            self.account_batch(checked, sizes)
            return _ok({"UnprocessedItems": {}})
        status, headers, data = await self._forward(request, raw)
        if status == 200:
            left = orjson.loads(data).get("UnprocessedItems") or {}
            for table, reqs in left.items():
                unwritten = {
                    (r["PutRequest"]["Item"]["pk"]["S"], r["PutRequest"]["Item"]["sk"]["N"])
                    for r in reqs
                }
                self.counts["unprocessed_items"] += len(unwritten)
                checked[table] = [
                    it
                    for it in checked.get(table, [])
                    if (it["pk"]["S"], it["sk"]["N"]) not in unwritten
                ]
            self.account_batch(checked, sizes)
        return web.Response(status=status, headers=headers, body=data)

    def account_batch(
        self, items_by_table: dict[str, list[dict[str, Any]]], sizes: dict[int, int] | None = None
    ) -> None:
        """Account items that are now durable: keys, partitions, sizes, latency."""
        now = self._clock_s()
        now_ms = now * 1000
        if self.first_write_s is None:
            self.first_write_s = now
        self.last_write_s = now
        self._roll_second(int(now))
        keys, parts, sec = self.keys, self.partition_writes, self._second_writes
        ts_map = self._ts_map
        scheduled: list[float] = []
        visible: list[float] = []

        def _scheduled(ts: float) -> float:
            return ts if ts_map is None else ts_map[1] + (ts - ts_map[0]) / ts_map[2]

        n = wu = nbytes = 0
        c = self.counts
        for items in items_by_table.values():
            for item in items:
                pk, sk = item["pk"]["S"], item["sk"]["N"]
                size = sizes[id(item)] if sizes is not None else item_size_bytes(item)
                nbytes += size
                units = write_units(size)
                wu += units
                self.max_item_bytes = max(self.max_item_bytes, size)
                parts[pk] += 1
                sec[pk] += 1
                n += 1
                kind = item_kind(pk, sk)
                c[f"write_units.{kind}"] += units
                c[f"items.{kind}"] += 1
                c[f"item_bytes.{kind}"] += size
                if kind == "reading":
                    stamps = [(pk, sk)]
                elif kind == "journal":
                    # A packed table's readings are durable (acknowledged) in the journal.
                    stamps = [
                        (r.sensor_id, str(r.ts_ms))
                        for r in parse_journal_item(cast(JournalItem, item)).readings
                    ]
                else:
                    if kind == "stage":  # visible to readers from now on
                        visible.extend(
                            _scheduled(r.ts_ms) for r in decode_stage(binary_value(item["b"]))
                        )
                    continue
                for key in stamps:
                    if self.track_keys:
                        keys[key] += 1
                    scheduled.append(_scheduled(float(key[1])))
        self.latency.record_many(now_ms, scheduled)
        if visible:
            self.visible.record_many(now_ms, visible)
        c["items"] += n
        c["write_units"] += wu
        c["item_bytes"] += nbytes
        c["batches"] += 1

    def _roll_second(self, second: int) -> None:
        """Close the one-second window of per-partition counts when ``second`` is a new one."""
        if second == self._second:
            return
        if self._second_writes:
            pk, n = self._second_writes.most_common(1)[0]
            if n > self.peak_partition_writes_per_s:
                self.peak_partition_writes_per_s, self.peak_partition = n, pk
        self._second = second
        self._second_writes = Counter()

    def _account_put(self, item: dict[str, Any]) -> None:
        self.counts["write_units"] += write_units(item_size_bytes(item))
        self.counts["put_items"] += 1

    def _account_update(self) -> None:
        self.counts["write_units"] += 1
        self.counts["registry_updates"] += 1

    # -- other operations (sink mode) --------------------------------------------

    def _table(self, body: dict[str, Any]) -> str | web.Response:
        name = body.get("TableName")
        if name not in self.tables:
            return _error(
                "ResourceNotFoundException",
                f"Requested resource not found: Table: {name} not found",
            )
        return str(name)

    def op_CreateTable(self, body: dict[str, Any]) -> web.Response:
        name = str(body["TableName"])
        if name in self.tables:
            return _error("ResourceInUseException", f"Table already exists: {name}")
        self.tables[name] = {
            "TableName": name,
            "TableStatus": "ACTIVE",
            "KeySchema": body["KeySchema"],
        }
        return _ok({"TableDescription": self.tables[name]})

    def op_DescribeTable(self, body: dict[str, Any]) -> web.Response:
        name = self._table(body)
        if isinstance(name, web.Response):
            return name
        return _ok({"Table": self.tables[name]})

    def op_DescribeTimeToLive(self, body: dict[str, Any]) -> web.Response:
        return _ok(
            {"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}}
        )

    def op_UpdateTimeToLive(self, body: dict[str, Any]) -> web.Response:
        return _ok({"TimeToLiveSpecification": body["TimeToLiveSpecification"]})

    def _key(self, table: str, key: dict[str, Any]) -> tuple[str, str, str]:
        return table, key["pk"]["S"], key["sk"]["N"]

    def op_GetItem(self, body: dict[str, Any]) -> web.Response:
        name = self._table(body)
        if isinstance(name, web.Response):
            return name
        item = self.small_items.get(self._key(name, body["Key"]))
        return _ok({"Item": item} if item else {})

    def op_PutItem(self, body: dict[str, Any]) -> web.Response:
        name = self._table(body)
        if isinstance(name, web.Response):
            return name
        self.small_items[self._key(name, body["Item"])] = body["Item"]
        self._account_put(body["Item"])
        return _ok({})

    def op_Query(self, body: dict[str, Any]) -> web.Response:
        """The kept small items of the partitions named in the expression values.

        Enough for what the service reads at start (its registry: empty here, since
        registry updates are counted, not kept); readings are never kept.
        """
        name = self._table(body)
        if isinstance(name, web.Response):
            return name
        pks = {v["S"] for v in body.get("ExpressionAttributeValues", {}).values() if "S" in v}
        items = [it for (t, pk, _), it in self.small_items.items() if t == name and pk in pks]
        return _ok({"Items": items, "Count": len(items), "ScannedCount": len(items)})

    def op_UpdateItem(self, body: dict[str, Any]) -> web.Response:
        name = self._table(body)
        if isinstance(name, web.Response):
            return name
        self._account_update()
        return _ok({})

    # -- control and statistics ---------------------------------------------------

    async def set_clock(self, request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read())
        speed = float(doc.get("speed", 1.0))
        if speed <= 0:
            return web.json_response({"error": "speed must be > 0"}, status=400)
        self._ts_map = (float(doc["ts0_ms"]), float(doc["wall0_ms"]), speed)
        return web.json_response({"ok": True})

    def stats_doc(self, *, per_sensor: bool = False, light: bool = False) -> dict[str, Any]:
        """The accounting so far (see the module docstring).

        Args:
            per_sensor: Add ``sensor_keys`` (distinct keys per sensor id).
            light: Only counters (cheap enough to poll every second).
        """
        self._roll_second(int(self._clock_s()))
        doc: dict[str, Any] = {
            "counts": dict(self.counts),
            "distinct_keys": len(self.keys),
            "elapsed_s": time.monotonic() - self.started,
            "peak_partition_writes_per_s": self.peak_partition_writes_per_s,
            "peak_partition": self.peak_partition,
            "first_write_s": self.first_write_s,
            "last_write_s": self.last_write_s,
            "max_item_bytes": self.max_item_bytes,
            "upstream": self.upstream,
        }
        if light:
            return doc
        doc["rewritten_keys"] = sum(1 for n in self.keys.values() if n > 1)
        doc["hottest_partitions"] = self.partition_writes.most_common(8)
        doc["partitions"] = len(self.partition_writes)
        doc["latency_ms"] = self.latency.sparse()
        doc["visible_ms"] = self.visible.sparse()
        if per_sensor:
            sensors: Counter[str] = Counter()
            for pk, _ in self.keys:
                sensors[pk.split("#", 1)[0]] += 1
            doc["sensor_keys"] = dict(sensors)
        return doc

    async def stats(self, request: web.Request) -> web.Response:
        q = request.query
        doc = self.stats_doc(per_sensor=q.get("sensors") == "1", light=q.get("light") == "1")
        return _ok(doc)


def item_kind(pk: str, sk: str) -> str:
    """What an item written is: ``reading`` (a ``reading`` table's), or a ``packed``
    table's ``journal``, ``stage`` or ``window`` (a sealed part), or ``record`` (the
    table's own: layout, registry, checkpoint)."""
    if pk.startswith(JOURNAL_PREFIX):
        return "record" if sk == "0" else "journal"
    if pk.startswith(STAGE_PREFIX):
        return "stage"
    if pk.startswith("#"):
        return "record"
    return "window" if int(sk) >= WINDOW_PART_SPACE else "reading"


def make_app(sink: Sink) -> web.Application:
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app.router.add_post("/", sink.handle)
    app.router.add_get("/_stats", sink.stats)
    app.router.add_post("/_clock", sink.set_clock)
    return app


async def _serve(port: int, host: str, upstream: str | None) -> None:
    sink = Sink(upstream=upstream)
    runner = web.AppRunner(make_app(sink), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await sink.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark fixture: protocol-checking DynamoDB sink"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--upstream", help="forward to this DynamoDB-API endpoint (moto, dynalite): tap mode"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run(_serve(args.port, args.host, args.upstream))


if __name__ == "__main__":
    main()
