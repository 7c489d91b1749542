"""MQTT brokers for the interoperability tests, each a subprocess on free loopback ports.

Every broker here has a private scratch directory (config, data, log; removed by
``close()``), a plain listener, and with ``tls=True`` a TLS listener too (the test
CA's server certificate for ``127.0.0.1``). :class:`Traits` says what the tests need
to know: the MQTT version the broker speaks, whether it has shared subscriptions, and
the credentials it wants. The process handling is :class:`ingest.trial.servers.ServerProcess`'s
(a free port, a real MQTT CONNECT as readiness probe, SIGTERM then SIGKILL on stop);
a missing program raises :class:`ServerNotInstalledError` naming ``make test-deps``.

========= ============================== ======= ===============================
name      program                        MQTT    installed by ``make test-deps``
========= ============================== ======= ===============================
mosquitto ``mosquitto`` (reference)      5       Debian package ``mosquitto``
amqtt     ``python -m amqtt...``         3.1.1   PyPI (a project dependency)
nats      ``nats-server`` (JetStream)    3.1.1   Debian package ``nats-server``
aedes     ``node aedes_broker.mjs``      3.1.1   npm ``aedes`` under ``.tools/``
ejabberd  ``erl -s ejabberd`` (mod_mqtt) 5       Debian package ``ejabberd``
========= ============================== ======= ===============================

None of them touches a broker that may already run on this machine: every port comes
from :func:`free_port`, NATS gets its own client port and JetStream directory, and
ejabberd runs without Erlang distribution (no epmd, no node name, no cookie).

nats-server has a single MQTT listener: with ``tls=True`` it is a TLS one, and the
broker has no plain listener (``client_url`` is then the TLS one).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.servers import REPO_ROOT, MosquittoServer
from ingest.mqtt import proto as mqttproto
from ingest.mqtt.client import MqttSettings
from ingest.trial.servers import ServerNotInstalledError, ServerProcess, free_port

__all__ = [
    "BROKERS",
    "AedesBroker",
    "AmqttBroker",
    "EjabberdBroker",
    "InteropBroker",
    "MosquittoBroker",
    "NatsBroker",
    "Pki",
    "Traits",
]

AEDES_JS = REPO_ROOT / ".tools" / "node_modules" / "aedes" / "aedes.js"
AEDES_LAUNCHER = Path(__file__).with_name("aedes_broker.mjs")
ACK_WAIT_S = 1.0
"""nats-server's ``ack_wait`` in these tests (its default is 30 s)."""


@dataclass(frozen=True, slots=True)
class Pki:
    """The test CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.ca))


@dataclass(frozen=True, slots=True)
class Traits:
    """What the tests must know about a broker (and assert: see test_interop's characterisation)."""

    version: Literal["5", "3.1.1"]
    """The MQTT version it speaks (the service's ``mqtt_protocol``)."""
    shared: Literal["yes", "ignored", "refused"]
    """``$share/GROUP/filter``: split between the group (yes), granted but matching nothing
    (ignored: a plain filter that no topic matches), or refused by the broker."""
    redelivers_in_flight: bool = True
    """Unacknowledged QoS 1 messages survive the subscriber's disconnect and come back."""
    in_flight_window: int | None = None
    """Unacknowledged QoS 1 messages it sends one subscription at most (None: more than
    the tests send, 60)."""
    dup_on_redelivery: bool = True
    """A redelivered message carries DUP (MQTT-3.3.1-1 wants it)."""
    redelivery_delay_s: float = 0.0
    """When in-flight messages come back after a reconnect: at once, or once a timer expires."""
    username: str | None = None
    """A user name for every client (any name, any password: the broker wants one)."""
    password: str | None = None


async def probe_mqtt(
    host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout_s: float = 2.0
) -> bool:
    """Whether an MQTT 3.1.1 CONNECT (over TLS if given) is answered with a CONNACK.

    Any CONNACK counts, a refusal included: the broker is up.
    """
    connect = mqttproto.encode_connect(
        "interop-probe", version=mqttproto.V311, clean_start=True, keepalive_s=10
    )
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )
            try:
                writer.write(connect)
                await writer.drain()
                header = await reader.readexactly(2)
                await reader.readexactly(header[1])
                writer.write(mqttproto.encode_disconnect(version=mqttproto.V311))
                await writer.drain()
                return header[0] == 0x20
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        return False


