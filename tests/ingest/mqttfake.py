"""A recording asyncio transport for driving an MQTT protocol's callbacks without a socket.

The unit tests of the service's connection (ingest.mqtt.client), the shared link
(ingest.mqtt.link) and the simulator's publisher attach one with :func:`attach`, feed
broker bytes to ``data_received`` and assert on what was written, aborted or closed.
The broker's side of the bytes is built with :mod:`tests.ingest.hostile`.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["FakeTransport", "attach"]


class FakeTransport(asyncio.Transport):
    """Records every write and whether the protocol aborted or closed it.

    Args:
        keep: Keep the written bytes in ``written``; without it only ``bytes_written``
            counts them (a benchmark writing for many rounds).
    """

    def __init__(self, *, keep: bool = True) -> None:
        super().__init__()
        self.written = bytearray()
        self.bytes_written = 0
        self.aborted = False
        self.closing = False
        self._keep = keep

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        self.bytes_written += len(data)
        if self._keep:
            self.written += data

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def attach(protocol: asyncio.BaseProtocol, *, keep: bool = True) -> FakeTransport:
    """A new :class:`FakeTransport`, handed to ``protocol.connection_made``."""
    transport = FakeTransport(keep=keep)
    protocol.connection_made(transport)
    return transport
