"""Unit tests of ingest.pipeline.acks: PUBACKs in arrival order, only once the data is durable."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.pipeline.acks import AckTracker, Pending

TOPIC = "sensors/dev-1/telemetry"


@dataclass
class Recorder:
    """Records what the tracker sends and completes."""

    calls: list[list[int]] = field(default_factory=list)
    completed: int = 0
    stale: int = 0

    def send(self, ids: list[int]) -> None:
        assert ids, "send is never called with nothing to acknowledge"
        self.calls.append(list(ids))

    def on_complete(self, n: int) -> None:
        self.completed += n

    def on_stale(self, n: int) -> None:
        self.stale += n

    @property
    def acked(self) -> list[int]:
        return [i for call in self.calls for i in call]


def tracker() -> tuple[AckTracker, Recorder]:
    rec = Recorder()
    return AckTracker(rec.send, rec.on_complete, rec.on_stale), rec


def add(t: AckTracker, packet_id: int, *, qos: int = 1, units: int = 1) -> Pending:
    return t.add(TOPIC, packet_id, qos, t.epoch, 0, units)


def test_acks_are_released_in_arrival_order() -> None:
    t, rec = tracker()
    p1, p2, p3 = add(t, 1), add(t, 2), add(t, 3)

    t.done([p3])
    assert rec.calls == []  # 3 waits for 1 and 2
    t.done([p1])
    assert rec.calls == [[1]]
    t.done([p2])
    assert rec.calls == [[1], [2, 3]]
    assert rec.completed == 3
    assert len(t) == 0


def test_message_with_several_units_waits_for_all_of_them() -> None:
    t, rec = tracker()
    p = add(t, 9, units=3)

    t.done([p, p])
    assert rec.acked == []
    assert len(t) == 1
    t.done([p])
    assert rec.acked == [9]


def test_one_call_may_complete_units_of_several_messages() -> None:
    t, rec = tracker()
    p1, p2 = add(t, 1, units=2), add(t, 2, units=1)

    t.done([p2, p1, p1])

    assert rec.calls == [[1, 2]]


def test_qos0_messages_are_never_acked_and_do_not_block() -> None:
    t, rec = tracker()
    q0 = add(t, 0, qos=0)
    q1 = add(t, 7)
    q0b = add(t, 0, qos=0)
    q2 = add(t, 8)

    t.done([q0])
    assert rec.calls == []  # nothing to send for QoS 0 (and never an empty send)
    t.done([q1, q2])
    assert rec.calls == [[7]]  # 8 still waits for the QoS 0 message before it
    t.done([q0b])
    assert rec.calls == [[7], [8]]
    assert rec.completed == 4


def test_zero_unit_message_completes_at_once_but_in_order() -> None:
    t, rec = tracker()
    empty_first = add(t, 1, units=0)
    assert rec.calls == [[1]]
    assert empty_first.remaining == 0

    p2 = add(t, 2)
    add(t, 3, units=0)
    assert rec.acked == [1]  # 3 has nothing to write but must not overtake 2
    t.done([p2])
    assert rec.calls == [[1], [2, 3]]
    assert len(t) == 0


def test_messages_of_an_older_epoch_are_not_acked() -> None:
    t, rec = tracker()
    old = add(t, 1)
    assert t.new_epoch() == 1
    new = add(t, 1)  # the broker redelivers with a fresh packet id space
    new2 = add(t, 2)

    t.done([new, new2])
    assert rec.acked == []  # still behind the old message
    t.done([old])

    assert rec.calls == [[1, 2]]
    assert rec.completed == 3
    assert rec.stale == 1  # complete, never acknowledged: counted as left to the broker
    assert new.epoch == 1
    assert old.epoch == 0


async def test_wait_idle_returns_once_every_message_is_complete() -> None:
    t, _ = tracker()
    await asyncio.wait_for(t.wait_idle(), 1)  # idle from the start

    p1, p2 = add(t, 1), add(t, 2)
    waiter = asyncio.create_task(t.wait_idle())
    await asyncio.sleep(0)
    t.done([p2])
    await asyncio.sleep(0)
    assert not waiter.done()

    t.done([p1])
    await asyncio.wait_for(waiter, 1)
    assert len(t) == 0


async def test_wait_idle_waits_again_after_new_messages() -> None:
    t, _ = tracker()
    p = add(t, 1)
    t.done([p])
    await asyncio.wait_for(t.wait_idle(), 1)

    p = add(t, 2)
    waiter = asyncio.create_task(t.wait_idle())
    await asyncio.sleep(0)
    assert not waiter.done()
    t.done([p])
    await asyncio.wait_for(waiter, 1)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[int, int, bool]], list[int]]:
    """Messages (qos, units, new epoch before it) and an order to complete their units."""
    shapes = draw(
        st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=30)
    )
    bumps = draw(st.sets(st.integers(0, len(shapes) - 1), max_size=3))
    messages = [(qos, units, i in bumps) for i, (qos, units) in enumerate(shapes)]
    units = [i for i, (_, n) in enumerate(shapes) for _ in range(n)]
    return messages, draw(st.permutations(units))


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios())
def test_acks_follow_arrival_order_whatever_the_completion_order(
    scenario: tuple[list[tuple[int, int, bool]], list[int]],
) -> None:
    messages, completion_order = scenario
    t, rec = tracker()
    pendings: list[Pending] = []
    left: list[int] = []
    expected: list[int] = []
    released = 0

    def release_complete_prefix() -> None:
        # A message is released once it and every earlier one are complete; it is
        # acknowledged if it is QoS 1 and was received on the connection of that moment.
        nonlocal released
        while released < len(pendings) and left[released] == 0:
            p = pendings[released]
            if p.qos == 1 and p.epoch == t.epoch:
                expected.append(p.packet_id)
            released += 1

    for i, (qos, units, bump) in enumerate(messages):
        if bump:
            t.new_epoch()
        pendings.append(t.add(TOPIC, i + 1, qos, t.epoch, 0, units))
        left.append(units)
        release_complete_prefix()
        assert rec.acked == expected

    for index in completion_order:
        t.done([pendings[index]])
        left[index] -= 1
        release_complete_prefix()
        assert rec.acked == expected

    # Once all is durable: every QoS 1 message of the current epoch, in arrival order.
    current = [p.packet_id for p in pendings if p.qos == 1 and p.epoch == t.epoch]
    assert rec.acked[len(rec.acked) - len(current) :] == current
    assert rec.completed == len(messages)
    assert len(t) == 0
