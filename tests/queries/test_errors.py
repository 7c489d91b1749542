"""Errors a client sees: 400 naming the parameter and its allowed form, 404, 405, 502/503."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from ingest.core.errors import DynamoRejected, DynamoRetriable
from ingest.storage.layout import Reading, TableLayout
from queries.api.app import create_app
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings
from queries.errors import ReadFailed, ReadUnavailable, wrap_read_error
from queries.read.reader import ReadStats, TableReader
from tests.queries.harness import HOUR_MS, Api, TestTable, ms_now

DAY_MS = 24 * HOUR_MS

# (path, params, the parameter the error must name)
BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/sensors/e-1/readings", {"start": "yesterday"}, "start"),
    ("/v1/sensors/e-1/readings", {"start": "2026-11-22T03:00:00"}, "start"),
    ("/v1/sensors/e-1/readings", {"start": "2000", "end": "1000"}, "end"),
    ("/v1/sensors/e-1/readings", {"start": "0", "end": str(40 * DAY_MS)}, "start"),
    ("/v1/sensors/e-1/readings", {"limit": "0"}, "limit"),
    ("/v1/sensors/e-1/readings", {"limit": "many"}, "limit"),
    ("/v1/sensors/e-1/readings", {"limit": "1000000"}, "limit"),
    ("/v1/sensors/e-1/readings", {"order": "up"}, "order"),
    ("/v1/sensors/e-1/readings", {"fields": "a,,b"}, "fields"),
    ("/v1/sensors/e-1/readings", {"cursor": "not-a-cursor"}, "cursor"),
    ("/v1/sensors/bad%23id/readings", {}, "sensor_id"),
    ("/v1/sensors/e-1/series", {"step": "10x"}, "step"),
    ("/v1/sensors/e-1/series", {"step": "1ms"}, "step"),  # 3.6 million windows in an hour
    ("/v1/sensors/e-1/series", {"agg": "avg,median"}, "agg"),
    ("/v1/sensors/e-1/series", {"max_points": "5"}, "max_points"),
    ("/v1/series", {}, "sensors"),
    ("/v1/series", {"sensors": ",".join(f"s{i}" for i in range(21))}, "sensors"),
    ("/v1/series", {"sensors": "ok,bad#id"}, "sensors"),
    ("/v1/sensors", {"limit": "0"}, "limit"),
    ("/v1/sensors", {"cursor": "eyJ2IjoxfQ"}, "cursor"),
]


@pytest.fixture
async def api(
    make_table: Callable[..., Awaitable[TestTable]], serve_api: Callable[..., Awaitable[Api]]
) -> Api:
    table = await make_table()
    now = ms_now()
    readings = [Reading("e-1", now - 1000 * i, {"v": i}) for i in range(50)]
    await table.put(readings)
    await table.register(readings)
    return await serve_api(table)


async def test_bad_parameters_get_400_naming_the_parameter(api: Api) -> None:
    for path, params, parameter in BAD_REQUESTS:
        status, headers, body = await api.get(path, **params)
        what = f"{path} {params}"
        assert status == 400, what
        err = body["error"]
        assert err["code"] == "bad_parameter", what
        assert err["parameter"] == parameter, what
        assert err["allowed"], what
        assert f"parameter {parameter!r}" in err["message"], what
        assert err["allowed"] in err["message"], what
        assert headers["Content-Type"] == "application/json"


async def test_a_cursor_only_continues_its_own_query(api: Api) -> None:
    now = ms_now()
    status, _, first = await api.get(
        "/v1/sensors/e-1/readings", start=now - HOUR_MS, end=now, limit=10
    )
    assert status == 200
    assert first["next_cursor"]
    status, _, body = await api.get(
        "/v1/sensors/e-1/readings",
        start=now - HOUR_MS,
        end=now,
        limit=10,
        order="desc",
        cursor=first["next_cursor"],
    )
    assert status == 400
    assert body["error"]["parameter"] == "cursor"
    assert "another query" in body["error"]["message"]
    status, _, body = await api.get(
        "/v1/sensors/e-1/series", cursor=first["next_cursor"], step="1h"
    )
    assert status == 200  # series take no cursor: ignored, not misread


async def test_unknown_sensor_route_and_method(api: Api) -> None:
    status, _, body = await api.get("/v1/sensors/nobody")
    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert "nobody" in body["error"]["message"]
    status, _, body = await api.get("/v1/sensors/nobody/latest")
    assert status == 404
    status, _, body = await api.get("/v2/anything")
    assert status == 404
    assert "/openapi.json" in body["error"]["message"]
    async with api.session.post(api.url + "/v1/sensors") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("fault", ["error500", "throttle"])
async def test_dynamodb_failure_is_a_503_that_says_so(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    fault_proxy: Callable[..., Awaitable[Any]],
    fault: str,
) -> None:
    table = await make_table()
    await table.put([Reading("f-1", ms_now() - 1000, {"v": 1})])
    proxy = await fault_proxy(table.endpoint, operations=("Query",), **{fault: 1.0})
    api = await serve_api(table, endpoint=proxy.url)
    for path in ("/v1/sensors/f-1/readings", "/v1/sensors/f-1/series", "/v1/series?sensors=f-1"):
        async with api.session.get(api.url + path) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert resp.headers["Retry-After"] == "1"
        assert body["error"]["code"] == "dynamodb_unavailable"
        assert "DynamoDB" in body["error"]["message"]
        assert ("InternalServerError" if fault == "error500" else "Throttl") in body["error"][
            "message"
        ] or "ProvisionedThroughputExceeded" in body["error"]["message"]


def test_dynamodb_errors_map_to_502_or_503() -> None:
    rejected = wrap_read_error(DynamoRejected("ValidationException: bad key", cause="rejected"))
    assert type(rejected) is ReadFailed
    assert rejected.status == 502
    assert "DynamoDB rejected the read" in str(rejected)
    retriable = wrap_read_error(DynamoRetriable("ThrottlingException: slow", cause="throttled"))
    assert isinstance(retriable, ReadUnavailable)
    assert retriable.status == 503


class _BrokenClient:
    """A DynamoDB client with a bug: raises something that is not a DynamoDB error."""

    table = "broken"

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")


async def test_a_bug_is_a_json_500_without_details() -> None:
    reader = TableReader(_BrokenClient(), TableLayout())  # type: ignore[arg-type]
    app = create_app(ServeSettings(table="broken"), reader=reader)
    async with (
        ApiServer(app) as server,
        aiohttp.ClientSession() as session,
        session.get(server.url + "/v1/sensors") as resp,
    ):
        assert resp.status == 500
        body = await resp.json()
    assert body["error"]["code"] == "internal_error"
    assert "secret" not in str(body)


class _FlakyConnection:
    """A client whose first ``failures`` calls fail as a pooled connection the server
    closed while idle fails (botocore's ConnectionClosedError, mapped to ``connection``)."""

    table = "flaky"

    def __init__(self, failures: int, cause: str = "connection") -> None:
        self.failures = failures
        self.cause = cause
        self.calls = 0

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise DynamoRetriable("ConnectionClosedError: closed", cause=self.cause)
        return {"Items": [], "ConsumedCapacity": {"CapacityUnits": 0.5}}


@pytest.mark.parametrize(("failures", "calls"), [(1, 2), (2, 3)])
async def test_a_read_on_a_connection_the_server_closed_is_sent_again(
    failures: int, calls: int
) -> None:
    client = _FlakyConnection(failures)
    reader = TableReader(client, TableLayout())  # type: ignore[arg-type]
    stats = ReadStats()
    resp = await reader.call("query", stats, TableName="flaky")
    assert resp["Items"] == [] and client.calls == calls
    assert stats.calls == calls and stats.read_units == 0.5  # every try counted


@pytest.mark.parametrize(
    ("failures", "cause", "calls"), [(3, "connection", 3), (1, "throttled", 1)]
)
async def test_a_read_fails_after_three_broken_connections_or_at_once_when_throttled(
    failures: int, cause: str, calls: int
) -> None:
    client = _FlakyConnection(failures, cause)
    reader = TableReader(client, TableLayout())  # type: ignore[arg-type]
    with pytest.raises(ReadUnavailable):
        await reader.call("query", ReadStats(), TableName="flaky")
    assert client.calls == calls
