"""The trial mode's embedded servers: a broker (Mosquitto or amqtt) and moto."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from ingest.mqtt import proto as mqttproto
from ingest.mqtt.client import Message, MqttConnection, MqttSettings
from ingest.trial.servers import (
    MOSQUITTO_CONF_PATH,
    EmbeddedBroker,
    EmbeddedDynamo,
    ServerNotInstalledError,
    load_mosquitto_conf,
    probe_mqtt,
    render_mosquitto_conf,
)
from tests.ingest.harness import wait_until
from tests.ingest.processes import process, still_running, wait_gone

REPO_ROOT = Path(__file__).resolve().parents[2]
Roundtrip = Callable[[str, str, list[bytes]], Awaitable[list[bytes]]]


def test_packaged_mosquitto_conf_is_the_deploy_one() -> None:
    deploy = (REPO_ROOT / "deploy" / "mosquitto.conf").read_bytes()
    assert MOSQUITTO_CONF_PATH.read_bytes() == deploy, (
        "ingest/trial/mosquitto.conf must be the symlink to deploy/mosquitto.conf: "
        "ln -sf ../../deploy/mosquitto.conf ingest/trial/mosquitto.conf"
    )


def _options(conf: str) -> list[str]:
    return [ln for ln in conf.splitlines() if ln.strip() and not ln.startswith("#")]


def test_rendered_conf_rewrites_listener_and_persistence_and_applies_overrides() -> None:
    base = load_mosquitto_conf()
    conf = render_mosquitto_conf(
        base,
        host="127.0.0.1",
        port=18830,
        data_dir=Path("/tmp/x"),
        extra_conf="max_inflight_messages 20\nsys_interval 0",
    )
    options = _options(conf)
    assert "listener 18830 127.0.0.1" in options
    assert "listener 1883" not in options
    assert [o for o in options if o.startswith("persistence_location")] == [
        "persistence_location /tmp/x/"
    ]
    assert [o for o in options if o.startswith("max_inflight_messages")] == [
        "max_inflight_messages 20"
    ]
    assert "sys_interval 0" in options
    # The recommended settings survive.
    for kept in ("persistence true", "max_queued_messages 1000000", "allow_anonymous true"):
        assert kept in options


def test_rendering_needs_a_listener() -> None:
    with pytest.raises(ValueError, match="listener"):
        render_mosquitto_conf("persistence true\n", host="h", port=1, data_dir=Path("/d"))


@pytest.mark.parametrize("backend", ["mosquitto", "amqtt"])
async def test_broker_qos1_round_trip(
    backend: Any, tmp_path: Path, mqtt_qos1_roundtrip: Roundtrip, unique_name: str
) -> None:
    topic = f"sensors/{unique_name}/telemetry"
    payloads = [b'{"ts": %d, "temperature": 21.0}' % i for i in range(20)]
    async with EmbeddedBroker(data_dir=tmp_path / "broker", backend=backend) as broker:
        assert broker.backend == backend
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert await mqtt_qos1_roundtrip(broker.url, topic, payloads) == payloads
    assert not await probe_mqtt("127.0.0.1", broker.port)


async def test_mosquitto_backend_persists_under_data_dir(tmp_path: Path) -> None:
    async with EmbeddedBroker(data_dir=tmp_path / "broker", backend="mosquitto"):
        pass
    assert (tmp_path / "broker" / "mosquitto.db").exists()  # saved on clean shutdown


async def test_auto_falls_back_to_amqtt_with_a_warning(
    caplog: pytest.LogCaptureFixture, mqtt_qos1_roundtrip: Roundtrip, unique_name: str
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.trial.servers")
    async with EmbeddedBroker(mosquitto_binary="no-such-mosquitto") as broker:
        assert broker.backend == "amqtt"
        got = await mqtt_qos1_roundtrip(broker.url, f"t/{unique_name}", [b"x"])
        assert got == [b"x"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("falling back to the in-process amqtt" in m for m in messages)
    assert any(m.startswith("trial mode: embedded MQTT broker") for m in messages)


async def test_mosquitto_backend_without_mosquitto_fails_clearly() -> None:
    with pytest.raises(ServerNotInstalledError, match="make test-deps"):
        async with EmbeddedBroker(backend="mosquitto", mosquitto_binary="no-such-mosquitto"):
            pass


async def test_broker_close_twice_is_safe_and_reopen_fails() -> None:
    broker = EmbeddedBroker(backend="amqtt")
    async with broker:
        pass
    await broker.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await broker.start()


async def test_embedded_dynamo_answers_create_table(
    dynamodb_client: Callable[..., AbstractAsyncContextManager[Any]],
    caplog: pytest.LogCaptureFixture,
    unique_name: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.trial.servers")
    async with EmbeddedDynamo() as dynamo:
        assert dynamo.endpoint_url == dynamo.url == f"http://127.0.0.1:{dynamo.port}"
        async with dynamodb_client(dynamo.endpoint_url) as client:
            resp = await client.create_table(
                TableName=unique_name,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            assert resp["TableDescription"]["TableName"] == unique_name
            assert (await client.list_tables())["TableNames"] == [unique_name]
    assert not dynamo.running
    await dynamo.aclose()  # twice: harmless
    assert any(r.getMessage().startswith("trial mode: embedded DynamoDB") for r in caplog.records)


@pytest.mark.parametrize(
    ("backend", "spoken"), [("mosquitto", ("5", "3.1.1")), ("amqtt", ("3.1.1",))]
)
async def test_broker_says_which_protocols_it_speaks_and_trial_clients_follow(
    backend: Any, spoken: tuple[str, ...], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.trial.servers")
    async with EmbeddedBroker(data_dir=tmp_path / "broker", backend=backend) as broker:
        assert broker.protocols == spoken
        assert broker.protocol_for("3.1.1") == "3.1.1"
        assert broker.protocol_for("5") == spoken[0]
        # The protocol it names is the one it answers: a CONNECT of that version gets a
        # CONNACK accepting it, with a session (clean session off) as trial mode asks.
        conn = MqttConnection(_settings(broker.port, "probe", spoken[0]))
        async with conn:
            assert conn.is_open
    switched = [r.getMessage() for r in caplog.records if "speaks MQTT" in r.getMessage()]
    if backend == "amqtt":
        assert switched == [
            "trial mode: the embedded broker speaks MQTT 3.1.1 only (amqtt): the service and "
            "the demo's fleet connect with MQTT 3.1.1, not 5 (install Mosquitto for MQTT 5)"
        ]
    else:
        assert switched == []


def _settings(
    port: int, client_id: str, protocol: str = "3.1.1", *, clean: bool = False
) -> MqttSettings:
    """What trial mode's service asks of the broker: a persistent session (unless ``clean``)."""
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        version=mqttproto.V5 if protocol == "5" else mqttproto.V311,
        clean_start=clean,
        keepalive_s=30,
    )


