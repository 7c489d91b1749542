"""The embedded moto's partition Queries (:mod:`ingest.trial.motoserver`).

Two things a user of the demo relies on: the patched server answers every Query
exactly as plain moto does (same items, order, pages, counts), and a base-table Query
costs its partition, not the table (which is what lets the demo's dashboard keep up).
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from bench.servers import MotoServer
from ingest.trial import motoserver
from ingest.trial.servers import EmbeddedDynamo, MotoProcess, free_port

Client = Callable[..., AbstractAsyncContextManager[Any]]

N = "N"
# Table "main": pk/sk(N), a GSI on g/sk, an LSI on pk/lsk; "strs": sk(S); "flat": pk only.
PARTITIONS = ["p0", "p1", "p2", "p3", "big"]


def _main_items() -> list[dict[str, Any]]:
    items = []
    for p in PARTITIONS:
        count = 30 if p == "big" else 25
        for sk in range(count):
            item: dict[str, Any] = {
                "pk": {"S": p},
                "sk": {"N": str((sk * 7) % count)},  # written out of order
                "v": {"N": str((sk * 13) % 17)},
                "tag": {"S": f"t{sk % 3}"},
                "lsk": {"S": f"l#{sk % 4}#{sk}"},
            }
            if sk % 2 == 0:  # only some items are in the GSI
                item["g"] = {"S": f"g{sk % 3}"}
            if p == "big":  # ~40 KB each: moto's 1 MB page ends before the Limit
                item["blob"] = {"S": "x" * 40_000}
            if p in ("p0", "p1"):  # plain JSON types: the fast response path
                item["m"] = {"M": {"a": {"N": str(sk)}, "e": {"M": {}}, "l": {"L": [{"S": ""}]}}}
                item["ss"] = {"SS": [f"s{sk}", "z"]}
                item["ns"] = {"NS": [str(sk), "1.5"]}
                item["u"] = {"S": '\u00e9\u6f22"\\'}
            if p == "p2" and sk % 3 == 0:  # types moto's serializer rewrites: its own path
                item["b"] = {"B": bytes([sk, 0, 255])}
                item["bs"] = {"BS": [b"\x00", bytes([sk + 1])]}
                item["t"] = {"BOOL": sk % 2 == 0}
                item["z"] = {"NULL": True}
                item["m"] = {"M": {"b": {"B": b"\x01"}, "t": {"BOOL": True}}}
            items.append(item)
    return items


def _str_items() -> list[dict[str, Any]]:
    return [
        {"pk": {"S": f"s{i % 2}"}, "sk": {"S": f"{prefix}#{i:03d}"}, "v": {"N": str(i)}}
        for i in range(40)
        for prefix in ("a", "b")
    ]


def _flat_items() -> list[dict[str, Any]]:
    return [{"pk": {"S": f"f{i}"}, "v": {"N": str(i)}} for i in range(10)]


async def _load(client: Any, prefix: str) -> dict[str, str]:
    names = {k: f"{prefix}-{k}" for k in ("main", "strs", "flat")}
    await client.create_table(
        TableName=names["main"],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
            {"AttributeName": "g", "AttributeType": "S"},
            {"AttributeName": "lsk", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-g",
                "KeySchema": [
                    {"AttributeName": "g", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        LocalSecondaryIndexes=[
            {
                "IndexName": "by-lsk",
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "lsk", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    await client.create_table(
        TableName=names["strs"],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    await client.create_table(
        TableName=names["flat"],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for table, items in (
        (names["main"], _main_items()),
        (names["strs"], _str_items()),
        (names["flat"], _flat_items()),
    ):
        for item in items:
            await client.put_item(TableName=table, Item=item)
    return names


def _pk(value: str) -> dict[str, Any]:
    return {
        "KeyConditionExpression": "#pk = :pk",
        "ExpressionAttributeNames": {"#pk": "pk"},
        "ExpressionAttributeValues": {":pk": {"S": value}},
    }


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    """(id, table, Query or Scan arguments); "scan" in the id makes it a Scan."""
    rng = {
        "KeyConditionExpression": "#pk = :pk AND #sk BETWEEN :lo AND :hi",
        "ExpressionAttributeNames": {"#pk": "pk", "#sk": "sk"},
        "ExpressionAttributeValues": {":pk": {"S": "p1"}, ":lo": {N: "5"}, ":hi": {N: "15"}},
    }
    lt = {
        "KeyConditionExpression": "pk = :pk AND sk < :x",
        "ExpressionAttributeValues": {":pk": {"S": "p2"}, ":x": {N: "10"}},
    }
    ge = {
        "KeyConditionExpression": "pk = :pk AND sk >= :x",
        "ExpressionAttributeValues": {":pk": {"S": "p3"}, ":x": {N: "20"}},
    }
    filt = {
        "KeyConditionExpression": "pk = :pk",
        "FilterExpression": "v > :v AND tag <> :t",
        "ExpressionAttributeValues": {":pk": {"S": "p0"}, ":v": {N: "6"}, ":t": {"S": "t1"}},
    }
    prefix = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
        "ExpressionAttributeValues": {":pk": {"S": "s1"}, ":p": {"S": "b#"}},
    }
    return [
        ("partition", "main", _pk("p1")),
        ("backward", "main", {**_pk("p1"), "ScanIndexForward": False}),
        ("limit-pages", "main", {**_pk("p2"), "Limit": 7}),
        ("limit-pages-backward", "main", {**_pk("p2"), "Limit": 7, "ScanIndexForward": False}),
        ("between", "main", rng),
        ("between-backward-limit", "main", {**rng, "ScanIndexForward": False, "Limit": 4}),
        ("less-than-backward", "main", {**lt, "ScanIndexForward": False}),
        ("greater-equal-limit", "main", {**ge, "Limit": 2}),
        ("filter-limit", "main", {**filt, "Limit": 5}),
        ("projection", "main", {**_pk("p3"), "ProjectionExpression": "pk, sk, tag"}),
        ("consistent", "main", {**_pk("p0"), "ConsistentRead": True}),
        ("count", "main", {**_pk("p0"), "Select": "COUNT"}),
        ("start-key", "main", {**_pk("p1"), "ExclusiveStartKey": _key("p1", 11)}),
        (
            "start-key-backward",
            "main",
            {**_pk("p1"), "ExclusiveStartKey": _key("p1", 11), "ScanIndexForward": False},
        ),
        ("one-mb-pages", "main", _pk("big")),
        ("one-mb-pages-backward", "main", {**_pk("big"), "ScanIndexForward": False}),
        ("missing-partition", "main", _pk("nope")),
        ("begins-with", "strs", prefix),
        ("begins-with-backward-limit", "strs", {**prefix, "ScanIndexForward": False, "Limit": 9}),
        ("hash-only", "flat", _pk("f3")),
        ("hash-only-missing", "flat", _pk("f99")),
        (
            "gsi",
            "main",
            {
                "IndexName": "by-g",
                "KeyConditionExpression": "g = :g",
                "ExpressionAttributeValues": {":g": {"S": "g1"}},
                "Limit": 4,
            },
        ),
        (
            "lsi",
            "main",
            {
                "IndexName": "by-lsk",
                "KeyConditionExpression": "pk = :pk AND begins_with(lsk, :l)",
                "ExpressionAttributeValues": {":pk": {"S": "p1"}, ":l": {"S": "l#2"}},
            },
        ),
        ("scan", "main", {"Limit": 10, "ProjectionExpression": "pk, sk"}),
    ]


def _key(pk: str, sk: int) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {N: str(sk)}}


async def _all_pages(client: Any, table: str, case_id: str, args: dict[str, Any]) -> list[Any]:
    """Every page of the Query (or Scan), following LastEvaluatedKey, as the server sent it."""
    op = client.scan if case_id == "scan" else client.query
    pages: list[Any] = []
    kwargs = dict(args)
    while True:
        resp = await op(TableName=table, **kwargs)
        resp.pop("ResponseMetadata", None)
        pages.append(resp)
        if "LastEvaluatedKey" not in resp or len(pages) > 50:
            return pages
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def _sks(pages: list[Any]) -> list[Any]:
    return [next(iter(i["sk"].values())) for p in pages for i in p.get("Items", [])]


async def test_patched_server_answers_every_query_as_plain_moto(
    moto_server: MotoServer, dynamodb_client: Client, unique_name: str
) -> None:
    got: dict[str, list[Any]] = {}
    async with (
        EmbeddedDynamo() as patched,
        dynamodb_client(moto_server.endpoint_url) as plain_client,
        dynamodb_client(patched.endpoint_url) as patched_client,
    ):
        plain_tables, patched_tables = await asyncio.gather(
            _load(plain_client, unique_name), _load(patched_client, unique_name)
        )
        for case_id, table, args in _cases():
            want = await _all_pages(plain_client, plain_tables[table], case_id, args)
            got[case_id] = await _all_pages(patched_client, patched_tables[table], case_id, args)
            assert got[case_id] == want, case_id
    # The cases do what they say, so that their equality means something.
    assert _sks(got["partition"]) == [str(i) for i in range(25)]
    assert _sks(got["backward"]) == [str(i) for i in reversed(range(25))]
    assert len(got["limit-pages"]) >= 4 and _sks(got["limit-pages"]) == _sks(got["partition"])
    assert _sks(got["limit-pages-backward"]) == [str(i) for i in reversed(range(25))]
    assert _sks(got["between"]) == [str(i) for i in range(5, 16)]
    assert _sks(got["less-than-backward"]) == [str(i) for i in reversed(range(10))]
    assert _sks(got["start-key"]) == [str(i) for i in range(12, 25)]
    assert _sks(got["start-key-backward"]) == [str(i) for i in reversed(range(11))]
    assert len(got["one-mb-pages"]) >= 2
    assert _sks(got["one-mb-pages"]) == [str(i) for i in range(30)]
    assert got["missing-partition"][0]["Count"] == got["hash-only-missing"][0]["Count"] == 0
    assert _sks(got["begins-with"]) == [f"b#{i:03d}" for i in range(1, 40, 2)]
    filtered = got["filter-limit"]
    assert sum(p["ScannedCount"] for p in filtered) == 25 > sum(p["Count"] for p in filtered) > 0
    assert all(set(i) == {"pk", "sk", "tag"} for p in got["projection"] for i in p["Items"])
    assert got["count"][0]["Count"] == 25 and "Items" not in got["count"][0]
    assert got["gsi"][0]["Items"] and all(i["g"] == {"S": "g1"} for i in got["gsi"][0]["Items"])
    assert sum(p["Count"] for p in got["scan"]) == 4 * 25 + 30
    p2 = [i for p in got["limit-pages"] for i in p["Items"]]
    assert sum("b" in i for i in p2) == 9 and all(
        i["b"]["B"][1:] == b"\x00\xff" for i in p2 if "b" in i
    )
    assert all(i["m"]["M"]["e"] == {"M": {}} for p in got["partition"] for i in p["Items"])


class _Touched:
    """Counts the items moto's ``Table.all_items`` hands out: what a Query sorts and walks.

    It wraps whatever ``Table.all_items`` is when attached (patched or moto's own).
    """

    def __init__(self) -> None:
        self.items = 0
        self._inner: Any = None

    def attach(self) -> None:
        from moto.dynamodb.models.table import Table

        self.detach()
        inner = self._inner = Table.all_items

        def counting(table: Any) -> Any:
            out = inner(table)
            self.items += len(out)
            return out

        Table.all_items = counting  # type: ignore[method-assign]

    def detach(self) -> None:
        from moto.dynamodb.models.table import Table

        if self._inner is not None:
            Table.all_items, self._inner = self._inner, None  # type: ignore[method-assign]


@pytest.fixture
def touched() -> Iterator[_Touched]:
    """Items touched in an in-process moto, with the patch installed (removed afterwards)."""
    was = motoserver.installed()
    motoserver.install()
    counter = _Touched()
    counter.attach()
    try:
        yield counter
    finally:
        counter.detach()
        if not was:
            motoserver.uninstall()


@pytest.fixture
async def threaded_moto() -> AsyncIterator[str]:
    """moto's own threaded server, in this process (so that its Table can be counted)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    await asyncio.to_thread(server.start)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_base_table_query_touches_its_partition_not_the_table(
    touched: _Touched, threaded_moto: str, dynamodb_client: Client, unique_name: str
) -> None:
    async with dynamodb_client(threaded_moto) as client:
        await client.create_table(
            TableName=unique_name,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )

        async def fill(partitions: range) -> None:
            for p in partitions:
                requests = [
                    {"PutRequest": {"Item": {"pk": {"S": f"p{p}"}, "sk": {N: str(s)}}}}
                    for s in range(10)
                ]
                for i in range(0, len(requests), 25):
                    await client.batch_write_item(RequestItems={unique_name: requests[i : i + 25]})

        async def query_cost() -> int:
            before = touched.items
            resp = await client.query(TableName=unique_name, **_pk("p0"))
            assert resp["Count"] == 10
            return touched.items - before

        await fill(range(10))  # 100 items
        small = await query_cost()
        await fill(range(10, 200))  # 2,000 items
        large = await query_cost()
        # The patch's own work is the partition; moto's all_items would hand out the table.
        assert (small, large) == (10, 10)
        touched.detach()
        motoserver.uninstall()
        touched.attach()
        try:
            assert await query_cost() == 2_000  # what the counter sees without the patch
        finally:
            touched.detach()
            motoserver.install()
            touched.attach()


