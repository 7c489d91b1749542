"""MQTT 3.1.1 and 5.0 packet encoding and decoding (the client side only).

Pure functions over bytes, no I/O: the connection in :mod:`ingest.mqtt.client`
and the simulator's publishers build on them. Only what a subscriber that
acknowledges explicitly, and a QoS 0/1 publisher, need is here; see
``docs/decisions/0001-mqtt-client.md`` for why the project speaks MQTT itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ingest.core.errors import IngestError

__all__ = [
    "AUTH",
    "CONNACK",
    "CONNACK_V5_REASONS",
    "CONNACK_V311_REASONS",
    "CONNECT",
    "DISCONNECT",
    "DISCONNECT_REASONS",
    "HEAD_BYTES",
    "NOT_RETRIABLE_CONNACK",
    "PINGREQ",
    "PINGREQ_PACKET",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBSCRIBE",
    "TRUNCATED",
    "UNSUBACK",
    "UNSUBSCRIBE",
    "V5",
    "V311",
    "VERSION_REFUSED",
    "Connack",
    "MqttProtocolError",
    "PacketReader",
    "TruncatedPayload",
    "connack_retriable",
    "encode_connect",
    "encode_disconnect",
    "encode_puback",
    "encode_pubacks",
    "encode_pubcomp",
    "encode_publish",
    "encode_pubrec",
    "encode_subscribe",
    "parse_connack",
    "parse_disconnect",
    "parse_packet_id",
    "parse_puback",
    "parse_publish",
    "parse_suback",
]

V311 = 4
V5 = 5

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PUBREC, PUBREL, PUBCOMP = 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

PINGREQ_PACKET = b"\xc0\x00"
_MAX_REMAINING = 268_435_455

TRUNCATED = 0x10
"""Flag bit :class:`PacketReader` sets on a PUBLISH larger than its limit (see there)."""

HEAD_BYTES = 70_000
"""How much of an oversize PUBLISH's body is kept: its variable header (a topic of up
to 65,535 bytes, packet id, properties) and the start of its payload."""

# MQTT 5 property identifiers by value type (MQTT 5.0, section 2.2.2.2).
_PROP_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_PROP_U16 = {0x13, 0x21, 0x22, 0x23}
_PROP_U32 = {0x02, 0x11, 0x18, 0x27}
_PROP_VARINT = {0x0B}
_PROP_STR = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_PROP_BIN = {0x09, 0x16}
_PROP_PAIR = {0x26}
_PROP_NAMES = {
    0x11: "session_expiry_interval",
    0x12: "assigned_client_identifier",
    0x13: "server_keep_alive",
    0x1F: "reason_string",
    0x21: "receive_maximum",
    0x22: "topic_alias_maximum",
    0x24: "maximum_qos",
    0x25: "retain_available",
    0x27: "maximum_packet_size",
    0x1C: "server_reference",
    0x28: "wildcard_subscription_available",
    0x2A: "shared_subscription_available",
}

CONNACK_V311_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
CONNACK_V5_REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}
NOT_RETRIABLE_CONNACK = frozenset({1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})
"""CONNACK refusals that a reconnect cannot fix: protocol version, client id, credentials,
authorization, bans. Every other refusal (server unavailable or busy, quotas, rates) may
pass: retry with backoff."""

VERSION_REFUSED = frozenset({1, 0x84})
"""CONNACK refusals meaning "not this MQTT version" (3.1.1 and 5 spell it differently)."""


def connack_retriable(reason_code: int) -> bool:
    """Whether connecting again may succeed after a CONNACK with ``reason_code``."""
    return reason_code not in NOT_RETRIABLE_CONNACK


DISCONNECT_REASONS = {
    0x00: "normal disconnection",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x89: "server busy",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over (another client connected with the same client id)",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x93: "receive maximum exceeded",
    0x94: "topic alias invalid",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x98: "administrative action",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9C: "use another server",
    0x9D: "server moved",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA0: "maximum connect time",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}


class MqttProtocolError(IngestError):
    """The peer sent bytes that are not valid MQTT (the connection must be dropped)."""


# -- primitives ---------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(4):
        if pos >= len(buf):
            raise MqttProtocolError("truncated variable byte integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MqttProtocolError("variable byte integer longer than 4 bytes")


def _str(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def _bin(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _packet(first_byte: int, body: bytes) -> bytes:
    if len(body) > _MAX_REMAINING:
        raise ValueError(f"MQTT packet body of {len(body)} bytes exceeds the protocol maximum")
    return bytes((first_byte,)) + _varint(len(body)) + body


def _encode_properties(props: dict[int, int]) -> bytes:
    out = bytearray()
    for ident, value in props.items():
        out.append(ident)
        if ident in _PROP_U16:
            out += struct.pack("!H", value)
        elif ident in _PROP_U32:
            out += struct.pack("!I", value)
        elif ident in _PROP_BYTE:
            out.append(value)
        else:
            raise ValueError(f"unsupported property 0x{ident:02x}")
    return _varint(len(out)) + bytes(out)


def _decode_properties(buf: bytes | memoryview, pos: int) -> tuple[dict[str, Any], int]:
    try:
        return _decode_properties_unchecked(buf, pos)
    except _PARSE_ERRORS as exc:
        raise MqttProtocolError(f"malformed properties: {exc}") from None


def _decode_properties_unchecked(buf: bytes | memoryview, pos: int) -> tuple[dict[str, Any], int]:
    length, pos = _read_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MqttProtocolError("properties longer than the packet")
    props: dict[str, Any] = {}
    while pos < end:
        ident = buf[pos]
        pos += 1
        value: Any
        if ident in _PROP_BYTE:
            value = buf[pos]
            pos += 1
        elif ident in _PROP_U16:
            (value,) = struct.unpack_from("!H", buf, pos)
            pos += 2
        elif ident in _PROP_U32:
            (value,) = struct.unpack_from("!I", buf, pos)
            pos += 4
        elif ident in _PROP_VARINT:
            value, pos = _read_varint(buf, pos)
        elif ident in _PROP_STR or ident in _PROP_BIN:
            (n,) = struct.unpack_from("!H", buf, pos)
            value = bytes(buf[pos + 2 : pos + 2 + n])
            if ident in _PROP_STR:
                value = value.decode("utf-8", "replace")
            pos += 2 + n
        elif ident in _PROP_PAIR:
            (n,) = struct.unpack_from("!H", buf, pos)
            pos += 2 + n
            (n,) = struct.unpack_from("!H", buf, pos)
            pos += 2 + n
            continue
        else:
            raise MqttProtocolError(f"unknown property identifier 0x{ident:02x}")
        props[_PROP_NAMES.get(ident, f"0x{ident:02x}")] = value
    if pos != end:
        raise MqttProtocolError("malformed properties")
    return props, end


# -- encoders -----------------------------------------------------------------


def encode_connect(
    client_id: str,
    *,
    version: int = V5,
    clean_start: bool = True,
    keepalive_s: int = 30,
    username: str | None = None,
    password: str | None = None,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
    maximum_packet_size: int | None = None,
) -> bytes:
    """CONNECT. ``session_expiry_s``, ``receive_maximum`` and ``maximum_packet_size``
    (the largest packet we accept, whole) apply to MQTT 5 only."""
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = bytearray(_str("MQTT"))
    body += bytes((version, flags)) + struct.pack("!H", keepalive_s)
    if version == V5:
        props: dict[int, int] = {}
        if session_expiry_s:
            props[0x11] = min(session_expiry_s, 0xFFFFFFFF)
        if receive_maximum:
            props[0x21] = min(receive_maximum, 65535)
        if maximum_packet_size:
            props[0x27] = min(maximum_packet_size, _MAX_REMAINING + 5)
        body += _encode_properties(props)
    body += _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _bin(password.encode())
    return _packet(CONNECT << 4, bytes(body))


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]], *, version: int = V5) -> bytes:
    """SUBSCRIBE for (topic filter, maximum QoS) pairs."""
    body = bytearray(struct.pack("!H", packet_id))
    if version == V5:
        body += b"\x00"
    for topic, qos in filters:
        body += _str(topic) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, bytes(body))


def encode_publish(
    topic: str | bytes,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
    version: int = V5,
) -> bytes:
    """PUBLISH (QoS 0 or 1; ``packet_id`` is required for QoS 1)."""
    t = topic.encode() if isinstance(topic, str) else topic
    head = struct.pack("!H", len(t)) + t
    if qos:
        head += struct.pack("!H", packet_id)
    if version == V5:
        head += b"\x00"
    first = (PUBLISH << 4) | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    return _packet(first, head + payload)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK with success (valid in 3.1.1 and 5: reason code omitted means success)."""
    return b"\x40\x02" + struct.pack("!H", packet_id)


