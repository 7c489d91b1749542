"""The OpenAPI document: valid OpenAPI 3.1, served at /openapi.json, in step with the routes."""

from __future__ import annotations

import re
from typing import Any
from unittest.mock import MagicMock

import aiohttp
from starlette.routing import Mount, Route

from ingest.storage.layout import TableLayout
from queries.api.app import create_app
from queries.api.openapi import openapi_document
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings
from queries.read.reader import TableReader


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document(ServeSettings(table="t"))
    assert doc["openapi"].startswith("3.1")
    # Structure, checked here in any case: every operation answers, every $ref resolves.
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    for ops in doc["paths"].values():
        for op in ops.values():
            assert op["responses"]
            assert op["summary"]
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    try:
        from openapi_spec_validator import validate
    except ImportError:  # a dev dependency; the structural checks above still ran
        return
    validate(doc)  # the full OpenAPI 3.1 schema


def test_every_route_is_described_and_every_described_path_exists() -> None:
    settings = ServeSettings(table="t")
    app = create_app(settings, reader=TableReader(MagicMock(), TableLayout()))
    doc = openapi_document(settings)
    served: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, Mount):
            continue  # static assets
        assert isinstance(route, Route)
        served.setdefault(route.path, set()).update(
            m.lower() for m in (route.methods or ()) if m != "HEAD"
        )
    described = {path: set(ops) for path, ops in doc["paths"].items()}
    assert served == described
    for path, ops in doc["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for op in ops.values():
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])


def test_contract_paths_are_there() -> None:
    paths = openapi_document(ServeSettings(table="t"))["paths"]
    for path in (
        "/v1/sensors",
        "/v1/sensors/{sensor_id}",
        "/v1/sensors/{sensor_id}/readings",
        "/v1/sensors/{sensor_id}/series",
        "/v1/sensors/{sensor_id}/latest",
        "/openapi.json",
        "/",
    ):
        assert "get" in paths[path]
    readings = {p["name"] for p in paths["/v1/sensors/{sensor_id}/readings"]["get"]["parameters"]}
    assert readings == {"sensor_id", "start", "end", "fields", "order", "limit", "cursor"}
    series = {p["name"] for p in paths["/v1/sensors/{sensor_id}/series"]["get"]["parameters"]}
    assert {"start", "end", "step", "agg", "max_points"} <= series


async def test_the_document_is_served_at_openapi_json() -> None:
    settings = ServeSettings(table="t", max_points=2_000)
    app = create_app(settings, reader=TableReader(MagicMock(), TableLayout()))
    async with (
        ApiServer(app) as server,
        aiohttp.ClientSession() as session,
        session.get(server.url + "/openapi.json") as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        served = await resp.json()
    assert served == openapi_document(settings)
    series = served["paths"]["/v1/sensors/{sensor_id}/series"]["get"]["parameters"]
    assert next(p for p in series if p["name"] == "max_points")["schema"]["maximum"] == 2_000


def test_the_sensor_id_pattern_is_the_tables_own() -> None:
    from ingest.storage.layout import SENSOR_ID_PATTERN

    doc = openapi_document(ServeSettings(table="t"))
    params = doc["paths"]["/v1/sensors/{sensor_id}/readings"]["get"]["parameters"]
    (sensor,) = [p for p in params if p["name"] == "sensor_id"]
    assert sensor["schema"]["pattern"] == f"^{SENSOR_ID_PATTERN.pattern}$"
