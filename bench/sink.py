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

Run: ``python -m bench.sink --port P`` (prints ``READY <port>`` when listening).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Sink", "main"]

log = logging.getLogger(__name__)

_PREFIX = "DynamoDB_20120810."


def _error(kind: str, message: str, status: int = 400) -> web.Response:
    body = orjson.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{kind}", "message": message})
    return web.Response(status=status, body=body, content_type="application/x-amz-json-1.0")


def _ok(doc: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/x-amz-json-1.0")


def _item_size(item: dict[str, Any]) -> int:
    return len(orjson.dumps(item))


class Sink:
    """The sink's state: counts, the keys seen, and the few items read back."""

    def __init__(self, *, track_keys: bool = True) -> None:
        self.tables: dict[str, dict[str, Any]] = {}
        self.small_items: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.track_keys = track_keys
        self.keys: Counter[tuple[str, str]] = Counter()
        self.partition_writes: Counter[str] = Counter()
        self.started = time.monotonic()

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if not target.startswith(_PREFIX):
            return _error("UnknownOperationException", f"unknown target {target!r}")
        op = target[len(_PREFIX) :]
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error("SerializationException", "body is not JSON")
        self.counts["requests." + op] += 1
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            return _error(
                "UnknownOperationException", f"{op} is not supported by the benchmark sink"
            )
        result: web.Response = handler(body)
        return result

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
        return _ok({})

    def op_UpdateItem(self, body: dict[str, Any]) -> web.Response:
        name = self._table(body)
        if isinstance(name, web.Response):
            return name
        self.counts["registry_updates"] += 1
        return _ok({})

    def op_BatchWriteItem(self, body: dict[str, Any]) -> web.Response:
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
        for table, requests in request_items.items():
            if table not in self.tables:
                return _error("ResourceNotFoundException", f"Requested resource not found: {table}")
            seen: set[tuple[str, str]] = set()
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
                if _item_size(item) > 400 * 1024:
                    return _error(
                        "ValidationException", "Item size has exceeded the maximum allowed size"
                    )
            for pk, sk in seen:
                self.partition_writes[pk] += 1
                if self.track_keys:
                    self.keys[(pk, sk)] += 1
            self.counts["items"] += len(seen)
        return _ok({"UnprocessedItems": {}})

    async def stats(self, _: web.Request) -> web.Response:
        dupes = sum(1 for n in self.keys.values() if n > 1)
        elapsed = time.monotonic() - self.started
        hottest = self.partition_writes.most_common(8)
        return _ok(
            {
                "counts": dict(self.counts),
                "distinct_keys": len(self.keys),
                "rewritten_keys": dupes,
                "elapsed_s": elapsed,
                "hottest_partitions": hottest,
                "partitions": len(self.partition_writes),
            }
        )


def make_app(sink: Sink) -> web.Application:
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app.router.add_post("/", sink.handle)
    app.router.add_get("/_stats", sink.stats)
    return app


async def _serve(port: int, host: str) -> None:
    sink = Sink()
    runner = web.AppRunner(make_app(sink), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"READY {port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Benchmark fixture: protocol-checking DynamoDB sink"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_serve(args.port, args.host))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
