"""Unit tests of ingest.pipeline.codec: payload bytes → readings, or rejections with a reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pipeline.codec import Limits, PayloadDecoder, Rejection, SensorIdRule
from ingest.storage.layout import SENSOR_ID_PATTERN, Reading, TableLayout


def dumps(doc: Any) -> bytes:
    """JSON bytes; the standard library for integers orjson cannot serialize (over 64 bits)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc).encode()


NOW_MS = int(datetime(2025, 11, 22, 3, 33, 20, 123_000, tzinfo=UTC).timestamp() * 1000)
TOPIC = "sensors/dev-1/telemetry"
DAY_MS = 86_400_000


def decode(
    payload: Any,
    *,
    topic: str = TOPIC,
    level: int | None = 1,
    rule: SensorIdRule = "prefix",
    received_ms: int = NOW_MS,
    **limits: Any,
) -> tuple[list[Reading], list[Rejection]]:
    data = payload if isinstance(payload, bytes) else dumps(payload)
    decoder = PayloadDecoder(sensor_topic_level=level, limits=Limits(**limits), sensor_id_rule=rule)
    return decoder.decode(topic, data, received_ms)


def rejected(payload: Any, **kwargs: Any) -> Rejection:
    """Decode a payload that must be refused as a whole; return its one rejection."""
    readings, rejections = decode(payload, **kwargs)
    assert readings == []
    assert len(rejections) == 1, rejections
    return rejections[0]


# -- what is accepted --------------------------------------------------------


def test_single_reading() -> None:
    readings, rejections = decode({"ts": NOW_MS - 1000, "temperature": 22.5, "humidity": 45})

    assert rejections == []
    assert readings == [Reading("dev-1", NOW_MS - 1000, {"temperature": 22.5, "humidity": 45}, {})]
    assert type(readings[0].metrics["humidity"]) is int


def test_batch_keeps_order() -> None:
    batch = {"readings": [{"ts": NOW_MS - 3000 + i, "t": i} for i in range(3)]}

    readings, rejections = decode(batch)

    assert rejections == []
    assert [(r.sensor_id, r.ts_ms, r.metrics) for r in readings] == [
        ("dev-1", NOW_MS - 3000, {"t": 0}),
        ("dev-1", NOW_MS - 2999, {"t": 1}),
        ("dev-1", NOW_MS - 2998, {"t": 2}),
    ]


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (NOW_MS - 5, NOW_MS - 5),
        ("2025-11-22T03:33:20.123Z", NOW_MS),
        ("2025-11-22T05:33:20.123+02:00", NOW_MS),
        ("2025-11-21T22:33:20.123-05:00", NOW_MS),
        ("2025-11-22T03:33:19Z", NOW_MS - 1123),
        (float(NOW_MS - 7), NOW_MS - 7),
    ],
    ids=["int-ms", "rfc3339-z", "rfc3339-plus", "rfc3339-minus", "rfc3339-no-fraction", "float"],
)
def test_ts_forms(ts: Any, expected_ms: int) -> None:
    readings, rejections = decode({"ts": ts, "t": 1.5})

    assert rejections == []
    assert readings == [Reading("dev-1", expected_ms, {"t": 1.5}, {})]
    assert type(readings[0].ts_ms) is int


def test_absent_ts_means_received_time() -> None:
    readings, _ = decode({"t": 1})

    assert readings[0].ts_ms == NOW_MS


def test_without_ts_a_redelivery_is_a_second_item() -> None:
    # What docs/architecture.md warns about: the key comes from the receive time.
    layout = TableLayout()
    first, _ = decode({"t": 1}, received_ms=NOW_MS)
    again, _ = decode({"t": 1}, received_ms=NOW_MS + 1500)

    keys = {(it["pk"]["S"], it["sk"]["N"]) for it in map(layout.to_item, first + again)}
    assert len(keys) == 2


def test_require_ts_refuses_readings_without_ts_and_keeps_the_others() -> None:
    batch = {"readings": [{"ts": NOW_MS, "t": 1}, {"t": 2}, {"ts": None, "t": 3}]}

    readings, rejections = decode(batch, require_ts=True)
    single = rejected({"t": 1}, require_ts=True)

    assert [r.metrics["t"] for r in readings] == [1]
    assert [r.index for r in rejections] == [1, 2]
    assert rejections[0].reason == (
        "readings[1]: reading has no 'ts' and require_ts is on (without one it would take "
        "the receive time, and a redelivery would write a second item)"
    )
    assert single.reason.startswith("reading has no 'ts' and require_ts is on")
    assert decode({"ts": NOW_MS - 5, "t": 1}, require_ts=True)[0][0].ts_ms == NOW_MS - 5


