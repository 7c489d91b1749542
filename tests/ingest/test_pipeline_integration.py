"""End to end through a real Mosquitto and a real DynamoDB-API server (moto and dynalite).

Every test publishes over MQTT QoS 1, lets the service write, then reads the
table back with Query and compares reading by reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ingest.config import Config
from ingest.pipeline.service import IngestService
from ingest.storage.spool import iter_dead_letters
from tests.ingest.harness import counter, publish, read_table, running, wait_until


def _single(prefix: str, sid: str, ts: int, value: float) -> tuple[str, bytes]:
    return f"{prefix}/{sid}/telemetry", orjson.dumps(
        {"ts": ts, "temperature": value, "site": "lab"}
    )


async def test_single_and_batched_readings_are_written_once(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str
) -> None:
    cfg = ingest_config()
    now = int(time.time() * 1000) - 60_000
    expected: dict[str, dict[int, dict[str, Any]]] = {}
    messages: list[tuple[str, bytes]] = []
    for i in range(200):
        sid, ts, v = f"dev-{i % 8}", now + i * 10, round(20 + i / 7, 3)
        messages.append(_single(unique_name, sid, ts, v))
        expected.setdefault(sid, {})[ts] = {"temperature": v}
    for b in range(10):  # gateway batches carrying many sensors on one topic
        batch = []
        for j in range(25):
            sid, ts = f"gateway-1:sensor-{j % 5}", now + b * 1000 + j  # the gateway's ids
            batch.append({"sensor_id": sid, "ts": ts, "power": b * 100 + j, "phase": "L1"})
            expected.setdefault(sid, {})[ts] = {"power": b * 100 + j}
        messages.append((f"{unique_name}/gateway-1/telemetry", orjson.dumps({"readings": batch})))
    messages += messages[:30]  # redelivered duplicates must not create items

    service = IngestService(cfg)
    async with running(service):
        sent = await publish(cfg.mqtt.mqtt_url or "", messages)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent,
            60,
            "all messages durable",
        )
    table = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, service.layout, expected, now - 1, now + 100_000
    )
    for sid, by_ts in expected.items():
        got = table[sid]
        assert [r.ts_ms for r in got] == sorted(by_ts), f"{sid}: wrong or duplicate timestamps"
        for r in got:
            assert r.metrics == by_ts[r.ts_ms]
            assert r.tags == ({"site": "lab"} if sid.startswith("dev-") else {"phase": "L1"})
    assert sum(len(v) for v in table.values()) == 200 + 250
    assert counter(service, "iot_ingest_dead_letters_total") == 0


async def test_bad_input_goes_to_dead_letters_and_valid_traffic_flows(
    ingest_config: Callable[..., Config], dynamodb_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    cfg = ingest_config(max_message_bytes=4096)
    now = int(time.time() * 1000) - 10_000
    topic = f"{unique_name}/dev-1/telemetry"
    corpus: list[tuple[bytes, str]] = [
        (b"not json", "not valid JSON"),
        (b"\x00\xff\xfe binary", "not valid JSON"),
        (b'{"temperature": NaN}', "not valid JSON"),
        (b'{"temperature": 1e400}', "not valid JSON"),
        (b'{"temperature": "warm"}', "no numeric metrics"),
        (b'{"temperature": true}', "boolean"),
        (b'{"temperature": [1, 2]}', "array"),
        (b"[" * 5000 + b"]" * 5000, "exceeds max_message_bytes"),
        (b'{"t": ' + b'{"a": ' * 300 + b"1" + b"}" * 300 + b"}", "object"),
        (b"[1, 2, 3]", "must be a JSON object"),
        (orjson.dumps({"ts": now + 86_400_000, "v": 1}), "outside the accepted window"),
        (orjson.dumps({"ts": now // 1000, "v": 1}), "looks like seconds"),
        (orjson.dumps({"ts": "2026-01-01T00:00:00", "v": 1}), "no UTC offset"),
        (orjson.dumps({"readings": "nope"}), "'readings' must be a list"),
        (b'{"v": 1, "x": "' + b"y" * 5000 + b'"}', "exceeds max_message_bytes"),
    ]
    messages: list[tuple[str, bytes]] = []
    for i, (bad, _) in enumerate(corpus):
        messages.append((topic, bad))
        messages.append(_single(unique_name, "dev-1", now + i, float(i)))
    messages.append(
        (
            f"{unique_name}/gw/telemetry",
            orjson.dumps({"readings": [{"sensor_id": "x#y", "v": 1}, {"ts": now, "v": 2}]}),
        )
    )

    service = IngestService(cfg)
    async with running(service):
        sent = await publish(cfg.mqtt.mqtt_url or "", messages)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent,
            60,
            "messages complete",
        )
    letters = [dl for _, dl in iter_dead_letters(tmp_path / "deadletters")]
    for bad, reason in corpus:
        matching = [dl for dl in letters if dl.payload == bad]
        assert matching, f"payload {bad[:40]!r} was not dead-lettered"
        assert reason in matching[0].reason, (reason, matching[0].reason)
        assert matching[0].topic == topic
    assert any("'x#y' is invalid" in dl.reason and dl.index == 0 for dl in letters)
    table = await read_table(
        dynamodb_endpoint, cfg.dynamodb.table, service.layout, ["dev-1", "gw"], now - 1, now + 1000
    )
    assert [r.metrics["temperature"] for r in table["dev-1"]] == [
        float(i) for i in range(len(corpus))
    ]
    assert [r.metrics["v"] for r in table["gw"]] == [2]
