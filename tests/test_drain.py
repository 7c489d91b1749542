"""The drain oracle itself: it must see what a broker holds, and nothing when nothing is held."""

from __future__ import annotations

import asyncio

import pytest

from bench.servers import MosquittoServer
from ingest.mqtt.client import MqttConnection, MqttSettings
from tests.drain import assert_drained, session_backlog
from tests.ingest.harness import publish


def _settings(server: MosquittoServer, client_id: str) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=server.port, client_id=client_id)


async def test_backlog_sees_queued_and_in_flight_messages(mosquitto: MosquittoServer) -> None:
    cid = "drain-oracle-held"
    got: list[int] = []
    conn = MqttConnection(_settings(mosquitto, cid), lambda chunk: got.extend(m[3] for m in chunk))
    await conn.open()
    await conn.subscribe([("oracle/+/t", 1)])
    await publish(mosquitto.url, [("oracle/a/t", b"1"), ("oracle/a/t", b"2")])
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.05)
    await conn.aclose()  # two in flight, never acknowledged
    await publish(mosquitto.url, [("oracle/a/t", b"3")])  # queued while away

    present, held = await session_backlog(mosquitto.url, cid)
    assert present
    assert sorted(h.payload for h in held) == [b"1", b"2", b"3"]
    assert sum(h.dup for h in held) == 2  # the two resent in-flight ones carry DUP
    with pytest.raises(AssertionError, match="still held 3"):
        # the check acknowledged nothing, but it ended the session (expiry 0): resume a new one
        await _refill_and_assert(mosquitto, cid)


async def _refill_and_assert(server: MosquittoServer, cid: str) -> None:
    conn = MqttConnection(_settings(server, cid))
    await conn.open()
    await conn.subscribe([("oracle/+/t", 1)])
    await conn.aclose()
    await publish(server.url, [("oracle/b/t", b"x"), ("oracle/b/t", b"y"), ("oracle/b/t", b"z")])
    await assert_drained(server.url, cid)


async def test_drained_when_everything_was_acknowledged(mosquitto: MosquittoServer) -> None:
    cid = "drain-oracle-acked"
    conn: MqttConnection

    def ack_all(chunk: list[tuple[str, bytes, int, int]]) -> None:
        conn.ack([m[3] for m in chunk])

    conn = MqttConnection(_settings(mosquitto, cid), ack_all)
    await conn.open()
    await conn.subscribe([("oracle2/+/t", 1)])
    await publish(mosquitto.url, [("oracle2/a/t", b"%d" % i) for i in range(20)])
    await asyncio.sleep(0.3)
    await conn.aclose()
    await assert_drained(mosquitto.url, cid)


async def test_vanished_session_is_not_taken_for_drained(mosquitto: MosquittoServer) -> None:
    with pytest.raises(AssertionError, match="kept no session"):
        await assert_drained(mosquitto.url, "drain-oracle-never-connected")