def test_sensor_id_precedence_reading_then_batch_then_topic() -> None:
    # Which id a reading names; the sensor-id rule then judges it (here: any).
    batch = {"sensor_id": "gw-7", "readings": [{"sensor_id": "dev-2", "t": 1}, {"t": 2}]}

    readings, _ = decode(batch, rule="any")
    single, _ = decode({"sensor_id": "dev-3", "t": 1}, rule="any")
    from_topic, _ = decode({"readings": [{"t": 1}]})

    assert [r.sensor_id for r in readings] == ["dev-2", "gw-7"]
    assert [r.sensor_id for r in single] == ["dev-3"]
    assert [r.sensor_id for r in from_topic] == ["dev-1"]


def test_null_sensor_id_falls_back_like_an_absent_one() -> None:
    readings, rejections = decode({"sensor_id": None, "readings": [{"sensor_id": None, "t": 1}]})

    assert rejections == []
    assert [r.sensor_id for r in readings] == ["dev-1"]


def test_sensor_id_from_another_topic_level() -> None:
    readings, _ = decode({"t": 1}, topic="site/north/dev-9", level=2)

    assert readings[0].sensor_id == "dev-9"


def test_numbers_are_metrics_and_strings_are_tags() -> None:
    payload = {
        "sensor_id": "dev-1:5",
        "ts": NOW_MS,
        "t": 21.5,
        "n": 3,
        "site": "north",
        "fw": "1.2",
    }

    readings, _ = decode(payload)

    assert readings == [
        Reading("dev-1:5", NOW_MS, {"t": 21.5, "n": 3}, {"site": "north", "fw": "1.2"})
    ]


def test_limits_are_inclusive() -> None:
    payload = {"ts": NOW_MS + 300_000, "note": "x" * 256, **{f"m{i}": i for i in range(64)}}

    readings, rejections = decode(payload)

    assert rejections == []
    assert len(readings[0].metrics) == 64


# -- what is refused, and why ------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "limits", "fragments"),
    [
        (b"{not json", {}, ["payload is not valid JSON"]),
        (b"", {}, ["payload is not valid JSON", "empty"]),
        (bytes(range(256)), {}, ["payload is not valid JSON"]),
        (b"\xff\xfe\x00{", {}, ["payload is not valid JSON"]),
        (b"[" * 100_000, {}, ["payload is not valid JSON", "depth"]),
        (b'{"t": NaN}', {}, ["payload is not valid JSON"]),
        (b'{"t": Infinity}', {}, ["payload is not valid JSON"]),
        (b'{"t": -Infinity}', {}, ["payload is not valid JSON"]),
        (b'{"t": 1e400}', {}, ["payload is not valid JSON", "infinity"]),
        (b"[1, 2]", {}, ["payload must be a JSON object, got array"]),
        (b'"text"', {}, ["payload must be a JSON object, got string"]),
        (b"null", {}, ["payload must be a JSON object, got null"]),
        (b"x" * 101, {"max_message_bytes": 100}, ["message of 101 bytes", "max_message_bytes=100"]),
        (
            {"readings": [{"t": i} for i in range(4)]},
            {"max_readings_per_message": 3},
            ["batch of 4 readings", "max_readings_per_message=3"],
        ),
        ({"readings": {"t": 1}}, {}, ["'readings' must be a list, got object"]),
    ],
    ids=[
        "not-json",
        "empty",
        "binary-garbage",
        "invalid-utf8",
        "deep-nesting",
        "nan",
        "infinity",
        "minus-infinity",
        "huge-number",
        "array",
        "string",
        "null",
        "oversize",
        "too-many-readings",
        "readings-not-a-list",
    ],
)
def test_whole_message_rejections(
    payload: Any, limits: dict[str, int], fragments: list[str]
) -> None:
    rejection = rejected(payload, **limits)

    for fragment in fragments:
        assert fragment in rejection.reason
    assert rejection.reading is None
    assert rejection.index is None