class InteropBroker:
    """The listeners and client parameters of a test broker (a mixin of the servers below)."""

    name: str
    traits: Traits
    host: str
    pki: Pki
    tls: bool
    _tls_port: int | None
    plain_listener = True

    port: int  # ServerProcess's

    def _init_listeners(self, pki: Pki, tls: bool) -> None:
        self.pki, self.tls = pki, tls
        self._tls_port = None

    @property
    def tls_port(self) -> int:
        """Port of the TLS listener (chosen once, kept across restarts)."""
        if not self.tls:
            raise RuntimeError(f"{self.name} was started without a TLS listener")
        if self._tls_port is None:
            self._tls_port = free_port(self.host)
        return self._tls_port

    @property
    def tls_url(self) -> str:
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def client_url(self) -> str:
        """The URL publishers and the drain check use: plain when there is a plain listener."""
        return f"mqtt://{self.host}:{self.port}" if self.plain_listener else self.tls_url

    def _client_tls(self) -> ssl.SSLContext | None:
        return None if self.plain_listener else self.pki.client_context()

    def client_settings(self, client_id: str, *, clean_start: bool = True) -> MqttSettings:
        """Settings for a test client (publisher) of this broker, at its MQTT version."""
        url_port = self.port if self.plain_listener else self.tls_port
        return MqttSettings(
            host=self.host,
            port=url_port,
            client_id=client_id,
            version=mqttproto.V5 if self.traits.version == "5" else mqttproto.V311,
            tls=self._client_tls(),
            username=self.traits.username,
            password=self.traits.password,
            clean_start=clean_start,
        )

    def drain_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`tests.drain.assert_drained` for this broker."""
        return {
            # Wait past a redelivery timer: what comes back only then is held all the same.
            "quiet_s": 1.5 + self.traits.redelivery_delay_s,
            "version": self.traits.version,
            "tls": self._client_tls(),
            "username": self.traits.username,
            "password": self.traits.password,
        }

    def service_url(self, *, tls: bool = False) -> str:
        """The ``mqtt_url`` for the service (credentials in it, as users write them)."""
        base = self.tls_url if tls or not self.plain_listener else self.client_url
        if self.traits.username is None:
            return base
        scheme, rest = base.split("://")
        return f"{scheme}://{self.traits.username}:{self.traits.password}@{rest}"


class _SubprocessBroker(InteropBroker, ServerProcess):
    scheme = "mqtt"

    def __init__(self, pki: Pki, *, tls: bool = False, startup_timeout_s: float = 30.0) -> None:
        ServerProcess.__init__(self, startup_timeout_s=startup_timeout_s)
        self._init_listeners(pki, tls)

    @property
    def data_dir(self) -> Path:
        return self.scratch_dir / "data"

    async def _write(self, name: str, text: str) -> Path:
        path = self.scratch_dir / name

        def write() -> None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

        await asyncio.to_thread(write)
        return path

    async def _probe(self, port: int) -> bool:
        tls = None if self.plain_listener else self.pki.client_context()
        return await probe_mqtt(self.host, port, tls=tls)


def _program(program: str, how: str) -> str:
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if Path(p).exists()), None
    )
    if path is None:
        raise ServerNotInstalledError(f"{program!r} not found; run `make test-deps` ({how})")
    return path


class MosquittoBroker(InteropBroker, MosquittoServer):
    """Mosquitto with the project's recommended config (``deploy/mosquitto.conf``): the reference."""

    name = "mosquitto"
    traits = Traits(version="5", shared="yes")

    def __init__(self, pki: Pki, *, tls: bool = False) -> None:
        self._init_listeners(pki, tls)
        self.host = "127.0.0.1"
        extra = (
            [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {pki.ca}",
                f"certfile {pki.cert}",
                f"keyfile {pki.key}",
            ]
            if tls
            else []
        )
        MosquittoServer.__init__(self, extra_conf="\n".join(extra))