async def test_a_query_response_of_plain_types_skips_motos_serializer(
    touched: _Touched,
    threaded_moto: str,
    dynamodb_client: Client,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moto serializes an item in ~0.8 ms (most of a registry page's time): plain JSON goes as is."""
    from moto.core.serialize import BaseJSONSerializer

    maps = 0
    own = BaseJSONSerializer._serialize_type_map

    def counting(self: Any, *args: Any) -> Any:
        nonlocal maps
        maps += 1
        return own(self, *args)

    monkeypatch.setattr(BaseJSONSerializer, "_serialize_type_map", counting)
    async with dynamodb_client(threaded_moto) as client:
        await client.create_table(
            TableName=unique_name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        registry_like = {"m": {"M": {"t": {"N": "21.5"}}}, "sid": {"S": "env-1"}}
        await client.put_item(TableName=unique_name, Item={"pk": {"S": "a"}, **registry_like})
        await client.put_item(
            TableName=unique_name, Item={"pk": {"S": "b"}, "x": {"B": b"\x00"}, **registry_like}
        )

        async def maps_serialized(pk: str) -> int:
            before = maps
            resp = await client.query(TableName=unique_name, **_pk(pk))
            assert resp["Items"][0]["m"] == registry_like["m"]
            return maps - before

        plain, binary = await maps_serialized("a"), await maps_serialized("b")
        touched.detach()
        motoserver.uninstall()
        try:
            unpatched = await maps_serialized("a")
        finally:
            motoserver.install()
            touched.attach()
    assert plain == 0  # the item and its map: json.dumps
    assert binary == unpatched >= 2  # moto's own: the item's attributes, and "m"


def test_the_embedded_server_runs_the_patch_and_the_tests_plain_moto() -> None:
    assert EmbeddedDynamo.server_module == "ingest.trial.motoserver"
    assert MotoProcess.server_module == MotoServer.server_module == "moto.server"


def test_a_moto_without_the_internals_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models.table import Table

    def query(self: Any, hash_key: Any, key_conditions: Any) -> None:  # another signature
        raise AssertionError("not called")

    was = motoserver.installed()
    motoserver.uninstall()
    try:
        monkeypatch.setattr(Table, "query", query)
        with pytest.raises(
            motoserver.MotoInternalsChanged, match=r"moto .*Table.query.s parameters"
        ):
            motoserver.install()
        assert not motoserver.installed() and Table.query is query
    finally:
        monkeypatch.undo()
        if was:
            motoserver.install()


def test_a_moto_whose_query_skips_all_items_fails_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Such a moto would leave the patch silently inert: the start says so instead."""
    from moto.dynamodb.models.table import Table

    was = motoserver.installed()
    motoserver.uninstall()
    own_query, own_all_items = Table.query, Table.all_items

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        # As a later moto might: the candidates come from elsewhere than Table.all_items.
        self.all_items = types.MethodType(own_all_items, self)
        try:
            return own_query(self, *args, **kwargs)
        finally:
            del self.all_items

    query.__signature__ = inspect.signature(own_query)  # type: ignore[attr-defined]
    try:
        monkeypatch.setattr(Table, "query", query)
        with pytest.raises(motoserver.MotoInternalsChanged, match="all_items 0 times"):
            motoserver.install()
        assert not motoserver.installed() and Table.query is query
        assert Table.all_items is own_all_items
    finally:
        monkeypatch.undo()
        if was:
            motoserver.install()


def test_the_entry_point_fails_loudly_naming_moto(tmp_path: Any) -> None:
    """``python -m ingest.trial.motoserver`` with a changed moto exits non-zero, saying why."""
    shim = tmp_path / "sitecustomize.py"
    shim.write_text(
        "import moto.dynamodb.models.table as t\ndel t.Table.all_items\n",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ingest.trial.motoserver", "-p", str(free_port())],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "MotoInternalsChanged" in proc.stderr and "Table.all_items is missing" in proc.stderr
