"""The connection mechanics both MQTT clients share (ingest.mqtt.link), tested directly.

And the rule they share: the service's connection and the simulator's publisher
give up on exactly the same CONNACK refusals, the one set in ingest.mqtt.proto.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ingest.mqtt import proto as mp
from ingest.mqtt.client import MqttConnection, MqttSettings
from ingest.mqtt.link import MqttConnectError, MqttError, MqttLink
from simulator.errors import BrokerRefused
from simulator.publisher import BrokerAddress, MqttPublisher
from tests.ingest.hostile import HostileBroker, Peer, connack_packet
from tests.ingest.mqttfake import FakeTransport, attach

# Retriable refusals seen in the wild: server unavailable (3.1.1), unspecified, server
# unavailable, server busy, quota exceeded, connection rate exceeded (5).
_RETRIABLE = (3, 0x80, 0x88, 0x89, 0x97, 0x9F)


def test_the_non_retriable_connack_codes_are_defined_once_with_these_values() -> None:
    assert frozenset({1, 2, 4, 5, 0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C}) == mp.NOT_RETRIABLE_CONNACK
    assert [mp.connack_retriable(c) for c in (1, 3, 0x86, 0x89)] == [False, True, False, True]


def _refusing(code: int) -> Any:
    async def script(peer: Peer) -> None:
        await peer.expect(mp.CONNECT)
        peer.send(connack_packet(code, version=mp.V5 if code >= 0x80 else mp.V311))
        await peer.closed.wait()

    return script


async def _service_refusal(port: int, version: int) -> MqttConnectError:
    conn = MqttConnection(
        MqttSettings(host="127.0.0.1", port=port, client_id="svc", version=version)
    )
    with pytest.raises(MqttConnectError) as info:
        await conn.open()
    assert not conn.is_open
    return info.value


async def _simulator_refusal(port: int, version: int) -> BrokerRefused:
    pub = MqttPublisher(BrokerAddress(host="127.0.0.1", port=port), ["sim"], ["t"], version=version)
    with pytest.raises(ExceptionGroup) as info:  # the connect task group wraps it
        async with pub:
            pass
    (error,) = info.value.exceptions
    assert isinstance(error, BrokerRefused)
    return error


@pytest.mark.parametrize(
    "code", sorted(mp.NOT_RETRIABLE_CONNACK) + list(_RETRIABLE), ids=lambda c: f"0x{c:02x}"
)
async def test_service_and_simulator_refuse_to_retry_on_the_same_connack_codes(code: int) -> None:
    version = mp.V5 if code >= 0x80 else mp.V311
    async with HostileBroker(_refusing(code)) as broker:
        service = await _service_refusal(broker.port, version)
        simulator = await _simulator_refusal(broker.port, version)
    expected = code not in mp.NOT_RETRIABLE_CONNACK
    assert (service.retriable, simulator.retriable) == (expected, expected)
    reason = mp.Connack(False, code).reason(version)
    assert reason in str(service) and reason in str(simulator)
    assert len(broker.peers) == 2 and broker.errors == []


# -- the handshake --------------------------------------------------------------


async def test_handshake_returns_the_connack_and_leaves_the_link_open() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake(session_present=True, connack_props=b"\x03\x21\x00\x07")
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        link = MqttLink("c", version=mp.V5, keepalive_s=30)
        connack = await link.handshake(
            "127.0.0.1", broker.port, mp.encode_connect("c"), tls=None, timeout_s=5
        )
        assert (connack.session_present, connack.reason_code) == (True, 0)
        assert connack.properties == {"receive_maximum": 7}
        assert link.transport is not None and not link.transport.is_closing()
        peer = broker.peers[0]
        assert peer.connect_body[-1:] == b"c"  # the CONNECT we gave, client id last
        link.transport.close()


async def test_a_connection_closed_before_connack_is_a_retriable_error_naming_the_broker() -> None:
    async def script(peer: Peer) -> None:
        await peer.expect(mp.CONNECT)

    async with HostileBroker(script) as broker:
        link = MqttLink("c", version=mp.V5, keepalive_s=30)
        with pytest.raises(MqttError) as info:
            await link.handshake(
                "127.0.0.1", broker.port, mp.encode_connect("c"), tls=None, timeout_s=5
            )
        assert f"'c' to mqtt://127.0.0.1:{broker.port}" in str(info.value)
    assert type(info.value) is MqttError and info.value.retriable
    assert "connection closed" in str(info.value)
    assert link.transport is None


async def test_no_connack_within_the_timeout_aborts_the_socket() -> None:
    async def script(peer: Peer) -> None:
        await peer.expect(mp.CONNECT)
        await peer.closed.wait()

    async with HostileBroker(script) as broker:
        link = MqttLink("c", version=mp.V5, keepalive_s=30)
        started = time.monotonic()
        with pytest.raises(MqttError, match="TimeoutError"):
            await link.handshake(
                "127.0.0.1", broker.port, mp.encode_connect("c"), tls=None, timeout_s=0.3
            )
        assert 0.3 <= time.monotonic() - started < 3
        await asyncio.wait_for(broker.peers[0].closed.wait(), 5)


async def test_a_refused_protocol_version_names_the_other_version() -> None:
    async with HostileBroker(_refusing(0x84)) as broker:
        link = MqttLink("c", version=mp.V5, keepalive_s=30)
        with pytest.raises(MqttConnectError) as info:
            await link.handshake(
                "127.0.0.1",
                broker.port,
                mp.encode_connect("c"),
                tls=None,
                timeout_s=5,
                version_hint="set proto = {other!r}",
            )
    assert not info.value.retriable and info.value.reason_code == 0x84
    assert "unsupported protocol version" in str(info.value)
    assert "set proto = '3.1.1'" in str(info.value)


# -- packet ids -------------------------------------------------------------------


def test_packet_ids_count_from_1_wrap_after_65535_and_skip_those_in_use() -> None:
    link = MqttLink("c", version=mp.V5, keepalive_s=0)
    assert [link.next_packet_id({}) for _ in range(3)] == [1, 2, 3]
    assert [link.next_packet_id({4: None, 5: None}) for _ in range(2)] == [6, 7]
    link._last_packet_id = 65534
    assert [link.next_packet_id(set()) for _ in range(3)] == [65535, 1, 2]
    link._last_packet_id = 65535
    assert link.next_packet_id({1, 2, 3}) == 4


def test_no_free_packet_id_is_an_error_not_a_hang() -> None:
    link = MqttLink("c", version=mp.V5, keepalive_s=0)
    in_use = set(range(1, 65536))
    with pytest.raises(MqttError, match="no free packet identifier"):
        link.next_packet_id(in_use)
    in_use.discard(40_000)
    assert link.next_packet_id(in_use) == 40_000


# -- reading packets, keepalive (over a recording transport) ------------------------


def _link(version: int = mp.V5, keepalive_s: int = 0) -> tuple[MqttLink, FakeTransport]:
    link = MqttLink("c", version=version, keepalive_s=keepalive_s)
    return link, attach(link)


def test_packets_split_across_reads_come_out_whole_and_in_order() -> None:
    link, transport = _link()
    data = mp.encode_puback(7) + mp.encode_publish("a/b", b"xyz", qos=1, packet_id=9)
    out = link.read_packets(data[:3]) + link.read_packets(data[3:10]) + link.read_packets(data[10:])
    assert [(t, b[:2]) for t, _, b in out] == [(mp.PUBACK, b"\x00\x07"), (mp.PUBLISH, b"\x00\x03")]
    assert not transport.aborted and transport.written == b""


@pytest.mark.parametrize(
    ("version", "disconnect"), [(mp.V5, b"\xe0\x01\x81"), (mp.V311, b"\xe0\x00")]
)
def test_bytes_that_are_not_mqtt_drop_the_link_saying_why(version: int, disconnect: bytes) -> None:
    link, transport = _link(version)
    assert link.read_packets(b"\x40\xff\xff\xff\xff\x01") == []  # a 5-byte remaining length
    assert transport.aborted and bytes(transport.written) == disconnect
    assert link.close_reason is not None and "remaining length" in link.close_reason


def test_a_second_connack_is_a_protocol_error() -> None:
    async def run() -> tuple[MqttLink, asyncio.Future[mp.Connack]]:
        link, _ = _link()
        link._connack = asyncio.get_running_loop().create_future()
        link.connack_received(b"\x00\x00\x00")
        with pytest.raises(mp.MqttProtocolError, match="second CONNACK"):
            link.connack_received(b"\x00\x00\x00")
        return link, link._connack

    _, fut = asyncio.run(run())
    assert fut.result().reason_code == 0


def test_a_broker_disconnect_closes_the_link_with_its_reason() -> None:
    link, transport = _link()
    link.disconnect_received(b"\x8b\x00")
    assert transport.closing and not transport.aborted
    assert link.close_reason == "MQTT broker sent DISCONNECT: server shutting down (0x8b)"


async def test_keepalive_pings_at_half_the_interval_and_drops_a_silent_broker() -> None:
    link, transport = _link(keepalive_s=1)
    link.start_keepalive()
    await asyncio.sleep(0.6)
    assert bytes(transport.written) == mp.PINGREQ_PACKET and not transport.aborted
    link.last_rx = time.monotonic() - 1.6  # silent for longer than 1.5 × keepalive
    await asyncio.sleep(0.55)
    assert transport.aborted and bytes(transport.written) == mp.PINGREQ_PACKET
    link.connection_lost(None)
    assert link.transport is None and link._ping_timer is None


async def test_keepalive_does_not_judge_a_broker_whose_bytes_we_are_not_reading() -> None:
    link, transport = _link(keepalive_s=1)
    link.reading_paused = True
    link.last_rx = time.monotonic() - 60
    link.start_keepalive()
    await asyncio.sleep(1.15)
    assert bytes(transport.written) == mp.PINGREQ_PACKET * 2 and not transport.aborted
    link.connection_lost(None)


async def test_the_connack_waiter_learns_why_the_link_was_lost() -> None:
    link, transport = _link()
    fut = link._connack = asyncio.get_running_loop().create_future()
    link.read_packets(b"\x40\xff\xff\xff\xff\x01")
    link.connection_lost(None)
    with pytest.raises(MqttError, match="protocol error from broker: remaining length"):
        fut.result()
    assert transport.aborted


# -- the simulator's publisher on the shared reading rules -----------------------------


async def test_a_malformed_puback_drops_the_publishers_connection_keeping_earlier_acks() -> None:
    pub = MqttPublisher(BrokerAddress(host="x", port=1), ["sim"], ["t"], version=mp.V5)
    c = pub._conns[0]
    transport = attach(c)
    c.up = True
    pub._state = "open"
    for _ in range(3):
        assert pub.publish_nowait(0, b"{}")
    sent = len(transport.written)
    c.data_received(mp.encode_puback(1) + mp.encode_puback(2) + b"\x40\x02\x00\x00")  # id 0
    assert transport.aborted
    assert bytes(transport.written[sent:]) == b"\xe0\x01\x82"  # protocol error
    assert (pub.stats.messages_acked, pub.unsettled, sorted(c.inflight)) == (2, 1, [3])
