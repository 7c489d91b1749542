"""Unit tests of ingest.mqtt.proto: framing, PUBLISH round trips, CONNACK/SUBACK parsing."""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.mqtt.proto import (
    CONNACK,
    HEAD_BYTES,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    SUBSCRIBE,
    TRUNCATED,
    V5,
    V311,
    Connack,
    MqttProtocolError,
    PacketReader,
    TruncatedPayload,
    encode_disconnect,
    encode_puback,
    encode_pubacks,
    encode_pubcomp,
    encode_publish,
    encode_pubrec,
    encode_subscribe,
    parse_connack,
    parse_disconnect,
    parse_packet_id,
    parse_puback,
    parse_publish,
    parse_suback,
)

Packet = tuple[int, int, bytes]


def varint(n: int) -> bytes:
    """The MQTT Variable Byte Integer, written out per the spec (section 1.5.5)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_str(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def properties(*props: bytes) -> bytes:
    body = b"".join(props)
    return varint(len(body)) + body


def stream() -> tuple[bytes, list[Packet]]:
    """A mixed stream of packets and what it must split into."""
    pieces = [
        encode_publish("sensors/dev-1/telemetry", b'{"t": 1}', qos=1, packet_id=1, version=V5),
        encode_puback(1),
        encode_publish("s/é/t", b"", qos=0, version=V311),
        b"\xd0\x00",  # PINGRESP
        encode_publish("big", bytes(range(256)) * 80, qos=1, packet_id=65535, version=V5),
        encode_pubacks([2, 3, 4]),
        encode_subscribe(7, [("sensors/+/telemetry", 1)], version=V5),
    ]
    data = b"".join(pieces)
    packets = PacketReader().feed(data)
    assert [t for t, _, _ in packets] == [
        PUBLISH,
        PUBACK,
        PUBLISH,
        PINGRESP,
        PUBLISH,
        PUBACK,
        PUBACK,
        PUBACK,
        SUBSCRIBE,
    ]
    return data, packets


# -- framing -----------------------------------------------------------------


def test_stream_fed_at_once_splits_into_packets() -> None:
    _, packets = stream()

    (_, flags, body), (_, _, body2) = packets[0], packets[4]
    assert parse_publish(flags, body, V5) == ("sensors/dev-1/telemetry", 1, b'{"t": 1}')
    assert parse_publish(packets[2][1], packets[2][2], V311) == ("s/é/t", 0, b"")
    assert parse_publish(packets[4][1], body2, V5) == ("big", 65535, bytes(range(256)) * 80)
    assert [parse_puback(body) for t, _, body in packets if t == PUBACK] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
    ]
    assert packets[3] == (PINGRESP, 0, b"")
    assert packets[8][1] == 0x02  # SUBSCRIBE's reserved flags


def test_stream_fed_byte_by_byte_splits_into_the_same_packets() -> None:
    data, expected = stream()
    reader = PacketReader()

    got = [p for i in range(len(data)) for p in reader.feed(data[i : i + 1])]

    assert got == expected


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(0, 21_000), max_size=30))
def test_stream_fed_in_random_chunks_splits_into_the_same_packets(cuts: list[int]) -> None:
    data, expected = stream()
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    reader = PacketReader()

    got = [p for a, b in itertools.pairwise(bounds) for p in reader.feed(data[a:b])]

    assert got == expected
    assert reader.feed(b"") == []


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else v.hex(),
)
def test_remaining_length_boundaries(length: int, encoded: bytes) -> None:
    assert varint(length) == encoded
    body = bytes(i % 251 for i in range(length))
    packet = b"\x30" + encoded + body

    # The reader splits it whole, and waits while any byte is missing.
    assert PacketReader().feed(packet) == [(PUBLISH, 0, body)]
    reader = PacketReader()
    header = packet[: 1 + len(encoded)]
    for i in range(len(header) - 1):
        assert reader.feed(header[i : i + 1]) == []
    if length == 0:
        assert reader.feed(header[-1:]) == [(PUBLISH, 0, b"")]
    else:
        assert reader.feed(header[-1:]) == []
        assert reader.feed(body[:-1]) == []
        assert reader.feed(body[-1:]) == [(PUBLISH, 0, body)]

    # The encoder writes the same header.
    if length >= 3:
        publish = encode_publish("t", body[3:], version=V311)
        assert publish[: 1 + len(encoded)] == b"\x30" + encoded
        assert len(publish) == 1 + len(encoded) + length


def test_largest_remaining_length_is_accepted_in_the_header() -> None:
    reader = PacketReader()

    assert reader.feed(b"\x30\xff\xff\xff\x7f" + b"x" * 10) == []  # waits for the body


@pytest.mark.parametrize(
    "header",
    [b"\x30\xff\xff\xff\xff\x01", b"\x30\x80\x80\x80\x80\x00", b"\x30\x80\x80\x80\x80"],
    ids=["five-bytes-large", "five-bytes-zero", "four-bytes-continuing"],
)
def test_remaining_length_longer_than_four_bytes_is_a_protocol_error(header: bytes) -> None:
    with pytest.raises(MqttProtocolError, match="remaining length longer than 4 bytes"):
        PacketReader().feed(header)


def test_oversize_control_packet_is_refused_from_the_header() -> None:
    reader = PacketReader(max_packet_bytes=100)

    assert reader.feed(b"\x30" + varint(100) + b"x" * 100) == [(PUBLISH, 0, b"x" * 100)]
    with pytest.raises(MqttProtocolError, match="packet of 101 bytes exceeds 100"):
        reader.feed(b"\x90" + varint(101))  # a SUBACK: refused before the body arrives


def test_oversize_publish_is_truncated_and_skipped_as_it_streams() -> None:
    """Kept: the head (topic, id, payload start); skipped: the rest, never buffered."""
    payload = b"y" * 300_000
    big = encode_publish("big/topic", payload, qos=1, packet_id=9, version=V5)
    after = encode_publish("next", b"ok", qos=1, packet_id=10, version=V5)
    reader = PacketReader(max_packet_bytes=1000)
    stream = big + after + b"\xd0\x00"
    out: list[Packet] = []
    for i in range(0, len(stream), 4096):
        out += reader.feed(stream[i : i + 4096])
        assert len(reader._buf) <= HEAD_BYTES + 4096  # never holds the whole packet

    (t1, f1, body1), (t2, f2, body2), (t3, _, _) = out
    assert (t1, f1 & TRUNCATED, (f1 >> 1) & 3) == (PUBLISH, TRUNCATED, 1)
    assert isinstance(body1, TruncatedPayload)
    assert len(body1) == len(big) - 4  # the body's real size (4 = fixed header)
    assert len(bytes(body1)) == HEAD_BYTES
    topic, pid, rest = parse_publish(f1 & 0x0F, bytes(body1), V5)
    assert (topic, pid) == ("big/topic", 9) and rest == payload[: len(rest)]
    assert (t2, f2 & TRUNCATED) == (PUBLISH, 0)
    assert parse_publish(f2, body2, V5) == ("next", 10, b"ok")
    assert t3 == PINGRESP


_PARSERS: list[Callable[[bytes], object]] = [
    lambda b: parse_connack(b, V5),
    lambda b: parse_connack(b, V311),
    lambda b: parse_suback(b, V5),
    lambda b: parse_suback(b, V311),
    parse_puback,
    parse_packet_id,
    lambda b: parse_disconnect(b, V5),
    lambda b: parse_publish(0x02, b, V5),
    lambda b: parse_publish(0x00, b, V311),
    lambda b: parse_publish(0x04, b, V5),
]


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=300), which=st.integers(0, len(_PARSERS) - 1))
def test_parsers_raise_only_protocol_errors(data: bytes, which: int) -> None:
    """Untrusted bytes: a result or MqttProtocolError, never IndexError or struct.error."""
    with contextlib.suppress(MqttProtocolError):
        _PARSERS[which](data)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=12), limit=st.integers(1, 300))
def test_packet_reader_raises_only_protocol_errors(chunks: list[bytes], limit: int) -> None:
    reader = PacketReader(max_packet_bytes=limit)
    try:
        for c in chunks:
            for ptype, flags, body in reader.feed(c):
                assert 0 <= ptype <= 15 and 0 <= flags <= 0x1F
                assert len(body) <= limit or flags & TRUNCATED
    except MqttProtocolError:
        pass


def test_disconnect_reasons() -> None:
    assert parse_disconnect(b"", V5) == (0, "normal disconnection")
    assert parse_disconnect(b"\x8e", V5)[0] == 0x8E
    assert "session taken over" in parse_disconnect(b"\x8e", V5)[1]
    body = b"\x89" + properties(b"\x1f" + mqtt_str("try later"))
    assert parse_disconnect(body, V5) == (0x89, "server busy (try later)")
    assert encode_disconnect(version=V5, reason_code=0x81) == b"\xe0\x01\x81"
    assert encode_disconnect(version=V311, reason_code=0x81) == b"\xe0\x00"


def test_qos2_answers() -> None:
    assert encode_pubrec(258) == b"\x50\x02\x01\x02"
    assert encode_pubcomp(258) == b"\x70\x02\x01\x02"
    assert encode_pubcomp(258, reason_code=0x92) == b"\x70\x03\x01\x02\x92"
    with pytest.raises(MqttProtocolError, match="packet identifier 0"):
        parse_packet_id(b"\x00\x00")


# -- PUBLISH -----------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
@pytest.mark.parametrize(("qos", "packet_id"), [(0, 0), (1, 1), (1, 65535)])
@pytest.mark.parametrize(("retain", "dup"), [(False, False), (True, True)])
def test_publish_round_trip(
    version: int, qos: int, packet_id: int, retain: bool, dup: bool
) -> None:
    payload = b'{"ts": 1763780000123, "temperature": 22.5}'
    data = encode_publish(
        "sensors/dév-1/telemetry",
        payload,
        qos=qos,
        packet_id=packet_id,
        retain=retain,
        dup=dup,
        version=version,
    )

    ((kind, flags, body),) = PacketReader().feed(data)

    assert kind == PUBLISH
    assert (flags >> 1) & 0x03 == qos
    assert bool(flags & 0x01) == retain
    assert bool(flags & 0x08) == dup
    assert parse_publish(flags, body, version) == ("sensors/dév-1/telemetry", packet_id, payload)


@settings(max_examples=150, deadline=None)
@given(
    topic=st.text(max_size=60),
    payload=st.binary(max_size=400),
    qos=st.integers(0, 1),
    packet_id=st.integers(1, 65535),
    version=st.sampled_from([V311, V5]),
)
def test_publish_round_trip_property(
    topic: str, payload: bytes, qos: int, packet_id: int, version: int
) -> None:
    data = encode_publish(topic, payload, qos=qos, packet_id=packet_id, version=version)

    ((kind, flags, body),) = PacketReader().feed(data)

    assert kind == PUBLISH
    assert parse_publish(flags, body, version) == (topic, packet_id if qos else 0, payload)


def test_v5_publish_with_properties_from_the_broker() -> None:
    # Message Expiry Interval, then enough User Properties to need a 2-byte length.
    user = b"\x26" + mqtt_str("k") + mqtt_str("v" * 200)
    props = properties(b"\x02" + struct.pack("!I", 60), user)
    body = mqtt_str("sensors/dev-1/telemetry") + struct.pack("!H", 42) + props + b"payload"

    assert len(props) > 128
    assert parse_publish(0x02, body, V5) == ("sensors/dev-1/telemetry", 42, b"payload")


def test_publish_topic_must_be_utf8() -> None:
    body = struct.pack("!H", 2) + b"\xff\xfe" + b"payload"

    with pytest.raises(MqttProtocolError, match="topic is not UTF-8"):
        parse_publish(0, body, V311)


def test_pubacks_are_encoded_in_order() -> None:
    data = encode_pubacks([5, 1, 300])

    assert data == encode_puback(5) + encode_puback(1) + encode_puback(300)
    assert [parse_puback(b) for _, _, b in PacketReader().feed(data)] == [(5, 0), (1, 0), (300, 0)]
    assert parse_puback(b"\x00\x05\x10") == (5, 0x10)  # MQTT 5 reason code
    with pytest.raises(MqttProtocolError, match="PUBACK shorter than 2 bytes"):
        parse_puback(b"\x00")


# -- CONNACK and SUBACK ------------------------------------------------------


def test_connack_v5_properties() -> None:
    props = properties(
        b"\x21" + struct.pack("!H", 1000),  # receive maximum
        b"\x24\x01",  # maximum QoS
        b"\x27" + struct.pack("!I", 1_048_576),  # maximum packet size
        b"\x12" + mqtt_str("auto-7f3a"),  # assigned client identifier
        b"\x1f" + mqtt_str("welcome"),  # reason string
        b"\x26" + mqtt_str("region") + mqtt_str("eu"),  # user property: skipped
        b"\x2a\x01",  # shared subscriptions available
        b"\x13" + struct.pack("!H", 60),  # server keep alive
    )
    body = b"\x01\x00" + props

    ((kind, _, got),) = PacketReader().feed(bytes((CONNACK << 4,)) + varint(len(body)) + body)

    assert kind == CONNACK
    assert parse_connack(got, V5) == Connack(
        session_present=True,
        reason_code=0,
        properties={
            "receive_maximum": 1000,
            "maximum_qos": 1,
            "maximum_packet_size": 1_048_576,
            "assigned_client_identifier": "auto-7f3a",
            "reason_string": "welcome",
            "shared_subscription_available": 1,
            "server_keep_alive": 60,
        },
    )


def test_connack_v311_and_refusal_reasons() -> None:
    assert parse_connack(b"\x00\x00", V311) == Connack(False, 0, {})
    assert parse_connack(b"\x00\x05", V311).reason(V311) == "not authorized"
    assert parse_connack(b"\x00\x86\x00", V5).reason(V5) == "bad user name or password"
    assert Connack(False, 0x99).reason(V5) == "reason code 0x99"
    with pytest.raises(MqttProtocolError, match="CONNACK shorter than 2 bytes"):
        parse_connack(b"\x00", V5)


@pytest.mark.parametrize(
    ("props", "error"),
    [
        (b"\x01\x7f", "unknown property identifier 0x7f"),
        (b"\x05\x21\x00", "properties longer than the packet"),
        (b"\x80\x80\x80\x80\x01", "variable byte integer longer than 4 bytes"),
    ],
)
def test_malformed_connack_properties(props: bytes, error: str) -> None:
    with pytest.raises(MqttProtocolError, match=error):
        parse_connack(b"\x00\x00" + props, V5)


def test_suback_v5_with_properties() -> None:
    body = struct.pack("!H", 7) + properties(b"\x1f" + mqtt_str("ok")) + bytes([1, 0x80, 0])

    ((kind, flags, got),) = PacketReader().feed(bytes((SUBACK << 4,)) + varint(len(body)) + body)

    assert (kind, flags) == (SUBACK, 0)
    assert parse_suback(got, V5) == (7, [1, 0x80, 0])


def test_suback_v311() -> None:
    assert parse_suback(struct.pack("!H", 513) + bytes([1, 0x80]), V311) == (513, [1, 0x80])