class AmqttBroker(_SubprocessBroker):
    """amqtt (PyPI, pure Python, MQTT 3.1.1 only) run by its own broker script, in memory."""

    name = "amqtt"
    traits = Traits(
        version="3.1.1",
        shared="ignored",
        # amqtt 0.12 drops a QoS 1 message from the session when its delivery task ends:
        # on disconnect, or 5 s without PUBACK (amqtt/mqtt/protocol/handler.py).
        redelivers_in_flight=False,
        username="interop",
        password="interop",
    )

    async def _command(self, port: int) -> list[str]:
        lines = [
            "listeners:",
            "  default:",
            "    type: tcp",
            f"    bind: {self.host}:{port}",
        ]
        if self.tls:
            lines += [
                "  secure:",
                "    type: tcp",
                f"    bind: {self.host}:{self.tls_port}",
                "    ssl: true",
                f"    certfile: {self.pki.cert}",
                f"    keyfile: {self.pki.key}",
            ]
        lines += [
            "plugins:",
            # amqtt keeps no session (and no offline messages) for an anonymous client, and
            # with allow_anonymous every client is anonymous: require a user name instead.
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:",
            "    allow_anonymous: false",
        ]
        conf = await self._write("amqtt.yaml", "\n".join(lines) + "\n")
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]


class NatsBroker(_SubprocessBroker):
    """nats-server's MQTT gateway: MQTT 3.1.1 on JetStream (file store in the scratch dir).

    MQTT needs JetStream, and JetStream a ``server_name``. ``ack_wait`` is how long an
    unacknowledged QoS 1 message waits before NATS sends it again, on the same connection
    too, and the only moment it comes back after a reconnect: the default, 30 s, would
    make every drain check wait 30 s, so the tests run with :data:`ACK_WAIT_S`.
    ``max_ack_pending`` (the in-flight window per subscription) keeps its default, 1024.
    """

    name = "nats"
    traits = Traits(version="3.1.1", shared="ignored", redelivery_delay_s=ACK_WAIT_S)

    def __init__(
        self, pki: Pki, *, tls: bool = False, mqtt_options: dict[str, str] | None = None
    ) -> None:
        super().__init__(pki, tls=tls)
        self._client_port: int | None = None
        self.mqtt_options = {"ack_wait": f'"{ACK_WAIT_S:g}s"', **(mqtt_options or {})}

    @property
    def plain_listener(self) -> bool:  # type: ignore[override]
        return not self.tls

    @property
    def tls_port(self) -> int:
        if not self.tls:
            raise RuntimeError("nats was started without TLS")
        return self.port

    async def _command(self, port: int) -> list[str]:
        binary = _program("nats-server", "Debian package 'nats-server'")
        if self._client_port is None:
            self._client_port = free_port(self.host)
        mqtt = [f"  listen: {self.host}:{port}"]
        mqtt += [f"  {k}: {v}" for k, v in self.mqtt_options.items()]
        if self.tls:
            mqtt += [f'  tls {{ cert_file: "{self.pki.cert}", key_file: "{self.pki.key}" }}']
        conf = await self._write(
            "nats.conf",
            "\n".join(
                [
                    f'server_name: "interop-{port}"',
                    f"listen: {self.host}:{self._client_port}",
                    f'jetstream {{ store_dir: "{self.data_dir}" }}',
                    "mqtt {",
                    *mqtt,
                    "}",
                    "",
                ]
            ),
        )
        return [binary, "-c", str(conf)]


