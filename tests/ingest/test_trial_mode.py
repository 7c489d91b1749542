"""Trial mode end to end, as a new user meets it: ``iot-ingest run`` and ``iot-ingest demo``
on a machine where ``mosquitto`` is not on PATH (the embedded broker is then amqtt, which
speaks MQTT 3.1.1 only), each a real subprocess."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from ingest.aws.settings import AwsSettings
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Reading
from ingest.storage.reads import read_range
from ingest.storage.table import read_layout
from ingest.trial.servers import free_port
from tests.ingest.processes import Cli, path_without, trial_env

SHUTDOWN_S = 15.0  # shutdown_timeout_s's default
MARGIN_S = 5.0
# Lines that must never appear in a trial run's output. amqtt logs the first two when a
# PUBACK does not come within its 5 s (it then forgets the message) or names a packet id
# it is not waiting for; the third is what it logs for an MQTT 5 CONNECT.
TROUBLE = (
    "Timeout waiting for PUBACK",
    "unknown pending message",
    "Invalid protocol",
    "MQTT connect failed",
    "Traceback",
    "ERROR",
)


def _publish_311(port: int, topic: str, payload: bytes) -> int:
    """Publish once with QoS 1 at MQTT 3.1.1 (paho); return the PUBACK's reason code."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="trial-pub", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), "no PUBACK from the embedded broker within 10 s"
        return int(info.rc)
    finally:
        client.disconnect()
        client.loop_stop()


async def _metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url) as r:
        text = await r.text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def test_run_without_mosquitto_writes_a_published_reading_and_acknowledges_it(
    tmp_path: Path, unique_name: str
) -> None:
    env = trial_env(path_without("mosquitto", tmp_path / "bin"), tmp_path)
    args = ["run", "--data-dir", str(tmp_path / "data"), "--metrics-port", "0"]
    args += ["--table", unique_name, "--flush-interval-ms", "20"]
    async with Cli(*args, env=env) as cli:
        port = int((await cli.wait_for(r"broker \(amqtt.*mqtt://127\.0\.0\.1:(\d+)", 30))[1])
        endpoint = (await cli.wait_for(r"embedded DynamoDB .* at (http://\S+)", 60))[1]
        metrics_url = (await cli.wait_for(r"metrics and health on (http://\S+)", 30))[1]
        subscribed = await cli.wait_for(r"subscribed to .* \(MQTT ([\d.]+), ", 30)
        assert subscribed[1] == "3.1.1", cli.text

        ts_ms = int(time.time() * 1000)
        payload = orjson.dumps({"ts": ts_ms, "temperature": 22.5})
        published_at = time.monotonic()
        assert await asyncio.to_thread(_publish_311, port, "sensors/dev-1/telemetry", payload) == 0

        async with DynamoClient(
            table=unique_name,
            aws=AwsSettings(
                region="us-east-1",
                endpoint_url=endpoint,
                aws_access_key_id="trial",
                aws_secret_access_key="trial",
            ),
        ) as client:
            layout = await read_layout(client)
            assert layout is not None
            readings: list[Reading] = []
            deadline = time.monotonic() + 15
            while not readings and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                readings = await read_range(client, layout, "dev-1", ts_ms - 1, ts_ms + 1)
        assert readings == [Reading(sensor_id="dev-1", ts_ms=ts_ms, metrics={"temperature": 22.5})]

        async with aiohttp.ClientSession() as http:
            values: dict[str, float] = {}
            deadline = time.monotonic() + 10
            while values.get("iot_ingest_messages_completed_total") != 1:
                assert time.monotonic() < deadline, values
                await asyncio.sleep(0.2)
                values = await _metrics(http, metrics_url)
            assert values["iot_ingest_messages_received_total"] == 1
        # The broker holds nothing for the service: amqtt gives up on a PUBACK after 5 s
        # and logs it (a takeover of the session would prove nothing here: amqtt drops
        # a session's in-flight messages when its connection ends, see operations.md).
        await asyncio.sleep(max(0.0, published_at + 6.0 - time.monotonic()))
        cli.signal(signal.SIGTERM)
        assert await cli.wait(SHUTDOWN_S + MARGIN_S) == 0, cli.text
    text = cli.text
    assert "the embedded broker speaks MQTT 3.1.1 only" in text, text
    assert "ingest.pipeline.service: stopped" in text, text
    for trouble in TROUBLE:
        assert trouble not in text, text


async def test_demo_without_mosquitto_serves_sensors_with_data(tmp_path: Path) -> None:
    env = trial_env(path_without("mosquitto", tmp_path / "bin"), tmp_path)
    port = free_port()
    args = ["demo", "--devices", "5", "--rate", "10", "--port", str(port)]
    async with Cli(*args, "--data-dir", str(tmp_path / "data"), env=env) as cli:
        await cli.wait_for(r"dashboard at http://", 60)
        base = f"http://127.0.0.1:{port}"
        sensors: list[dict[str, object]] = []
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while len([s for s in sensors if s["latest"]]) < 5:
                assert time.monotonic() < deadline, f"sensors: {sensors}\n{cli.text}"
                await asyncio.sleep(0.5)
                async with http.get(base + "/v1/sensors") as r:
                    assert r.status == 200
                    sensors = (await r.json())["sensors"]
            sid = sensors[0]["sensor_id"]
            since = int(time.time() * 1000) - 60_000
            # The demo's packed table shows a reading within a staging interval (2 s).
            deadline = time.monotonic() + 10
            while True:
                async with http.get(f"{base}/v1/sensors/{sid}/readings?start={since}") as r:
                    assert r.status == 200
                    if (await r.json())["readings"]:
                        break
                assert time.monotonic() < deadline, "no readings for a listed sensor"
                await asyncio.sleep(0.5)
        cli.signal(signal.SIGTERM)
        assert await cli.wait(SHUTDOWN_S + MARGIN_S) == 0, cli.text
    text = cli.text
    assert "amqtt" in text and "demo stopped" in text, text
    for trouble in TROUBLE:
        assert trouble not in text, text