@pytest.mark.parametrize(
    ("reading", "fragments"),
    [
        (
            {"ok": True, "t": 1},
            ["field 'ok' must be a number (metric) or a string (tag)", "boolean"],
        ),
        ({"v": None, "t": 1}, ["field 'v'", "got null"]),
        ({"v": [1, 2], "t": 1}, ["field 'v'", "got array"]),
        ({"v": {"x": 1}, "t": 1}, ["field 'v'", "got object"]),
        ({"sensor_id": "dev#1", "t": 1}, ["sensor_id 'dev#1' is invalid", "[A-Za-z0-9_.:-]"]),
        ({"sensor_id": "", "t": 1}, ["sensor_id '' is invalid"]),
        ({"sensor_id": "x" * 129, "t": 1}, ["is invalid: allowed are 1-128"]),
        ({"sensor_id": 17, "t": 1}, ["sensor_id '17' is invalid"]),
        ({"sensor_id": ["dev-1"], "t": 1}, ["sensor_id \"['dev-1']\" is invalid"]),
        ({"sensor_id": {"id": 1}, "t": 1}, ["sensor_id \"{'id': 1}\" is invalid"]),
        ({"t": 1e200}, ["metric 't'=1e+200 is outside DynamoDB's number range"]),
        ({"t": 1e126}, ["metric 't'=1e+126 is outside DynamoDB's number range"]),
        ({"t": -1e-200}, ["metric 't'=-1e-200 is outside DynamoDB's number range"]),
        ({"site": "north"}, ["reading has no numeric metrics"]),
        ({"t": 1, "note": "x" * 257}, ["tag 'note' is 257 characters, over max_tag_length=256"]),
        (
            {f"m{i}": i for i in range(65)},
            ["65 metrics / 0 tags exceed max_metrics_per_reading=64"],
        ),
        (
            {"t": 1, **{f"g{i}": "v" for i in range(17)}},
            ["1 metrics / 17 tags exceed", "max_tags_per_reading=16"],
        ),
        ({"x" * 65: 1}, ["field name 'xxxx", "must be 1-64 characters"]),
        ({"": 1}, ["field name '' must be 1-64 characters"]),
        (
            {"ts": NOW_MS + 300_001, "t": 1},
            [f"ts {NOW_MS + 300_001} is outside the accepted window", "now + 300000 ms]"],
        ),
        (
            {"ts": NOW_MS - 31 * DAY_MS, "t": 1},
            [f"ts {NOW_MS - 31 * DAY_MS} is outside", f"[now - {30 * DAY_MS} ms"],
        ),
        (
            {"ts": NOW_MS // 1000, "t": 1},
            [f"ts {NOW_MS // 1000} is outside", "(it looks like seconds, not milliseconds)"],
        ),
        (
            {"ts": "2025-11-22T03:33:20", "t": 1},
            ["ts '2025-11-22T03:33:20' has no UTC offset (RFC 3339 requires one, e.g. 'Z')"],
        ),
        ({"ts": "yesterday", "t": 1}, ["ts 'yesterday' is not an RFC 3339 timestamp"]),
        ({"ts": 1.5, "t": 1}, ["ts 1.5 must be integer epoch milliseconds or an RFC 3339 string"]),
        ({"ts": True, "t": 1}, ["ts must be integer epoch milliseconds", "got boolean"]),
        ({"ts": [NOW_MS], "t": 1}, ["ts must be integer epoch milliseconds", "got array"]),
    ],
    ids=[
        "bool-metric",
        "null-value",
        "list-value",
        "object-value",
        "sensor-id-with-hash",
        "empty-sensor-id",
        "long-sensor-id",
        "numeric-sensor-id",
        "list-sensor-id",
        "object-sensor-id",
        "huge-float",
        "float-1e126",
        "tiny-float",
        "no-metrics",
        "tag-too-long",
        "too-many-metrics",
        "too-many-tags",
        "long-name",
        "empty-name",
        "ts-future",
        "ts-past",
        "ts-in-seconds",
        "ts-naive",
        "ts-not-rfc3339",
        "ts-fractional-float",
        "ts-bool",
        "ts-array",
    ],
)
def test_reading_rejections(reading: dict[str, Any], fragments: list[str]) -> None:
    rejection = rejected(reading)

    for fragment in fragments:
        assert fragment in rejection.reason, rejection.reason
    assert rejection.reading == reading
    assert rejection.index is None


def test_far_future_ms_does_not_get_the_seconds_hint() -> None:
    rejection = rejected({"ts": NOW_MS + DAY_MS, "t": 1})

    assert "seconds" not in rejection.reason


def test_missing_sensor_id() -> None:
    reason = "no sensor id: neither the reading's 'sensor_id' nor the topic carries one"

    for rule in ("prefix", "topic", "any"):
        assert rejected({"t": 1}, topic="sensors", rule=rule).reason == reason
        assert rejected({"t": 1}, topic="gateway/x/y", level=None, rule=rule).reason == reason


def test_batch_keeps_good_readings_and_rejects_bad_ones_by_index() -> None:
    bad_types = {"t": 1, "ok": True}
    bad_id = {"sensor_id": "a#b", "t": 3}
    batch = {"readings": [{"t": 0}, bad_types, {"t": 2}, "junk", bad_id, {"t": 5}]}

    readings, rejections = decode(batch)

    assert [r.metrics["t"] for r in readings] == [0, 2, 5]
    assert [(r.index, r.reading) for r in rejections] == [(1, bad_types), (3, "junk"), (4, bad_id)]
    assert rejections[0].reason.startswith("readings[1]: field 'ok' must be a number")
    assert rejections[1].reason == "readings[3] must be an object, got string"
    assert rejections[2].reason.startswith("readings[4]: sensor_id 'a#b' is invalid")


def test_empty_batch_yields_nothing() -> None:
    # The one input with neither readings nor rejections: the pipeline tracks it
    # with zero outstanding units, so it is acknowledged at once and nothing is lost.
    assert decode({"readings": []}) == ([], [])


def test_float_ts_is_not_a_metric() -> None:
    readings, _ = decode({"ts": float(NOW_MS), "t": 1})

    assert readings[0].metrics == {"t": 1}


def test_decoder_is_reusable_across_messages() -> None:
    decoder = PayloadDecoder(sensor_topic_level=1, limits=Limits())
    first = decoder.decode(TOPIC, b'{"t": 1}', NOW_MS)
    bad = decoder.decode("sensors/a#b/telemetry", b'{"t": 2}', NOW_MS)
    again = decoder.decode(TOPIC, b'{"t": 3}', NOW_MS)

    assert [r.sensor_id for r in first[0] + again[0]] == ["dev-1", "dev-1"]
    assert bad[0] == []
    assert "sensor_id 'a#b' is invalid" in bad[1][0].reason


# -- never raises, never loses a message ------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**80), 2**80),  # beyond 64 bits: orjson makes floats of them
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e126, 1e-130, 2.0**64, -(2.0**63), 0.0]),
    st.text(max_size=20),
    st.sampled_from(
        [NOW_MS, NOW_MS // 1000, "2025-11-22T03:33:20Z", "dev-1", "dev-1:x", "dev-2", "a#b"]
    ),
)
json_keys = st.one_of(
    st.sampled_from(["ts", "sensor_id", "readings", "t", "site"]), st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=12,
)
reading_like = st.dictionaries(json_keys, json_values, max_size=6)
message_like = st.one_of(
    json_values,
    reading_like,
    st.fixed_dictionaries({"readings": st.lists(st.one_of(reading_like, json_values), max_size=6)}),
    st.fixed_dictionaries(
        {"sensor_id": json_values, "readings": st.lists(reading_like, max_size=6)}
    ),
)


