"""MQTT over TLS with user name and password, against a real Mosquitto configured for both."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

from bench.servers import MosquittoServer, MotoServer
from ingest.mqtt.link import MqttConnectError
from ingest.pipeline.service import IngestService
from ingest.trial.servers import free_port
from tests.ingest.harness import counter, make_config, read_table, running, wait_until
from tests.ingest.hostile import HostileBroker, Peer


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> None:
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=iot-ingest-test-ca", cwd=d)  # fmt: skip
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    _run("mosquitto_passwd", "-c", "-b", "passwd", "gateway-ingest", "s3cret-pass", cwd=d)


@pytest_asyncio.fixture
async def secure_broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoServer, int, Path]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    await asyncio.to_thread(_make_pki, pki)
    tls_port = free_port()
    extra = "\n".join(
        [
            "allow_anonymous false",
            f"password_file {pki / 'passwd'}",
            f"listener {tls_port} 127.0.0.1",
            f"cafile {pki / 'ca.crt'}",
            f"certfile {pki / 'server.crt'}",
            f"keyfile {pki / 'server.key'}",
        ]
    )
    async with MosquittoServer(data_dir=tmp_path / "broker", extra_conf=extra) as broker:
        yield broker, tls_port, pki


async def test_tls_and_password_ingest(
    secure_broker: tuple[MosquittoServer, int, Path],
    dynamodb_endpoint: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    broker, tls_port, pki = secure_broker
    (tmp_path / "mqtt-password").write_text("s3cret-pass\n")
    cfg = make_config(
        broker_url=f"mqtts://127.0.0.1:{tls_port}",
        endpoint=dynamodb_endpoint,
        name=unique_name,
        data_dir=tmp_path,
        mqtt_ca_file=pki / "ca.crt",
        mqtt_username="gateway-ingest",
        mqtt_password_file=tmp_path / "mqtt-password",
    )
    assert "s3cret" not in orjson.dumps(cfg.masked()).decode()
    service = IngestService(cfg)
    now = int(time.time() * 1000) - 5000
    async with running(service):
        # Publish over the plain listener (also password-protected) with the same account.
        from ingest.mqtt.client import MqttConnection, MqttSettings

        pub = MqttConnection(
            MqttSettings(
                host="127.0.0.1",
                port=broker.port,
                client_id="pub-auth",
                clean_start=True,
                username="gateway-ingest",
                password="s3cret-pass",
            )
        )
        async with pub:
            for i in range(20):
                await pub.publish(
                    f"{unique_name}/tls-dev/telemetry", orjson.dumps({"ts": now + i, "v": i})
                )
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= 20, 30, "durable"
        )
    table = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, service.layout, ["tls-dev"], now - 1, now + 100
    )
    assert [r.metrics["v"] for r in table["tls-dev"]] == list(range(20))


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_wrong_password_fails_fast_with_the_brokers_reason(
    secure_broker: tuple[MosquittoServer, int, Path],
    dynamodb_endpoint: str,
    unique_name: str,
    tmp_path: Path,
) -> None:
    _, tls_port, pki = secure_broker
    cfg = make_config(
        broker_url=f"mqtts://127.0.0.1:{tls_port}",
        endpoint=dynamodb_endpoint,
        name=unique_name,
        data_dir=tmp_path,
        mqtt_ca_file=pki / "ca.crt",
        mqtt_username="gateway-ingest",
        mqtt_password="wrong",
    )
    stop = asyncio.Event()
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(IngestService(cfg).run(stop), 30)
    errors = info.value.exceptions
    assert len(errors) == 1 and isinstance(errors[0], MqttConnectError)
    assert "bad user name or password" in str(errors[0]) or "not authorized" in str(errors[0])


async def test_alpn_is_offered_as_configured(
    tmp_path: Path, moto_server: MotoServer, unique_name: str
) -> None:
    """AWS IoT Core on port 443 with a client certificate selects MQTT by ALPN x-amzn-mqtt-ca."""
    pki = tmp_path / "pki"
    pki.mkdir()
    await asyncio.to_thread(_make_pki, pki)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    server_tls.set_alpn_protocols(["x-amzn-mqtt-ca"])
    selected: list[str | None] = []

    async def script(peer: Peer) -> None:
        selected.append(peer.writer.get_extra_info("ssl_object").selected_alpn_protocol())
        await peer.handshake()
        await peer.suback()
        await peer.serve_pings()

    async with HostileBroker(script, tls=server_tls) as broker:
        cfg = make_config(
            broker_url=broker.url,
            endpoint=moto_server.endpoint_url,
            name=unique_name,
            data_dir=tmp_path / "data",
            mqtt_ca_file=pki / "ca.crt",
            mqtt_alpn="x-amzn-mqtt-ca",
        )
        async with running(IngestService(cfg), drained=False):
            pass
    assert selected == ["x-amzn-mqtt-ca"]
