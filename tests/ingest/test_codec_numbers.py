"""Numbers at DynamoDB's edges and beyond 64 bits: refused with a reason, or stored exactly.

DynamoDB numbers have magnitudes from 1E-130 to
9.9999999999999999999999999999999999999E+125 and at most 38 digits. The codec
decides on the float it holds, and the item carries that float's shortest form
(``ingest.storage.layout.format_number``): these tests check the decision against that
form, and against dynalite, which enforces DynamoDB's limits.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import orjson
import pytest

from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoRejected
from ingest.pipeline.codec import Limits, PayloadDecoder, Rejection
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Reading, TableLayout, format_number
from ingest.storage.table import create_table

NOW_MS = int(time.time() * 1000)
TOPIC = "sensors/dev-1/telemetry"
DDB_MAX = Decimal("9.9999999999999999999999999999999999999E+125")
DDB_MIN = Decimal("1E-130")


def decode(payload: bytes) -> tuple[list[Reading], list[Rejection]]:
    return PayloadDecoder(sensor_topic_level=1, limits=Limits()).decode(TOPIC, payload, NOW_MS)


def in_dynamodb_range(text: str) -> bool:
    v = abs(Decimal(text))
    return v == 0 or DDB_MIN <= v <= DDB_MAX


BELOW_1E126 = math.nextafter(1e126, 0.0)
BELOW_1E_130 = math.nextafter(1e-130, 0.0)

# (JSON literal, accepted?)
EDGES = [
    (b"1e126", False),
    (b"-1e126", False),
    (b"1E+126", False),
    # DynamoDB's maximum itself, and values between it and 1e126: all parse to the
    # float 1e126, whose shortest form "1e+126" DynamoDB refuses.
    (b"9.9999999999999999999999999999999999999E+125", False),
    (b"9.99999999999999999999999999999999999999999E+125", False),
    (b"9.999999999999999e125", False),
    (repr(BELOW_1E126).encode(), True),
    (b"-" + repr(BELOW_1E126).encode(), True),
    (b"1.7976931348623157e308", False),
    (b"1e-130", True),
    (b"-1E-130", True),
    (repr(BELOW_1E_130).encode(), False),
    (b"1e-131", False),
    (b"5e-324", False),
    (b"0.0", True),
    (b"-0.0", True),
    (b"0", True),
    (b"1.5e125", True),
]


@pytest.mark.parametrize(("literal", "accepted"), EDGES, ids=[e[0].decode() for e in EDGES])
def test_float_edges(literal: bytes, accepted: bool) -> None:
    readings, rejections = decode(b'{"ts": %d, "v": %s}' % (NOW_MS, literal))

    if accepted:
        assert rejections == []
        (r,) = readings
        assert in_dynamodb_range(format_number(r.metrics["v"]))
    else:
        assert readings == []
        (rej,) = rejections
        assert "is outside DynamoDB's number range" in rej.reason
        assert "9.9999999999999999999999999999999999999E+125" in rej.reason
        assert not in_dynamodb_range(format_number(orjson.loads(literal)))


@pytest.mark.parametrize(
    "literal",
    [b"18446744073709551615", b"-9223372036854775808", b"12345678901234567890", b"-1"],
)
def test_integers_within_64_bits_are_kept_exactly(literal: bytes) -> None:
    readings, rejections = decode(b'{"ts": %d, "n": %s}' % (NOW_MS, literal))

    assert rejections == []
    assert type(readings[0].metrics["n"]) is int
    assert readings[0].metrics["n"] == int(literal)
    assert format_number(readings[0].metrics["n"]) == literal.decode()


@pytest.mark.parametrize(
    "literal",
    [
        b"18446744073709551616",  # 2**64
        b"-9223372036854775809",  # -2**63 - 1
        b"123456789012345678901234567890",
        b"99999999999999999999999999999999999999",  # 38 digits: DynamoDB would keep it
    ],
)
def test_integers_beyond_64_bits_are_refused_not_rounded(literal: bytes) -> None:
    payload = b'{"ts": %d, "n": %s, "t": 1.5}' % (NOW_MS, literal)

    readings, rejections = decode(payload)

    assert readings == []
    (rej,) = rejections
    assert rej.reason.startswith("metric 'n' is the integer ")
    assert "outside the range kept exactly (-2**63 to 2**64-1)" in rej.reason
    assert literal.decode() in rej.reason
    # The rejection keeps the exact value (the dead letter then keeps the payload as sent).
    assert rej.reading["n"] == int(literal)


def test_in_a_batch_only_the_reading_with_the_big_integer_is_refused() -> None:
    payload = (
        b'{"readings": [{"ts": %d, "n": 1e20}, {"ts": %d, "n": 100000000000000000000},'
        b' {"ts": %d, "n": 100000000000000000000.0}, {"ts": %d, "n": 18446744073709551615}]}'
        % (NOW_MS, NOW_MS + 1, NOW_MS + 2, NOW_MS + 3)
    )

    readings, rejections = decode(payload)

    assert [(r.ts_ms - NOW_MS, r.metrics["n"]) for r in readings] == [
        (0, 1e20),
        (2, 1e20),
        (3, 2**64 - 1),
    ]
    assert [r.index for r in rejections] == [1]
    assert "the integer 100000000000000000000" in rejections[0].reason


def test_big_integral_floats_as_float_literals_are_accepted() -> None:
    readings, rejections = decode(b'{"ts": %d, "a": 1.8446744073709552e19, "b": -1e100}' % NOW_MS)

    assert rejections == []
    assert readings[0].metrics == {"a": 1.8446744073709552e19, "b": -1e100}


def test_a_big_float_in_a_payload_too_deep_for_the_exact_parser_is_refused_with_a_reason() -> None:
    deep = b"[" * 1000 + b"]" * 1000  # orjson accepts 1024 levels, the standard parser fewer
    payload = b'{"readings": [{"ts": %d, "n": 1e20}, {"x": %s}]}' % (NOW_MS, deep)

    readings, rejections = decode(payload)

    assert readings == []
    assert "may be an integer beyond 64 bits" in rejections[0].reason
    assert "field 'x' must be a number" in rejections[1].reason


# -- the decision agrees with a DynamoDB implementation ------------------------------------


@pytest.mark.dynalite
async def test_what_the_codec_accepts_dynalite_stores_and_what_it_refuses_dynalite_refuses(
    dynalite_server: Any, unique_name: str
) -> None:
    layout = TableLayout()
    async with DynamoClient(
        table=unique_name,
        aws=AwsSettings(
            region="us-east-1",
            endpoint_url=dynalite_server.endpoint_url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ),
    ) as client:
        await create_table(client, layout)
        codec, dynalite = [], []
        for i, (literal, _) in enumerate([*EDGES, *INTS]):
            ts = NOW_MS - i
            readings, _ = decode(b'{"ts": %d, "v": %s}' % (ts, literal))
            codec.append(bool(readings))
            # Accepted or not, write the value the codec holds, as an item carries it.
            value = readings[0].metrics["v"] if readings else orjson.loads(literal)
            item = layout.to_item(Reading("dev-1", ts, {"v": value}, {}))
            try:
                await client.batch_write([item])
            except DynamoRejected as exc:
                assert "ValidationException" in str(exc) and "Number" in str(exc), exc
                dynalite.append(False)
                continue
            got = await client.call(
                "get_item", TableName=unique_name, Key={"pk": item["pk"], "sk": item["sk"]}
            )
            stored = Decimal(got["Item"]["m"]["M"]["v"]["N"])
            assert stored == Decimal(item["m"]["M"]["v"]["N"])  # the digits sent, exactly
            dynalite.append(True)
    assert codec == dynalite
    assert codec == [accepted for _, accepted in [*EDGES, *INTS]]


INTS = [
    (b"18446744073709551615", True),
    (b"-9223372036854775808", True),
    (b"12345678901234567890", True),
]
