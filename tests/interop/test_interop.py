"""The core integration tests, once per broker of :mod:`tests.interop.brokers`.

Each test runs the service (in-process, or ``iot-ingest run`` as a subprocess where it
is SIGKILLed) against a fresh broker at the MQTT version the broker speaks and moto,
then proves both halves of at-least-once from the outside: the table holds every
reading exactly once, and, with the service stopped, the broker holds nothing for its
session (:func:`tests.drain.assert_drained`).

The harness's own drain check is off (``drained=False``): each test runs
:func:`assert_broker_drained` itself, last, with the broker's parameters (credentials,
TLS, nats-server's redelivery timer), because the check takes the session over.

Where a broker cannot keep a promise the service relies on, the test asserts what the
broker does instead (its :class:`~tests.interop.brokers.Traits`), so that
docs/brokers.md stays measured: a broker release that changes it fails here.

``test_broker_delivery_traits`` measures those traits with plain clients, no service:
in-flight window, redelivery after a reconnect, DUP, messages queued while away.
"""

from __future__ import annotations

import asyncio
import glob
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.config import Config
from ingest.mqtt.client import Message, MqttConnection
from ingest.pipeline.service import IngestService
from ingest.storage.layout import TableLayout
from ingest.trial.servers import ServerNotInstalledError
from tests.chaos.conftest import Worker
from tests.drain import assert_drained, session_backlog
from tests.ingest.harness import counter, make_config, read_table, running, wait_until
from tests.interop.brokers import InteropBroker

RECEIVED = "iot_ingest_messages_received_total"
COMPLETED = "iot_ingest_messages_completed_total"
SENSORS = [f"s{i}" for i in range(4)]

Key = tuple[str, int]


# -- helpers ------------------------------------------------------------------------------


def readings(
    prefix: str, start_ms: int, first: int, n: int
) -> tuple[list[tuple[str, bytes]], list[Key]]:
    """``n`` one-reading messages to ``{prefix}/{sensor}/telemetry`` and their table keys."""
    msgs, keys = [], []
    for i in range(first, first + n):
        sid, ts = SENSORS[i % len(SENSORS)], start_ms + i
        msgs.append((f"{prefix}/{sid}/telemetry", orjson.dumps({"ts": ts, "v": i})))
        keys.append((sid, ts))
    return msgs, keys


async def publish_to(broker: InteropBroker, msgs: list[tuple[str, bytes]]) -> int:
    """Publish with QoS 1 at the broker's MQTT version, each PUBACK awaited."""
    async with MqttConnection(broker.client_settings(f"pub-{uuid.uuid4().hex[:12]}")) as conn:
        for topic, payload in msgs:
            await conn.publish(topic, payload, qos=1)
    return len(msgs)


async def stored(endpoint: str, table: str, start_ms: int) -> Counter[Key]:
    """Items per key in the table (more than one for a key would be a duplicate)."""
    got = await read_table(endpoint, table, TableLayout(), SENSORS, start_ms, start_ms + 100_000)
    return Counter((sid, r.ts_ms) for sid, rs in got.items() for r in rs)


async def wait_stored(
    endpoint: str, table: str, start_ms: int, keys: list[Key], timeout_s: float
) -> Counter[Key]:
    deadline = time.monotonic() + timeout_s
    while True:
        items = await stored(endpoint, table, start_ms)
        missing = set(keys) - set(items)
        if not missing:
            return items
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(keys)} readings never reached the table "
                f"in {timeout_s:g} s (first missing: {sorted(missing)[:3]})"
            )
        await asyncio.sleep(0.3)


def assert_once(items: Counter[Key], keys: list[Key]) -> None:
    dup = {k: n for k, n in items.items() if n > 1}
    assert not dup, f"{len(dup)} keys written more than once: {list(dup.items())[:3]}"
    assert set(items) == set(keys), (
        f"missing {len(set(keys) - set(items))}, unexpected {len(set(items) - set(keys))}"
    )


async def assert_broker_drained(broker: InteropBroker, client_id: str) -> None:
    await assert_drained(broker.client_url, client_id, **broker.drain_kwargs())


