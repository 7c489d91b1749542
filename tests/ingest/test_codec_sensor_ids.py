"""Which sensor ids a message on a topic may carry: the sensor-id rule, attacked and fuzzed.

SECURITY.md's threat model: a gateway can only write readings for the sensor ids
its broker ACL lets it publish for. The ACL confines a gateway to topics; the rule
(``sensor_id_rule``) maps a topic to the ids it may carry. These tests attack it
the way a compromised gateway would: another gateway's ids, arbitrary ids, ids in
the batch default, topic ids that contain the separator.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pipeline.codec import Limits, PayloadDecoder, Rejection
from ingest.storage.layout import Reading


def dumps(doc: Any) -> bytes:
    """JSON bytes; the standard library for integers orjson cannot serialize (over 64 bits)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc).encode()


NOW_MS = int(datetime(2025, 11, 22, 3, 33, 20, tzinfo=UTC).timestamp() * 1000)
GW_A = "sensors/gw-a/telemetry"
GW_B = "sensors/gw-b/telemetry"


def decode(
    payload: Any, topic: str = GW_A, *, level: int | None = 1, **rule: Any
) -> tuple[list[Reading], list[Rejection]]:
    decoder = PayloadDecoder(sensor_topic_level=level, limits=Limits(), **rule)
    return decoder.decode(topic, dumps(payload), NOW_MS)


# -- the default rule refuses another gateway's ids ---------------------------------------


def test_default_rule_refuses_another_gateways_id_and_keeps_the_rest_of_the_batch() -> None:
    batch = {
        "readings": [
            {"sensor_id": "gw-a:boiler", "ts": NOW_MS - 3, "t": 1},
            {"sensor_id": "gw-b:boiler", "ts": NOW_MS - 2, "t": 666},  # gateway B's sensor
            {"sensor_id": "boiler", "ts": NOW_MS - 1, "t": 666},  # an arbitrary id
            {"ts": NOW_MS, "t": 4},  # the topic's own id
        ]
    }

    readings, rejections = decode(batch)

    assert [(r.sensor_id, r.metrics["t"]) for r in readings] == [("gw-a:boiler", 1), ("gw-a", 4)]
    assert [(r.index, r.reading["sensor_id"]) for r in rejections] == [
        (1, "gw-b:boiler"),
        (2, "boiler"),
    ]
    assert rejections[0].reason == (
        "readings[1]: sensor_id 'gw-b:boiler' is not allowed on topic 'sensors/gw-a/telemetry' "
        "by sensor_id_rule=prefix (allowed: 'gw-a' or ids starting with 'gw-a:')"
    )
    assert "sensor_id 'boiler' is not allowed on topic 'sensors/gw-a/telemetry'" in (
        rejections[1].reason
    )


def test_default_rule_refuses_a_single_reading_for_another_gateway() -> None:
    readings, rejections = decode({"sensor_id": "gw-b", "ts": NOW_MS, "t": 1})

    assert readings == []
    assert len(rejections) == 1 and rejections[0].index is None
    assert "sensor_id 'gw-b' is not allowed on topic 'sensors/gw-a/telemetry'" in (
        rejections[0].reason
    )


def test_batch_default_sensor_id_is_held_to_the_rule_too() -> None:
    batch = {"sensor_id": "gw-b:pump", "readings": [{"t": 1}, {"sensor_id": "gw-a:x", "t": 2}]}

    readings, rejections = decode(batch)

    assert [r.sensor_id for r in readings] == ["gw-a:x"]
    assert [r.index for r in rejections] == [0]
    assert "'gw-b:pump' is not allowed" in rejections[0].reason


def test_a_prefix_of_the_topic_id_without_the_separator_is_not_under_it() -> None:
    # gw-a must not claim gw-ab's ids (gw-ab starts with gw-a, but not with 'gw-a:').
    readings, rejections = decode({"readings": [{"sensor_id": "gw-ab", "t": 1}]})

    assert readings == [] and len(rejections) == 1


def test_a_topic_id_containing_the_separator_carries_nothing() -> None:
    # Topic gw-a:x would otherwise claim gw-a:x:… — ids of gateway gw-a.
    readings, rejections = decode(
        {"readings": [{"t": 1}, {"sensor_id": "gw-a:x:y", "t": 2}]}, "sensors/gw-a:x/telemetry"
    )

    assert readings == []
    assert len(rejections) == 2
    assert all(
        "contains the separator ':', which topic ids must not contain" in r.reason
        for r in rejections
    )


def test_refused_ids_do_not_use_up_new_sensor_admission() -> None:
    decoder = PayloadDecoder(sensor_topic_level=1, limits=Limits(max_new_sensors_per_minute=1))
    flood = {"readings": [{"sensor_id": f"x-{i}", "ts": NOW_MS, "t": 1} for i in range(50)]}

    _, refused = decoder.decode(GW_A, orjson.dumps(flood), NOW_MS)
    readings, rejections = decoder.decode(
        GW_A, orjson.dumps({"sensor_id": "gw-a:new", "ts": NOW_MS, "t": 1}), NOW_MS
    )

    assert len(refused) == 50 and all("is not allowed on topic" in r.reason for r in refused)
    assert rejections == []
    assert [r.sensor_id for r in readings] == ["gw-a:new"]


def test_a_known_sensor_of_another_gateway_is_still_refused() -> None:
    decoder = PayloadDecoder(sensor_topic_level=1, limits=Limits(), known_sensors=["gw-b:pump"])

    readings, rejections = decoder.decode(
        GW_A, orjson.dumps({"sensor_id": "gw-b:pump", "t": 1}), NOW_MS
    )

    assert readings == []
    assert "sensor_id 'gw-b:pump' is not allowed on topic" in rejections[0].reason


