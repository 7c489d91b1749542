"""Relative times (``start=now-24h``, ``end=now``): resolved once per request against the
server's clock (injected here), a 400 naming the parameter for a bad one, and cursors that
keep the range of their first page while the clock moves on. Real HTTP, moto."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from ingest.storage.layout import Reading
from tests.queries.harness import HOUR_MS, Api, TestTable, ms_now

MINUTE_MS = 60_000
NOW = ms_now() // MINUTE_MS * MINUTE_MS
"""The server's clock (readings around it are unexpired: reads check TTL on the real clock)."""


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """One DynamoDB-API server: parameter handling is under test."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


class Clock:
    """A settable clock (epoch ms) for the server."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now_ms


async def _served(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    readings: list[Reading] = (),  # type: ignore[assignment]
) -> tuple[Api, Clock]:
    table = await make_table()
    if readings:
        await table.put(readings)
    clock = Clock(NOW)
    return await serve_api(table, clock_ms=clock), clock


@pytest.mark.parametrize(
    ("start", "end", "want_start", "want_end"),
    [
        ("now-24h", "now", NOW - 24 * HOUR_MS, NOW),
        ("now-15m", None, NOW - 15 * MINUTE_MS, NOW),
        ("now-7d", "now-1d", NOW - 7 * 24 * HOUR_MS, NOW - 24 * HOUR_MS),
        ("now-30s", "now+1h", NOW - 30_000, NOW + HOUR_MS),
        ("now-2w", "now-1w", NOW - 14 * 24 * HOUR_MS, NOW - 7 * 24 * HOUR_MS),
        (None, "now-1h", NOW - 2 * HOUR_MS, NOW - HOUR_MS),
        ("now-1h", " now ", NOW - HOUR_MS, NOW),
        ("now-90m", "now 1h", NOW - 90 * MINUTE_MS, NOW + HOUR_MS),  # an unencoded +
        (str(NOW - HOUR_MS), "now", NOW - HOUR_MS, NOW),
    ],
)
async def test_relative_times_resolve_against_the_one_clock_of_the_request(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    start: str | None,
    end: str | None,
    want_start: int,
    want_end: int,
) -> None:
    readings = [Reading("rel-1", NOW - MINUTE_MS * i, {"v": float(i)}) for i in range(20)]
    api, clock = await _served(make_table, serve_api, readings)
    for path in ("/v1/sensors/rel-1/series", "/v1/sensors/rel-1/readings"):
        status, _, body = await api.get(path, start=start, end=end)
        assert status == 200, body
        assert (body["start"], body["end"]) == (want_start, want_end)
    status, _, body = await api.get("/v1/series", sensors="rel-1", start=start, end=end)
    assert status == 200, body
    assert (body["start"], body["end"]) == (want_start, want_end)
    assert clock.reads == 3  # one clock reading per request


async def test_relative_readings_return_what_the_resolved_range_holds(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    readings = [Reading("rel-2", NOW - MINUTE_MS * i, {"v": float(i)}) for i in range(60)]
    api, _ = await _served(make_table, serve_api, readings)
    status, _, body = await api.get("/v1/sensors/rel-2/readings", start="now-15m", end="now-5m")
    assert status == 200, body
    assert [r["ts"] for r in body["readings"]] == [NOW - MINUTE_MS * i for i in range(15, 4, -1)]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("start", "now-"),
        ("start", "now-1y"),
        ("start", "now-1.5h"),
        ("end", "now*2"),
        ("end", "nowish"),
        ("start", "now-1h/d"),
        ("end", "now+-1h"),
        ("start", "now-99999999999d"),
        ("start", "NOW-1H"),  # as in Grafana: lower case (M would be months)
    ],
)
async def test_a_bad_relative_time_is_a_400_naming_the_parameter_and_the_value(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    param: str,
    value: str,
) -> None:
    api, _ = await _served(make_table, serve_api)
    for path in ("/v1/sensors/rel-3/series", "/v1/sensors/rel-3/readings"):
        status, _, body = await api.get(path, **{param: value})
        assert status == 400, body
        error = body["error"]
        assert error["code"] == "bad_parameter"
        assert error["parameter"] == param
        assert repr(value) in error["message"]
        assert "now-24h" in error["allowed"]


