"""The connection under arbitrary broker bytes: nothing escapes, nothing is acknowledged by itself.

Property-based, over the protocol callback directly (no socket): whatever a broker
sends after a valid CONNACK, ``data_received`` never raises (an exception there
ends in the event loop's fatal-error handler), the connection never writes a
PUBACK or PUBREC on its own (only the owner acknowledges, once data is durable),
and any delivered message is well formed.
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.mqtt import proto as mp
from ingest.mqtt.client import Message, MqttConnection, MqttSettings
from tests.ingest.hostile import connack_packet, packet, publish_packet
from tests.ingest.mqttfake import FakeTransport, attach


def _written_types(data: bytes) -> list[int]:
    return [t for t, _, _ in mp.PacketReader().feed(bytes(data))]


async def _feed(version: int, chunks: list[bytes]) -> tuple[FakeTransport, list[Message]]:
    got: list[Message] = []
    conn = MqttConnection(
        MqttSettings(host="x", port=1, client_id="c", version=version, max_packet_bytes=2000),
        got.extend,
    )
    transport = attach(conn)
    conn.data_received(connack_packet(version=version))
    for c in chunks:
        if transport.aborted:
            break
        conn.data_received(c)
    return transport, got


_valid = st.builds(
    lambda qos, pid, dup, size: publish_packet("a/b", b"x" * size, qos=qos, packet_id=pid, dup=dup),
    st.integers(0, 2),
    st.integers(1, 65535),
    st.booleans(),
    st.integers(0, 3000),
)
_chunks = st.lists(st.one_of(st.binary(max_size=64), _valid), max_size=8)


@settings(max_examples=300, deadline=None)
@given(chunks=_chunks, version=st.sampled_from([mp.V5, mp.V311]))
def test_arbitrary_broker_bytes_never_raise_and_are_never_acknowledged(
    chunks: list[bytes], version: int
) -> None:
    transport, got = asyncio.run(_feed(version, chunks))
    written = _written_types(bytes(transport.written))
    assert mp.PUBACK not in written and mp.PUBREC not in written
    for topic, payload, qos, pid in got:
        assert isinstance(topic, str) and isinstance(payload, bytes)
        assert qos in (0, 1, 2) and (pid == 0) == (qos == 0)
    # A protocol error is answered by DISCONNECT and an abort, nothing else.
    if transport.aborted:
        assert set(written) <= {mp.DISCONNECT, mp.PUBCOMP}


def test_publish_before_connack_is_a_protocol_error() -> None:
    async def run() -> FakeTransport:
        conn = MqttConnection(MqttSettings(host="x", port=1, client_id="c"), lambda _: None)
        transport = attach(conn)
        conn.data_received(publish_packet("a/b", b"{}", qos=1, packet_id=1))
        return transport

    transport = asyncio.run(run())
    assert transport.aborted
    assert bytes(transport.written) == b"\xe0\x01\x81"  # DISCONNECT, malformed packet


def test_is_open_is_false_as_soon_as_the_transport_closes() -> None:
    """A DISCONNECT from the broker closes the transport before connection_lost runs."""

    async def run() -> tuple[bool, bool]:
        conn = MqttConnection(MqttSettings(host="x", port=1, client_id="c"), lambda _: None)
        attach(conn)
        conn.data_received(connack_packet())
        conn._state = "open"  # as open() leaves it after CONNACK
        before = conn.is_open
        conn.data_received(packet(0xE0, b"\x98\x00"))  # DISCONNECT, administrative action
        return before, conn.is_open

    assert asyncio.run(run()) == (True, False)


def test_republishing_dead_letters_on_a_closing_connection_drops_them_quietly() -> None:
    """Dead-letter copies are best effort: a closing connection must not raise into the spool."""
    from ingest.core.metrics import Metrics
    from ingest.core.retry import Backoff
    from ingest.pipeline.decode import Inbox
    from ingest.pipeline.receiver import Receiver

    async def run() -> bytes:
        settings = MqttSettings(host="x", port=1, client_id="c")
        receiver = Receiver(
            settings=settings,
            subscription="a/+",
            inbox=Inbox(100),
            metrics=Metrics(),
            backoff=Backoff(base_ms=10, cap_ms=10),
        )
        conn = MqttConnection(settings, lambda _: None)
        transport = attach(conn)
        conn.data_received(connack_packet())
        conn._state = "open"
        receiver._conn = conn
        conn.data_received(packet(0xE0, b"\x8b\x00"))  # DISCONNECT: server shutting down
        written = bytes(transport.written)
        receiver.republish("dead/letters", [b"one", b"two"])
        return bytes(transport.written)[len(written) :]

    assert asyncio.run(run()) == b""
