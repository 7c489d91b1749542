"""The cap on DynamoDB calls per request: every fan-out endpoint stops at the cap with a 422
that names the limit, and legal requests stay under the default cap.

The app runs against moto with a recording client: the calls DynamoDB saw are counted,
not only what the app reports in ``X-DynamoDB-Calls``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.storage.layout import Reading, TableLayout
from queries.read.reader import default_calls_per_sensor, legal_fanout
from tests.queries.harness import HOUR_MS, Api, RecordingClient, TestTable, ms_now


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """One DynamoDB-API server is enough: the call accounting is under test."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _calls(api: Api) -> int:
    """DynamoDB calls the app started (answered, failed or cancelled)."""
    client = api.reader.client
    assert isinstance(client, RecordingClient)
    return client.started


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def _six_hours(make_table: Callable[..., Awaitable[TestTable]]) -> tuple[TestTable, int]:
    """Two sensors with a reading every 10 minutes over 6 hourly buckets x 4 shards."""
    table = await make_table()  # hourly buckets, 4 shards
    now = ms_now()
    readings = [
        Reading(s, now - 6 * HOUR_MS + 600_000 * i, {"v": i})
        for s in ("cap-1", "cap-2")
        for i in range(36)
    ]
    await table.put(readings)
    await table.register(readings)
    return table, now


async def _over_cap(api: Api, cap: int, method: str, path: str, **kw: Any) -> dict[str, Any]:
    """The request must be a 422 naming the cap, after exactly ``cap`` DynamoDB calls."""
    before = _calls(api)
    if method == "GET":
        status, headers, body = await api.get(path, **kw)
    else:
        status, headers, body = await api.post(path, kw)
    assert status == 422, (path, status, body)
    err = body["error"]
    assert err["code"] == "too_many_calls"
    assert err["limit"] == "max_calls_per_sensor"
    assert err["max_calls"] == cap
    assert "max_calls_per_sensor" in err["message"]
    assert "narrow the range" in err["message"]
    assert headers["X-DynamoDB-Calls"] == str(cap)
    # No call past the cap was started (those in flight when the cap was hit are cancelled).
    assert _calls(api) - before == cap
    return body  # type: ignore[no-any-return]


async def test_every_fan_out_endpoint_stops_at_the_call_cap_with_a_422(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table, now = await _six_hours(make_table)
    per_sensor = 10
    api = await serve_api(table, client_cls=RecordingClient, max_calls_per_sensor=per_sensor)
    start, end = now - 6 * HOUR_MS, now  # 7 buckets x 4 shards: at least 28 Queries a sensor
    await _over_cap(
        api, per_sensor, "GET", "/v1/sensors/cap-1/readings", start=start, end=end, limit=10_000
    )
    await _over_cap(api, per_sensor, "GET", "/v1/sensors/cap-1/series", start=start, end=end)
    # Two sensors: twice the budget.
    body = await _over_cap(
        api, 2 * per_sensor, "GET", "/v1/series", sensors="cap-1,cap-2", start=start, end=end
    )
    assert "2 sensors" in body["error"]["message"]
    grafana = {
        "range": {"from": _iso(start), "to": _iso(end)},
        "maxDataPoints": 50,
        "targets": [{"target": "cap-1/v"}, {"target": "cap-2/v"}],
    }
    await _over_cap(api, 2 * per_sensor, "POST", "/grafana/query", **grafana)

    # The registry lists 8 partitions at once: over a cap of 5.
    small = await serve_api(table, client_cls=RecordingClient, max_calls_per_sensor=5)
    await _over_cap(small, 5, "GET", "/v1/sensors", limit=100)
    await _over_cap(small, 5, "POST", "/grafana/metrics")

    # /latest: the registry says the sensor was seen 6 hours ago, its readings are older
    # (expired or not there): newest first over every partition since.
    old = [Reading("cap-old", now - 6 * HOUR_MS, {"v": 1})]
    await table.register(old)
    await _over_cap(api, per_sensor, "GET", "/v1/sensors/cap-old/latest")


async def test_requests_under_the_cap_are_answered_and_the_default_cap_fits_legal_requests(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table, now = await _six_hours(make_table)
    # The default: 16 pages per partition of the widest legal range, plus the marker Query.
    layout = table.layout
    day = 86_400_000
    assert legal_fanout(layout, day) == (24 + 1) * 4 + 1
    assert default_calls_per_sensor(layout, day) == 16 * legal_fanout(layout, day)
    assert legal_fanout(TableLayout(), 31 * day) == 129  # 1-day buckets, 4 shards: 32 x 4 + 1
    api = await serve_api(table, client_cls=RecordingClient, max_range_ms=day)
    # The widest legal range, every partition read: well under the cap.
    before = _calls(api)
    status, headers, body = await api.get(
        "/v1/sensors/cap-1/readings", start=now - day, end=now, limit=10_000
    )
    assert status == 200, body
    assert body["count"] == 36
    assert int(headers["X-DynamoDB-Calls"]) == _calls(api) - before
    assert legal_fanout(layout, day) - 1 <= _calls(api) - before <= legal_fanout(layout, day)
    status, _, body = await api.get(
        "/v1/series", sensors="cap-1,cap-2", start=now - day, end=now, step="1h", agg="count"
    )
    assert status == 200, body
    assert [sum(s["metrics"]["v"]["count"]) for s in body["sensors"]] == [36, 36]
    # A cap exactly at what a request needs is enough.
    before = _calls(api)
    status, headers, _ = await api.get("/v1/sensors/cap-1/series", start=now - day, end=now)
    assert status == 200
    needed = _calls(api) - before
    exact = await serve_api(table, client_cls=RecordingClient, max_calls_per_sensor=needed)
    status, _, body = await exact.get("/v1/sensors/cap-1/series", start=now - day, end=now)
    assert status == 200, body
    tight = await serve_api(table, client_cls=RecordingClient, max_calls_per_sensor=needed - 1)
    await _over_cap(tight, needed - 1, "GET", "/v1/sensors/cap-1/series", start=now - day, end=now)
