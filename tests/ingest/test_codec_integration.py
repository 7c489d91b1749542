"""The codec's promises through the running service: real Mosquitto, moto, the spool.

* A gateway cannot write another gateway's sensors (SECURITY.md): under the default
  sensor-id rule a forged reading is absent from the table and present, with its
  reason, in the dead-letter spool; the rest of its batch is written.
* A reading without ``ts`` takes the receive time, so the same payload received
  twice is two items (docs/architecture.md says so); with ``require_ts`` it is none,
  and two dead letters.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.aws.settings import AwsSettings
from ingest.cli.main import build_parser
from ingest.config import Config, config_from_args, load_config
from ingest.core.errors import ConfigError
from ingest.pipeline.service import IngestService
from ingest.storage.dynamo import DynamoClient
from ingest.storage.registry import known_sensor_ids
from ingest.storage.spool import iter_dead_letters
from tests.ingest.harness import AWS, counter, make_config, publish, read_table, running, wait_until


def _config(
    mosquitto: Any, moto_server: Any, unique_name: str, tmp_path: Path, **kw: Any
) -> Config:
    return make_config(
        broker_url=mosquitto.url,
        endpoint=moto_server.endpoint_url,
        name=unique_name,
        data_dir=tmp_path,
        **kw,
    )


async def _deliver(service: IngestService, cfg: Config, messages: list[tuple[str, bytes]]) -> None:
    """Publish (waiting for the broker's PUBACKs) and wait until the service completed them."""
    before = counter(service, "iot_ingest_messages_completed_total")
    sent = await publish(cfg.mqtt.mqtt_url or "", messages)
    await wait_until(
        lambda: counter(service, "iot_ingest_messages_completed_total") >= before + sent,
        30,
        "messages durable",
    )


async def test_a_gateway_cannot_write_another_gateways_sensors(
    mosquitto: Any, moto_server: Any, unique_name: str, tmp_path: Path
) -> None:
    cfg = _config(mosquitto, moto_server, unique_name, tmp_path)  # the default rule
    assert cfg.limits.sensor_id_rule == "prefix"
    now = int(time.time() * 1000) - 10_000
    topic_a, topic_b = f"{unique_name}/gw-a/telemetry", f"{unique_name}/gw-b/telemetry"
    genuine = {"readings": [{"sensor_id": "gw-b:pump", "ts": now, "flow": 1.0}]}
    forged = {
        "readings": [
            {"sensor_id": "gw-a:boiler", "ts": now, "t": 60.5},
            {"sensor_id": "gw-b:pump", "ts": now + 1, "flow": 999.0},
            {"sensor_id": "victim", "ts": now + 2, "t": 999.0},
        ]
    }
    service = IngestService(cfg)
    async with running(service):
        await _deliver(
            service, cfg, [(topic_b, orjson.dumps(genuine)), (topic_a, orjson.dumps(forged))]
        )

    table = await read_table(
        moto_server.endpoint_url,
        cfg.dynamodb.table,
        service.layout,
        ["gw-a:boiler", "gw-b:pump", "victim"],
        now - 1,
        now + 10,
    )
    assert [(r.ts_ms, r.metrics) for r in table["gw-a:boiler"]] == [(now, {"t": 60.5})]
    assert [(r.ts_ms, r.metrics) for r in table["gw-b:pump"]] == [(now, {"flow": 1.0})]
    assert table["victim"] == []
    letters = [dl for _, dl in iter_dead_letters(tmp_path / "deadletters")]
    assert sorted((dl.topic, dl.index, dl.reason) for dl in letters) == [
        (
            topic_a,
            1,
            f"readings[1]: sensor_id 'gw-b:pump' is not allowed on topic {topic_a!r} by "
            "sensor_id_rule=prefix (allowed: 'gw-a' or ids starting with 'gw-a:')",
        ),
        (
            topic_a,
            2,
            f"readings[2]: sensor_id 'victim' is not allowed on topic {topic_a!r} by "
            "sensor_id_rule=prefix (allowed: 'gw-a' or ids starting with 'gw-a:')",
        ),
    ]
    assert [orjson.loads(dl.payload) for dl in sorted(letters, key=lambda d: d.index or 0)] == [
        {"readings": [forged["readings"][1]]},
        {"readings": [forged["readings"][2]]},
    ]
    async with DynamoClient(
        table=cfg.dynamodb.table,
        aws=AwsSettings(region="us-east-1", endpoint_url=moto_server.endpoint_url, **AWS),
    ) as client:
        assert await known_sensor_ids(client) == {"gw-a:boiler", "gw-b:pump"}


async def test_without_ts_the_same_payload_received_twice_is_two_items(
    mosquitto: Any, moto_server: Any, unique_name: str, tmp_path: Path
) -> None:
    cfg = _config(mosquitto, moto_server, unique_name, tmp_path)
    assert cfg.limits.require_ts is False
    topic = f"{unique_name}/dev-1/telemetry"
    start = int(time.time() * 1000)
    service = IngestService(cfg)
    async with running(service):
        await _deliver(service, cfg, [(topic, b'{"t": 21.5}')])
        await asyncio.sleep(0.005)  # a later receive time (whole ms) for the second copy
        await _deliver(service, cfg, [(topic, b'{"t": 21.5}')])

    table = await read_table(
        moto_server.endpoint_url,
        cfg.dynamodb.table,
        service.layout,
        ["dev-1"],
        start,
        start + 60_000,
    )
    got = table["dev-1"]
    assert [r.metrics for r in got] == [{"t": 21.5}, {"t": 21.5}]
    assert got[0].ts_ms < got[1].ts_ms
    assert counter(service, "iot_ingest_dead_letters_total") == 0


async def test_require_ts_dead_letters_readings_without_ts(
    mosquitto: Any, moto_server: Any, unique_name: str, tmp_path: Path
) -> None:
    cfg = _config(mosquitto, moto_server, unique_name, tmp_path, require_ts=True)
    topic = f"{unique_name}/dev-1/telemetry"
    start = int(time.time() * 1000) - 1000
    with_ts = orjson.dumps({"ts": start, "t": 20.0})
    service = IngestService(cfg)
    async with running(service):
        await _deliver(service, cfg, [(topic, b'{"t": 21.5}'), (topic, with_ts)])
        await asyncio.sleep(0.005)
        await _deliver(service, cfg, [(topic, b'{"t": 21.5}')])

    table = await read_table(
        moto_server.endpoint_url,
        cfg.dynamodb.table,
        service.layout,
        ["dev-1"],
        start - 1,
        start + 60_000,
    )
    assert [(r.ts_ms, r.metrics) for r in table["dev-1"]] == [(start, {"t": 20.0})]
    letters = [dl for _, dl in iter_dead_letters(tmp_path / "deadletters")]
    assert [(dl.topic, dl.payload) for dl in letters] == [(topic, b'{"t": 21.5}')] * 2
    assert all(dl.reason.startswith("reading has no 'ts' and require_ts is on") for dl in letters)


def test_config_keys_have_environment_variables_and_flags() -> None:
    env = {"IOT_INGEST_REQUIRE_TS": "true", "IOT_INGEST_SENSOR_ID_RULE": "topic"}
    cfg = load_config(env={**env, "IOT_INGEST_SENSOR_ID_SEPARATOR": "."})
    assert (cfg.limits.require_ts, cfg.limits.sensor_id_rule, cfg.limits.sensor_id_separator) == (
        True,
        "topic",
        ".",
    )
    args = build_parser().parse_args(
        ["run", "--require-ts", "--sensor-id-rule", "any", "--sensor-id-separator", "_"]
    )
    cfg = config_from_args(args)
    assert (cfg.limits.require_ts, cfg.limits.sensor_id_rule, cfg.limits.sensor_id_separator) == (
        True,
        "any",
        "_",
    )
    defaults = load_config(env={})
    assert (
        defaults.limits.require_ts,
        defaults.limits.sensor_id_rule,
        defaults.limits.sensor_id_separator,
    ) == (
        False,
        "prefix",
        ":",
    )


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        (
            {"IOT_INGEST_SENSOR_ID_RULE": "trusted"},
            ["sensor_id_rule='trusted' (environment IOT_INGEST_SENSOR_ID_RULE)", "'prefix'"],
        ),
        (
            {"IOT_INGEST_SENSOR_ID_SEPARATOR": "#"},
            ["sensor_id_separator='#' (environment IOT_INGEST_SENSOR_ID_SEPARATOR)"],
        ),
        (
            {"IOT_INGEST_TOPIC": "plant/#"},
            ["sensor_id_rule='prefix' needs the topic's sensor id", "topic='plant/#'"],
        ),
        (
            {"IOT_INGEST_TOPIC": "plant/#", "IOT_INGEST_SENSOR_ID_RULE": "topic"},
            ["sensor_id_rule='topic' needs the topic's sensor id", "sensor_topic_level"],
        ),
    ],
)
def test_bad_sensor_id_settings_fail_at_start_naming_key_and_value(
    env: dict[str, str], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_a_topic_without_a_sensor_level_works_with_an_explicit_level_or_any() -> None:
    assert load_config(env={"IOT_INGEST_TOPIC": "plant/#", "IOT_INGEST_SENSOR_TOPIC_LEVEL": "1"})
    assert load_config(env={"IOT_INGEST_TOPIC": "plant/#", "IOT_INGEST_SENSOR_ID_RULE": "any"})
