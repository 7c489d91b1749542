"""The sensor list (registry Queries, never a Scan), one sensor, its latest reading."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ingest.storage.layout import Reading
from tests.queries.harness import Api, RecordingClient, TestTable, ms_now


async def test_sensor_list_pages_through_the_registry_exactly_once(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    now = ms_now()
    readings = [
        Reading(f"reg-{i:03d}", now - 1000 * j, {"t": float(i), "j": j})
        for i in range(45)
        for j in range(3)
    ]
    await table.put(readings)
    await table.register(readings)
    api = await serve_api(table, client_cls=RecordingClient)

    seen: list[str] = []
    cursor = None
    while True:
        status, headers, body = await api.get("/v1/sensors", limit=7, cursor=cursor)
        assert status == 200, body
        assert float(headers["X-Read-Units"]) > 0
        seen += [s["sensor_id"] for s in body["sensors"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["sensors"]) == 7
    assert sorted(seen) == [f"reg-{i:03d}" for i in range(45)]
    assert len(seen) == len(set(seen))

    status, _, body = await api.get("/v1/sensors/reg-007")
    assert status == 200
    assert body["sensor_id"] == "reg-007"
    assert body["last_seen"] == now
    assert body["readings"] == 3
    assert body["latest"] == {"t": 7, "j": 0}
    assert body["metrics"] == ["j", "t"]
    assert body["layout"]["shards"] == table.layout.shards

    status, _, body = await api.get("/v1/sensors/reg-007/latest", fields="t")
    assert status == 200
    assert body == {"sensor_id": "reg-007", "last_seen": now, "reading": {"ts": now, "t": 7}}

    client = api.reader.client
    assert isinstance(client, RecordingClient)
    operations = {op for op, _ in client.responses}
    assert operations <= {"query", "get_item"}  # key lookups only: never a Scan


async def test_latest_finds_readings_newer_than_the_registry(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    now = ms_now()
    old = [Reading("lag-1", now - 60_000, {"v": 1})]
    await table.put(old)
    await table.register(old)
    # Written after the registry's last flush (it is coalesced, so it lags).
    await table.put([Reading("lag-1", now - 5_000, {"v": 2})])
    api = await serve_api(table)
    status, _, body = await api.get("/v1/sensors/lag-1/latest")
    assert status == 200
    assert body["last_seen"] == now - 60_000
    assert body["reading"] == {"ts": now - 5_000, "v": 2}
