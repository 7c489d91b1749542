"""What operators rely on: health endpoints, metrics, the sensor registry, dead-letter tools, reconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from ingest.aws.settings import AwsSettings
from ingest.cli.main import main as cli_main
from ingest.config import Config
from ingest.mqtt.client import MqttConnection, MqttSettings
from ingest.pipeline.service import IngestService
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import registry_key, registry_partition_keys
from ingest.storage.reads import query_partition
from tests.ingest.harness import AWS, counter, publish, running, wait_until


async def test_health_metrics_and_registry(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str
) -> None:
    cfg = ingest_config(registry_interval_s=0.2)
    now = int(time.time() * 1000) - 60_000
    msgs = [
        (
            f"{unique_name}/reg-{i % 3}/telemetry",
            orjson.dumps({"ts": now + i, "t": float(i), "h": 50}),
        )
        for i in range(30)
    ]
    msgs.append(
        (f"{unique_name}/reg-0/telemetry", orjson.dumps({"ts": now - 5000, "t": -1.0}))
    )  # late
    service = IngestService(cfg)
    async with running(service), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{service.health_port}"
        async with http.get(base + "/healthz") as r:
            assert r.status == 200
        async with http.get(base + "/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= 31, 30, "durable"
        )
        await wait_until(
            lambda: counter(service, "iot_ingest_registry_updates_total") >= 3, 30, "registry"
        )
        await asyncio.sleep(0.5)
        async with http.get(base + "/metrics") as r:
            text = await r.text()
        assert "iot_ingest_items_written_total 31.0" in text
        assert "iot_ingest_receive_to_durable_seconds_bucket" in text
    async with DynamoClient(
        table=cfg.dynamodb.table,
        aws=AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS),
    ) as c:
        listed = [
            it for pk in registry_partition_keys() for it in await query_partition(c, pk, 0, 2**113)
        ]
        by_id = {it["sid"]["S"]: it for it in listed}
        assert set(by_id) == {"reg-0", "reg-1", "reg-2"}
        reg0 = by_id["reg-0"]
        assert int(reg0["n"]["N"]) == 11  # 10 in order + 1 late: counted
        assert int(reg0["ls"]["N"]) == now + 27  # the late reading did not move "latest" back
        assert reg0["m"]["M"]["t"]["N"] == "27"
        pk, sk = registry_key("reg-0")
        got = await c.call(
            "get_item", TableName=cfg.dynamodb.table, Key={"pk": {"S": pk}, "sk": {"N": str(sk)}}
        )
        assert got["Item"]["sid"]["S"] == "reg-0"


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_deadletters_list_replay_and_republish(
    ingest_config: Callable[..., Config],
    unique_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = ingest_config(deadletter_topic=f"{unique_name}-dlq/all", max_future_ms=1000)
    future = int(time.time() * 1000) + 3_600_000
    host, port = (cfg.mqtt.mqtt_url or "").removeprefix("mqtt://").split(":")
    seen: list[bytes] = []
    watcher = MqttConnection(
        MqttSettings(
            host=host, port=int(port), client_id=f"dlq-{unique_name}"[:60], clean_start=True
        ),
        lambda chunk: seen.extend(p for _, p, _, _ in chunk),
    )
    service = IngestService(cfg)
    async with watcher, running(service):
        await watcher.subscribe([(f"{unique_name}-dlq/#", 0)])
        await publish(
            cfg.mqtt.mqtt_url or "",
            [(f"{unique_name}/d1/telemetry", orjson.dumps({"ts": future, "v": 1}))],
        )
        await wait_until(
            lambda: counter(service, "iot_ingest_dead_letters_total") >= 1, 30, "dead letter"
        )
        await wait_until(lambda: bool(seen), 10, "republished dead letter")
    assert b"outside the accepted window" in seen[0]
    assert cli_main(["deadletters", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "outside the accepted window" in out.out and "1 dead letters" in out.err
    # After "the fix" (a wider window), replay re-publishes it and it is ingested.
    fixed = IngestService(ingest_config(max_future_ms=2 * 3_600_000, data_dir=tmp_path / "fixed"))
    async with running(fixed):
        rc = await asyncio.to_thread(
            cli_main,
            [
                "deadletters",
                "replay",
                "--data-dir",
                str(tmp_path),
                "--mqtt-url",
                cfg.mqtt.mqtt_url or "",
            ],
        )
        assert rc == 0
        await wait_until(
            lambda: counter(fixed, "iot_ingest_items_written_total") >= 1, 30, "replayed write"
        )
    assert list((tmp_path / "deadletters").glob("*.jsonl.replayed"))
    assert "replayed 1 dead letters" in capsys.readouterr().out


@pytest.mark.parametrize("dynamodb_endpoint", ["moto"], indirect=True)
async def test_broker_restart_reconnects_and_resumes(
    ingest_config: Callable[..., Config], mosquitto: object, unique_name: str
) -> None:
    cfg = ingest_config(mqtt_reconnect_min_ms=50, mqtt_reconnect_max_ms=500)
    service = IngestService(cfg)
    now = int(time.time() * 1000) - 10_000
    async with running(service):
        await publish(
            cfg.mqtt.mqtt_url or "",
            [(f"{unique_name}/r/telemetry", orjson.dumps({"ts": now, "v": 1}))],
        )
        await wait_until(
            lambda: counter(service, "iot_ingest_items_written_total") >= 1, 30, "first write"
        )
        await mosquitto.stop()  # type: ignore[attr-defined]
        await wait_until(
            lambda: not service.readiness()[0], 10, "not ready while the broker is down"
        )
        await mosquitto.start()  # type: ignore[attr-defined]
        await wait_until(lambda: service.readiness()[0], 30, "reconnected")
        await publish(
            cfg.mqtt.mqtt_url or "",
            [(f"{unique_name}/r/telemetry", orjson.dumps({"ts": now + 1, "v": 2}))],
        )
        await wait_until(
            lambda: counter(service, "iot_ingest_items_written_total") >= 2,
            30,
            "write after restart",
        )
    assert counter(service, "iot_ingest_mqtt_reconnects_total") >= 1


def test_tuned_gc_freezes_the_startup_heap_and_restores_everything() -> None:
    import gc

    from ingest.core.gctune import tuned_gc

    before = gc.get_threshold()
    with tuned_gc(10_000):
        assert gc.get_threshold()[0] == 10_000
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    with tuned_gc(0):  # off: Python's settings stay
        assert gc.get_threshold() == before
