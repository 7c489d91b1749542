"""Micro benchmarks of the two MQTT hot paths, over a recording transport (no socket).

* The simulator's publisher: ``publish_nowait`` of 1,000 QoS 1 messages (packet id,
  PUBLISH encoding, write) and their PUBACKs read back in chunks of 100.
* The service's connection: 1,000 QoS 1 PUBLISHes read in chunks of 20 (as from one
  socket read), handed over, then acknowledged.

Each group has a ``floor``: the same bytes through :mod:`ingest.mqtt.proto` alone, with
no connection object. Machines here are shared, so compare a path's ratio to its floor
in one run, not absolute times across runs::

    .venv/bin/pytest -p no:cacheprovider tests/bench/test_micro_mqtt.py --benchmark-enable
"""

from __future__ import annotations

import asyncio

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from ingest.mqtt import proto as mp
from ingest.mqtt.client import Message, MqttConnection, MqttSettings
from simulator.publisher import BrokerAddress, MqttPublisher
from tests.ingest.hostile import connack_packet
from tests.ingest.mqttfake import FakeTransport, attach

N = 1000
PAYLOAD = b'{"ts":1763780000123,"temperature":22.5,"humidity":45.2}'
TOPIC = "sensors/env-00007/telemetry"


_CONNACK = connack_packet()  # success, MQTT 5


def _pubacks(first: int, count: int) -> bytes:
    return mp.encode_pubacks(list(range(first, first + count)))


def _open_publisher(loop: asyncio.AbstractEventLoop) -> tuple[MqttPublisher, FakeTransport]:
    async def make() -> MqttPublisher:
        return MqttPublisher(
            BrokerAddress(host="x", port=1),
            ["bench-0"],
            [TOPIC],
            qos=1,
            version=mp.V5,
            max_inflight=N,
            max_pending=N,
        )

    pub = loop.run_until_complete(make())
    c = pub._conns[0]
    transport = attach(c, keep=False)  # only counts: the rounds write a lot
    c.up = True
    pub._state = "open"
    return pub, transport


@pytest.mark.benchmark(group="publisher")
def test_publisher_1000_qos1_messages_and_their_pubacks(benchmark: BenchmarkFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        pub, transport = _open_publisher(loop)
        c = pub._conns[0]
        acks = [_pubacks(i, 100) for i in range(1, N + 1, 100)]

        def run() -> int:
            c._last_packet_id = 0  # ids 1..N every round, so the prepared PUBACKs match
            for _ in range(N):
                pub.publish_nowait(0, PAYLOAD)
            for chunk in acks:
                c.data_received(chunk)
            return len(c.inflight)

        assert benchmark(run) == 0
        assert pub.stats.messages_acked == pub.stats.messages_sent > 0
        assert transport.bytes_written > 0 and not transport.aborted
    finally:
        loop.close()


@pytest.mark.benchmark(group="publisher")
def test_publisher_floor_encode_and_parse_only(benchmark: BenchmarkFixture) -> None:
    transport = FakeTransport(keep=False)
    reader = mp.PacketReader()
    topic = TOPIC.encode()
    acks = [_pubacks(i, 100) for i in range(1, N + 1, 100)]

    def run() -> int:
        inflight: dict[int, bytes] = {}
        for pid in range(1, N + 1):
            inflight[pid] = PAYLOAD
            transport.write(mp.encode_publish(topic, PAYLOAD, qos=1, packet_id=pid))
        for chunk in acks:
            for _, _, body in reader.feed(chunk):
                inflight.pop(mp.parse_puback(body)[0], None)
        return len(inflight)

    assert benchmark(run) == 0


_PUBLISHES = [
    b"".join(
        mp.encode_publish(TOPIC, PAYLOAD, qos=1, packet_id=i + j)
        for j in range(20)
        # a broker's resend timer would set DUP; these are first deliveries
    )
    for i in range(1, N + 1, 20)
]


@pytest.mark.benchmark(group="client")
def test_client_receives_and_acks_1000_qos1_publishes(benchmark: BenchmarkFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        got: list[Message] = []

        async def make() -> MqttConnection:
            return MqttConnection(MqttSettings(host="x", port=1, client_id="bench"), got.extend)

        def run() -> int:
            conn = loop.run_until_complete(make())  # a fresh one: packet ids repeat per round
            transport = attach(conn, keep=False)
            conn.data_received(_CONNACK)
            got.clear()
            for chunk in _PUBLISHES:
                conn.data_received(chunk)
                conn.ack([m[3] for m in got[-20:]])
            assert not transport.aborted
            return len(got)

        assert benchmark(run) == N
    finally:
        loop.close()


@pytest.mark.benchmark(group="client")
def test_client_floor_parse_only(benchmark: BenchmarkFixture) -> None:
    transport = FakeTransport(keep=False)

    def run() -> int:
        reader = mp.PacketReader()
        got: list[Message] = []
        for chunk in _PUBLISHES:
            for _, flags, body in reader.feed(chunk):
                topic, pid, payload = mp.parse_publish(flags, body, mp.V5)
                got.append((topic, payload, 1, pid))
            transport.write(mp.encode_pubacks([m[3] for m in got[-20:]]))
        return len(got)

    assert benchmark(run) == N