# -- the three rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "sep", "accepted"),
    [
        ("prefix", ":", ["gw-a", "gw-a:1", "gw-a:x:y"]),
        ("prefix", ".", ["gw-a", "gw-a.1"]),
        ("topic", ":", ["gw-a"]),
        ("any", ":", ["gw-a", "gw-a:1", "gw-a:x:y", "gw-a.1", "gw-b", "gw-b:1", "other"]),
    ],
)
def test_rules(rule: str, sep: str, accepted: list[str]) -> None:
    ids = ["gw-a", "gw-a:1", "gw-a:x:y", "gw-a.1", "gw-b", "gw-b:1", "other"]
    batch = {"readings": [{"sensor_id": s, "t": 1} for s in ids]}

    readings, rejections = decode(batch, sensor_id_rule=rule, sensor_id_separator=sep)

    assert [r.sensor_id for r in readings] == accepted
    assert len(rejections) == len(ids) - len(accepted)
    assert all(f"by sensor_id_rule={rule}" in r.reason for r in rejections)


def test_topic_rule_reason_names_the_topic_id() -> None:
    _, rejections = decode({"sensor_id": "gw-a:1", "t": 1}, sensor_id_rule="topic")

    assert rejections[0].reason.endswith(
        "by sensor_id_rule=topic (allowed: only the topic's id 'gw-a')"
    )


def test_without_a_topic_id_only_the_any_rule_accepts() -> None:
    payload = {"sensor_id": "dev-1", "t": 1}

    assert decode(payload, "sensors", sensor_id_rule="any")[0][0].sensor_id == "dev-1"
    for rule in ("prefix", "topic"):
        readings, rejections = decode(payload, "sensors", sensor_id_rule=rule)
        assert readings == []
        assert "allowed: none: the topic has no sensor id at level 1" in rejections[0].reason


def test_bad_rule_or_separator_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="sensor_id_rule must be one of"):
        PayloadDecoder(sensor_topic_level=1, limits=Limits(), sensor_id_rule="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sensor_id_separator must be one of"):
        PayloadDecoder(sensor_topic_level=1, limits=Limits(), sensor_id_separator="#")


# -- properties: for any topic and payload, the rule holds --------------------------------

id_chars = st.sampled_from("ab:.-_#/+ ")
topic_ids = st.one_of(
    st.sampled_from(["gw-a", "gw-b", "gw-a:x", "gw", ""]), st.text(id_chars, max_size=6)
)
claimed = st.one_of(
    st.none(),
    st.integers(),
    st.sampled_from(["gw-a", "gw-a:1", "gw-a:x:1", "gw-b:1", "gw-ab", "gw", "gw:a"]),
    st.text(id_chars, max_size=8),
    topic_ids.flatmap(lambda t: st.text(id_chars, max_size=4).map(lambda s: t + s)),
)
readings_st = st.lists(
    st.fixed_dictionaries({"t": st.just(1)}, optional={"sensor_id": claimed}), max_size=5
)


def allowed(rule: str, sep: str, topic_sid: str | None, sid: str) -> bool:
    """The rule as SECURITY.md states it (independent of the codec's code)."""
    if rule == "any":
        return True
    if topic_sid is None:
        return False
    if rule == "topic":
        return sid == topic_sid
    return sep not in topic_sid and (sid == topic_sid or sid.startswith(topic_sid + sep))


@settings(max_examples=400, deadline=None)
@given(
    rule=st.sampled_from(["prefix", "topic", "any"]),
    sep=st.sampled_from([":", ".", "_", "-"]),
    topic_sid=topic_ids,
    extra_level=st.booleans(),
    default=claimed,
    items=readings_st,
)
def test_every_reading_is_refused_with_a_reason_or_satisfies_the_rule(
    rule: str, sep: str, topic_sid: str, extra_level: bool, default: Any, items: list[Any]
) -> None:
    topic = f"sensors/{topic_sid}" + ("/telemetry" if extra_level else "")
    doc: dict[str, Any] = {"readings": items}
    if default is not None:
        doc["sensor_id"] = default

    readings, rejections = decode(doc, topic, sensor_id_rule=rule, sensor_id_separator=sep)

    assert len(readings) + len(rejections) == len(items)
    levels = topic.split("/")  # the id may hold '/': the level is what the broker routes on
    for r in readings:
        assert allowed(rule, sep, levels[1], r.sensor_id), (rule, topic, r.sensor_id)
    for rej in rejections:
        assert rej.reason and rej.index is not None


@settings(max_examples=300, deadline=None)
@given(
    sep=st.sampled_from([":", ".", "_", "-"]),
    a=topic_ids,
    b=topic_ids,
    sids=st.lists(claimed.filter(lambda s: isinstance(s, str)), max_size=6),
)
def test_under_prefix_no_id_is_accepted_from_two_different_topics(
    sep: str, a: str, b: str, sids: list[str]
) -> None:
    payload = {"readings": [{"sensor_id": s, "t": 1} for s in [*sids, a, b, f"{a}{sep}x"]]}
    from_a = {r.sensor_id for r in decode(payload, f"s/{a}/t", sensor_id_separator=sep)[0]}
    from_b = {r.sensor_id for r in decode(payload, f"s/{b}/t", sensor_id_separator=sep)[0]}

    if a.partition("/")[0] != b.partition("/")[0]:  # different topic ids (level 1)
        assert from_a.isdisjoint(from_b), (a, b, from_a & from_b)
