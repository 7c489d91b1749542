"""Cursors as an attack surface: forged, tampered or foreign cursors are a 400 naming
``cursor`` and cost no DynamoDB call; legal paging is unchanged (test_readings.py).

The app runs on a loopback port against moto, its DynamoDB client recording every
response, so the tests count the calls DynamoDB saw, not only what the app reports.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from ingest.layout import REGISTRY_PARTITIONS, Reading
from queries.cursor import encode_cursor, fingerprint

from .harness import Api, RecordingClient, TestTable, ms_now


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """One DynamoDB-API server is enough: the cursor checks are under test."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _calls(api: Api) -> int:
    client = api.reader.client
    assert isinstance(client, RecordingClient)
    return len(client.responses)


async def _refused(api: Api, path: str, **params: Any) -> dict[str, Any]:
    """GET ``path``: it must be a 400 naming ``cursor`` that cost no DynamoDB call."""
    before = _calls(api)
    status, headers, body = await api.get(path, **params)
    assert status == 400, (params.get("cursor"), status, body)
    assert body["error"]["code"] == "bad_parameter"
    assert body["error"]["parameter"] == "cursor"
    assert headers["X-DynamoDB-Calls"] == "0"
    assert _calls(api) == before
    return body


# -- the sensor list's cursor ---------------------------------------------------


def _sensors_cursor(position: dict[str, Any]) -> str:
    return encode_cursor("sensors", fingerprint("sensors"), position)


def _raw(doc: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


async def test_every_malformed_sensor_list_cursor_is_a_400_naming_cursor(
    make_table: Callable[..., Awaitable[TestTable]],
    serve_api: Callable[..., Awaitable[Api]],
) -> None:
    table = await make_table()
    readings = [Reading(f"sl-{i:02d}", ms_now() - 1000, {"v": i}) for i in range(12)]
    await table.register(readings)
    api = await serve_api(table, client_cls=RecordingClient)
    # A legal first page, so the server is known to answer this endpoint.
    status, _, page = await api.get("/v1/sensors", limit=5)
    assert status == 200
    assert page["next_cursor"] is not None

    bad_positions: list[dict[str, Any]] = [
        {"p": REGISTRY_PARTITIONS, "s": "1"},  # one past the last partition: was a 500
        {"p": REGISTRY_PARTITIONS + 5, "s": "1"},
        {"p": -1, "s": "1"},
        {"p": True, "s": "1"},
        {"p": 1.5, "s": "1"},
        {"p": "1", "s": "1"},
        {"p": 0, "s": "-1"},
        {"p": 0, "s": "x"},
        {"p": 0, "s": "1e5"},
        {"p": 0, "s": str(2**112)},  # registry sort keys are 112-bit hashes
        {"p": 0, "s": "9" * 400},
        {"p": 0, "s": 5},
        {"p": 0},
        {"s": "1"},
    ]
    for position in bad_positions:
        await _refused(api, "/v1/sensors", cursor=_sensors_cursor(position))
    for raw in ("", "x", "%%%", "a" * 5000, _raw([1, 2]), _raw({"v": 1}), "é"):
        if raw:
            await _refused(api, "/v1/sensors", cursor=raw)
