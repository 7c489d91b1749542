"""Unit tests of ingest.storage.layout: keys, shards, buckets, TTL and the item round trip."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.storage.layout import (
    LAYOUT_PK,
    REGISTRY_PARTITIONS,
    SENSOR_ID_PATTERN,
    Item,
    Reading,
    TableLayout,
    registry_key,
    registry_partition_keys,
)

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS + DAY_MS // 4
NOW_MS = 1_763_780_000_123  # 2025-11-22T02:53:20.123Z
DDB_MAX = 9.9999999999999999e125
DDB_MIN = 1e-130

VALID_WIDTHS_MS = [
    60_000,
    5 * 60_000,
    15 * 60_000,
    3_600_000,
    6 * 3_600_000,
    DAY_MS,
    2 * DAY_MS,
    7 * DAY_MS,
]

sensor_ids = st.from_regex(SENSOR_ID_PATTERN, fullmatch=True)
timestamps = st.integers(NOW_MS - 50 * YEAR_MS, NOW_MS + 50 * YEAR_MS)
layouts = st.builds(
    TableLayout,
    bucket_ms=st.sampled_from(VALID_WIDTHS_MS),
    shards=st.integers(1, 64),
    retention_days=st.integers(1, 3650),
)
ddb_ints = st.integers(-(10**38) + 1, 10**38 - 1)
ddb_floats = st.one_of(
    st.just(0.0),
    st.floats(DDB_MIN, DDB_MAX),
    st.floats(-DDB_MAX, -DDB_MIN),
)
names = st.text(min_size=1, max_size=64)
readings = st.builds(
    Reading,
    sensor_id=sensor_ids,
    ts_ms=timestamps,
    metrics=st.dictionaries(names, st.one_of(ddb_ints, ddb_floats), min_size=1, max_size=8),
    tags=st.dictionaries(names, st.text(max_size=256), max_size=4),
)


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


# -- the item round trip -----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(layout=layouts, reading=readings)
def test_to_item_from_item_round_trips_exactly(layout: TableLayout, reading: Reading) -> None:
    back = TableLayout.from_item(layout.to_item(reading))

    assert back == reading
    for name, value in reading.metrics.items():
        if type(value) is int:
            assert type(back.metrics[name]) is int, (name, value, back.metrics[name])


def test_item_shape_uses_short_names_and_wire_types() -> None:
    layout = TableLayout(shards=4, retention_days=30)
    ts = utc_ms(2026, 11, 22, 13, 5, 42) + 123
    item = layout.to_item(Reading("dev-17", ts, {"t": 22.5, "n": 3}, {"site": "north"}))

    assert item == {
        "pk": {"S": f"dev-17#2026-11-22#{layout.shard_of(ts)}"},
        "sk": {"N": str(ts)},
        "ttl": {"N": str((ts + 30 * DAY_MS) // 1000)},
        "m": {"M": {"t": {"N": "22.5"}, "n": {"N": "3"}}},
        "g": {"M": {"site": {"S": "north"}}},
    }


def test_item_without_tags_has_no_tag_map() -> None:
    item = TableLayout().to_item(Reading("dev-1", NOW_MS, {"t": 1}))

    assert "g" not in item
    assert TableLayout.from_item(item).tags == {}


def dynamodb_item_size(item: Item) -> int:
    """Item size as DynamoDB bills it (names + values; numbers ~1 byte per 2 digits + 1)."""

    def value_size(v: dict[str, object]) -> int:
        ((kind, x),) = v.items()
        if kind == "S":
            return len(str(x).encode())
        if kind == "N":
            digits = len(str(x).lstrip("-").replace(".", "").split("e")[0].strip("0")) or 1
            return (digits + 1) // 2 + 1
        assert kind == "M", kind
        assert isinstance(x, dict)
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in x.items())

    return sum(len(name.encode()) + value_size(v) for name, v in item.items())


def test_typical_item_is_under_one_kilobyte() -> None:
    reading = Reading(
        sensor_id="building-7.floor-3.room-312:hvac-unit-04",
        ts_ms=NOW_MS,
        metrics={
            "temperature": 22.473,
            "humidity": 45.21,
            "pressure": 1013.25,
            "co2_ppm": 612,
            "battery_v": 3.6871,
        },
        tags={"site": "north-campus", "firmware": "2.14.3-rc1"},
    )
    item = TableLayout(shards=64).to_item(reading)

    assert dynamodb_item_size(item) < 1024
    assert dynamodb_item_size(item) < 300  # plenty of room for more metrics


# -- shards ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(shards=st.integers(1, 64), ts=timestamps)
def test_shard_is_deterministic_and_in_range(shards: int, ts: int) -> None:
    shard = TableLayout(shards=shards).shard_of(ts)

    assert 0 <= shard < shards
    assert TableLayout(shards=shards).shard_of(ts) == shard  # a fresh layout agrees
    assert TableLayout(shards=shards).partition_key("s", ts).endswith(f"#{shard}")


@settings(max_examples=100, deadline=None)
@given(shards=st.integers(1, 64), start_s=st.integers(-1_600_000_000, 3_300_000_000))
def test_whole_second_timestamps_spread_evenly_over_all_shards(shards: int, start_s: int) -> None:
    # Devices often report on whole seconds: the shard hash must not collapse them.
    layout = TableLayout(shards=shards)
    per_shard = 100
    counts = Counter(layout.shard_of((start_s + k) * 1000) for k in range(per_shard * shards))

    assert sorted(counts) == list(range(shards))
    assert all(0.75 * per_shard <= n <= 1.25 * per_shard for n in counts.values()), counts


# -- partition keys ----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(layout=layouts, a=sensor_ids, b=sensor_ids, ts_a=timestamps, ts_b=timestamps)
def test_one_sensors_id_never_produces_another_sensors_key(
    layout: TableLayout, a: str, b: str, ts_a: int, ts_b: int
) -> None:
    pk_a = layout.partition_key(a, ts_a)

    assert pk_a.split("#", 1)[0] == a
    assert not pk_a.startswith("#")  # never a registry or layout key
    if a != b:
        assert pk_a != layout.partition_key(b, ts_b)
        assert pk_a not in layout.partition_keys(b, layout.bucket_start(ts_b))


def test_reserved_keys_cannot_be_sensor_keys() -> None:
    assert not SENSOR_ID_PATTERN.fullmatch("")
    assert not SENSOR_ID_PATTERN.fullmatch("a#b")
    assert not SENSOR_ID_PATTERN.fullmatch("x" * 129)
    assert LAYOUT_PK.startswith("#")
    assert all(pk.startswith("#") for pk in registry_partition_keys())


@settings(max_examples=200, deadline=None)
@given(layout=layouts, start=timestamps, n_buckets=st.integers(0, 30), data=st.data())
def test_bucket_starts_cover_the_range(
    layout: TableLayout, start: int, n_buckets: int, data: st.DataObject
) -> None:
    end = start + data.draw(st.integers(0, n_buckets * layout.bucket_ms))
    starts = layout.bucket_starts(start, end)

    assert starts, "a non-empty range overlaps at least one bucket"
    assert starts[0] <= start < starts[0] + layout.bucket_ms
    assert starts[-1] <= end < starts[-1] + layout.bucket_ms
    assert all(b - a == layout.bucket_ms for a, b in itertools.pairwise(starts))
    assert all(s % layout.bucket_ms == 0 for s in starts)
    ts = data.draw(st.integers(start, end))
    assert layout.bucket_start(ts) in starts


def test_bucket_starts_of_an_empty_range_is_empty() -> None:
    assert TableLayout().bucket_starts(NOW_MS, NOW_MS - 1) == []


def test_bucket_starts_include_both_ends() -> None:
    layout = TableLayout(bucket_ms=3_600_000)
    start = utc_ms(2026, 1, 1, 10)

    assert layout.bucket_starts(start, start) == [start]
    assert layout.bucket_starts(start - 1, start) == [start - 3_600_000, start]
    assert layout.bucket_starts(start + 1, start + 2 * 3_600_000) == [
        start,
        start + 3_600_000,
        start + 2 * 3_600_000,
    ]


@settings(max_examples=200, deadline=None)
@given(layout=layouts, sensor=sensor_ids, ts=timestamps)
def test_partition_keys_list_every_shard_of_the_bucket(
    layout: TableLayout, sensor: str, ts: int
) -> None:
    bucket = layout.bucket_start(ts)
    keys = layout.partition_keys(sensor, bucket)

    assert len(keys) == layout.shards
    assert len(set(keys)) == layout.shards
    assert layout.partition_key(sensor, ts) in keys
    assert layout.partition_key(sensor, bucket) in keys
    assert layout.partition_key(sensor, bucket + layout.bucket_ms - 1) in keys


def test_partition_keys_contain_the_key_of_every_timestamp_in_the_bucket() -> None:
    layout = TableLayout(bucket_ms=60_000, shards=7)
    bucket = utc_ms(2026, 3, 1, 0, 0)
    keys = set(layout.partition_keys("dev-1", bucket))

    produced = {layout.partition_key("dev-1", ts) for ts in range(bucket, bucket + 60_000)}

    assert produced == keys  # every shard used, nothing outside the list


# -- bucket labels -----------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket_ms", "label"),
    [
        (DAY_MS, "2026-11-22"),
        (2 * DAY_MS, "2026-11-21"),  # two-day buckets count from the epoch
        (3_600_000, "2026-11-22T13"),
        (6 * 3_600_000, "2026-11-22T12"),
        (60_000, "2026-11-22T13:05"),
        (5 * 60_000, "2026-11-22T13:05"),
        (15 * 60_000, "2026-11-22T13:00"),
    ],
)
def test_bucket_label_format_follows_the_width(bucket_ms: int, label: str) -> None:
    layout = TableLayout(bucket_ms=bucket_ms, shards=1)
    ts = utc_ms(2026, 11, 22, 13, 5, 42) + 123

    assert layout.bucket_label(layout.bucket_start(ts)) == label
    assert layout.partition_key("dev-17", ts) == f"dev-17#{label}#0"


def test_bucket_label_before_1970() -> None:
    layout = TableLayout(shards=1)
    ts = utc_ms(1969, 7, 20, 20, 17, 40)

    assert layout.partition_key("apollo", ts) == "apollo#1969-07-20#0"


# -- parameters --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bucket_ms": 0}, "bucket_ms must be a positive whole number of minutes, got 0"),
        ({"bucket_ms": 30_000}, "got 30000"),
        ({"bucket_ms": 90_000}, "whole number of minutes, got 90000"),
        ({"bucket_ms": 7 * 60_000}, "bucket_ms below a day must divide a day, got 420000"),
        ({"bucket_ms": DAY_MS + 3_600_000}, "above a day must be whole days, got 90000000"),
        ({"shards": 0}, "shards must be 1..64, got 0"),
        ({"shards": 65}, "shards must be 1..64, got 65"),
        ({"retention_days": 0}, "retention_days must be >= 1, got 0"),
    ],
)
def test_invalid_parameters_name_the_value(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TableLayout(**kwargs)


def test_layout_record_round_trips() -> None:
    layout = TableLayout(bucket_ms=3_600_000, shards=16, retention_days=90)
    item = layout.to_layout_item()

    assert item["pk"] == {"S": LAYOUT_PK}
    assert TableLayout.from_layout_item(item) == layout


# -- TTL ---------------------------------------------------------------------


def test_ttl_is_timestamp_plus_retention_in_seconds() -> None:
    layout = TableLayout(retention_days=30)
    item = layout.to_item(Reading("dev-1", NOW_MS, {"t": 1}))
    expires_s = (NOW_MS + 30 * DAY_MS) // 1000

    assert layout.ttl_of(NOW_MS) == expires_s
    assert item["ttl"] == {"N": str(expires_s)}
    assert not TableLayout.is_expired(item, now_s=expires_s - 0.5)
    assert TableLayout.is_expired(item, now_s=expires_s)
    assert TableLayout.is_expired(item, now_s=expires_s + 0.9)


def test_is_expired_against_the_clock_and_without_ttl() -> None:
    past = {"pk": {"S": "a#b#0"}, "sk": {"N": "1"}, "ttl": {"N": "1000"}}
    future = {"pk": {"S": "a#b#0"}, "sk": {"N": "1"}, "ttl": {"N": str(2**40)}}

    assert TableLayout.is_expired(past)
    assert not TableLayout.is_expired(future)
    assert not TableLayout.is_expired({"pk": {"S": "a#b#0"}, "sk": {"N": "1"}}, now_s=2**50)


# -- the sensor registry -----------------------------------------------------


def test_registry_key_is_deterministic_and_stable_across_releases() -> None:
    # Registry items are persisted: the hash must never change between versions.
    assert registry_key("dev-1") == registry_key("dev-1")
    assert registry_key("dev-1") == ("#sensors#6", 2138086038749482289460207636131750)


def test_registry_keys_are_distinct_and_in_the_registry_partitions() -> None:
    ids = [f"dev-{i}" for i in range(5000)] + ["a", "A", "a.b", "a:b", "a_b", "a-b"]
    keys = [registry_key(sid) for sid in ids]
    partitions = set(registry_partition_keys())

    assert len(set(keys)) == len(ids)
    assert len({sk for _, sk in keys}) == len(ids)
    assert {pk for pk, _ in keys} == partitions
    assert len(partitions) == REGISTRY_PARTITIONS


def test_a_packed_layout_record_round_trips_and_a_reading_record_has_no_layout_kind() -> None:
    packed = TableLayout(kind="packed", window_ms=300_000, groups=64, stage_ms=5_000)
    item = packed.to_layout_item()
    assert (item["layout"], item["window_ms"], item["groups"]) == (
        {"S": "packed"},
        {"N": "300000"},
        {"N": "64"},
    )
    assert TableLayout.from_layout_item(item) == packed
    plain = TableLayout().to_layout_item()
    assert "layout" not in plain and TableLayout.from_layout_item(plain).kind == "reading"
    assert packed.key_parameters() == {
        "layout": "packed",
        "bucket_minutes": 1440,
        "window_ms": 300_000,
        "groups": 64,
        "stage_ms": 5_000,
    }