def encode_pubacks(packet_ids: list[int]) -> bytes:
    """Several PUBACKs in one buffer, in the given order."""
    return b"".join([b"\x40\x02" + struct.pack("!H", p) for p in packet_ids])


def encode_pubrec(packet_id: int) -> bytes:
    """PUBREC (QoS 2, first answer), success."""
    return b"\x50\x02" + struct.pack("!H", packet_id)


def encode_pubcomp(packet_id: int, *, reason_code: int = 0, version: int = V5) -> bytes:
    """PUBCOMP (QoS 2, answer to PUBREL); MQTT 5 may carry a reason code (0x92: id not found)."""
    if reason_code and version == V5:
        return b"\x70\x03" + struct.pack("!HB", packet_id, reason_code)
    return b"\x70\x02" + struct.pack("!H", packet_id)


def encode_disconnect(*, version: int = V5, reason_code: int = 0) -> bytes:
    """DISCONNECT; normal by default (in MQTT 5 a session with a non-zero expiry is kept).

    A reason code (MQTT 5 only: 0x81 malformed packet, 0x82 protocol error, 0x95 packet
    too large …) tells the broker why the client drops the connection.
    """
    if reason_code and version == V5:
        return b"\xe0\x01" + bytes((reason_code,))
    return b"\xe0\x00"


