"""The journal of the packed layout: exact round trips, refusals, keys, and a real table."""

from __future__ import annotations

import base64
import math
import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.aws.settings import AwsSettings
from ingest.storage.dynamo import DynamoClient
from ingest.storage.dynamohttp import LeanDynamoClient
from ingest.storage.journal import (
    JOURNAL_VERSION,
    MAX_JOURNAL_BLOB_BYTES,
    JournalDecodeError,
    JournalSequence,
    decode_journal,
    encode_journal,
    journal_items,
    parse_journal_item,
)
from ingest.storage.layout import Reading, TableLayout, journal_pk
from ingest.storage.packed import PackedDecodeError, PackedVersionError
from ingest.storage.reads import key_query, query_pages
from ingest.storage.table import create_table
from tests.ingest.harness import AWS


def _bits(v: float | int) -> tuple[str, object]:
    if isinstance(v, float):
        return "f", struct.pack("<d", v)
    return "i", v


def _same(a: list[Reading], b: list[Reading]) -> bool:
    """Equal readings, floats compared bit for bit and types kept (1 is not 1.0)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if (x.sensor_id, x.ts_ms, x.tags) != (y.sensor_id, y.ts_ms, y.tags):
            return False
        if list(x.metrics) != list(y.metrics):
            return False
        if [_bits(v) for v in x.metrics.values()] != [_bits(v) for v in y.metrics.values()]:
            return False
    return True


EDGE = [
    Reading(
        "dev-1",
        1_764_633_600_000,
        {"t": 22.54, "z": -0.0, "s": 5e-324, "h": 1.7976931348623157e308},
    ),
    Reading("dev-1", 1_764_633_600_000, {"t": 22.55}, {"site": "b"}),  # a duplicate: kept, in order
    Reading("gw-7:pump", -5, {"u": 2**64 - 1, "l": -(2**63), "one": 1, "onef": 1.0}, {"fw": "ü"}),
    Reading("x", 0, {}, {}),
]


def test_a_journal_gives_back_its_readings_exactly_and_in_order() -> None:
    blob = encode_journal(EDGE)
    assert blob[0] == JOURNAL_VERSION
    back = decode_journal(blob)
    assert _same(back, EDGE)
    assert type(back[2].metrics["one"]) is int and type(back[2].metrics["onef"]) is float
    assert math.copysign(1.0, back[0].metrics["z"]) == -1.0


metric = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
reading = st.builds(
    Reading,
    st.from_regex(r"[A-Za-z0-9_.:\-]{1,20}", fullmatch=True),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.dictionaries(st.text(min_size=1, max_size=8), metric, max_size=5),
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(reading, max_size=40))
def test_any_readings_round_trip_bit_for_bit(readings: list[Reading]) -> None:
    assert _same(decode_journal(encode_journal(readings)), readings)


def test_every_truncation_and_bit_flip_is_refused_or_decodes_the_same() -> None:
    blob = encode_journal(EDGE)
    for cut in range(len(blob)):
        with pytest.raises(PackedDecodeError):
            decode_journal(blob[:cut])
    for i in range(len(blob)):
        for bit in range(8):
            flipped = bytearray(blob)
            flipped[i] ^= 1 << bit
            try:
                back = decode_journal(bytes(flipped))
            except PackedDecodeError:  # PackedVersionError and JournalDecodeError included
                continue
            assert _same(back, EDGE), (i, bit)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"a": 1}', "not a JSON array"),
        (b"[1]", "reading 0 is not a reading"),
        (b'[{"sensor_id": "a#b", "ts_ms": 1, "metrics": {}, "tags": {}}]', "bad sensor id"),
        (b'[{"sensor_id": "a", "ts_ms": 1.5, "metrics": {}, "tags": {}}]', "bad timestamp"),
        (b'[{"sensor_id": "a", "ts_ms": 1, "metrics": {"x": true}, "tags": {}}]', "bad metric"),
        (b'[{"sensor_id": "a", "ts_ms": 1, "metrics": {"x": "1"}, "tags": {}}]', "bad metric"),
        (b'[{"sensor_id": "a", "ts_ms": 1, "metrics": {}, "tags": {"k": 1}}]', "bad tag"),
        (b'[{"sensor_id": "a", "ts_ms": 1, "metrics": {}}]', "not a reading"),
        (b"[", "not JSON"),
    ],
)
def test_a_well_framed_blob_of_another_shape_is_refused_naming_why(
    content: bytes, why: str
) -> None:
    from backports import zstd

    frame = zstd.compress(content, options={zstd.CompressionParameter.checksum_flag: 1})
    with pytest.raises(JournalDecodeError, match=why):
        decode_journal(bytes((JOURNAL_VERSION,)) + frame)


def test_another_version_is_refused_with_both_versions_named() -> None:
    blob = bytearray(encode_journal(EDGE))
    blob[0] = JOURNAL_VERSION + 1
    with pytest.raises(
        PackedVersionError, match=r"journal format 2 is newer than this reader \(1\)"
    ):
        decode_journal(bytes(blob))
    with pytest.raises(JournalDecodeError, match="empty"):
        decode_journal(b"")


def test_sequence_keys_only_increase_even_when_the_clock_steps_back_or_stands_still() -> None:
    seq = JournalSequence()
    keys = [seq.next(t) for t in (1_000, 1_000, 1_000, 999, 2_000, 1_500)]
    assert keys == [1_000_000, 1_000_001, 1_000_002, 1_000_003, 2_000_000, 2_000_001]
    restarted = JournalSequence(floor=keys[-1])
    assert restarted.next(1_000) == keys[-1] + 1
    assert restarted.next(3_000) == 3_000_000


def test_a_flush_too_large_for_one_item_is_split_and_every_reading_kept_once() -> None:
    # Incompressible tags: ≈ 40 bytes a reading after zstd, so 20,000 readings need 3+ items.
    rng = __import__("random").Random(7)
    readings = [
        Reading(f"s{i % 50}", i, {"v": rng.random()}, {"noise": rng.randbytes(24).hex()})
        for i in range(20_000)
    ]
    items = journal_items("worker-1", 5_000, readings, ttl_s=99)
    assert len(items) >= 3
    assert [sk for sk, _ in items] == list(range(5_000, 5_000 + len(items)))
    back: list[Reading] = []
    for sk, item in items:
        assert len(item["b"]["B"]) <= MAX_JOURNAL_BLOB_BYTES
        assert item["pk"] == {"S": journal_pk("worker-1")} and item["ttl"] == {"N": "99"}
        entry = parse_journal_item(item)
        assert entry.sk == sk and int(item["n"]["N"]) == len(entry.readings)
        back += entry.readings
    assert _same(back, readings)


def test_an_item_whose_count_disagrees_with_its_blob_is_refused() -> None:
    ((_, item),) = journal_items("w", 1, EDGE, ttl_s=1)
    item["n"] = {"N": str(len(EDGE) + 1)}
    with pytest.raises(JournalDecodeError, match="says 5 readings, its blob holds 4"):
        parse_journal_item(item)
    with pytest.raises(JournalDecodeError, match="not a journal item"):
        parse_journal_item({"sk": {"N": "1"}})
    item["n"] = {"N": str(len(EDGE))}
    item["b"] = {"B": base64.b64encode(item["b"]["B"]).decode()}  # the JSON protocol's form
    assert _same(parse_journal_item(item).readings, EDGE)


def test_journal_blobs_are_a_fraction_of_the_json_they_replace() -> None:
    readings = [
        Reading(f"dev-{i % 300}", 1_764_633_600_000 + i * 3, {"t": 20 + i % 97 / 100, "h": 45.5})
        for i in range(1_000)
    ]
    blob = encode_journal(readings)
    assert len(blob) / len(readings) < 0.5 * len(orjson.dumps(readings)) / len(readings)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("client_kind", ["lean", "botocore"])
async def test_a_journal_written_to_a_real_table_reads_back_exactly(
    dynamodb_endpoint: str, unique_name: str, client_kind: str
) -> None:
    aws = AwsSettings(region="us-east-1", endpoint_url=dynamodb_endpoint, **AWS)
    async with DynamoClient(table=unique_name, aws=aws) as admin:
        await create_table(admin, TableLayout())
        writer = (
            LeanDynamoClient(table=unique_name, aws=aws)
            if client_kind == "lean"
            else DynamoClient(table=unique_name, aws=aws)
        )
        seq = JournalSequence()
        flushes = [EDGE, EDGE[:1], [Reading("dev-2", 7, {"v": 0.1 + 0.2})]]
        async with writer:
            for flush in flushes:
                items = journal_items("w-1", seq.next(1_000), flush, ttl_s=2_000_000_000)
                assert await writer.batch_write([it for _, it in items]) == []
        kwargs = key_query(unique_name, journal_pk("w-1"))
        entries = []
        async for page in query_pages(admin.call, kwargs):
            entries += [parse_journal_item(it) for it in page["Items"]]
    assert [e.sk for e in entries] == [1_000_000, 1_000_001, 1_000_002]
    for entry, flush in zip(entries, flushes, strict=True):
        assert _same(entry.readings, flush)
