"""The amqtt side of the trial broker (imported only when amqtt is the embedded broker).

amqtt 0.12's stock ``AnonymousAuthPlugin`` marks every client it lets in as anonymous,
and amqtt neither queues QoS 1 messages for an anonymous client's offline session nor
keeps that session once it disconnects: with it, whatever arrives while the service
reconnects is dropped. :class:`SessionAuth` lets every client in as the stock plugin does
(the trial broker listens on loopback only) without that mark, so a client that asks for
a persistent session (clean session off) gets one, as MQTT 3.1.1 says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amqtt.plugins.base import BaseAuthPlugin

__all__ = ["SESSION_AUTH_PLUGIN", "SessionAuth", "broker_config"]

SESSION_AUTH_PLUGIN = f"{__name__}.SessionAuth"


class SessionAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt has no type hints
    """Accept every client; leave its session as it asked (persistent or clean)."""

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Any) -> bool:
        return True


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt's config for the trial broker: one TCP listener, :class:`SessionAuth` only.

    amqtt's default ``$SYS`` and packet-log plugins are left out: noise in a trial.
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {SESSION_AUTH_PLUGIN: {}},
    }
