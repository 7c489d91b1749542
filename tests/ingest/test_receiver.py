"""The receiver's end: stopping intake closes the inbox, acknowledgements still go out, and
``aclose()`` sends one DISCONNECT however often it is called (against a scripted broker)."""

from __future__ import annotations

import asyncio

import pytest

from ingest.core.metrics import Metrics
from ingest.core.retry import Backoff
from ingest.mqtt import proto as mp
from ingest.mqtt.client import MqttSettings
from ingest.pipeline.decode import Inbox
from ingest.pipeline.receiver import Receiver
from tests.ingest.harness import wait_until
from tests.ingest.hostile import HostileBroker, Peer


def _receiver(broker: HostileBroker, inbox: Inbox) -> Receiver:
    return Receiver(
        settings=MqttSettings(host="127.0.0.1", port=broker.port, client_id="receiver-test"),
        subscription="t/+",
        inbox=inbox,
        metrics=Metrics(),
        backoff=Backoff(base_ms=10, cap_ms=10),
    )


async def _serve_three(peer: Peer) -> None:
    await peer.handshake()
    await peer.suback()
    for pid in (1, 2, 3):
        peer.publish("t/a", b'{"v": 1}', packet_id=pid)
    await peer.serve_pings()


def _sent(peer: Peer, ptype: int) -> int:
    return sum(1 for t, _, _ in peer.received if t == ptype)


async def _wait_messages(inbox: Inbox, n: int) -> None:
    await wait_until(lambda: inbox.messages >= n, 10, f"{n} messages in the inbox")


async def _acked(peer: Peer, n: int) -> list[int]:
    """The broker's record of PUBACKs once ``n`` have arrived (its script serves pings)."""
    await wait_until(lambda: len(peer.acked()) >= n, 10, f"{n} PUBACKs")
    return peer.acked()


async def _track_all(receiver: Receiver, inbox: Inbox) -> list[int]:
    """What the decoder does with each chunk, then every message durable at once."""
    ids = []
    while inbox:
        epoch, received_ms, chunk = inbox.get_nowait()
        for topic, _, qos, pid in chunk:
            receiver.acks.done([receiver.acks.add(topic, pid, qos, epoch, received_ms, 1)])
            ids.append(pid)
    return ids


async def test_stopping_intake_closes_the_inbox_and_the_acks_still_go_out() -> None:
    async with HostileBroker(_serve_three) as broker:
        inbox = Inbox(100)
        receiver = _receiver(broker, inbox)
        run = asyncio.create_task(receiver.run())
        await _wait_messages(inbox, 3)
        peer = broker.peers[0]

        receiver.stop_intake()
        receiver.stop_intake()  # a second stop changes nothing
        assert inbox.closed
        peer.publish("t/a", b'{"v": 4}', packet_id=4)  # not read any more: the broker keeps it
        await asyncio.sleep(0.1)
        assert inbox.messages == 3

        assert await _track_all(receiver, inbox) == [1, 2, 3]
        assert await _acked(peer, 3) == [1, 2, 3]
        assert not run.done()  # still connected: acknowledgements need the connection

        await receiver.aclose()
        await asyncio.wait_for(run, 5)  # the receiver returns once its connection is closed
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert _sent(peer, mp.DISCONNECT) == 1
        assert peer.acked() == [1, 2, 3]


async def test_aclose_is_idempotent_and_a_closed_receiver_does_not_run_again() -> None:
    async with HostileBroker(_serve_three) as broker:
        inbox = Inbox(100)
        receiver = _receiver(broker, inbox)
        run = asyncio.create_task(receiver.run())
        await _wait_messages(inbox, 3)
        peer = broker.peers[0]

        await asyncio.gather(receiver.aclose(), receiver.aclose())
        await receiver.aclose()
        await asyncio.wait_for(run, 5)
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert _sent(peer, mp.DISCONNECT) == 1
        assert inbox.closed and not receiver.connected.is_set()
        assert len(broker.peers) == 1  # no reconnect after the close

        with pytest.raises(RuntimeError, match="closed"):
            await receiver.run()


async def test_a_cancelled_receiver_sends_the_acks_that_were_due_and_disconnects() -> None:
    """A drain cut short by cancellation still hands the broker what was durable."""
    async with HostileBroker(_serve_three) as broker:
        inbox = Inbox(100)
        receiver = _receiver(broker, inbox)
        run = asyncio.create_task(receiver.run())
        await _wait_messages(inbox, 3)
        peer = broker.peers[0]

        assert await _track_all(receiver, inbox) == [1, 2, 3]
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert peer.acked() == [1, 2, 3]
        assert _sent(peer, mp.DISCONNECT) == 1


async def test_as_a_context_manager_the_receiver_is_closed_on_exit() -> None:
    async with HostileBroker(_serve_three) as broker:
        inbox = Inbox(100)
        async with _receiver(broker, inbox) as receiver:
            run = asyncio.create_task(receiver.run())
            await _wait_messages(inbox, 3)
        await asyncio.wait_for(run, 5)
        peer = broker.peers[0]
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert _sent(peer, mp.DISCONNECT) == 1 and inbox.closed
