"""Access control over real HTTP: API keys, scopes on every endpoint family, rate limits, CORS.

The app runs on a loopback port against moto (one DynamoDB-API server is enough:
the access control is what is under test).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.storage.layout import Reading
from queries.api.apikeys import ApiKey, AuthSettings, generate_token, hash_token
from queries.api.app import CONTENT_SECURITY_POLICY
from queries.api.ratelimit import RateLimitSettings
from tests.queries.harness import HOUR_MS, Api, TestTable, ms_now

SITE_A = generate_token()
ALL = generate_token()
AUTH = AuthSettings(
    keys=(
        ApiKey(name="site-a", hash=hash_token(SITE_A), sensors=("site-a-",)),
        ApiKey(name="ops", hash=hash_token(ALL), sensors=("*",)),
    )
)
SENSORS = ("site-a-1", "site-a-2", "site-b-1")


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """One DynamoDB-API server is enough: the access control is under test."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def _filled(make_table: Callable[..., Awaitable[TestTable]]) -> TestTable:
    table = await make_table()
    base = ms_now() - HOUR_MS // 2
    readings = [Reading(s, base + 60_000 * i, {"v": i}) for s in SENSORS for i in range(10)]
    await table.put(readings)
    await table.register(readings)
    return table


async def _call(
    api: Api,
    method: str,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, Any]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with api.session.request(
        method, api.url + path, headers=sent, json=body, params=params
    ) as resp:
        payload = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, resp.headers, payload


def _grafana_query(*targets: str) -> dict[str, Any]:
    now = ms_now()
    return {
        "range": {"from": _iso(now - HOUR_MS), "to": _iso(now)},
        "maxDataPoints": 50,
        "targets": [{"target": t, "refId": "A"} for t in targets],
    }


# Every protected endpoint family, with a request that succeeds for the all-sensors key.
PROTECTED: list[tuple[str, str, Any, dict[str, str] | None]] = [
    ("GET", "/v1/sensors", None, None),
    ("GET", "/v1/sensors/site-a-1", None, None),
    ("GET", "/v1/sensors/site-a-1/readings", None, None),
    ("GET", "/v1/sensors/site-a-1/series", None, None),
    ("GET", "/v1/sensors/site-a-1/latest", None, None),
    ("GET", "/v1/series", None, {"sensors": "site-a-1,site-b-1"}),
    ("GET", "/grafana/", None, None),
    ("POST", "/grafana/metrics", {}, None),
    ("POST", "/grafana/search", {"target": ""}, None),
    ("POST", "/grafana/variable", {"payload": {"target": "sensors"}}, None),
    ("POST", "/grafana/query", _grafana_query("site-a-1/v", "site-b-1/v"), None),
]