class AedesBroker(_SubprocessBroker):
    """Aedes (npm) with its in-memory persistence, launched by ``aedes_broker.mjs``."""

    name = "aedes"
    traits = Traits(version="3.1.1", shared="ignored", dup_on_redelivery=False)

    async def _command(self, port: int) -> list[str]:
        node = _program("node", "Node.js, Debian package 'nodejs'")
        if not AEDES_JS.exists():
            raise ServerNotInstalledError(
                f"aedes: {AEDES_JS} is missing; run `make test-deps` (npm package 'aedes')"
            )
        argv = [node, str(AEDES_LAUNCHER), "--aedes", str(AEDES_JS), "--port", str(port)]
        if self.tls:
            argv += ["--tls-port", str(self.tls_port), "--cert", str(self.pki.cert)]
            argv += ["--key", str(self.pki.key)]
        return argv


def _ejabberd_libs() -> Path:
    apps = sorted(glob.glob("/usr/lib/*/ejabberd-*/ebin/ejabberd.app"))
    if not apps:
        raise ServerNotInstalledError(
            "ejabberd is not installed; run `make test-deps` (Debian package 'ejabberd')"
        )
    return Path(apps[-1]).parent.parent.parent


class EjabberdBroker(_SubprocessBroker):
    """ejabberd's mod_mqtt (MQTT 5 and 3.1.1), run by ``erl`` directly, Mnesia in the scratch dir.

    ``ejabberdctl`` would switch to the ``ejabberd`` user and start a distributed Erlang
    node (epmd, a cookie); a bare ``erl -noinput -s ejabberd`` needs neither. mod_mqtt
    authenticates every client against ejabberd's users: anonymous ``login_anon`` lets
    any user name with any password in, so the clients here all send ``interop``.
    """

    name = "ejabberd"
    traits = Traits(
        version="5",
        shared="refused",
        in_flight_window=1,
        username="interop",
        password="interop",
    )
    _env_vars: dict[str, str] = {}

    async def _command(self, port: int) -> list[str]:
        erl = _program("erl", "Debian package 'ejabberd' brings Erlang")
        libs = _ejabberd_libs()
        listen = [
            "listen:",
            "  -",
            f"    port: {port}",
            f'    ip: "{self.host}"',
            "    module: mod_mqtt",
        ]
        if self.tls:
            listen += [
                "  -",
                f"    port: {self.tls_port}",
                f'    ip: "{self.host}"',
                "    module: mod_mqtt",
                "    tls: true",
            ]
        conf = await self._write(
            "ejabberd.yml",
            "\n".join(
                [
                    "hosts: [localhost]",
                    "loglevel: info",
                    "auth_method: [anonymous]",
                    "anonymous_protocol: login_anon",
                    f'certfiles: ["{self.pki.cert}", "{self.pki.key}", "{self.pki.ca}"]',
                    *listen,
                    "modules:",
                    "  mod_mqtt: {}",
                    "",
                ]
            ),
        )
        self._env_vars = {
            "EJABBERD_CONFIG_PATH": str(conf),
            "EJABBERD_LOG_PATH": str(self.scratch_dir / "ejabberd-erlang.log"),
            "ERL_LIBS": str(libs),
            "ERL_CRASH_DUMP_BYTES": "0",
        }
        return [erl, "-noinput", "-mnesia", "dir", f'"{self.data_dir}"', "-s", "ejabberd"]

    def _env(self) -> dict[str, str] | None:
        return {**os.environ, **self._env_vars}

    async def stop(self) -> None:
        """SIGKILL: a clean Erlang shutdown takes ~3 s, and nothing here outlives the test."""
        await self.kill()


BROKERS: dict[str, type[_SubprocessBroker] | type[MosquittoBroker]] = {
    "mosquitto": MosquittoBroker,
    "amqtt": AmqttBroker,
    "nats": NatsBroker,
    "aedes": AedesBroker,
    "ejabberd": EjabberdBroker,
}
"""Every broker of the interoperability suite, by name (the tests' parameter ids)."""
