"""The Grafana JSON data source endpoint: the protocol's response shapes, values from the table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from ingest.storage.layout import Reading
from tests.queries.harness import HOUR_MS, Api, TestTable, ms_now


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


async def test_grafana_protocol_shapes(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    base = ms_now() - 2 * HOUR_MS
    readings = [
        Reading(s, base + 30_000 * i, {"temperature": 20 + i % 10 + k, "humidity": 50 - i % 7})
        for k, s in enumerate(("gf-1", "gf-2"))
        for i in range(200)
    ]
    await table.put(readings)
    await table.register(readings)
    api = await serve_api(table)

    # "Test connection"
    async with api.session.get(api.url + "/grafana/") as resp:
        assert resp.status == 200

    status, _, metrics = await api.post("/grafana/metrics", {})
    assert status == 200
    assert [m["value"] for m in metrics] == [
        "gf-1/humidity",
        "gf-1/temperature",
        "gf-2/humidity",
        "gf-2/temperature",
    ]
    assert all(m["label"] == m["value"] for m in metrics)
    agg_payload = metrics[0]["payloads"][0]
    assert agg_payload["name"] == "agg"
    assert [o["value"] for o in agg_payload["options"]][:3] == ["avg", "min", "max"]

    status, _, names = await api.post("/grafana/search", {"target": "temp"})
    assert names == ["gf-1/temperature", "gf-2/temperature"]

    status, _, options = await api.post(
        "/grafana/metric-payload-options", {"metric": "gf-1/temperature", "name": "agg"}
    )
    assert status == 200
    assert {"label": "max", "value": "max"} in options

    status, _, variables = await api.post("/grafana/variable", {"payload": {"target": "sensors"}})
    assert variables == [
        {"__text": "gf-1", "__value": "gf-1"},
        {"__text": "gf-2", "__value": "gf-2"},
    ]

    start, end = base, base + 200 * 30_000
    query = {
        "range": {"from": _iso(start), "to": _iso(end), "raw": {"from": "now-2h", "to": "now"}},
        "interval": "1m",
        "intervalMs": 60_000,
        "maxDataPoints": 60,
        "targets": [
            {"target": "gf-1/temperature", "refId": "A"},
            {"target": "gf-2/temperature", "refId": "B", "payload": {"agg": "max"}},
            {"target": "gf-2/humidity", "refId": "C", "hide": True},
        ],
    }
    status, _, series = await api.post("/grafana/query", query)
    assert status == 200, series
    assert [s["target"] for s in series] == ["gf-1/temperature", "gf-2/temperature:max"]
    for s in series:
        points = s["datapoints"]
        assert 0 < len(points) <= 60
        assert all(len(p) == 2 and isinstance(p[1], int) for p in points)
        stamps = [p[1] for p in points]
        assert stamps == sorted(stamps)
        step = stamps[1] - stamps[0]
        assert all(t % step == 0 for t in stamps)  # aligned windows

    # The values are the API's series values.
    step_ms = series[0]["datapoints"][1][1] - series[0]["datapoints"][0][1]
    status, _, body = await api.get(
        "/v1/series",
        sensors="gf-1,gf-2",
        start=start,
        end=end,
        step=f"{step_ms}ms",
        agg="avg,max",
        fields="temperature",
    )
    assert [p[0] for p in series[0]["datapoints"]] == body["sensors"][0]["metrics"]["temperature"][
        "avg"
    ]
    assert [p[0] for p in series[1]["datapoints"]] == body["sensors"][1]["metrics"]["temperature"][
        "max"
    ]

    status, _, err = await api.post("/grafana/query", {**query, "targets": [{"target": "nope"}]})
    assert status == 400
    assert err["error"]["parameter"] == "targets[].target"
    assert "{sensor_id}/{metric}" in err["error"]["allowed"]