# -- decoders -----------------------------------------------------------------
#
# Every parser raises MqttProtocolError, and only that, on bytes that are not a
# valid packet: a broker's bytes are untrusted input, and an IndexError escaping
# from a Protocol callback would end in the event loop's fatal-error handler.

_PARSE_ERRORS = (IndexError, struct.error, UnicodeDecodeError, ValueError)


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    reason_code: int
    properties: dict[str, Any] = field(default_factory=dict)

    def reason(self, version: int) -> str:
        table = CONNACK_V5_REASONS if version == V5 else CONNACK_V311_REASONS
        return table.get(self.reason_code, f"reason code 0x{self.reason_code:02x}")


def parse_connack(body: bytes, version: int) -> Connack:
    if len(body) < 2:
        raise MqttProtocolError("CONNACK shorter than 2 bytes")
    props: dict[str, Any] = {}
    if version == V5 and len(body) > 2:
        props, _ = _decode_properties(body, 2)
    return Connack(bool(body[0] & 1), body[1], props)


def parse_suback(body: bytes, version: int) -> tuple[int, list[int]]:
    """Return (packet id, granted QoS or failure code per filter)."""
    try:
        (packet_id,) = struct.unpack_from("!H", body, 0)
        pos = 2
        if version == V5:
            _, pos = _decode_properties(body, pos)
    except _PARSE_ERRORS as exc:
        raise MqttProtocolError(f"malformed SUBACK: {exc}") from None
    granted = list(body[pos:])
    if not granted:
        raise MqttProtocolError("SUBACK without a return code")
    return packet_id, granted


def parse_packet_id(body: bytes, name: str = "packet") -> int:
    """The packet identifier that starts PUBACK, PUBREC, PUBREL and PUBCOMP bodies."""
    if len(body) < 2:
        raise MqttProtocolError(f"{name} shorter than 2 bytes")
    pid: int = (body[0] << 8) | body[1]
    if pid == 0:
        raise MqttProtocolError(f"{name} with packet identifier 0")
    return pid


def parse_puback(body: bytes) -> tuple[int, int]:
    """Return (packet id, reason code)."""
    return parse_packet_id(body, "PUBACK"), body[2] if len(body) > 2 else 0


