"""Sealed windows and staging items of the packed layout: keys, parts, merges, a real table."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.aws.settings import AwsSettings
from ingest.storage.dynamo import DynamoClient
from ingest.storage.dynamohttp import LeanDynamoClient
from ingest.storage.layout import (
    Reading,
    TableLayout,
    binary_value,
    sensor_group,
    stage_pk,
    window_of_sk,
    window_sk,
)
from ingest.storage.packed import PackedDecodeError
from ingest.storage.reads import key_query, query_pages
from ingest.storage.table import create_table
from ingest.storage.windows import (
    MAX_PART_BYTES,
    Part,
    WindowScheme,
    decode_stage,
    encode_stage,
    merge_parts,
    needs_compaction,
    parse_part_item,
    seal,
)
from tests.ingest.harness import AWS

DAY = 86_400_000
T0 = 1_764_633_600_000  # 2025-12-02T00:00:00Z, a day and a window boundary
SCHEME = WindowScheme(TableLayout(kind="packed", window_ms=900_000))


def r(ts: int, v: float = 1.0, sensor: str = "dev-1", **tags: str) -> Reading:
    return Reading(sensor, ts, {"v": v}, tags)


def key(rs: list[Reading]) -> list[tuple[str, int, dict[str, float | int], dict[str, str]]]:
    return [(x.sensor_id, x.ts_ms, x.metrics, x.tags) for x in rs]


def test_keys_put_a_window_in_its_bucket_and_sort_parts_by_window_then_part() -> None:
    assert SCHEME.layout.window_pk("dev-1", T0 + 900_000) == "dev-1#2025-12-02"
    assert SCHEME.layout.window_pk("dev-1", T0 + DAY - 900_000) == "dev-1#2025-12-02"
    assert SCHEME.layout.window_pk("dev-1", T0 + DAY) == "dev-1#2025-12-03"
    sks = [window_sk(T0 + w * 900_000, p) for w in range(3) for p in (0, 1, 2**64 - 1)]
    assert sks == sorted(sks) and len(set(sks)) == len(sks)
    assert window_of_sk(window_sk(T0, 2**64 - 1)) == (T0, 2**64 - 1)
    assert len(str(window_sk(T0, 2**64 - 1))) <= 38  # DynamoDB numbers: 38 digits, exact
    with pytest.raises(ValueError, match="part must be"):
        window_sk(T0, 2**64)
    assert stage_pk(7, T0 + 3_600_000) == "#stage#7#2025-12-02T01"
    assert {sensor_group(f"dev-{i}", 256) for i in range(5_000)} == set(range(256))


def test_the_layout_refuses_windows_that_do_not_divide_the_bucket() -> None:
    with pytest.raises(ValueError, match="dividing the bucket"):
        TableLayout(kind="packed", bucket_ms=3_600_000, window_ms=7_000_000)
    with pytest.raises(ValueError, match="whole seconds"):
        TableLayout(kind="packed", window_ms=1_500)
    with pytest.raises(ValueError, match="layout must be one of reading, packed"):
        TableLayout(kind="columns")
    with pytest.raises(ValueError, match="needs a packed layout"):
        WindowScheme(TableLayout())
    assert SCHEME.window_starts(T0 + 1, T0 + 900_000) == [T0, T0 + 900_000]


def test_sealing_keeps_the_last_write_of_a_timestamp_whole_and_sorts() -> None:
    parts = seal(SCHEME, [r(T0 + 5, 1.0), r(T0 + 1, 2.0, site="a"), r(T0 + 5, 3.0, site="b")], 7)
    (p,) = parts
    assert (p.n, p.first_ms, p.last_ms, p.set_size, p.sealed_ms) == (2, T0 + 1, T0 + 5, 1, 7)
    assert not needs_compaction(parts)
    assert key(p.readings()) == key([r(T0 + 1, 2.0, site="a"), r(T0 + 5, 3.0, site="b")])


def test_the_same_readings_in_any_order_seal_to_the_same_bytes() -> None:
    rs = [r(T0 + i * 1_000, i / 10) for i in range(900)]
    shuffled = rs[:]
    random.Random(3).shuffle(shuffled)
    a, b = seal(SCHEME, rs, 1), seal(SCHEME, shuffled + rs[:10], 1)
    assert [SCHEME.part_item(p) for p in a] == [SCHEME.part_item(p) for p in b]


def test_readings_of_two_windows_or_two_sensors_are_refused() -> None:
    with pytest.raises(ValueError, match="span several windows"):
        seal(SCHEME, [r(T0), r(T0 + 900_000)], 1)
    with pytest.raises(ValueError, match="one sensor"):
        seal(SCHEME, [r(T0), r(T0 + 1, sensor="dev-2")], 1)
    with pytest.raises(ValueError, match="at least one reading"):
        seal(SCHEME, [], 1)


def test_a_hot_sensor_window_is_split_into_parts_that_each_fit_an_item() -> None:
    rng = random.Random(5)
    # 1 kHz of noisy full-precision doubles: ≈ 9 B each, 900,000 in a 15-minute window.
    rs = [Reading("hot", T0 + i, {"a": rng.random(), "b": rng.random()}) for i in range(120_000)]
    parts = seal(SCHEME, rs, 1)
    assert len(parts) >= 2 and len({p.part for p in parts}) == len(parts)
    assert {(p.set_id, p.set_size) for p in parts} == {(parts[0].set_id, len(parts))}
    assert all(len(p.blob) <= MAX_PART_BYTES for p in parts)
    assert sum(p.n for p in parts) == len(rs)
    assert key(merge_parts(parts)) == key(rs)
    assert not needs_compaction(parts) and needs_compaction(parts[1:])  # a set cut short
    assert seal(SCHEME, reversed(rs), 1) == parts


def test_parts_are_named_by_their_content() -> None:
    a = seal(SCHEME, [r(T0 + 3, 1.5)], 1)
    assert seal(SCHEME, [r(T0 + 3, 1.5)], 1) == a
    c = seal(SCHEME, [r(T0 + 3, 2.5)], 1)
    assert a[0].part != c[0].part and a[0].set_id != c[0].set_id
    assert needs_compaction(a + c)


def test_a_merge_lets_a_later_set_win_a_timestamp_and_keeps_each_once() -> None:
    first = seal(SCHEME, [r(T0 + 1, 1.0), r(T0 + 2, 2.0)], 100)
    later = seal(SCHEME, [r(T0 + 2, 20.0), r(T0 + 3, 3.0)], 200)
    merged = merge_parts(later + first)  # any order given
    assert key(merged) == key([r(T0 + 1, 1.0), r(T0 + 2, 20.0), r(T0 + 3, 3.0)])


def test_a_part_whose_item_disagrees_with_its_blob_is_refused() -> None:
    (p,) = seal(SCHEME, [r(T0 + 1), r(T0 + 2)], 1)
    liar = dataclasses.replace(p, n=3)
    with pytest.raises(PackedDecodeError, match="says 3 readings"):
        merge_parts([liar])
    other = dataclasses.replace(p, sensor_id="dev-9")
    with pytest.raises(PackedDecodeError, match="of 'dev-1'"):
        merge_parts([other])
    with pytest.raises(PackedDecodeError, match="not a sealed window"):
        parse_part_item({"sk": {"N": "1"}}, "dev-1")


# One model of what the write path may do to a window (decision 0008), checked against
# what readers must see: every distinct reading once, whatever the interleaving.
arrivals = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40),  # timestamp offset (s) in one window
        st.integers(min_value=0, max_value=3),  # which seal it reaches (late ones: later)
        st.integers(min_value=1, max_value=3),  # copies (publisher duplicates, redelivery)
        st.integers(min_value=0, max_value=2),  # which writer (shared subscription, restart)
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(arrivals, st.randoms(use_true_random=False))
def test_any_interleaving_reads_back_each_reading_once_before_and_after_compaction(
    plan: list[tuple[int, int, int, int]], rng: random.Random
) -> None:
    # A reading's value is a function of its timestamp: duplicates are copies.
    readings = {ts: r(T0 + ts * 1_000, ts * 0.5 - 3.0, k=str(ts)) for ts, _, _, _ in plan}
    seals: dict[tuple[int, int], list[Reading]] = {}
    for ts, when, copies, writer in plan:
        seals.setdefault((when, writer), []).extend([readings[ts]] * copies)
    stored: dict[str, Part] = {}
    for (when, writer), rs in sorted(seals.items()):
        rng.shuffle(rs)
        for p in seal(SCHEME, rs, sealed_ms=when * 10 + writer):
            stored[SCHEME.part_item(p)["sk"]["N"]] = p  # writing a part again overwrites it
    expected = key(sorted(readings.values(), key=lambda x: x.ts_ms))
    assert key(merge_parts(stored.values())) == expected
    # Compaction: the merge becomes one set, sealed at the latest input's time; the old
    # parts are deleted. Two compactors of the same parts write the same items.
    latest = max(p.sealed_ms for p in stored.values())
    compacted = seal(SCHEME, merge_parts(stored.values()), latest)
    assert compacted == seal(SCHEME, merge_parts(list(stored.values())[::-1]), latest)
    assert key(merge_parts(compacted)) == expected and not needs_compaction(compacted)
    assert needs_compaction(list(stored.values())) == (len({p.set_id for p in stored.values()}) > 1)
    # A crash after the compacted write and before every delete: still each reading once.
    after = {SCHEME.part_item(p)["sk"]["N"]: p for p in compacted}
    leftovers = [p for sk, p in stored.items() if sk not in after][: len(stored) // 2]
    assert key(merge_parts([*after.values(), *leftovers])) == expected


def test_a_staging_blob_gives_every_sensor_or_one_sensor_back_in_write_order() -> None:
    rs = [r(T0 + i, float(i), sensor=f"dev-{i % 3}") for i in range(30)][::-1]
    blob = encode_stage(rs)
    assert key(decode_stage(blob)) == key(rs)
    assert key(decode_stage(blob, "dev-2")) == key([x for x in rs if x.sensor_id == "dev-2"])
    assert decode_stage(blob, "dev-9") == []
    for cut in range(1, len(blob)):
        with pytest.raises(PackedDecodeError):
            decode_stage(blob[:cut])
    with pytest.raises(PackedDecodeError, match="format 3"):
        decode_stage(b"\x03" + blob[1:])


@pytest.mark.asyncio(loop_scope="session")
async def test_parts_and_staging_written_to_a_real_table_read_back(
    dynamodb_endpoint: str, unique_name: str
) -> None:
    aws = AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS)
    w0 = [r(T0 + i * 1_000, i / 4) for i in range(900)]
    w1 = [r(T0 + 900_000 + i * 1_000, -i / 8) for i in range(900)]
    late = [r(T0 + 500, 99.0)]
    parts = seal(SCHEME, w0, 1) + seal(SCHEME, w1, 1) + seal(SCHEME, late, 2)
    async with DynamoClient(table=unique_name, aws=aws) as admin:
        await create_table(admin, SCHEME.layout)
        async with LeanDynamoClient(table=unique_name, aws=aws) as lean:
            assert await lean.batch_write([SCHEME.part_item(p) for p in parts]) == []
            sk = SCHEME.stage_sk(T0 + 10_000, "worker-1")
            blob = encode_stage(w1[:10])
            stage = SCHEME.stage_item(sensor_group("dev-1", 256), sk, T0 + 10_000, blob, 10)
            assert await lean.batch_write([stage]) == []
        kwargs = {
            "TableName": unique_name,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :a AND :b",
            "ExpressionAttributeValues": {
                ":pk": {"S": SCHEME.layout.window_pk("dev-1", T0)},
                ":a": {"N": str(window_sk(T0, 0))},
                ":b": {"N": str(window_sk(T0 + 900_000, 0) - 1)},  # the first window only
            },
        }
        got = [
            parse_part_item(it, "dev-1")
            async for page in query_pages(admin.call, kwargs)
            for it in page["Items"]
        ]
        stage_kwargs = key_query(unique_name, stage["pk"]["S"])
        staged = [
            it async for page in query_pages(admin.call, stage_kwargs) for it in page["Items"]
        ]
    assert sorted(p.part for p in got) == sorted([parts[0].part, parts[-1].part])
    assert got == sorted([parts[0], parts[-1]], key=lambda p: p.part)  # every attribute back
    assert key(merge_parts(got)) == key(sorted(w0 + late, key=lambda x: x.ts_ms))
    assert key(decode_stage(binary_value(staged[0]["b"]), "dev-1")) == key(w1[:10])
