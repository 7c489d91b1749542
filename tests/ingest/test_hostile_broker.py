"""The real service against a broker that misbehaves on purpose (tests/ingest/hostile.py).

Each test runs the in-process service with moto as DynamoDB and asserts, on the
broker's side, which packets the service sent back: acknowledgements exactly for
what is durable, no crash, a reconnect where the protocol says to drop the
connection, and a clear refusal where running on would break at-least-once.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.servers import MotoServer
from ingest.config import Config
from ingest.mqtt import proto as mp
from ingest.mqtt.link import MqttError
from ingest.pipeline.decode import Inbox
from ingest.pipeline.service import IngestService
from ingest.storage.layout import TableLayout
from tests.ingest.harness import counter, make_config, read_table, running, wait_until
from tests.ingest.hostile import HostileBroker, Peer, connack_packet, packet, publish_packet

NOW_MS = int(time.time() * 1000) - 30_000


def _config(broker: HostileBroker, moto: MotoServer, name: str, tmp: Path, **kw: Any) -> Config:
    return make_config(
        broker_url=broker.url,
        endpoint=moto.endpoint_url,
        name=name,
        data_dir=tmp,
        mqtt_reconnect_min_ms=20,
        mqtt_reconnect_max_ms=200,
        **kw,
    )


def _reading(name: str, i: int, sensor: str = "s1") -> tuple[str, bytes]:
    return f"{name}/{sensor}/telemetry", orjson.dumps({"ts": NOW_MS + i, "v": i})


async def _stamps(moto: MotoServer, table: str, sensor: str = "s1") -> list[int]:
    got = await read_table(
        moto.endpoint_url, table, TableLayout(), [sensor], NOW_MS - 1, NOW_MS + 100_000
    )
    return [r.ts_ms for r in got[sensor]]


async def test_messages_resent_right_after_connack_are_acknowledged(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    """A broker resends its in-flight messages right after CONNACK, before SUBACK (Mosquitto does)."""
    msgs = [_reading(unique_name, i) for i in range(5)]

    async def script(peer: Peer) -> None:
        await peer.handshake(session_present=True)
        for pid, (topic, payload) in enumerate(msgs, 1):
            peer.publish(topic, payload, qos=1, packet_id=pid, dup=True)
        await peer.suback()
        await peer.wait_acked({1, 2, 3, 4, 5})
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            peer = await broker.wait_peers(1)
            await wait_until(lambda: len(peer.acked()) >= 5, 20, "PUBACKs for the resent messages")
    assert broker.errors == []
    assert peer.acked() == [1, 2, 3, 4, 5]
    assert sorted(await _stamps(moto_server, unique_name)) == [NOW_MS + i for i in range(5)]


async def test_duplicates_with_dup_inside_one_connection_write_once(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    topic, payload = _reading(unique_name, 1)

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.suback()
        peer.publish(topic, payload, qos=1, packet_id=7)
        peer.publish(topic, payload, qos=1, packet_id=7, dup=True)  # a broker must not; some do
        peer.publish(*_reading(unique_name, 2), qos=1, packet_id=8)
        await peer.wait_acked({7, 8})
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            peer = await broker.wait_peers(1)
            await wait_until(lambda: {7, 8} <= set(peer.acked()), 20, "PUBACKs")
    assert broker.errors == []
    assert peer.acked() == [7, 8]  # one PUBACK per message: the resend is not tracked twice
    assert sorted(await _stamps(moto_server, unique_name)) == [NOW_MS + 1, NOW_MS + 2]


_GARBAGE = {
    # A PUBLISH whose topic length runs past the packet.
    "topic-past-end": packet(0x32, b"\xff\xff\x00\x01abc"),
    # A PUBLISH with QoS 3 (both QoS bits set): malformed.
    "qos3": publish_packet("x/s1/telemetry", b"{}", qos=3, packet_id=4),
    # A remaining length of five bytes.
    "varint": b"\x30\xff\xff\xff\xff\x01",
    # A packet only a client may send.
    "subscribe": packet(0x82, b"\x00\x01\x00\x00\x01a\x01"),
    # A PUBACK too short to hold a packet id.
    "short-puback": packet(0x40, b"\x01"),
}


@pytest.mark.parametrize("garbage", sorted(_GARBAGE))
async def test_malformed_packets_drop_the_connection_and_lose_nothing(
    moto_server: MotoServer, unique_name: str, tmp_path: Path, garbage: str
) -> None:
    """Protocol error → DISCONNECT 0x81/0x82 → reconnect; the redelivered message lands once."""
    topic, payload = _reading(unique_name, 3)

    async def script(peer: Peer) -> None:
        await peer.handshake(session_present=peer.index > 0)
        if peer.index == 0:
            await peer.suback()
            peer.send(_GARBAGE[garbage])
            await peer.closed.wait()
            return
        peer.publish(topic, payload, qos=1, packet_id=1, dup=True)
        await peer.suback()
        await peer.wait_acked({1})
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            second = await broker.wait_peers(2)
            await wait_until(lambda: 1 in second.acked(), 20, "PUBACK on the new connection")
            assert counter(service, "iot_ingest_mqtt_reconnects_total") >= 1
    assert broker.errors == []
    first = broker.peers[0]
    disconnects = [b for t, _, b in first.received if t == mp.DISCONNECT]
    assert disconnects and disconnects[0][:1] in (b"\x81", b"\x82"), first.received
    assert not first.acked()
    assert await _stamps(moto_server, unique_name) == [NOW_MS + 3]


async def test_truncated_packet_then_close_is_redelivered_and_lands_once(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    topic, payload = _reading(unique_name, 4)
    whole = publish_packet(topic, payload, qos=1, packet_id=2)

    async def script(peer: Peer) -> None:
        await peer.handshake(session_present=peer.index > 0)
        await peer.suback()
        if peer.index == 0:
            peer.send(whole[: len(whole) // 2])
            await asyncio.sleep(0.2)
            return  # closes mid-packet
        peer.send(publish_packet(topic, payload, qos=1, packet_id=2, dup=True))
        await peer.wait_acked({2})
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            second = await broker.wait_peers(2)
            await wait_until(lambda: 2 in second.acked(), 20, "PUBACK after the redelivery")
    assert broker.errors == [] and not broker.peers[0].acked()
    assert await _stamps(moto_server, unique_name) == [NOW_MS + 4]


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_oversize_publish_is_dead_lettered_and_acknowledged_not_buffered(
    moto_server: MotoServer, unique_name: str, tmp_path: Path, version: str
) -> None:
    """A broker ignoring our Maximum Packet Size (or a 3.1.1 one, which can't be told)."""
    big = orjson.dumps({"ts": NOW_MS, "v": 1, "pad": "x" * 400_000})
    topic = f"{unique_name}/s1/telemetry"
    connect: list[bytes] = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        connect.append(peer.connect_body)
        await peer.suback()
        peer.publish(topic, big, qos=1, packet_id=11)
        peer.publish(*_reading(unique_name, 5), qos=1, packet_id=12)
        await peer.wait_acked({11, 12})
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        cfg = _config(
            broker,
            moto_server,
            unique_name,
            tmp_path,
            mqtt_protocol=version,
            max_message_bytes=1000,
        )
        service = IngestService(cfg)
        async with running(service, drained=False):
            peer = await broker.wait_peers(1)
            await wait_until(lambda: {11, 12} <= set(peer.acked()), 20, "PUBACKs")
            assert counter(service, "iot_ingest_mqtt_reconnects_total") == 0
    assert broker.errors == [] and peer.acked() == [11, 12]
    assert await _stamps(moto_server, unique_name) == [NOW_MS + 5]
    letters = [
        orjson.loads(line)
        for f in (tmp_path / "deadletters").glob("*.jsonl")
        for line in f.read_bytes().splitlines()
    ]
    assert len(letters) == 1 and letters[0]["topic"] == topic
    assert f"message of {len(big)} bytes exceeds max_message_bytes=1000" in letters[0]["reason"]
    if version == "5":  # CONNECT advertised the limit: property 0x27, u32
        limit = 1000 + 65_536 + 64 + 5
        assert b"\x27" + struct.pack("!I", limit) in connect[0]


async def test_qos2_publish_gets_pubrec_once_durable_and_pubcomp_for_pubrel(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.suback()
        peer.publish(*_reading(unique_name, 6), qos=2, packet_id=21)
        await peer.wait_acked({21}, mp.PUBREC)
        peer.send(packet(0x62, struct.pack("!H", 21)))  # PUBREL
        peer.send(packet(0x62, struct.pack("!H", 99)))  # PUBREL for an id never received
        await peer.wait_acked({21, 99}, mp.PUBCOMP)
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            peer = await broker.wait_peers(1)
            await wait_until(lambda: {21, 99} <= set(peer.acked(mp.PUBCOMP)), 20, "PUBCOMPs")
    assert broker.errors == []
    assert peer.acked(mp.PUBREC) == [21] and peer.acked(mp.PUBACK) == []
    comps = {struct.unpack_from("!H", b)[0]: b[2:] for t, _, b in peer.received if t == mp.PUBCOMP}
    assert comps == {21: b"", 99: b"\x92"}  # 0x92: packet identifier not found
    assert await _stamps(moto_server, unique_name) == [NOW_MS + 6]


@pytest.mark.parametrize(
    ("code", "text"),
    [(0x89, "server busy"), (0x8E, "session taken over"), (0x98, "administrative")],
)
async def test_disconnect_with_a_reason_reconnects_and_says_why(
    moto_server: MotoServer,
    unique_name: str,
    tmp_path: Path,
    code: int,
    text: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen_error: list[str | None] = []

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.suback()
        if peer.index == 0:
            peer.send(packet(0xE0, bytes((code,)) + b"\x00"))
            await peer.closed.wait()
            return
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            await broker.wait_peers(2)
            assert service._receiver is not None
            seen_error.append(service._receiver.last_error)
    assert broker.errors == []
    assert any(text in r.getMessage() and f"0x{code:02x}" in r.getMessage() for r in caplog.records)
    if code == 0x8E:
        assert any("client id" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


async def test_silent_broker_is_dropped_after_keepalive_and_reconnected(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    """A stalled socket: CONNACK and SUBACK, then no answer to PINGREQ."""

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.suback()
        if peer.index == 0:
            await peer.closed.wait()  # reads, never answers
            return
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(
            _config(broker, moto_server, unique_name, tmp_path, mqtt_keepalive_s=5)
        )
        async with running(service, drained=False):
            t0 = time.monotonic()
            await broker.wait_peers(2, timeout_s=20)
            waited = time.monotonic() - t0
    assert broker.errors == []
    assert 5 <= waited < 15  # dropped after 1.5 × keepalive, not at once and not never


async def test_suback_granting_qos0_refuses_to_run(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.suback(granted=0)
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        with pytest.raises(ExceptionGroup) as info:
            async with running(service, drained=False):
                pass
    (error,) = info.value.exceptions
    assert isinstance(error, MqttError) and not error.retriable
    assert "granted QoS 0" in str(error) and "at most once" in str(error)
    assert len(broker.peers) == 1  # not retried


async def test_burst_during_connect_respects_the_inbox_bound(
    moto_server: MotoServer,
    unique_name: str,
    tmp_path: Path,
    fault_proxy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconnect while DynamoDB is down: the broker resends thousands before SUBACK.

    The receiver must pause on the new connection as on any other (the inbox stays
    within its bound plus one socket read), wait for the SUBACK queued behind the
    burst without timing out, and acknowledge everything once DynamoDB is back.
    """
    n = 3000
    pad = "p" * 900  # ~1 kB messages: one socket read carries at most a few hundred
    msgs = [
        (f"{unique_name}/s1/telemetry", orjson.dumps({"ts": NOW_MS + i, "v": i, "pad": pad}))
        for i in range(n)
    ]
    go = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.handshake(session_present=peer.index > 0)
        if peer.index == 0:
            await peer.suback()
            await go.wait()
            return  # drop the connection: the service reconnects
        for pid, (topic, payload) in enumerate(msgs, 1):
            peer.publish(topic, payload, qos=1, packet_id=pid, dup=True)
        await peer.writer.drain()
        await peer.suback()
        await peer.wait_acked(set(range(1, n + 1)), timeout_s=90)
        await peer.serve_pings()

    peak = [0]
    real_put = Inbox.put

    def put(self: Inbox, epoch: int, received_ms: int, chunk: list[Any]) -> None:
        real_put(self, epoch, received_ms, chunk)
        peak[0] = max(peak[0], self.messages)

    monkeypatch.setattr(Inbox, "put", put)
    proxy = await fault_proxy(moto_server.endpoint_url, seed=2)
    async with HostileBroker(script) as broker:
        cfg = make_config(
            broker_url=broker.url,
            endpoint=proxy.url,
            name=unique_name,
            data_dir=tmp_path,
            inbox_max_messages=100,
            max_tag_length=1000,
            write_queue_batches=1,
            write_concurrency=1,
            write_retry_base_ms=10,
            write_retry_max_ms=300,
            mqtt_reconnect_min_ms=20,
        )
        service = IngestService(cfg)
        async with running(service, drained=False):
            await proxy.set_down(True)
            go.set()
            second = await broker.wait_peers(2)
            await asyncio.sleep(12)  # > connect_timeout_s (10 s) with the SUBACK unread
            assert len(broker.peers) == 2  # no SUBACK timeout, no reconnect storm
            assert not second.acked()
            await proxy.set_down(False)
            await wait_until(lambda: len(second.acked()) >= n, 90, "every PUBACK")
    assert broker.errors == []
    assert second.acked() == list(range(1, n + 1))
    assert 100 <= peak[0] <= 100 + 400, peak[0]
    assert len(await _stamps(moto_server, unique_name)) == n
    assert counter(service, "iot_ingest_dead_letters_total") == 0


async def test_a_broker_refusing_the_protocol_version_says_which_setting_to_change(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    """A 3.1.1-only broker that follows the spec answers an MQTT 5 CONNECT with 0x84."""

    async def script(peer: Peer) -> None:
        await peer.expect(mp.CONNECT)
        peer.send(connack_packet(0x84))

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        with pytest.raises(ExceptionGroup) as info:
            async with running(service, drained=False):
                pass
    (error,) = info.value.exceptions
    assert isinstance(error, MqttError) and not error.retriable
    assert "unsupported protocol version" in str(error) and "mqtt_protocol = '3.1.1'" in str(error)


async def test_cancelling_a_connect_in_progress_closes_the_socket() -> None:
    """A stop while connecting (the broker accepted TCP, never answers) leaves no socket open."""
    from ingest.mqtt.client import MqttConnection, MqttSettings

    async def script(peer: Peer) -> None:
        await peer.expect(mp.CONNECT)
        await peer.closed.wait()

    async with HostileBroker(script) as broker:
        conn = MqttConnection(MqttSettings(host="127.0.0.1", port=broker.port, client_id="c"))
        task = asyncio.create_task(conn.open())
        peer = await broker.wait_peers(1)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert not conn.is_open


async def test_a_stale_resend_never_acknowledges_the_next_message_with_its_id(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    """A broker resending on a timer (NATS, EMQX, VerneMQ) after our PUBACK, then reusing the id.

    Tracking the stale copy would send a second PUBACK 7 that the broker takes for the
    new message 7 before that one is durable.
    """

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.suback()
        peer.publish(*_reading(unique_name, 1), qos=1, packet_id=7)
        await peer.wait_acked({7})
        peer.publish(*_reading(unique_name, 1), qos=1, packet_id=7, dup=True)  # stale resend
        peer.publish(*_reading(unique_name, 2), qos=1, packet_id=7)  # a new message, id reused
        peer.publish(*_reading(unique_name, 3), qos=1, packet_id=8)
        await peer.wait_acked({8})
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            peer = await broker.wait_peers(1)
            await wait_until(lambda: 8 in peer.acked(), 20, "PUBACK 8")
            await asyncio.sleep(0.3)
    assert broker.errors == []
    assert peer.acked() == [7, 7, 8]  # the first message, the new one, message 8
    assert sorted(await _stamps(moto_server, unique_name)) == [NOW_MS + i for i in (1, 2, 3)]


def _connack_props(*props: bytes) -> bytes:
    body = b"".join(props)
    return bytes((len(body),)) + body


async def test_the_brokers_keep_alive_replaces_ours(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    """MQTT 5 Server Keep Alive (MQTT-3.2.2-21): 5 s from the broker, though we asked for 30."""
    pinged: list[float] = []

    async def script(peer: Peer) -> None:
        await peer.handshake(connack_props=_connack_props(b"\x13" + struct.pack("!H", 5)))
        await peer.suback()
        t0 = time.monotonic()
        while True:
            t, _, _ = await peer.next_packet(timeout_s=20)
            if t == mp.PINGREQ:
                pinged.append(time.monotonic() - t0)
                peer.send(b"\xd0\x00")

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            await wait_until(lambda: len(pinged) >= 2, 15, "two PINGREQs")
    assert pinged[0] < 4 and pinged[1] - pinged[0] < 4  # every 2.5 s, not every 15 s


async def test_a_shorter_session_expiry_granted_by_the_broker_is_said(
    moto_server: MotoServer, unique_name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake(connack_props=_connack_props(b"\x11" + struct.pack("!I", 300)))
        await peer.suback()
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        service = IngestService(_config(broker, moto_server, unique_name, tmp_path))
        async with running(service, drained=False):
            pass
    assert any(
        "keeps this session only 300 s" in r.getMessage() and r.levelname == "WARNING"
        for r in caplog.records
    )


async def test_shared_subscription_on_a_broker_without_them_refuses_to_run(
    moto_server: MotoServer, unique_name: str, tmp_path: Path
) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake(connack_props=_connack_props(b"\x2a\x00"))
        await peer.serve_pings()

    async with HostileBroker(script) as broker:
        cfg = _config(broker, moto_server, unique_name, tmp_path, shared_group="g")
        with pytest.raises(ExceptionGroup) as info:
            async with running(IngestService(cfg), drained=False):
                pass
    (error,) = info.value.exceptions
    assert isinstance(error, MqttError) and not error.retriable
    assert "does not support shared subscriptions" in str(error)
    assert len(broker.peers) == 1
