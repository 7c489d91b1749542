"""Micro benchmarks of a 25-item BatchWriteItem request: building, serializing, signing.

Four ways, slowest first, all with no network (an aiobotocore ``before-send``
hook answers instead of the server):

* ``aiobotocore``: the full ``client.batch_write_item`` call (parameter
  validation, serialization, user agent, endpoint resolution, signing, response
  parsing) — what a default client costs per request;
* ``botocore-serialize``: botocore's validating JSON serializer alone;
* ``botocore-sigv4``: botocore's ``SigV4Auth`` on a ready body;
* ``lean``: the hot path's own body building and cached SigV4 signer
  (:mod:`ingest.aws.sigv4`), when the package has it.

Run with ``--benchmark-enable`` to measure (see test_micro_ingest.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingest.storage.layout import Reading, TableLayout

TABLE = "bench-readings"
NOW_MS = int(time.time() * 1000)
ITEMS = [
    TableLayout().to_item(
        Reading(f"env-{i:05d}", NOW_MS + i, {"temperature": 21.5 + i / 8, "humidity": 45.25}, {})
    )
    for i in range(25)
]
REQUEST_ITEMS = {TABLE: [{"PutRequest": {"Item": it}} for it in ITEMS]}
BODY = orjson.dumps({"RequestItems": REQUEST_ITEMS})


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.mark.benchmark(group="request")
def test_aiobotocore_batch_write_item(
    benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop
) -> None:
    from aiobotocore.awsrequest import AioAWSResponse
    from aiobotocore.session import get_session

    sent: list[bytes] = []

    def answer(request: Any, **_: Any) -> AioAWSResponse:
        sent.append(bytes(request.body))
        headers = {"content-type": "application/x-amz-json-1.0"}
        return AioAWSResponse(request.url, 200, headers, _Raw(b'{"UnprocessedItems":{}}'))

    cm = get_session().create_client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    client = loop.run_until_complete(cm.__aenter__())
    try:
        client.meta.events.register("before-send.dynamodb.BatchWriteItem", answer)
        resp = benchmark(
            lambda: loop.run_until_complete(client.batch_write_item(RequestItems=REQUEST_ITEMS))
        )
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
    assert resp["UnprocessedItems"] == {}
    assert orjson.loads(sent[-1]) == {"RequestItems": REQUEST_ITEMS}


@pytest.mark.benchmark(group="request")
def test_botocore_serialize_only(benchmark: BenchmarkFixture) -> None:
    import botocore.session
    from botocore.serialize import create_serializer

    model = botocore.session.get_session().get_service_model("dynamodb")
    operation = model.operation_model("BatchWriteItem")
    serializer = create_serializer("json", include_validation=True)
    request = benchmark(serializer.serialize_to_request, {"RequestItems": REQUEST_ITEMS}, operation)
    assert orjson.loads(request["body"]) == {"RequestItems": REQUEST_ITEMS}


@pytest.mark.benchmark(group="request")
def test_botocore_sigv4_sign_only(benchmark: BenchmarkFixture) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = SigV4Auth(Credentials("bench", "bench"), "dynamodb", "us-east-1")

    def run() -> AWSRequest:
        req = AWSRequest(
            method="POST",
            url="https://dynamodb.us-east-1.amazonaws.com/",
            data=BODY,
            headers={
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": "DynamoDB_20120810.BatchWriteItem",
            },
        )
        signer.add_auth(req)
        return req

    req = benchmark(run)
    assert req.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=bench/")


@pytest.mark.benchmark(group="request")
def test_lean_body_and_sigv4(benchmark: BenchmarkFixture) -> None:
    sigv4 = pytest.importorskip("ingest.aws.sigv4", reason="the lean writer is not in this commit")
    signer = sigv4.SigV4Signer(host="dynamodb.us-east-1.amazonaws.com", region="us-east-1")
    creds = sigv4.Credentials("bench", "bench", None)
    prefix = b'{"RequestItems":{' + orjson.dumps(TABLE) + b":["

    def run() -> tuple[bytes, dict[str, str]]:
        puts = b",".join([b'{"PutRequest":{"Item":' + orjson.dumps(it) + b"}}" for it in ITEMS])
        body = prefix + puts + b"]}}"
        return body, signer.headers(creds, "DynamoDB_20120810.BatchWriteItem", body)

    body, headers = benchmark(run)
    assert orjson.loads(body) == {"RequestItems": REQUEST_ITEMS}
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=bench/")