async def test_every_api_endpoint_needs_a_valid_key(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await serve_api(await _filled(make_table), auth=AUTH)
    wrong = generate_token()
    for method, path, body, params in PROTECTED:
        status, headers, err = await _call(api, method, path, body=body, params=params)
        assert status == 401, (path, status, err)
        assert err["error"]["code"] == "unauthorized"
        assert "API key is required" in err["error"]["message"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY

        status, headers, err = await _call(api, method, path, token=wrong, body=body, params=params)
        assert status == 401, (path, status)
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert wrong not in err["error"]["message"]  # the token is never echoed

        status, _, ok = await _call(api, method, path, token=ALL, body=body, params=params)
        assert status == 200, (path, status, ok)


async def test_bearer_and_x_api_key_are_both_accepted_but_must_agree(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await serve_api(await _filled(make_table), auth=AUTH)
    status, _, body = await _call(api, "GET", "/v1/sensors", headers={"X-API-Key": ALL})
    assert status == 200
    assert sorted(s["sensor_id"] for s in body["sensors"]) == sorted(SENSORS)
    status, _, _ = await _call(
        api, "GET", "/v1/sensors", headers={"authorization": f"bearer {ALL}"}
    )
    assert status == 200
    both_same = {"Authorization": f"Bearer {ALL}", "X-API-Key": ALL}
    assert (await _call(api, "GET", "/v1/sensors", headers=both_same))[0] == 200
    conflicting = {"Authorization": f"Bearer {ALL}", "X-API-Key": SITE_A}
    assert (await _call(api, "GET", "/v1/sensors", headers=conflicting))[0] == 401
    basic = {"Authorization": f"Basic {ALL}"}
    assert (await _call(api, "GET", "/v1/sensors", headers=basic))[0] == 401
    # The hash itself is not a credential.
    stored = AUTH.keys[1].hash
    assert (await _call(api, "GET", "/v1/sensors", token=stored))[0] == 401


async def test_the_page_health_and_openapi_stay_public(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await serve_api(await _filled(make_table), auth=AUTH)
    for path in ("/", "/healthz", "/openapi.json", "/static/dashboard.js"):
        async with api.session.get(api.url + path) as resp:
            assert resp.status == 200, path
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["X-Frame-Options"] == "DENY"
            if path == "/":
                assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert 'id="api-key"' in await resp.text()
    _, _, doc = await _call(api, "GET", "/openapi.json")
    assert doc["security"] == [{"bearer": []}, {"apiKey": []}]
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in doc["paths"]["/v1/sensors"]["get"]["responses"]


async def test_scopes_limit_every_endpoint_family(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await serve_api(await _filled(make_table), auth=AUTH)

    async def get(path: str, **params: str) -> tuple[int, Any]:
        status, _, body = await _call(api, "GET", path, token=SITE_A, params=params)
        return status, body

    async def post(path: str, body: Any) -> tuple[int, Any]:
        status, _, out = await _call(api, "POST", path, token=SITE_A, body=body)
        return status, out

    # Lists filter to the scope.
    status, page = await get("/v1/sensors")
    assert status == 200
    assert sorted(s["sensor_id"] for s in page["sensors"]) == ["site-a-1", "site-a-2"]
    # In scope: answered.
    for suffix in ("", "/readings", "/series", "/latest"):
        status, body = await get(f"/v1/sensors/site-a-1{suffix}")
        assert status == 200, (suffix, body)
    status, body = await get("/v1/sensors/site-a-1/readings")
    assert body["count"] == 10
    # Out of scope: a 404 like an unknown sensor, whether it exists or not.
    for sid in ("site-b-1", "site-b-does-not-exist"):
        for suffix in ("", "/readings", "/series", "/latest"):
            status, body = await get(f"/v1/sensors/{sid}{suffix}")
            assert status == 404, (sid, suffix, body)
            assert body["error"]["code"] == "not_found"
            assert "not readable with this API key" in body["error"]["message"]
    status, body = await get("/v1/series", sensors="site-a-1,site-b-1")
    assert status == 404
    assert "site-b-1" in body["error"]["message"]
    status, body = await get("/v1/series", sensors="site-a-1,site-a-2")
    assert status == 200
    assert [s["sensor_id"] for s in body["sensors"]] == ["site-a-1", "site-a-2"]

    # Grafana: names, variables and queries respect the scope too.
    status, metrics = await post("/grafana/metrics", {})
    assert [m["value"] for m in metrics] == ["site-a-1/v", "site-a-2/v"]
    status, names = await post("/grafana/search", {"target": "site"})
    assert names == ["site-a-1/v", "site-a-2/v"]
    status, values = await post("/grafana/variable", {"payload": {"target": "sensors"}})
    assert [v["__value"] for v in values] == ["site-a-1", "site-a-2"]
    status, series = await post("/grafana/query", _grafana_query("site-a-1/v"))
    assert status == 200
    assert sum(p[0] is not None for p in series[0]["datapoints"]) > 0
    status, body = await post("/grafana/query", _grafana_query("site-a-1/v", "site-b-1/v"))
    assert status == 404
    assert body["error"]["code"] == "not_found"

    # The all-sensors key sees everything.
    status, _, page = await _call(api, "GET", "/v1/sensors", token=ALL)
    assert sorted(s["sensor_id"] for s in page["sensors"]) == sorted(SENSORS)


async def test_a_narrow_scope_pages_through_a_large_registry(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import queries.read.sensors

    monkeypatch.setattr(queries.read.sensors, "MAX_SCANNED_PER_PAGE", 5)
    table = await make_table()
    ids = [f"other-{i:02d}" for i in range(40)] + ["site-a-x", "site-a-y", "site-a-z"]
    readings = [Reading(s, ms_now() - 1000, {"v": 1}) for s in ids]
    await table.register(readings)
    api = await serve_api(table, auth=AUTH)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(100):
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        status, _, page = await _call(api, "GET", "/v1/sensors", token=SITE_A, params=params)
        assert status == 200, page
        assert len(page["sensors"]) <= 2
        seen += [s["sensor_id"] for s in page["sensors"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == ["site-a-x", "site-a-y", "site-a-z"]


async def test_rate_limit_answers_429_with_retry_after_per_key(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    slow = generate_token()
    auth = AuthSettings(
        keys=(
            *AUTH.keys,
            ApiKey(name="slow", hash=hash_token(slow), sensors=("*",), burst=1, rate_per_s=0.2),
        )
    )
    limits = RateLimitSettings(rate_per_s=0.5, burst=3)
    api = await serve_api(await _filled(make_table), auth=auth, rate_limit=limits)
    statuses = [(await _call(api, "GET", "/v1/sensors", token=ALL))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    status, headers, body = await _call(api, "GET", "/v1/sensors", token=ALL)
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert "'ops'" in body["error"]["message"]
    assert 1 <= int(headers["Retry-After"]) <= 2
    # Another key has its own bucket; a key's own burst overrides the server's.
    assert (await _call(api, "GET", "/v1/sensors", token=SITE_A))[0] == 200
    assert (await _call(api, "GET", "/v1/sensors", token=slow))[0] == 200
    status, headers, _ = await _call(api, "GET", "/v1/sensors", token=slow)
    assert status == 429
    assert 4 <= int(headers["Retry-After"]) <= 5
    # Public paths are not limited.
    for _ in range(5):
        assert (await _call(api, "GET", "/healthz"))[0] == 200


async def test_rate_limit_without_auth_is_per_client_address(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    limits = RateLimitSettings(rate_per_s=0.5, burst=2)
    api = await serve_api(await _filled(make_table), rate_limit=limits)
    statuses = [(await _call(api, "GET", "/v1/sensors"))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_cors_is_closed_by_default(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    api = await serve_api(await _filled(make_table), auth=AUTH)
    origin = {"Origin": "https://evil.example"}
    status, headers, _ = await _call(api, "GET", "/v1/sensors", token=ALL, headers=origin)
    assert status == 200
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    preflight = {
        **origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key",
    }
    async with api.session.options(api.url + "/v1/sensors", headers=preflight) as resp:
        assert resp.status != 200
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_cors_opens_for_a_configured_origin_only(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    grafana = "https://grafana.example.com"
    api = await serve_api(await _filled(make_table), auth=AUTH, cors_origins=(grafana,))
    preflight = {
        "Origin": grafana,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-api-key",
    }
    # The preflight needs no key (browsers never send one with it).
    async with api.session.options(api.url + "/v1/sensors", headers=preflight) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == grafana
        assert "x-api-key" in resp.headers["Access-Control-Allow-Headers"].lower()
        assert "Access-Control-Allow-Credentials" not in resp.headers
    status, headers, _ = await _call(
        api, "GET", "/v1/sensors", token=ALL, headers={"Origin": grafana}
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == grafana
    assert "X-Read-Units" in headers["Access-Control-Expose-Headers"]
    # A 401 reaches the page too, so it can tell the user why.
    status, headers, _ = await _call(api, "GET", "/v1/sensors", headers={"Origin": grafana})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == grafana
    # Another origin gets nothing.
    status, headers, _ = await _call(
        api, "GET", "/v1/sensors", token=ALL, headers={"Origin": "https://evil.example"}
    )
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers
    async with api.session.options(
        api.url + "/v1/sensors", headers={**preflight, "Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 400
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_grafana_name_lists_for_a_scoped_key_do_not_walk_the_registry_each_call(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Grafana asks for metric names on every editor load and variable refresh. A narrow key
    over a large registry used to read the whole registry each time; the names now come
    from one registry read shared by every key for a short TTL."""
    import queries.api.metricnames

    monkeypatch.setattr(queries.api.metricnames, "NAMES_TTL_S", 1.0)
    table = await make_table()
    others = [Reading(f"other-{i:04d}", ms_now() - 1000, {"v": 1, "w": 2}) for i in range(600)]
    mine = [Reading(s, ms_now() - 1000, {"v": 1}) for s in ("site-a-x", "site-a-y")]
    await table.register(others + mine)
    api = await serve_api(table, auth=AUTH)

    async def cost(path: str, body: Any, token: str = SITE_A) -> tuple[float, int, Any]:
        status, headers, out = await _call(api, "POST", path, token=token, body=body)
        assert status == 200, out
        return float(headers["X-Read-Units"]), int(headers["X-DynamoDB-Calls"]), out

    units, calls, first = await cost("/grafana/metrics", {})
    assert [m["value"] for m in first] == ["site-a-x/v", "site-a-y/v"]
    assert units > 0 and 8 <= calls <= 16  # the registry's 8 partitions, 1 MB pages
    for path, body, want in (
        ("/grafana/metrics", {}, first),
        ("/grafana/search", {"target": "site"}, ["site-a-x/v", "site-a-y/v"]),
        ("/grafana/variable", {"payload": {"target": "sensors"}}, None),
    ):
        for _ in range(3):
            units, calls, out = await cost(path, body)
            assert (units, calls) == (0.0, 0), path  # served from the shared snapshot
            if want is not None:
                assert out == want
    assert [v["__value"] for v in out] == ["site-a-x", "site-a-y"]
    # Another key, another scope: the same snapshot, its own filter.
    units, calls, every = await cost("/grafana/metrics", {}, token=ALL)
    assert (units, calls) == (0.0, 0)
    assert len(every) == 600 * 2 + 2

    # After the TTL a new sensor shows, at the cost of one registry read again.
    await table.register([Reading("site-a-z", ms_now(), {"t": 1})])
    await asyncio.sleep(1.1)
    units, calls, out = await cost("/grafana/metrics", {})
    assert [m["value"] for m in out] == ["site-a-x/v", "site-a-y/v", "site-a-z/t"]
    assert units > 0 and 8 <= calls <= 16


async def test_grafana_names_snapshot_is_bounded(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import queries.api.metricnames

    monkeypatch.setattr(queries.api.metricnames, "MAX_CACHED_SENSORS", 80)
    table = await make_table()
    await table.register([Reading(f"b-{i:03d}", ms_now(), {"v": 1}) for i in range(200)])
    api = await serve_api(table, auth=AUTH)
    status, _, names = await _call(api, "POST", "/grafana/metrics", token=ALL, body={})
    assert status == 200
    assert 0 < len(names) <= 80
    assert {n["value"] for n in names} < {f"b-{i:03d}/v" for i in range(200)}


async def test_concurrent_grafana_name_lists_share_one_registry_read(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    await table.register([Reading(f"site-a-{i:03d}", ms_now(), {"v": 1}) for i in range(50)])
    api = await serve_api(table, auth=AUTH)
    answers = await asyncio.gather(
        *(
            _call(api, "POST", "/grafana/metrics", token=token, body={})
            for token in (SITE_A, ALL) * 4
        )
    )
    assert [status for status, _, _ in answers] == [200] * 8
    calls = [int(headers["X-DynamoDB-Calls"]) for _, headers, _ in answers]
    assert sorted(calls)[:-1] == [0] * 7  # one request read the registry; seven waited
    assert 8 <= max(calls) <= 16
    assert all(len(names) == 50 for _, _, names in answers)
