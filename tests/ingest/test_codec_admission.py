"""A flood of new sensor ids is limited; known sensors never are.

The unit tests here use ``sensor_id_rule=any`` (every id on one topic): admission is
checked after the rule, so the rule itself is tested in test_codec_sensor_ids.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson

from ingest.config import Config
from ingest.pipeline.codec import Limits, PayloadDecoder
from ingest.pipeline.service import IngestService
from tests.ingest.harness import counter, publish, running, wait_until

NOW = int(time.time() * 1000)


def _one(dec: PayloadDecoder, sid: str) -> str | None:
    _, rejected = dec.decode("s/x/t", orjson.dumps({"sensor_id": sid, "ts": NOW, "v": 1}), NOW)
    return rejected[0].reason if rejected else None


def test_new_ids_beyond_the_rate_are_refused_with_a_reason() -> None:
    dec = PayloadDecoder(
        sensor_topic_level=1, sensor_id_rule="any", limits=Limits(max_new_sensors_per_minute=3)
    )
    assert [_one(dec, f"new-{i}") for i in range(3)] == [None, None, None]
    reason = _one(dec, "new-3")
    assert reason is not None and "max_new_sensors_per_minute=3" in reason and "'new-3'" in reason
    # Admitted ids keep flowing: the limit is on new ids only.
    assert _one(dec, "new-0") is None and _one(dec, "new-2") is None


def test_preloaded_registry_ids_are_not_new() -> None:
    known = [f"dev-{i}" for i in range(100)]
    dec = PayloadDecoder(
        sensor_topic_level=1,
        sensor_id_rule="any",
        limits=Limits(max_new_sensors_per_minute=1),
        known_sensors=known,
    )
    assert all(_one(dec, s) is None for s in known)
    assert _one(dec, "stranger-1") is None
    assert _one(dec, "stranger-2") is not None


def test_known_set_is_bounded() -> None:
    dec = PayloadDecoder(
        sensor_topic_level=1, sensor_id_rule="any", limits=Limits(max_known_sensors=2)
    )
    assert _one(dec, "a") is None and _one(dec, "b") is None
    reason = _one(dec, "c")
    assert reason is not None and "max_known_sensors=2" in reason


def test_unlimited_by_zero() -> None:
    dec = PayloadDecoder(
        sensor_topic_level=1, sensor_id_rule="any", limits=Limits(max_new_sensors_per_minute=0)
    )
    assert all(_one(dec, f"s{i}") is None for i in range(500))


async def test_restarted_service_knows_its_registry(
    ingest_config: Callable[..., Config], unique_name: str
) -> None:
    cfg = ingest_config(max_new_sensors_per_minute=3, registry_interval_s=0.2)
    msgs = [
        (f"{unique_name}/k{i}/telemetry", orjson.dumps({"ts": NOW - 1000 + i, "v": i}))
        for i in range(5)
    ]
    first = IngestService(cfg)
    async with running(first):
        await publish(cfg.mqtt.mqtt_url or "", msgs)
        await wait_until(
            lambda: counter(first, "iot_ingest_messages_completed_total") >= 5, 30, "complete"
        )
    assert counter(first, "iot_ingest_items_written_total") == 3
    assert counter(first, "iot_ingest_dead_letters_total") == 2
    second = IngestService(cfg)  # its registry holds k0..k2: they are not new
    again = [
        (f"{unique_name}/k{i}/telemetry", orjson.dumps({"ts": NOW + i, "v": i})) for i in range(3)
    ]
    async with running(second):
        await publish(cfg.mqtt.mqtt_url or "", again)
        await wait_until(
            lambda: counter(second, "iot_ingest_messages_completed_total") >= 3, 30, "complete"
        )
    assert counter(second, "iot_ingest_items_written_total") == 3
    assert counter(second, "iot_ingest_dead_letters_total") == 0
