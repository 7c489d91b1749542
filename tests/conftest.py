"""Shared fixtures: real servers (Mosquitto, moto, dynalite), a fault proxy, unique names.

Servers are the ones in ``bench.servers``, on free loopback ports. A missing program
fails the test with a message saying to run ``make test-deps``: never a silent skip.

* ``mosquitto``: a fresh broker per test with the project's config (``.url``,
  ``stop()``/``kill()``/``start()`` for restart tests).
* ``moto_server``, ``dynalite_server``: one per session (``.endpoint_url``).
* ``dynamodb_endpoint``: parametrized over ``moto`` and ``dynalite``; the endpoint URL.
* ``unique_name``: a table/topic name unique to the test, valid for DynamoDB.
* ``fault_proxy``: ``await fault_proxy(upstream_url, seed=1, throttle=0.1, ...)``.
* ``dynamodb_client``: ``async with dynamodb_client(url, retries=False) as client``.
* ``mqtt_qos1_roundtrip``: publish with QoS 1 and receive it back through a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from bench.faultproxy import FaultProxy
from bench.servers import DynaliteServer, MosquittoServer, MotoServer
from ingest.trial.servers import ServerNotInstalledError, ServerProcess

_S = TypeVar("_S", bound=ServerProcess)

REGION = "us-east-1"


async def _start(server: _S) -> _S:
    missing: ServerNotInstalledError | None = None
    try:
        await server.start()
    except ServerNotInstalledError as exc:
        missing = exc
    except BaseException:
        await server.aclose()
        raise
    if missing is not None:
        await server.aclose()
        pytest.fail(
            f"{missing}\n(the tests start real servers: run `make test-deps`)", pytrace=False
        )
    return server


@pytest_asyncio.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[MosquittoServer]:
    """A fresh Mosquitto with deploy/mosquitto.conf on a free port, persistence in tmp_path."""
    server = await _start(MosquittoServer(data_dir=tmp_path / "mosquitto"))
    try:
        yield server
    finally:
        await server.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def moto_server() -> AsyncIterator[MotoServer]:
    """moto in server mode, shared by the session."""
    server = await _start(MotoServer())
    try:
        yield server
    finally:
        await server.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dynalite_server() -> AsyncIterator[DynaliteServer]:
    """dynalite (in memory), shared by the session."""
    server = await _start(DynaliteServer())
    try:
        yield server
    finally:
        await server.aclose()


@pytest.fixture(
    params=[
        pytest.param("moto", id="moto"),
        pytest.param("dynalite", id="dynalite", marks=pytest.mark.dynalite),
    ]
)
def dynamodb_endpoint(request: pytest.FixtureRequest) -> str:
    """Endpoint URL of a DynamoDB-API server; the test runs once per implementation."""
    server: MotoServer | DynaliteServer = request.getfixturevalue(f"{request.param}_server")
    return server.endpoint_url


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name unique to this test: 3-255 chars of [a-zA-Z0-9_.-] (DynamoDB table rules)."""
    base = re.sub(r"[^a-zA-Z0-9_.-]+", "-", request.node.name).strip("-")[:60]
    return f"t-{base}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture
async def fault_proxy() -> AsyncIterator[Callable[..., Awaitable[FaultProxy]]]:
    """Factory of started fault proxies, all closed after the test.

    ``proxy = await fault_proxy(upstream_url, seed=1, unprocessed=0.3)``; the keyword
    arguments are :class:`bench.faultproxy.FaultProxy`'s.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def make(upstream: str, **kwargs: Any) -> FaultProxy:
            return await stack.enter_async_context(FaultProxy(upstream, **kwargs))

        yield make


@pytest.fixture
def dynamodb_client() -> Callable[..., AbstractAsyncContextManager[Any]]:
    """Factory of aiobotocore DynamoDB clients with dummy credentials.

    ``async with dynamodb_client(url) as client``; ``retries=False`` makes every
    call a single attempt (botocore otherwise retries throttles and 5xx itself).
    """

    def make(endpoint_url: str, *, retries: bool = True, **config: Any) -> Any:
        if not retries:
            config["retries"] = {"total_max_attempts": 1}
        return get_session().create_client(
            "dynamodb",
            region_name=REGION,
            endpoint_url=endpoint_url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=AioConfig(**config),
        )

    return make


def _qos1_roundtrip(host: str, port: int, topic: str, payloads: list[bytes]) -> list[bytes]:
    """Subscribe, publish ``payloads`` with QoS 1, return what arrived (blocking: paho)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: queue.Queue[bytes] = queue.Queue()
    subscribed = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex}")
    sub.on_message = lambda _c, _u, msg: got.put(bytes(msg.payload))
    sub.on_subscribe = lambda *_: subscribed.set()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}")
    sub.connect(host, port)
    sub.loop_start()
    pub.connect(host, port)
    pub.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK within 10 s")
        for payload in payloads:
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        return [got.get(timeout=10) for _ in payloads]
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


@pytest.fixture
def mqtt_qos1_roundtrip() -> Callable[[str, str, list[bytes]], Awaitable[list[bytes]]]:
    """``await mqtt_qos1_roundtrip(broker_url, topic, payloads)``: the payloads received."""

    async def run(url: str, topic: str, payloads: list[bytes]) -> list[bytes]:
        host, _, port = url.removeprefix("mqtt://").rpartition(":")
        return await asyncio.to_thread(_qos1_roundtrip, host, int(port), topic, payloads)

    return run