async def test_a_range_too_long_is_refused_like_an_absolute_one(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    api, _ = await _served(make_table, serve_api)
    status, _, body = await api.get("/v1/sensors/rel-4/series", start="now-60d")
    assert status == 400
    assert body["error"]["parameter"] == "start"
    status, _, body = await api.get("/v1/sensors/rel-4/series", start="now", end="now-1h")
    assert status == 400
    assert body["error"]["parameter"] == "end"


async def test_paging_a_relative_range_keeps_the_first_pages_range_as_the_clock_moves(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    # Readings every minute from two hours ago to one hour ahead of the first page's now.
    readings = [Reading("rel-5", NOW + MINUTE_MS * i, {"v": float(i)}) for i in range(-120, 60)]
    api, clock = await _served(make_table, serve_api, readings)
    path = "/v1/sensors/rel-5/readings"
    status, _, page = await api.get(path, start="now-1h", end="now", limit=7)
    assert status == 200, page
    seen = [r["ts"] for r in page["readings"]]
    while page["next_cursor"] is not None:
        clock.now_ms += 5 * MINUTE_MS  # the clock moves on between pages
        status, _, page = await api.get(
            path, start="now-1h", end="now", limit=7, cursor=page["next_cursor"]
        )
        assert status == 200, page
        assert (page["start"], page["end"]) == (NOW - HOUR_MS, NOW)
        seen += [r["ts"] for r in page["readings"]]
    assert seen == [NOW + MINUTE_MS * i for i in range(-60, 1)]  # each once, none shifted


async def test_a_relative_cursor_cannot_be_reused_for_another_range_or_from_the_future(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    readings = [Reading("rel-6", NOW - MINUTE_MS * i, {"v": float(i)}) for i in range(30)]
    api, clock = await _served(make_table, serve_api, readings)
    path = "/v1/sensors/rel-6/readings"
    status, _, page = await api.get(path, start="now-1h", limit=5)
    assert status == 200, page
    cursor = page["next_cursor"]
    # Another expression is another query (the fingerprint holds the raw parameters).
    status, _, body = await api.get(path, start="now-2h", limit=5, cursor=cursor)
    assert (status, body["error"]["parameter"]) == (400, "cursor")
    # A server whose clock is behind the cursor's (beyond the allowed skew) refuses it.
    clock.now_ms = NOW - HOUR_MS
    status, _, body = await api.get(path, start="now-1h", limit=5, cursor=cursor)
    assert (status, body["error"]["parameter"]) == (400, "cursor")


async def test_grafana_ranges_may_be_relative(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    readings = [Reading("rel-7", NOW - MINUTE_MS * i, {"v": 1.0}) for i in range(30)]
    api, _ = await _served(make_table, serve_api, readings)
    query = {
        "range": {"from": "now-30m", "to": "now"},
        "maxDataPoints": 30,
        "targets": [{"target": "rel-7/v"}],
    }
    status, _, body = await api.post("/grafana/query", query)
    assert status == 200, body
    points = body[0]["datapoints"]
    assert points[0][1] <= NOW - 30 * MINUTE_MS and points[-1][1] <= NOW
    # The windows cover the last 30 minutes, and hold the readings (one a minute); the
    # first window, overlapping now-30m, may start before the oldest reading.
    values = [v for v, _ in points if v is not None]
    assert len(points) >= 10
    assert len(values) >= len(points) - 1
    assert set(values) == {1.0}
    status, _, body = await api.post("/grafana/query", {**query, "range": {"from": "now-1x"}})
    assert (status, body["error"]["parameter"]) == (400, "range.from")
