"""The broker's side of at-least-once: what a stopped service's session still holds.

"Nothing acknowledged is lost" is checked by reading the table; its other half,
"everything written is acknowledged", can only be checked at the broker. After a
test stops the service, :func:`session_backlog` resumes the service's persistent
session with an independent client (paho-mqtt, not the project's own MQTT code),
same client id, clean start off, subscribing to nothing: whatever the broker
sends is what it still held for the service — in-flight messages it resends, and
queued ones it never delivered. :func:`assert_drained` asserts that is nothing.

The check acknowledges nothing and ends the session (session expiry 0 on this
connection), so call it last, with the service stopped: connecting with the
service's client id takes the session over.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Held", "assert_drained", "session_backlog"]


@dataclass(frozen=True, slots=True)
class Held:
    """One message the broker still held for the session."""

    topic: str
    payload: bytes
    qos: int
    dup: bool


def _backlog(
    url: str,
    client_id: str,
    *,
    version: str,
    quiet_s: float,
    timeout_s: float,
    tls: ssl.SSLContext | None,
    username: str | None,
    password: str | None,
) -> tuple[bool, list[Held]]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    parts = urlsplit(url)
    protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=None if protocol == mqtt.MQTTv5 else False,
        manual_ack=True,  # acknowledge nothing: the check must not change what it measures
    )
    if tls is not None:
        client.tls_set_context(tls)
    if username is not None:
        client.username_pw_set(username, password)
    held: list[Held] = []
    lock = threading.Lock()
    last = [time.monotonic()]
    connected = threading.Event()
    session_present = [False]

    def on_connect(_c: object, _u: object, flags: object, reason: object, _p: object) -> None:
        session_present[0] = bool(getattr(flags, "session_present", False))
        if not getattr(reason, "is_failure", False):
            connected.set()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            held.append(Held(msg.topic, bytes(msg.payload), msg.qos, bool(msg.dup)))
            last[0] = time.monotonic()

    client.on_connect = on_connect
    client.on_message = on_message
    kwargs: dict[str, object] = {}
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        kwargs = {"clean_start": False, "properties": props}
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30, **kwargs)  # type: ignore[arg-type]
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise TimeoutError(f"could not resume session {client_id!r} at {url}")
        last[0] = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return session_present[0], list(held)


async def session_backlog(
    url: str,
    client_id: str,
    *,
    version: str = "5",
    quiet_s: float = 1.5,
    timeout_s: float = 20.0,
    tls: ssl.SSLContext | None = None,
    username: str | None = None,
    password: str | None = None,
) -> tuple[bool, list[Held]]:
    """Resume ``client_id``'s session; return (session present, messages the broker sent).

    Waits until the broker has been silent for ``quiet_s`` (at most ``timeout_s``).
    """
    return await asyncio.to_thread(
        _backlog,
        url,
        client_id,
        version=version,
        quiet_s=quiet_s,
        timeout_s=timeout_s,
        tls=tls,
        username=username,
        password=password,
    )


async def assert_drained(
    url: str,
    client_id: str,
    *,
    version: str = "5",
    expect_session: bool = True,
    **kwargs: object,
) -> None:
    """Assert the broker holds nothing for the stopped service's session.

    Args:
        url: Broker URL (``mqtt://host:port``).
        client_id: The service's client id (``mqtt_client_id``).
        version: ``"5"`` or ``"3.1.1"``, as the service connected.
        expect_session: Also assert the session still existed (the service kept it
            persistent); a vanished session would make "nothing held" meaningless.
        kwargs: Passed to :func:`session_backlog`.
    """
    present, held = await session_backlog(url, client_id, version=version, **kwargs)  # type: ignore[arg-type]
    if expect_session:
        assert present, f"the broker kept no session for {client_id!r}: nothing to check"
    assert not held, (
        f"the broker still held {len(held)} message(s) for {client_id!r} after the service "
        f"stopped (written but never acknowledged?): first {held[:3]}"
    )
