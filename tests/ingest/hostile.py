"""A scripted MQTT "broker" for what real brokers never do (tests only).

Real brokers are tested in tests/interop and the integration tests; this one
exists to misbehave on purpose: publish before SUBACK, resend with DUP inside a
connection, send malformed, truncated and oversize packets, QoS 2 and the
invalid QoS 3, DISCONNECT with reason codes, or go silent. Each accepted
connection runs the test's script, an async function of a :class:`Peer`.

Everything the client sends is recorded per connection (``Peer.received``), so a
test can assert which packet ids were acknowledged, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ingest.core.lifecycle import StartClose
from ingest.mqtt import proto as mp

__all__ = ["HostileBroker", "Peer", "Script", "connack_packet", "packet", "publish_packet"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    """One packet with a correct remaining length."""
    return bytes((first_byte,)) + _varint(len(body)) + body


def publish_packet(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    packet_id: int = 1,
    dup: bool = False,
    version: int = mp.V5,
) -> bytes:
    """A PUBLISH as a broker sends it (``qos`` may be anything 0..3, on purpose)."""
    return mp.encode_publish(topic, payload, qos=qos, packet_id=packet_id, dup=dup, version=version)


def connack_packet(
    reason_code: int = 0,
    *,
    version: int = mp.V5,
    session_present: bool = False,
    props: bytes = b"\x00",
) -> bytes:
    """A CONNACK: ``props`` (the encoded properties, none by default) is sent in MQTT 5 only."""
    tail = props if version == mp.V5 else b""
    return packet(mp.CONNACK << 4, bytes((int(session_present), reason_code)) + tail)


@dataclass
class Peer:
    """One client connection, seen from the broker's side."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int
    version: int = mp.V5
    connect_body: bytes = b""
    received: list[tuple[int, int, bytes]] = field(default_factory=list)
    _buf: mp.PacketReader = field(default_factory=mp.PacketReader)
    _pending: list[tuple[int, int, bytes]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _pump(self) -> None:
        try:
            while data := await self.reader.read(65536):
                for p in self._buf.feed(data):
                    self.received.append(p)
                    self._pending.append(p)
                self._arrived.set()
        except (ConnectionError, mp.MqttProtocolError):
            pass
        finally:
            self.closed.set()
            self._arrived.set()

    async def next_packet(self, timeout_s: float = 10.0) -> tuple[int, int, bytes]:
        """The next packet the client sent (in order); raises TimeoutError or EOFError."""
        async with asyncio.timeout(timeout_s):
            while not self._pending:
                if self.closed.is_set():
                    raise EOFError("the client closed the connection")
                self._arrived.clear()
                await self._arrived.wait()
        return self._pending.pop(0)

    async def expect(self, ptype: int, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """Skip PINGREQs; the next other packet must be ``ptype``: return (flags, body)."""
        while True:
            t, flags, body = await self.next_packet(timeout_s)
            if t == mp.PINGREQ:
                self.send(b"\xd0\x00")
                continue
            if t == mp.DISCONNECT and ptype != mp.DISCONNECT:
                raise EOFError("the client disconnected")
            assert t == ptype, f"expected packet type {ptype}, got {t} ({body!r})"
            return flags, body

    async def handshake(
        self, *, session_present: bool = False, connack_props: bytes = b"\x00"
    ) -> None:
        """Read CONNECT and answer CONNACK (success)."""
        _, body = await self.expect(mp.CONNECT)
        self.connect_body = body
        self.version = body[6]
        self.send(
            connack_packet(
                version=self.version, session_present=session_present, props=connack_props
            )
        )

    async def suback(self, granted: int = 1) -> int:
        """Read SUBSCRIBE and grant ``granted`` (a QoS, or a failure code); return its packet id."""
        _, body = await self.expect(mp.SUBSCRIBE)
        pid: int = struct.unpack_from("!H", body, 0)[0]
        props = b"\x00" if self.version == mp.V5 else b""
        self.send(packet(0x90, struct.pack("!H", pid) + props + bytes((granted,))))
        return pid

    def publish(self, topic: str, payload: bytes, **kwargs: object) -> None:
        self.send(publish_packet(topic, payload, version=self.version, **kwargs))  # type: ignore[arg-type]

    def acked(self, ptype: int = mp.PUBACK) -> list[int]:
        """Packet ids the client acknowledged so far with ``ptype`` (PUBACK, PUBREC, PUBCOMP)."""
        return [struct.unpack_from("!H", b, 0)[0] for t, _, b in self.received if t == ptype]

    async def wait_acked(
        self, ids: set[int], ptype: int = mp.PUBACK, timeout_s: float = 20.0
    ) -> list[int]:
        """Serve PINGREQs until every id in ``ids`` was acknowledged; return all acks in order."""
        async with asyncio.timeout(timeout_s):
            while not ids <= set(self.acked(ptype)):
                t, _, _ = await self.next_packet(timeout_s)
                if t == mp.PINGREQ:
                    self.send(b"\xd0\x00")
        return self.acked(ptype)

    async def serve_pings(self) -> None:
        """Answer PINGREQs until the client goes away (a well-behaved idle broker)."""
        with contextlib.suppress(EOFError, TimeoutError):
            while True:
                t, _, _ = await self.next_packet(timeout_s=3600)
                if t == mp.PINGREQ:
                    self.send(b"\xd0\x00")

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Peer], Awaitable[None]]


class HostileBroker(StartClose):
    """Accepts MQTT clients on 127.0.0.1 and runs ``script`` for each connection.

    Args:
        script: Called with each new :class:`Peer` (the connection closes when it returns,
            unless it called :meth:`Peer.serve_pings`).
    """

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.peers: list[Peer] = []
        self.connected = asyncio.Event()
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, len(self.peers))
        self.peers.append(peer)
        self.connected.set()
        pump = asyncio.create_task(peer._pump())
        try:
            await self.script(peer)
        except (EOFError, ConnectionError):
            pass
        except Exception as exc:  # the test reads these: a script's assertion must not vanish
            self.errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await pump

    def _spawn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_peers(self, n: int, timeout_s: float = 20.0) -> Peer:
        """Wait until ``n`` connections were accepted; return the n-th."""
        async with asyncio.timeout(timeout_s):
            while len(self.peers) < n:
                self.connected.clear()
                await self.connected.wait()
        return self.peers[n - 1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._spawn, "127.0.0.1", 0, ssl=self.tls)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for p in self.peers:
            p.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await server.wait_closed()
