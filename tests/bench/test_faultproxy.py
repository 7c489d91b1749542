"""The fault proxy, seen as aiobotocore sees it, in front of a real moto server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from bench.faultproxy import FaultProxy
from bench.servers import MotoServer
from ingest.storage.table import create_table_request

ClientFactory = Callable[..., AbstractAsyncContextManager[Any]]
ProxyFactory = Callable[..., Awaitable[FaultProxy]]


async def _create_table(client: Any, name: str) -> None:
    await client.create_table(**create_table_request(name))


def _puts(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"PutRequest": {"Item": {"pk": {"S": "s1#0"}, "sk": {"N": str(i)}, "v": {"N": "1"}}}}
        for i in range(start, start + n)
    ]


async def _keys(client: Any, table: str) -> set[int]:
    resp = await client.scan(TableName=table, ConsistentRead=True)
    return {int(item["sk"]["N"]) for item in resp["Items"]}


def _sks(requests: list[dict[str, Any]]) -> set[int]:
    return {int(r["PutRequest"]["Item"]["sk"]["N"]) for r in requests}


async def test_unprocessed_items_are_exactly_the_ones_not_written(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    proxy = await fault_proxy(moto_server.url, seed=7, unprocessed=1.0, unprocessed_share=0.4)
    async with dynamodb_client(proxy.url, retries=False) as client:
        await _create_table(client, unique_name)
        unprocessed: set[int] = set()
        for batch in range(4):
            resp = await client.batch_write_item(RequestItems={unique_name: _puts(25, batch * 25)})
            held = resp["UnprocessedItems"].get(unique_name, [])
            assert held, "every batch must hold something back with unprocessed=1.0"
            unprocessed |= _sks(held)
        written = await _keys(client, unique_name)
    assert written == set(range(100)) - unprocessed
    counters = proxy.counters
    assert counters["unprocessed_responses"] == 4
    assert counters["unprocessed_items"] == len(unprocessed)
    assert counters["forwarded_items"] == len(written)


async def test_a_fully_held_back_batch_never_reaches_the_table(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    proxy = await fault_proxy(moto_server.url, unprocessed_share=1.0, script=["unprocessed"])
    async with dynamodb_client(proxy.url, retries=False) as client:
        await _create_table(client, unique_name)
        resp = await client.batch_write_item(RequestItems={unique_name: _puts(3)})
        assert _sks(resp["UnprocessedItems"][unique_name]) == {0, 1, 2}
        assert await _keys(client, unique_name) == set()
        # Resending what came back unprocessed writes it (the script is used up).
        resp = await client.batch_write_item(RequestItems=resp["UnprocessedItems"])
        assert resp["UnprocessedItems"] == {}
        assert await _keys(client, unique_name) == {0, 1, 2}
    assert proxy.counters["forwarded_items"] == 3


async def test_throttles_and_500s_as_the_client_sees_them(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    proxy = await fault_proxy(moto_server.url, seed=3, script=["throttle"] * 8 + ["error500", "ok"])
    async with dynamodb_client(proxy.url, retries=False) as client:
        await _create_table(client, unique_name)  # not BatchWriteItem: untouched
        seen: list[tuple[int, str]] = []
        for _ in range(9):
            with pytest.raises(ClientError) as info:
                await client.batch_write_item(RequestItems={unique_name: _puts(2)})
            err = info.value.response
            seen.append((err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Code"]))
        assert await _keys(client, unique_name) == set()
        await client.batch_write_item(RequestItems={unique_name: _puts(2)})  # "ok"
        assert await _keys(client, unique_name) == {0, 1}
    assert {code for status, code in seen[:8] if status == 400} == {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
    }
    assert seen[8] == (500, "InternalServerError")
    counters = proxy.counters
    assert counters["throttle"] == 8
    assert (
        counters["throttle.ProvisionedThroughputExceededException"]
        + counters["throttle.ThrottlingException"]
        == 8
    )
    assert counters["error500"] == 1
    assert counters["forwarded_items"] == 2


async def test_botocore_retries_throttles_and_500s_by_itself(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    proxy = await fault_proxy(moto_server.url, script=["throttle", "error500"])
    async with dynamodb_client(proxy.url) as client:
        await _create_table(client, unique_name)
        resp = await client.batch_write_item(RequestItems={unique_name: _puts(1)})
    assert resp["ResponseMetadata"]["RetryAttempts"] == 2
    assert proxy.counters["forwarded_items"] == 1


async def test_slow_delays_then_forwards(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    proxy = await fault_proxy(moto_server.url, slow=1.0, slow_ms=300)
    async with dynamodb_client(proxy.url, retries=False) as client:
        await _create_table(client, unique_name)
        started = time.monotonic()
        await client.batch_write_item(RequestItems={unique_name: _puts(1)})
        assert time.monotonic() - started >= 0.3
        assert await _keys(client, unique_name) == {0}
    assert proxy.counters["slow"] == 1


async def test_faults_can_apply_to_every_operation(
    moto_server: MotoServer, fault_proxy: ProxyFactory, dynamodb_client: ClientFactory
) -> None:
    proxy = await fault_proxy(moto_server.url, throttle=1.0, operations=None)
    async with dynamodb_client(proxy.url, retries=False) as client:
        with pytest.raises(ClientError):
            await client.list_tables()
    assert proxy.counters["throttle"] == 1
    assert proxy.counters.get("forwarded_requests", 0) == 0


async def test_down_refuses_connections_and_comes_back_on_the_same_port(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
) -> None:
    proxy = await fault_proxy(moto_server.url)
    port = proxy.port
    async with dynamodb_client(proxy.url, retries=False) as client:
        await client.list_tables()  # a kept-alive connection exists now
        await proxy.set_down(True)
        # The kept-alive connection was dropped: the client may only find out by using it.
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            await client.list_tables()
        with pytest.raises(EndpointConnectionError):  # new connections are refused
            await client.list_tables()
        await proxy.set_down(False)
        assert proxy.port == port
        await client.list_tables()
    assert proxy.counters["down_periods"] == 1


async def test_going_down_drops_requests_in_flight(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    proxy = await fault_proxy(moto_server.url, slow=1.0, slow_ms=500)
    async with dynamodb_client(proxy.url, retries=False) as client:
        await _create_table(client, unique_name)

        async def go_down() -> None:
            await asyncio.sleep(0.2)  # the write is waiting in the proxy's delay by now
            await proxy.set_down(True)

        write = client.batch_write_item(RequestItems={unique_name: _puts(1)})
        results: tuple[Any, ...] = await asyncio.gather(write, go_down(), return_exceptions=True)
        assert isinstance(results[0], ConnectionClosedError)
        await proxy.set_down(False)
        started = time.monotonic()
        while "down_dropped" not in proxy.counters:  # the proxy's delay ends at 0.5 s
            assert time.monotonic() - started < 10, "the in-flight request was not dropped"
            await asyncio.sleep(0.05)
        assert await _keys(client, unique_name) == set()
    assert proxy.counters["down_dropped"] == 1
    assert proxy.counters.get("forwarded_items", 0) == 0


async def test_down_for_a_period_over_http_then_counters_over_http(
    moto_server: MotoServer, fault_proxy: ProxyFactory
) -> None:
    proxy = await fault_proxy(moto_server.url, script=["throttle"])
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy.url}/_faults/down", params={"for_s": "0.3"}) as resp:
            assert resp.status == 200
        assert proxy.down
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{proxy.url}/_faults"):
                pass
        started = time.monotonic()
        while proxy.down:
            assert time.monotonic() - started < 10, "the proxy did not come back up"
            await asyncio.sleep(0.05)
        async with http.get(f"{proxy.url}/_faults") as resp:
            report = await resp.json()
    assert report["down"] is False
    assert report["counters"] == proxy.counters
    assert report["counters"]["down_periods"] == 1
    assert report["config"]["script_left"] == ["throttle"]


async def test_same_seed_same_faults(
    moto_server: MotoServer,
    fault_proxy: ProxyFactory,
    dynamodb_client: ClientFactory,
    unique_name: str,
) -> None:
    outcomes: list[list[str]] = []
    for run in range(2):
        proxy = await fault_proxy(
            moto_server.url, seed=42, unprocessed=0.3, throttle=0.2, error500=0.1
        )
        table = f"{unique_name}-{run}"
        seen: list[str] = []
        async with dynamodb_client(proxy.url, retries=False) as client:
            await _create_table(client, table)
            for i in range(12):
                try:
                    resp = await client.batch_write_item(RequestItems={table: _puts(5, i * 5)})
                except ClientError as exc:
                    seen.append(exc.response["Error"]["Code"])
                else:
                    seen.append(str(sorted(_sks(resp["UnprocessedItems"].get(table, [])))))
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert len(set(outcomes[0])) > 2  # a mix of outcomes, not one kind


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds 1"):
        FaultProxy("http://127.0.0.1:1", throttle=0.6, error500=0.6)
    with pytest.raises(ValueError, match="unknown fault kinds"):
        FaultProxy("http://127.0.0.1:1", script=["explode"])