def service_config(
    broker: InteropBroker,
    endpoint: str,
    name: str,
    data_dir: Path,
    *,
    tls: bool = False,
    **overrides: Any,
) -> Config:
    return make_config(
        broker_url=broker.service_url(tls=tls),
        endpoint=endpoint,
        name=name,
        data_dir=data_dir,
        mqtt_protocol=broker.traits.version,
        **overrides,
    )


def now_ms() -> int:
    return int(time.time() * 1000) - 60_000  # a minute back: inside the accepted window


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_acks_are_held_until_durable_and_the_broker_redelivers_them(
    broker: InteropBroker,
    moto_server: Any,
    fault_proxy: Callable[..., Awaitable[Any]],
    unique_name: str,
    tmp_path: Path,
    interop_figure: Callable[..., None],
) -> None:
    """DynamoDB down: nothing acknowledged; the service stops, comes back: all lands once."""
    proxy = await fault_proxy(moto_server.endpoint_url)
    cfg = service_config(
        broker, proxy.url, unique_name, tmp_path,
        shutdown_timeout_s=1, write_retry_base_ms=10, write_retry_max_ms=200,
    )  # fmt: skip
    start = now_ms()
    msgs, keys = readings(unique_name, start, 0, 30)
    first = IngestService(cfg)
    async with running(first, drained=False):  # held on purpose: checked at the end
        await proxy.set_down(True)
        await publish_to(broker, msgs)
        await wait_until(lambda: counter(first, RECEIVED) >= 1, 20, "a first delivery")
        await asyncio.sleep(0.5)  # whatever the broker's window lets through arrives
        held = counter(first, RECEIVED)
        assert counter(first, COMPLETED) == 0, "acknowledged while nothing was durable"
    # The drain deadline passed with nothing durable: stopped without a single PUBACK.
    assert not await stored(moto_server.endpoint_url, cfg.dynamodb.table, start)
    await proxy.set_down(False)
    second = IngestService(cfg)
    async with running(second, drained=False):
        if broker.traits.redelivers_in_flight:
            items = await wait_stored(moto_server.endpoint_url, cfg.dynamodb.table, start, keys, 30)
        else:
            # The broker dropped what it had sent: nothing held comes back (docs/brokers.md).
            await asyncio.sleep(1.0)
            items = await stored(moto_server.endpoint_url, cfg.dynamodb.table, start)
            lost = len(keys) - len(items)
            assert lost == held, f"{broker.name} now keeps in-flight messages: update its Traits"
            keys = [k for k in keys if k in items]
        redelivered = counter(second, RECEIVED)
    interop_figure(
        "held-acks", broker.name,
        held_in_flight=int(held), redelivered=int(redelivered), stored=len(items),
    )  # fmt: skip
    assert_once(items, keys)
    await assert_broker_drained(broker, cfg.mqtt.mqtt_client_id)


@pytest.mark.timeout(120)
async def test_persistent_session_survives_sigkill_and_what_was_published_meanwhile(
    broker: InteropBroker,
    moto_server: Any,
    fault_proxy: Callable[..., Awaitable[Any]],
    unique_name: str,
    tmp_path: Path,
    interop_figure: Callable[..., None],
) -> None:
    """``iot-ingest run`` SIGKILLed with messages in flight, publishing goes on, restart."""
    proxy = await fault_proxy(moto_server.endpoint_url)
    cfg = service_config(broker, proxy.url, unique_name, tmp_path)
    worker = Worker(
        "worker", tmp_path,
        mqtt_url=cfg.mqtt.mqtt_url, mqtt_protocol=cfg.mqtt.mqtt_protocol, mqtt_client_id=cfg.mqtt.mqtt_client_id,
        topic=cfg.mqtt.topic, table=cfg.dynamodb.table, dynamodb_endpoint=proxy.url, create_table=True,
        data_dir=tmp_path / "worker", flush_interval_ms=20, registry_interval_s=1,
        shutdown_timeout_s=20, write_retry_base_ms=10, write_retry_max_ms=200,
    )  # fmt: skip
    start = now_ms()
    before, before_keys = readings(unique_name, start, 0, 12)
    during, during_keys = readings(unique_name, start, 12, 12)
    after, after_keys = readings(unique_name, start, 24, 12)
    await worker.start()
    try:
        await publish_to(broker, before)
        await worker.wait_metric(COMPLETED, len(before), 30)
        await proxy.set_down(True)  # what arrives now stays in flight
        await publish_to(broker, during)
        await worker.wait_metric(RECEIVED, len(before) + 1, 20)
        await asyncio.sleep(0.5)  # whatever the broker's window lets through arrives
        in_flight = await worker.metric(RECEIVED) - len(before)
        await worker.kill()
        await proxy.set_down(False)
        await publish_to(broker, after)  # while the service is down
        await worker.start()
        if broker.traits.redelivers_in_flight:
            lost: list[Key] = []
            expected = before_keys + during_keys + after_keys
        else:
            # The in-flight ones died with the connection; queued ones must all arrive.
            lost = during_keys[: int(in_flight)]
            expected = [k for k in before_keys + during_keys + after_keys if k not in lost]
        items = await wait_stored(moto_server.endpoint_url, cfg.dynamodb.table, start, expected, 40)
        assert await worker.stop() == 0, worker.tail()
    finally:
        if worker.proc is not None and worker.proc.returncode is None:
            await worker.kill()
    interop_figure("sigkill", broker.name, in_flight_at_kill=int(in_flight), lost=len(lost))
    assert_once(items, expected)
    await assert_broker_drained(broker, cfg.mqtt.mqtt_client_id)


