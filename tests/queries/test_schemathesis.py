"""schemathesis over the query API's own OpenAPI document, against the app on real HTTP.

The app (auth on, one all-sensors key, a rate limit far above the test's rate)
serves a moto-backed table on a loopback port from a background thread; every
operation of ``/openapi.json`` gets generated requests, valid ones (positive) and
ones violating the schema (negative). Every response must:

* never be a 5xx;
* for a 4xx, be a JSON ``{"error": {"code", "message"}}`` with a non-empty message;
* conform to the document (status code declared, content type, body schema).

Bounded: ``MAX_EXAMPLES`` per operation and mode (< 60 s in all on 2 cores). Run
more with ``SCHEMATHESIS_MAX_EXAMPLES=200 pytest tests/queries/test_schemathesis.py --timeout=1800``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ingest.aws.settings import AwsSettings
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.table import create_table
from queries.api.apikeys import ApiKey, AuthSettings, generate_token, hash_token
from queries.api.app import create_app
from queries.api.openapi import openapi_document
from queries.api.ratelimit import RateLimitSettings
from queries.api.server import ApiServer
from queries.api.settings import ServeSettings
from queries.read.reader import TableReader
from tests.queries.harness import ms_now

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12"))
TOKEN = generate_token()
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    """The app on a loopback port, served from its own thread and event loop."""

    url: str
    settings: ServeSettings


def _settings(table: str, endpoint: str) -> ServeSettings:
    return ServeSettings(
        table=table,
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        # A small range keeps the shard fan-out of generated ranges cheap on moto.
        max_range_ms=2 * 86_400_000,
        max_points=200,
        default_points=100,
        max_page_limit=200,
        default_page_limit=100,
        max_sensors=5,
        auth=AuthSettings(keys=(ApiKey(name="fuzz", hash=hash_token(TOKEN), sensors=("*",)),)),
        rate_limit=RateLimitSettings(rate_per_s=10_000, burst=10_000),
    )


async def _serve(
    settings: ServeSettings, ready: threading.Event, stop: asyncio.Event, out: list[str]
) -> None:
    async with DynamoClient(
        table=settings.table,
        aws=AwsSettings(
            region="us-east-1",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ),
    ) as client:
        layout = TableLayout(bucket_ms=86_400_000, shards=2, retention_days=30)
        await create_table(client, layout)
        now = ms_now()
        readings = [
            Reading(s, now - 60_000 * i, {"temperature": 20.5 + i, "count": i})
            for s in ("fz-1", "fz-2")
            for i in range(20)
        ]
        items = [layout.to_item(r) for r in readings]
        for i in range(0, len(items), 25):
            pending = items[i : i + 25]
            while pending:
                pending = await client.batch_write(pending)
        registry = SensorRegistry(client, Metrics())
        registry.observe(readings)
        await registry.flush()
        reader = await TableReader.load(client, concurrency=settings.query_concurrency)
        async with ApiServer(create_app(settings, reader=reader)) as server:
            out.append(server.url)
            ready.set()
            await stop.wait()
        await client.call("delete_table", TableName=settings.table)


@pytest.fixture(scope="module")
def served(moto_server: Any) -> Iterator[Served]:
    """The app on a loopback port (a thread with its own loop; the tests here are sync)."""
    settings = _settings(f"t-schemathesis-{uuid.uuid4().hex[:8]}", moto_server.endpoint_url)
    ready = threading.Event()
    out: list[str] = []
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = asyncio.Event()
            await _serve(settings, ready, holder["stop"], out)

        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="schemathesis-api", daemon=True)
    thread.start()
    assert ready.wait(60), "the API did not start within 60 s"
    if failure:
        raise failure[0]
    try:
        yield Served(out[0], settings)
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
    if failure:
        raise failure[0]


def _check_error_body(response: Any, where: str) -> None:
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type", [""])
        if isinstance(content_type, list):
            content_type = content_type[0]
        assert content_type.startswith("application/json"), where
        body = response.json()
        assert isinstance(body.get("error"), dict), where
        assert isinstance(body["error"].get("code"), str), where
        message = body["error"].get("message")
        assert isinstance(message, str), where
        assert message.strip(), where


def _fuzz(
    operation: Any,
    mode: schemathesis.GenerationMode,
    url: str,
    session: requests.Session,
    headers: dict[str, str],
    statuses: dict[int, int],
) -> None:
    where = f"{operation.method.upper()} {operation.path} ({mode.value})"

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, session=session, headers=headers, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
        _check_error_body(response, where)
        if mode is schemathesis.GenerationMode.POSITIVE:
            case.validate_response(response, checks=CHECKS, headers=headers)

    started = time.perf_counter()
    try:
        check()
    except Unsatisfiable:
        # Nothing to violate (no parameters, no body): no negative case exists.
        assert mode is schemathesis.GenerationMode.NEGATIVE, where
        print(f"{where}: no negative case")
        return
    print(f"{where}: {time.perf_counter() - started:.1f} s")


def _unauthenticated(operation: Any, url: str, session: requests.Session) -> None:
    public = operation.definition.raw.get("security") == []

    @settings(max_examples=3, deadline=None, database=None, derandomize=True)
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, session=session, timeout=30)
        if public:
            assert response.status_code == 200
        else:
            assert response.status_code == 401, (case.path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"

    check()


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_no_5xx_and_every_4xx_explains_itself(
    served: Served, mode: schemathesis.GenerationMode
) -> None:
    doc = openapi_document(served.settings)
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {TOKEN}", "X-API-Key": TOKEN}
    statuses: dict[int, int] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:
        _fuzz(operation, mode, served.url, session, headers, statuses)
    print(f"schemathesis {mode.value}: responses by status {dict(sorted(statuses.items()))}")
    assert statuses.get(200, 0) > 0
    assert not [s for s in statuses if s >= 500]


def test_without_a_key_every_api_operation_is_401(served: Served) -> None:
    doc = openapi_document(served.settings)
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()
    for result in schema.get_all_operations():
        _unauthenticated(result.ok(), served.url, session)
