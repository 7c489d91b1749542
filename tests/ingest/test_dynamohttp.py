"""Every way a DynamoDB answer can go wrong is a retriable error with its cause, on both clients.

A crafted DynamoDB-API server on loopback (a few lines of asyncio: what real servers
never do — a 200 that is not JSON, ``[]``, a throttling page in HTML, a truncated
body) answers the lean client (:mod:`ingest.storage.dynamohttp`) and the botocore one
(:mod:`ingest.storage.dynamo`); both must raise the same :class:`DynamoRetriable` cause, so the
writer retries instead of dead-lettering or letting the error stop the service. A fake
container-credentials endpoint (tests/ingest/credentials.py) makes botocore's
credential refresh fail for real.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoRejected, DynamoRetriable
from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.pipeline.acks import AckTracker
from ingest.pipeline.deadletters import DeadLetterSpool
from ingest.pipeline.writer import Writer
from ingest.storage.dynamo import DynamoClient, TableClient
from ingest.storage.dynamohttp import LeanDynamoClient
from ingest.storage.layout import Item, Reading, TableLayout
from ingest.storage.spool import iter_dead_letters
from tests.ingest.credentials import CredentialEndpoint, container_credentials

TABLE = "crafted"
NOW_MS = 1_763_780_000_000
LAYOUT = TableLayout(shards=4)
OK = b'{"UnprocessedItems":{}}'
JSON = b"application/x-amz-json-1.0"

Action = bytes | Callable[[asyncio.StreamWriter], Any]
"""A raw reply to write, or something to do to the connection instead."""


def reply(status: int, body: bytes, content_type: bytes = JSON, reason: bytes = b"X") -> bytes:
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        reason,
        content_type,
        len(body),
        body,
    )


def close(writer: asyncio.StreamWriter) -> None:
    writer.close()


def then_close(raw: bytes) -> Callable[[asyncio.StreamWriter], None]:
    """Write ``raw`` (a response cut short), then close the connection."""

    def act(writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        writer.close()

    return act


def reset(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


class CraftedDynamo:
    """Answers each request with the next scripted action, then with ``OK`` forever."""

    def __init__(self) -> None:
        self.script: list[Action] = []
        self.targets: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await asyncio.gather(*self._handlers)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(b": ", 1) for line in head[:-4].split(b"\r\n")[1:] if b": " in line
                )
                lower = {k.lower(): v for k, v in headers.items()}
                body = await reader.readexactly(int(lower[b"content-length"]))
                self.targets.append(lower[b"x-amz-target"].decode().rpartition(".")[2])
                self.bodies.append(orjson.loads(body))
                action = self.script.pop(0) if self.script else reply(200, OK)
                if isinstance(action, bytes):
                    writer.write(action)
                    await writer.drain()
                else:
                    action(writer)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def crafted() -> AsyncIterator[CraftedDynamo]:
    server = CraftedDynamo()
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


def items(n: int = 3) -> list[Item]:
    return [LAYOUT.to_item(Reading(f"dev-{i}", NOW_MS + i, {"t": i})) for i in range(n)]


@pytest_asyncio.fixture(params=["lean", "botocore"])
async def client(
    request: pytest.FixtureRequest, crafted: CraftedDynamo
) -> AsyncIterator[TableClient]:
    aws = AwsSettings(
        endpoint_url=crafted.url, aws_access_key_id="test", aws_secret_access_key="test"
    )
    c: TableClient
    c = (
        LeanDynamoClient(table=TABLE, aws=aws, timeout_s=2)
        if request.param == "lean"
        else DynamoClient(table=TABLE, aws=aws)
    )
    async with c:
        yield c


CASES = [
    pytest.param(
        reply(200, b"<html>proxy error</html>", b"text/html"), "bad_response", id="200-html"
    ),
    pytest.param(reply(200, b"not json at all"), "bad_response", id="200-not-json"),
    pytest.param(reply(200, b"[]"), "bad_response", id="200-list"),
    pytest.param(reply(200, b'"ok"'), "bad_response", id="200-string"),
    pytest.param(
        reply(200, b'{"UnprocessedItems": []}'), "bad_response", id="200-unprocessed-list"
    ),
    pytest.param(
        reply(200, b'{"UnprocessedItems": {"crafted": [{"PutRequest": {}}]}}'),
        "bad_response",
        id="200-unprocessed-without-item",
    ),
    pytest.param(
        reply(429, b"Too Many Requests", b"text/plain", b"Too Many Requests"),
        "throttled",
        id="429-text",
    ),
    pytest.param(reply(429, b"", b"text/plain"), "throttled", id="429-empty"),
    pytest.param(
        reply(400, b"<ThrottlingException>Rate exceeded</ThrottlingException>", b"text/xml"),
        "throttled",
        id="400-throttling-xml",
    ),
    pytest.param(
        reply(503, b"<html>Service Unavailable</html>", b"text/html"), "server_error", id="503-html"
    ),
    pytest.param(
        reply(400, b"<html>Bad Request</html>", b"text/html"), "bad_response", id="400-html"
    ),
    pytest.param(reply(400, b"[]"), "bad_response", id="400-list"),
    pytest.param(reply(400, b'{"message": "no type"}'), "bad_response", id="400-json-without-type"),
    pytest.param(
        then_close(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
            b'Content-Length: 50\r\n\r\n{"Unpro'
        ),
        "connection",
        id="truncated-body",
    ),
    pytest.param(then_close(b"HTTP/1.1 200 OK\r\nContent-Le"), "connection", id="cut-head"),
    pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "connection", id="not-http"),
    pytest.param(close, "connection", id="closed-without-answer"),
    pytest.param(reset, "connection", id="reset"),
]


@pytest.mark.parametrize(("action", "cause"), CASES)
async def test_a_bad_answer_is_retriable_with_its_cause(
    client: TableClient, crafted: CraftedDynamo, action: Action, cause: str
) -> None:
    # After a fresh connection, so the lean client's stale-connection retry is not involved.
    crafted.script = [action]
    with pytest.raises(DynamoRetriable) as info:
        await client.batch_write(items())
    assert info.value.cause == cause
    # And the next request gets its own, good answer.
    assert await client.batch_write(items()) == []
    assert crafted.targets == ["BatchWriteItem", "BatchWriteItem"]


async def test_dynamodb_validation_errors_are_still_rejections(
    client: TableClient, crafted: CraftedDynamo
) -> None:
    crafted.script = [
        reply(
            400,
            b'{"__type": "com.amazon.coral.validate#ValidationException", '
            b'"message": "Item size has exceeded the maximum allowed size"}',
        )
    ]
    with pytest.raises(DynamoRejected, match="ValidationException: Item size has exceeded"):
        await client.batch_write(items())


async def test_json_throttling_and_429_json_are_throttled(
    client: TableClient, crafted: CraftedDynamo
) -> None:
    crafted.script = [
        reply(
            400,
            b'{"__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",'
            b' "message": "slow down"}',
        ),
        reply(429, b'{"__type": "com.amazon.coral.service#UnknownOperationException"}'),
    ]
    causes = []
    for _ in range(2):
        with pytest.raises(DynamoRetriable) as info:
            await client.batch_write(items())
        causes.append(info.value.cause)
    assert causes == ["throttled", "throttled"]


async def test_a_request_timeout_is_a_connection_error(crafted: CraftedDynamo) -> None:
    async def hang(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    crafted.script = [lambda w: asyncio.ensure_future(hang(w))]
    async with LeanDynamoClient(
        table=TABLE,
        timeout_s=0.3,
        aws=AwsSettings(
            region="us-east-1",
            endpoint_url=crafted.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ),
    ) as lean:
        with pytest.raises(DynamoRetriable) as info:
            await lean.batch_write(items())
    assert info.value.cause == "connection"


# -- credentials from a container-credentials endpoint that fails --------------------------


@pytest_asyncio.fixture
async def credential_endpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[CredentialEndpoint]:
    async with container_credentials(monkeypatch, tmp_path) as endpoint:
        yield endpoint


async def test_a_failing_credential_refresh_is_retriable(
    crafted: CraftedDynamo, credential_endpoint: CredentialEndpoint
) -> None:
    async with LeanDynamoClient(
        table=TABLE, aws=AwsSettings(region="us-east-1", endpoint_url=crafted.url)
    ) as lean:
        assert await lean.batch_write(items()) == []
        credential_endpoint.failing = True
        with pytest.raises(DynamoRetriable) as info:
            await lean.batch_write(items())
        assert info.value.cause == "credentials"
        assert "container-role" in str(info.value) or "credential" in str(info.value).lower()
        credential_endpoint.failing = False
        assert await lean.batch_write(items()) == []
    assert len(crafted.bodies) == 2  # nothing was sent without credentials


# -- the writer, over the lean client, retries each and loses nothing -----------------------


async def test_writer_retries_every_bad_answer_and_acknowledges_everything(
    crafted: CraftedDynamo, tmp_path: Path
) -> None:
    sent: list[int] = []
    acks = AckTracker(sent.extend)
    metrics = Metrics()
    spool = DeadLetterSpool(tmp_path / "deadletters", acks=acks, metrics=metrics)
    spool_task = asyncio.create_task(spool.run(), name="deadletters")
    crafted.script = [
        reply(200, b"not json"),
        reply(200, b"[]"),
        reply(429, b"Too Many Requests", b"text/plain"),
        reply(503, b"<html>down</html>", b"text/html"),
        then_close(b"HTTP/1.1 200 OK\r\nContent-Le"),  # cut short: not the stale-retry case
    ]
    try:
        async with LeanDynamoClient(
            table=TABLE,
            aws=AwsSettings(
                region="us-east-1",
                endpoint_url=crafted.url,
                aws_access_key_id="test",
                aws_secret_access_key="test",
            ),
        ) as lean:
            writer = Writer(
                sink=lean,
                acks=acks,
                deadletters=spool,
                metrics=metrics,
                backoff=Backoff(base_ms=1, cap_ms=5, rng=random.Random(1)),
                deadline_s=30,
            )
            batch = []
            for m in range(5):
                p = acks.add("sensors/gw/telemetry", m + 1, 1, acks.epoch, NOW_MS, 1)
                batch.append((items(5)[m], [p]))
            await writer.write(batch)
            await spool.drain()
    finally:
        spool_task.cancel()
        await asyncio.wait([spool_task])

    assert sent == [1, 2, 3, 4, 5]  # every message acknowledged …
    written = crafted.bodies[-1]["RequestItems"][TABLE]
    assert len(written) == 5 and len(crafted.bodies) == 6  # … after 5 failed calls, one good
    assert list(iter_dead_letters(spool.directory)) == []  # … and nothing dead-lettered
    retries = Counter(
        {
            cause: metrics.registry.get_sample_value(
                "iot_ingest_write_retries_total", {"cause": cause}
            )
            for cause in ("bad_response", "throttled", "server_error", "connection")
        }
    )
    assert retries == Counter(bad_response=2, throttled=1, server_error=1, connection=1)
    assert writer.healthy


async def test_writer_survives_any_exception_from_its_sink(tmp_path: Path) -> None:
    """Last line of defence: an error of a type nobody foresaw is retried, never raised."""
    sent: list[int] = []
    acks = AckTracker(sent.extend)
    metrics = Metrics()
    spool = DeadLetterSpool(tmp_path / "deadletters", acks=acks, metrics=metrics)
    calls = 0

    class Flaky:
        async def batch_write(self, items: list[Item]) -> list[Item]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyError("UnprocessedItems")
            if calls == 2:
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")
            return []

    writer = Writer(
        sink=Flaky(),
        acks=acks,
        deadletters=spool,
        metrics=metrics,
        backoff=Backoff(base_ms=1, cap_ms=2),
        deadline_s=30,
    )
    p = acks.add("sensors/gw/telemetry", 1, 1, acks.epoch, NOW_MS, 1)
    await writer.write([(items(1)[0], [p])])

    assert sent == [1]
    assert calls == 3
    assert (
        metrics.registry.get_sample_value("iot_ingest_write_retries_total", {"cause": "unexpected"})
        == 2
    )


def test_an_xml_error_document_keeps_its_code_and_whole_message() -> None:
    """IAM layers (and moto's IAM enforcement) answer with XML, not DynamoDB's JSON."""
    from ingest.storage.dynamo import error_answer

    message = "User: arn:aws:iam::123456789012:user/x is not authorized to perform: " + (
        "dynamodb:PutItem on resource: arn:aws:dynamodb:us-east-1:123456789012:table/" + "t" * 120
    )
    raw = (
        '<?xml version="1.0" encoding="utf-8"?>\n<ErrorResponse><Errors><Error>'
        f"<Code>AccessDenied</Code><Message>{message}</Message></Error></Errors></ErrorResponse>"
    ).encode()
    err = error_answer(403, raw)
    assert message in str(err) and "AccessDenied" in str(err)
    assert not err.retriable