@pytest.mark.timeout(90)
async def test_shared_subscription_gives_every_reading_to_one_worker(
    broker: InteropBroker,
    moto_server: Any,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Two workers in one ``$share`` group: each reading once, both worked (or the broker's no)."""
    cfgs = [
        service_config(
            broker,
            moto_server.endpoint_url,
            unique_name,
            tmp_path / w,
            shared_group="g",
            mqtt_client_id=f"{unique_name}-{w}"[-64:],
        )
        for w in ("a", "b")
    ]
    start = now_ms()
    msgs, keys = readings(unique_name, start, 0, 60)
    a, b = IngestService(cfgs[0]), IngestService(cfgs[1])
    if broker.traits.shared == "refused":
        # MQTT 5 says so in CONNACK (Shared Subscription Available = 0): the service refuses
        # to run, before it subscribes, naming why (docs/brokers.md), rather than
        # reconnecting forever: nothing received, nothing lost.
        await publish_to(broker, msgs)
        with pytest.raises(ExceptionGroup) as info:
            await asyncio.wait_for(a.run(asyncio.Event(), asyncio.Event()), 30)
        (error,) = info.value.exceptions
        assert "does not support shared subscriptions" in str(error)
        assert counter(a, RECEIVED) == 0
        assert not await stored(moto_server.endpoint_url, cfgs[0].dynamodb.table, start)
        await assert_broker_drained(broker, cfgs[0].mqtt.mqtt_client_id)
        return
    async with running(a, drained=False), running(b, drained=False):
        await publish_to(broker, msgs)

        def done() -> float:
            return counter(a, COMPLETED) + counter(b, COMPLETED)

        if broker.traits.shared == "ignored":
            # Granted as a plain filter that no topic matches: ready, and nothing arrives.
            await asyncio.sleep(1.0)
            assert counter(a, RECEIVED) + counter(b, RECEIVED) == 0
            assert a.readiness()[0] and b.readiness()[0]
        else:
            await wait_until(lambda: done() >= len(msgs), 30, "every reading durable")
            assert counter(a, RECEIVED) > 0 and counter(b, RECEIVED) > 0, "one worker idle"
            assert done() == len(msgs)  # each message went to exactly one worker
    if broker.traits.shared == "yes":
        assert_once(await stored(moto_server.endpoint_url, cfgs[0].dynamodb.table, start), keys)
    else:
        assert not await stored(moto_server.endpoint_url, cfgs[0].dynamodb.table, start)
    await asyncio.gather(*(assert_broker_drained(broker, c.mqtt.mqtt_client_id) for c in cfgs))


@pytest.mark.timeout(60)
async def test_tls(
    tls_broker: InteropBroker, moto_server: Any, unique_name: str, tmp_path: Path, pki: Any
) -> None:
    """The service over TLS (the test CA, host name checked), readings land once."""
    broker = tls_broker
    cfg = service_config(
        broker, moto_server.endpoint_url, unique_name, tmp_path, tls=True, mqtt_ca_file=pki.ca
    )
    start = now_ms()
    msgs, keys = readings(unique_name, start, 0, 20)
    service = IngestService(cfg)
    async with running(service, drained=False):
        await publish_to(broker, msgs)
        await wait_until(lambda: counter(service, COMPLETED) >= len(msgs), 30, "durable")
    assert_once(await stored(moto_server.endpoint_url, cfg.dynamodb.table, start), keys)
    await assert_broker_drained(broker, cfg.mqtt.mqtt_client_id)


@pytest.mark.timeout(60)
async def test_broker_delivery_traits(
    broker: InteropBroker, unique_name: str, interop_figure: Callable[..., None]
) -> None:
    """What the broker does with unacknowledged QoS 1 messages, measured with plain clients.

    First the largest message the service accepts by default (``max_message_bytes``,
    256 KiB) must go through, acknowledged. Then a subscriber that acknowledges nothing
    gets ``sent`` messages (how many arrive is the broker's in-flight window),
    disconnects, five more are published; the drain oracle then resumes the session:
    what comes back, with or without DUP.
    """
    cid, prefix = f"traits-{uuid.uuid4().hex[:8]}", unique_name
    got: list[Message] = []
    acking = True
    conn: MqttConnection

    def on_messages(chunk: list[Message]) -> None:
        got.extend(chunk)
        if acking:
            conn.ack([pid for _, _, _, pid in chunk])

    conn = MqttConnection(broker.client_settings(cid, clean_start=False), on_messages)
    connack = await conn.open()
    await conn.subscribe([(f"{prefix}/+/telemetry", 1)])
    largest = Config().limits.max_message_bytes
    await publish_to(broker, [(f"{prefix}/big/telemetry", b"x" * largest)])
    await wait_until(lambda: len(got) == 1, 10, "the largest accepted message")
    assert len(got[0][1]) == largest
    got.clear()
    acking = False
    sent, _ = readings(prefix, 0, 0, 60)
    await publish_to(broker, sent)
    await asyncio.sleep(0.5)  # under nats-server's ack_wait: no resend on this connection yet
    window = len(got)
    await conn.aclose()
    queued, _ = readings(prefix, 0, 100, 5)
    await publish_to(broker, queued)
    kwargs = broker.drain_kwargs()
    kwargs["timeout_s"] = kwargs["quiet_s"] + 1.0  # one that resends on a timer never goes quiet
    present, resent = await session_backlog(broker.client_url, cid, **kwargs)
    held = list({h.payload: h for h in resent}.values())  # each message once
    in_flight = {p for _, p, _, _ in got}
    back = [h for h in held if h.payload in in_flight]
    came_back_queued = [h for h in held if h.payload in {p for _, p in queued}]
    interop_figure(
        "delivery", broker.name,
        in_flight_window=window, held_on_resume=len(held), resent=len(resent), redelivered=len(back),
        redelivered_dup=sum(h.dup for h in back), queued_delivered=len(came_back_queued),
        connack=connack.properties,
    )  # fmt: skip
    assert present
    assert window == (broker.traits.in_flight_window or len(sent))
    limit = broker.traits.in_flight_window
    if broker.traits.redelivers_in_flight:
        # Without acks a window of one shows only its head again; otherwise all of it.
        assert len(back) == (window if limit is None else min(window, limit))
        assert all(h.dup == broker.traits.dup_on_redelivery for h in back)
    else:
        assert not back
    # Messages published while away are queued for the session (behind a full window: not yet).
    if limit is None:
        assert sorted(h.payload for h in came_back_queued) == sorted(p for _, p in queued)


async def test_a_missing_broker_program_says_run_make_test_deps(
    pki: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No silent skip: a broker that is not installed fails its tests, naming the fix."""
    from tests.interop import brokers

    monkeypatch.setattr(brokers, "AEDES_JS", tmp_path / "no-aedes" / "aedes.js")
    monkeypatch.setattr(shutil, "which", lambda _name: None)  # and no ejabberd under /usr/lib:
    monkeypatch.setattr(glob, "glob", lambda _pattern: [])
    for cls in (brokers.AedesBroker, brokers.EjabberdBroker):
        server = cls(pki)
        with pytest.raises(ServerNotInstalledError, match="run `make test-deps`"):
            await server.start()
        await server.aclose()
