"""Unit tests: Parquet encoding, checksum, object keys, planning arithmetic."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.archive.planner import archive_window, validate_horizon
from ingest.storage.archive.errors import ArchiveConfigError
from ingest.storage.archive.parquet import content_checksum, decode, encode, to_table
from ingest.storage.archive.paths import data_key, manifest_key, parse_key
from ingest.storage.layout import Reading, TableLayout

DAY = 86_400_000
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
readings = st.lists(
    st.builds(
        lambda ts, m, g: Reading(sensor_id="s", ts_ms=ts, metrics=m, tags=g),
        st.integers(0, 4_000_000_000_000),
        st.dictionaries(
            names,
            st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53),
            max_size=4,
        ),
        st.dictionaries(names, st.text(max_size=10), max_size=3),
    ),
    max_size=30,
    unique_by=lambda r: r.ts_ms,
)


@settings(max_examples=60, deadline=None)
@given(readings)
def test_encode_decode_roundtrip_keeps_values_and_checksum(rs: list[Reading]) -> None:
    back = decode(encode(rs), "s")
    assert back == sorted(rs, key=lambda r: r.ts_ms)
    assert content_checksum(back) == content_checksum(rs)


def test_columns_are_typed() -> None:
    t = to_table([Reading("s", 5, {"t": 1, "h": 2.5}, {"site": "x"}), Reading("s", 1, {"t": 3.0})])
    assert t.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    assert t.schema.field("m_t").type == pa.float64()
    assert t.schema.field("g_site").type == pa.string()
    assert t.column("ts").cast(pa.int64()).to_pylist() == [1, 5]
    assert t.column("m_h").to_pylist() == [None, 2.5]


def test_checksum_sees_value_changes_not_int_float() -> None:
    a = [Reading("s", 1, {"t": 2})]
    assert content_checksum(a) == content_checksum([Reading("s", 1, {"t": 2.0})])
    assert content_checksum(a) != content_checksum([Reading("s", 1, {"t": 2.5})])
    assert content_checksum(a) != content_checksum([Reading("s", 1, {"t": 2}, {"k": "v"})])


def test_keys_are_hive_partitioned_and_parse_back() -> None:
    start = 1_795_348_800_000  # 2026-11-22T12:00Z
    key = data_key("archive", "dev-1", start)
    assert key == "archive/sensor_id=dev-1/date=2026-11-22/part-20261122T1200Z.parquet"
    name = parse_key(key)
    assert name is not None and (name.bucket_start_ms, name.stream_tag) == (start, "")
    stream = parse_key(data_key("archive", "dev-1", start, stream_tag="shard-1.42"))
    assert stream is not None and stream.stream_tag == "shard-1.42"
    assert parse_key(manifest_key("archive", "dev-1", start)) is None
    assert manifest_key("archive", "dev-1", start).startswith("archive/_manifests/")


def test_window_holds_closed_buckets_past_horizon_only() -> None:
    layout = TableLayout(bucket_ms=DAY, shards=2, retention_days=30)
    now = 100 * DAY + 5
    w = archive_window(layout, now_ms=now, horizon_ms=7 * DAY, grace_ms=2 * DAY)
    assert w.last_ms + DAY <= now - 7 * DAY < w.last_ms + 2 * DAY
    assert w.first_ms == 68 * DAY


@pytest.mark.parametrize(
    ("horizon_days", "ok"), [(1, True), (28.9, True), (29, False), (40, False)]
)
def test_horizon_shorter_than_retention_minus_bucket(horizon_days: float, ok: bool) -> None:
    layout = TableLayout(bucket_ms=DAY, shards=2, retention_days=30)
    if ok:
        validate_horizon(layout, int(horizon_days * DAY))
    else:
        with pytest.raises(ArchiveConfigError, match="too long"):
            validate_horizon(layout, int(horizon_days * DAY))