def parse_disconnect(body: bytes, version: int) -> tuple[int, str]:
    """Return (reason code, its meaning plus the broker's reason string if it sent one)."""
    code = body[0] if body and version == V5 else 0
    text = DISCONNECT_REASONS.get(code, f"reason code 0x{code:02x}")
    if version == V5 and len(body) > 1:
        try:
            props, _ = _decode_properties(body, 1)
        except MqttProtocolError:
            props = {}
        extra = [str(props[k]) for k in ("reason_string", "server_reference") if k in props]
        if extra:
            text += f" ({'; '.join(extra)})"
    return code, text


def parse_publish(flags: int, body: bytes, version: int) -> tuple[str, int, bytes]:
    """Return (topic, packet id or 0, payload) of a PUBLISH body."""
    try:
        (tlen,) = struct.unpack_from("!H", body, 0)
        pos = 2 + tlen
        if pos > len(body):
            raise MqttProtocolError("PUBLISH topic longer than the packet")
        topic = body[2:pos].decode()
        packet_id = 0
        if flags & 0x06:
            (packet_id,) = struct.unpack_from("!H", body, pos)
            if packet_id == 0:
                raise MqttProtocolError("QoS > 0 PUBLISH with packet identifier 0")
            pos += 2
        if version == V5:
            plen = body[pos]
            if plen < 128:
                pos += 1 + plen
            else:
                plen, pos = _read_varint(body, pos)
                pos += plen
    except UnicodeDecodeError:
        raise MqttProtocolError("PUBLISH topic is not UTF-8") from None
    except _PARSE_ERRORS as exc:
        raise MqttProtocolError(f"malformed PUBLISH: {exc}") from None
    if pos > len(body):
        raise MqttProtocolError("PUBLISH header longer than the packet")
    return topic, packet_id, body[pos:]


class TruncatedPayload(bytes):
    """The start of a payload too large to accept, standing in for the whole.

    Its ``len()`` is the size the broker sent (``size``), so the payload decoder
    refuses it as oversize (and the message goes to the dead letters, keeping
    these first bytes as evidence) without the service ever holding the rest.
    """

    size: int

    def __new__(cls, head: bytes, size: int) -> TruncatedPayload:
        obj = super().__new__(cls, head)
        obj.size = size
        return obj

    def __len__(self) -> int:
        return self.size


class PacketReader:
    """Splits a byte stream into MQTT packets.

    Args:
        max_packet_bytes: Largest packet body accepted whole. A larger PUBLISH is
            not held: its first :data:`HEAD_BYTES` are returned with the flag bit
            :data:`TRUNCATED` set and the body as a :class:`TruncatedPayload`
            (``len()`` = the body's real size), the rest is skipped as it streams
            in, so the message can be refused and acknowledged like any bad one
            instead of stalling the session. (An MQTT 5 broker is told our limit
            in CONNECT and should never send one.) Any other oversize packet
            raises :class:`MqttProtocolError`.
    """

    __slots__ = ("_buf", "_max", "_skip")

    def __init__(self, max_packet_bytes: int = _MAX_REMAINING) -> None:
        self._buf = bytearray()
        self._max = max_packet_bytes
        self._skip = 0

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Add bytes; return every complete packet as (type, flags, body)."""
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            first = buf[pos]
            length = buf[pos + 1]
            hdr = 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if pos + hdr >= end:
                        length = -1
                        break
                    byte = buf[pos + hdr]
                    hdr += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                    if hdr >= 5:  # 4 length bytes read and the 4th continues
                        raise MqttProtocolError("remaining length longer than 4 bytes")
                if length < 0:
                    break
            start = pos + hdr
            if length > self._max:
                if first >> 4 != PUBLISH:
                    raise MqttProtocolError(f"packet of {length} bytes exceeds {self._max}")
                keep = min(HEAD_BYTES, length)
                if end - start < keep:
                    break  # wait for the head
                head = bytes(buf[start : start + keep])
                out.append((PUBLISH, (first & 0x0F) | TRUNCATED, TruncatedPayload(head, length)))
                if end - start >= length:
                    pos = start + length
                    continue
                self._skip = length - (end - start)
                pos = end
                break
            if end - start < length:
                break
            out.append((first >> 4, first & 0x0F, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out
