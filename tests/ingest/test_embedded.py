"""The trial mode's embedded servers: a broker (Mosquitto or amqtt) and moto."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from ingest.embedded import (
    MOSQUITTO_CONF_PATH,
    EmbeddedBroker,
    EmbeddedDynamo,
    ServerNotInstalledError,
    load_mosquitto_conf,
    probe_mqtt,
    render_mosquitto_conf,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
Roundtrip = Callable[[str, str, list[bytes]], Awaitable[list[bytes]]]


def test_packaged_mosquitto_conf_is_the_deploy_one() -> None:
    deploy = (REPO_ROOT / "deploy" / "mosquitto.conf").read_bytes()
    assert MOSQUITTO_CONF_PATH.read_bytes() == deploy, (
        "ingest/mosquitto.conf must be a copy of deploy/mosquitto.conf: "
        "cp deploy/mosquitto.conf ingest/mosquitto.conf"
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
    caplog.set_level(logging.WARNING, logger="ingest.embedded")
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
    await broker.close()
    with pytest.raises(RuntimeError, match="closed"):
        await broker.start()


async def test_embedded_dynamo_answers_create_table(
    dynamodb_client: Callable[..., AbstractAsyncContextManager[Any]],
    caplog: pytest.LogCaptureFixture,
    unique_name: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="ingest.embedded")
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
    await dynamo.close()  # twice: harmless
    assert any(r.getMessage().startswith("trial mode: embedded DynamoDB") for r in caplog.records)