def check_decoded(
    readings: list[Reading],
    rejections: list[Rejection],
    *,
    empty_batch: bool = False,
    rule: str = "prefix",
    topic_sid: str | None = "dev-1",
) -> None:
    if not empty_batch:
        assert readings or rejections, "every message yields readings or rejections"
    for r in readings:
        assert SENSOR_ID_PATTERN.fullmatch(r.sensor_id)
        # The sensor-id rule as SECURITY.md states it (see test_codec_sensor_ids.py).
        if rule == "topic":
            assert r.sensor_id == topic_sid
        elif rule == "prefix":
            assert topic_sid is not None and ":" not in topic_sid
            assert r.sensor_id == topic_sid or r.sensor_id.startswith(topic_sid + ":")
        assert all(abs(v) < 1e126 and (v == 0 or abs(v) >= 1e-130) for v in r.metrics.values())
        assert all(-(2**63) <= v < 2**64 for v in r.metrics.values() if type(v) is int)
        assert type(r.ts_ms) is int
        assert r.metrics
        assert all(type(v) in (int, float) for v in r.metrics.values())
        assert all(type(v) is str for v in r.tags.values())
        assert not {"ts", "sensor_id"} & (r.metrics.keys() | r.tags.keys())
    for rej in rejections:
        assert isinstance(rej.reason, str)
        assert rej.reason


rules = st.sampled_from(["prefix", "topic", "any"])


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), rule=rules)
def test_arbitrary_bytes_never_raise(payload: bytes, rule: SensorIdRule) -> None:
    check_decoded(*decode(payload, rule=rule), rule=rule)


@settings(max_examples=300, deadline=None)
@given(doc=message_like, rule=rules, require_ts=st.booleans())
def test_arbitrary_json_never_raises_and_accounts_for_every_reading(
    doc: Any, rule: SensorIdRule, require_ts: bool
) -> None:
    readings, rejections = decode(doc, rule=rule, require_ts=require_ts)
    batch = doc.get("readings") if isinstance(doc, dict) else None

    check_decoded(readings, rejections, empty_batch=batch == [], rule=rule)
    if isinstance(batch, list):
        # Each batch item is either a reading or a rejection with its index, once.
        assert len(readings) + len(rejections) == len(batch)
        assert sorted(r.index for r in rejections if r.index is not None) == sorted(
            {r.index for r in rejections if r.index is not None}
        )


@settings(max_examples=200, deadline=None)
@given(ts=st.one_of(st.text(max_size=40), st.datetimes(timezones=st.timezones()).map(str)))
def test_arbitrary_ts_strings_never_raise(ts: str) -> None:
    check_decoded(*decode({"ts": ts, "t": 1}))