async def test_amqtt_keeps_a_persistent_session_with_acks_held_until_written(
    unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What trial mode needs of amqtt at MQTT 3.1.1: QoS 1 delivery with PUBACKs sent late,
    in order, accepted; a persistent session that keeps what arrives while the service is
    away and hands it over on reconnect."""
    caplog.set_level(logging.WARNING)
    topic = f"sensors/{unique_name}/telemetry"
    async with EmbeddedBroker(backend="amqtt") as broker:
        publisher = MqttConnection(_settings(broker.port, f"pub-{unique_name}", clean=True))
        async with publisher:
            got: list[Message] = []
            service = MqttConnection(_settings(broker.port, unique_name), got.extend)
            async with service:
                assert not service.session_present
                assert await service.subscribe([(topic, 1)]) == [1]
                for i in range(3):
                    await publisher.publish(topic, b"%d" % i)  # returns on the broker's PUBACK
                await wait_until(lambda: len(got) == 3, 10, "3 deliveries")
                await asyncio.sleep(1.0)  # acks held, as until a write is durable
                service.ack([pid for *_, pid in got])
                await asyncio.sleep(0.2)
            assert [payload for _, payload, _, _ in got] == [b"0", b"1", b"2"]

            for i in range(3, 5):
                await publisher.publish(topic, b"%d" % i)  # while the service is away
            again: list[Message] = []
            service = MqttConnection(_settings(broker.port, unique_name), again.extend)
            async with service:
                assert service.session_present
                await wait_until(lambda: len(again) == 2, 10, "the queued 2")
                service.ack([pid for *_, pid in again])
                await asyncio.sleep(0.2)
            assert [payload for _, payload, _, _ in again] == [b"3", b"4"]
    complaints = [r.getMessage() for r in caplog.records if r.name.startswith("amqtt")]
    assert not [m for m in complaints if "PUBACK" in m or "pending message" in m], complaints


async def test_amqtt_forgets_in_flight_messages_when_the_connection_ends(
    unique_name: str,
) -> None:
    """The limitation docs/operations.md documents (amqtt 0.12): a message delivered but not
    yet acknowledged when the subscriber's connection ends is not redelivered on reconnect,
    although the session persists. If amqtt learns to redeliver, update the docs."""
    topic = f"sensors/{unique_name}/telemetry"
    async with EmbeddedBroker(backend="amqtt") as broker:
        publisher = MqttConnection(_settings(broker.port, f"pub-{unique_name}", clean=True))
        async with publisher:
            got: list[Message] = []
            service = MqttConnection(_settings(broker.port, unique_name), got.extend)
            async with service:
                await service.subscribe([(topic, 1)])
                await publisher.publish(topic, b"in flight")
                await wait_until(lambda: len(got) == 1, 10, "the delivery")
            again: list[Message] = []
            service = MqttConnection(_settings(broker.port, unique_name), again.extend)
            async with service:
                assert service.session_present
                await publisher.publish(topic, b"after")
                await wait_until(lambda: len(again) >= 1, 10, "a delivery")
                await asyncio.sleep(0.5)
                service.ack([pid for *_, pid in again])
            assert [payload for _, payload, _, _ in again] == [b"after"]


_PARENT = """
import asyncio, sys
from ingest.trial.servers import MosquittoProcess

async def main():
    async with MosquittoProcess(data_dir=sys.argv[1]) as broker:
        print(broker._proc.pid, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_server_dies_with_its_parent_even_by_sigkill(tmp_path: Path) -> None:
    """The server runs in a session of its own, yet never outlives the process that started
    it: SIGKILL that process (no cleanup runs) and the kernel ends the server too."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PARENT, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    try:
        server = int(await asyncio.wait_for(parent.stdout.readline(), 30))
        (running,) = still_running({process(server): "mosquitto"})
        assert os.getsid(server) == server != os.getsid(parent.pid)  # a session of its own
        parent.kill()
        await parent.wait()
        assert await wait_gone({running: "mosquitto"}, 5) == {}
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_the_probe_connects_with_mqtt_311_as_encode_connect_builds_it_then_disconnects() -> (
    None
):
    from tests.ingest.hostile import HostileBroker, Peer, packet

    seen: list[tuple[int, bytes]] = []

    async def answering(peer: Peer) -> None:
        _, body = await peer.expect(mqttproto.CONNECT)
        seen.append((mqttproto.CONNECT, body))
        peer.send(packet(0x20, b"\x00\x00"))
        _, body = await peer.expect(mqttproto.DISCONNECT)
        seen.append((mqttproto.DISCONNECT, body))

    async with HostileBroker(answering) as broker:
        assert await probe_mqtt("127.0.0.1", broker.port) is True
        await asyncio.wait_for(broker.peers[0].closed.wait(), 5)
    connect = mqttproto.encode_connect(
        "ingest-probe", version=mqttproto.V311, clean_start=True, keepalive_s=10
    )
    assert seen == [(mqttproto.CONNECT, connect[2:]), (mqttproto.DISCONNECT, b"")]

    async def not_mqtt(peer: Peer) -> None:
        await peer.expect(mqttproto.CONNECT)
        peer.send(b"\x30\x00")  # a PUBLISH where CONNACK belongs

    async with HostileBroker(not_mqtt) as broker:
        assert await probe_mqtt("127.0.0.1", broker.port) is False
