"""The servers tests and benchmarks start: each comes up and answers real requests."""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from bench.servers import DynaliteServer, MosquittoServer, MotoServer
from ingest.storage.table import create_table_request
from ingest.trial.servers import ServerNotInstalledError, ServerStartError, free_port, probe_mqtt

ClientFactory = Callable[..., AbstractAsyncContextManager[Any]]


async def test_dynamodb_endpoint_creates_writes_and_reads_a_table(
    dynamodb_endpoint: str, dynamodb_client: ClientFactory, unique_name: str
) -> None:
    async with dynamodb_client(dynamodb_endpoint) as client:
        await client.create_table(**create_table_request(unique_name))
        await client.get_waiter("table_exists").wait(
            TableName=unique_name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
        )
        tables = (await client.list_tables())["TableNames"]
        assert unique_name in tables
        item = {"pk": {"S": "s1#20260101#0"}, "sk": {"N": "1763780000123"}, "t": {"N": "22.5"}}
        await client.put_item(TableName=unique_name, Item=item)
        got = await client.get_item(
            TableName=unique_name, Key={"pk": item["pk"], "sk": item["sk"]}, ConsistentRead=True
        )
        assert got["Item"] == item


async def test_dynalite_validates_like_dynamodb(
    dynalite_server: DynaliteServer, dynamodb_client: ClientFactory
) -> None:
    async with dynamodb_client(dynalite_server.endpoint_url, retries=False) as client:
        with pytest.raises(client.exceptions.ClientError) as info:
            await client.describe_table(TableName="ab")  # shorter than 3 characters
        assert info.value.response["Error"]["Code"] == "ValidationException"


async def test_moto_server_also_serves_s3(moto_server: MotoServer, unique_name: str) -> None:
    from aiobotocore.session import get_session

    bucket = unique_name.lower().replace("_", "-")[:63]
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_server.endpoint_url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ) as s3:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        obj = await s3.get_object(Bucket=bucket, Key="k")
        assert await obj["Body"].read() == b"v"


async def test_mosquitto_qos1_round_trip(
    mosquitto: MosquittoServer,
    mqtt_qos1_roundtrip: Callable[[str, str, list[bytes]], Awaitable[list[bytes]]],
    unique_name: str,
) -> None:
    topic = f"sensors/{unique_name}/telemetry"
    payloads = [b'{"ts": %d, "temperature": 22.5}' % i for i in range(50)]
    assert await mqtt_qos1_roundtrip(mosquitto.url, topic, payloads) == payloads


def _persistent_session(host: str, port: int, client_id: str, topic: str | None) -> Any:
    """Connect with clean session off (and subscribe when ``topic``); blocking (paho)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.user_data_set({"got": queue.Queue(), "session_present": None})
    connected, subscribed = threading.Event(), threading.Event()

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        userdata["session_present"] = flags.session_present
        connected.set()

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, userdata, msg: userdata["got"].put((msg.payload, msg.qos))
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(10):
        raise TimeoutError("no CONNACK")
    if topic is not None:
        client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK")
    return client


def _publish_qos1(host: str, port: int, topic: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}")
    pub.connect(host, port)
    pub.loop_start()
    try:
        pub.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()


def _close(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


@pytest.mark.slow
async def test_mosquitto_restart_keeps_queued_qos1_message(
    mosquitto: MosquittoServer, unique_name: str
) -> None:
    host, port = mosquitto.host, mosquitto.port
    topic, client_id = f"sensors/{unique_name}/telemetry", f"ingest-{unique_name}"[:64]

    sub = await asyncio.to_thread(_persistent_session, host, port, client_id, topic)
    await asyncio.to_thread(_close, sub)
    # The subscriber is offline: the broker queues the message in its session.
    await asyncio.to_thread(_publish_qos1, host, port, topic, b"queued while offline")

    await mosquitto.stop()  # clean shutdown: the database is saved
    assert not mosquitto.running
    await mosquitto.start()
    assert mosquitto.port == port

    sub = await asyncio.to_thread(_persistent_session, host, port, client_id, None)
    try:
        assert sub.user_data_get()["session_present"] is True
        got = await asyncio.to_thread(sub.user_data_get()["got"].get, True, 10)
        assert got == (b"queued while offline", 1)
    finally:
        await asyncio.to_thread(_close, sub)


async def test_mosquitto_kill_then_start_on_the_same_port(mosquitto: MosquittoServer) -> None:
    port = mosquitto.port
    await mosquitto.kill()
    assert not mosquitto.running
    assert not await probe_mqtt(mosquitto.host, port)
    await mosquitto.start()
    assert mosquitto.port == port
    assert await probe_mqtt(mosquitto.host, port)


async def test_mosquitto_applies_extra_conf_and_reports_a_bad_one() -> None:
    with pytest.raises(ServerStartError, match="no_such_option"):
        async with MosquittoServer(extra_conf="no_such_option 1"):
            pass


async def test_missing_programs_say_to_run_make_test_deps(tmp_path: Any) -> None:
    with pytest.raises(ServerNotInstalledError, match="make test-deps"):
        async with MosquittoServer(binary="no-such-mosquitto"):
            pass
    with pytest.raises(ServerNotInstalledError, match="make test-deps"):
        async with DynaliteServer(binary=tmp_path / "no-such-dynalite"):
            pass


async def test_fixed_port_taken_fails_with_the_servers_output() -> None:
    port = free_port()
    async with MosquittoServer(port=port):
        with pytest.raises(ServerStartError, match=f"port {port} .* in use"):
            async with MosquittoServer(port=port):
                pass


async def test_close_is_idempotent_and_final() -> None:
    server = MosquittoServer()
    async with server:
        assert await probe_mqtt(server.host, server.port)
    await server.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await server.start()
