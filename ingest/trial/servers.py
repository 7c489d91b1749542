"""Embedded servers for the trial mode of ``iot-ingest run``: no external services needed.

* :class:`EmbeddedBroker` runs Mosquitto as a subprocess with the project's recommended
  config (``mosquitto.conf`` next to this module, a copy of ``deploy/mosquitto.conf``)
  on a free loopback port. Without ``mosquitto`` on ``PATH`` it falls back to the
  pure-Python amqtt broker in-process: fine for a first look, not durable, not fast, and
  MQTT 3.1.1 only. The broker says which versions it speaks
  (:attr:`EmbeddedBroker.protocols`) and trial mode's clients follow
  (:meth:`EmbeddedBroker.protocol_for`); what amqtt does not do (redeliver after a
  crash, wait more than 5 s for a PUBACK) is in docs/operations.md.
* :class:`EmbeddedDynamo` runs moto in server mode as a subprocess; the same endpoint
  serves DynamoDB and S3. It runs moto through :mod:`ingest.trial.motoserver`, whose
  base-table Queries read their partition instead of the whole table (what lets the
  demo's dashboard keep up with thousands of devices); the tests' and benchmarks'
  :class:`MotoProcess` runs plain ``moto.server``, the implementation they are checked
  against.

The process helpers here (:class:`ServerProcess`, :class:`MosquittoProcess`,
:class:`MotoProcess`, :func:`free_port`) are also what ``bench.servers`` builds the test
and benchmark servers on. Every server is an async context manager; ``aclose()`` is
idempotent, and a closed server cannot be started again.

A server subprocess runs in a session of its own: a terminal's Ctrl-C (SIGINT to the
foreground process group) reaches only its parent, which drains its clients first and
then stops the server itself. And it never outlives its parent, not even the parent's
SIGKILL (an impatient user, a test runner's timeout, the OOM killer): on Linux the child
asks the kernel, between fork and exec, for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``), then checks that its parent is still the process that
forked it, which closes the race of a parent dying before the request took effect.
Why this and not a pipe the child watches, or a wrapper process: Mosquitto and moto
watch no pipe, and a wrapper would itself need the same tie to die with us; the kernel's
signal fires on every kind of death, costs nothing meanwhile, and survives ``exec``.
Two caveats, both held here. The signal fires when the parent *thread* that forked the
child ends: asyncio (the default loop and uvloop alike) forks in the thread running the
event loop, which outlives every server that loop owns, so start servers from the loop
(never through ``asyncio.to_thread``). And the kernel drops the request when the child
changes its user (Mosquitto run as root would switch to ``mosquitto``): the rendered
config keeps it root then (see :func:`render_mosquitto_conf`). Elsewhere than Linux
there is no such tie: ``aclose()`` still stops the servers, a SIGKILL of their parent
leaves them running.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp

from ingest.core.errors import IngestError
from ingest.core.lifecycle import StartClose
from ingest.mqtt import proto as mp

logger = logging.getLogger(__name__)

__all__ = [
    "MOSQUITTO_CONF_PATH",
    "EmbeddedBroker",
    "EmbeddedDynamo",
    "EmbeddedServerError",
    "MosquittoProcess",
    "MotoProcess",
    "MqttProtocol",
    "ServerNotInstalledError",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "load_mosquitto_conf",
    "probe_dynamodb",
    "probe_mqtt",
    "render_mosquitto_conf",
]

MOSQUITTO_CONF_PATH = Path(__file__).with_name("mosquitto.conf")

# MQTT 3.1.1, which every broker speaks (amqtt does not answer an MQTT 5 CONNECT at all).
_MQTT_PROBE_CONNECT = mp.encode_connect(
    "ingest-probe", version=mp.V311, clean_start=True, keepalive_s=10
)
_MQTT_PROBE_DISCONNECT = mp.encode_disconnect(version=mp.V311)
MqttProtocol = Literal["5", "3.1.1"]
_START_ATTEMPTS = 3  # a port picked by free_port() can be taken before the server binds it


class EmbeddedServerError(IngestError):
    """An embedded, test or benchmark server could not be started."""


class ServerNotInstalledError(EmbeddedServerError):
    """The server's program is not installed (run ``make test-deps``)."""


class ServerStartError(EmbeddedServerError):
    """The server exited or did not answer before its startup deadline."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The kernel picks it (bind to port 0). Another process may still take it before the
    server binds it; the servers here retry on a new port when that happens.

    Args:
        host: The address the server will bind.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once in the parent (the child must not ``dlopen``)."""
    if not sys.platform.startswith("linux"):
        return None
    fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    return fn


def _dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that ties the child's life to this process (see the module's docstring).

    It runs in the child between fork and exec, so it does as little as it can: one
    system call through a function looked up beforehand, one ``getppid``.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent, kill = os.getpid(), int(signal.SIGKILL)

    def tie() -> None:
        if prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return tie


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


async def probe_mqtt(host: str, port: int, *, timeout_s: float = 2.0) -> bool:
    """Return whether an MQTT broker accepts a connection and answers CONNECT with CONNACK."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_MQTT_PROBE_CONNECT)
                await writer.drain()
                header = await reader.readexactly(2)
                await reader.readexactly(header[1])
                writer.write(_MQTT_PROBE_DISCONNECT)
                await writer.drain()
                return header[0] == mp.CONNACK << 4
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


async def probe_dynamodb(url: str, *, timeout_s: float = 2.0) -> bool:
    """Return whether a DynamoDB-API endpoint answers an HTTP request (any status)."""
    headers = {
        "X-Amz-Target": "DynamoDB_20120810.ListTables",
        "Content-Type": "application/x-amz-json-1.0",
        # moto and dynalite do not verify signatures; dynalite only wants the header.
        "Authorization": (
            "AWS4-HMAC-SHA256 Credential=probe/20240101/us-east-1/dynamodb/aws4_request,"
            " SignedHeaders=host, Signature=0"
        ),
    }
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.post(url, data=b"{}", headers=headers) as resp,
        ):
            await resp.read()
            return True
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _poll(
    probe: Callable[[], Awaitable[bool]], *, timeout_s: float, gone: Callable[[], bool]
) -> bool:
    """Poll ``probe`` with capped exponential backoff until it passes, ``gone()`` or deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay_s = 0.02
    while not gone():
        if await probe():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(delay_s, max(0.0, deadline - loop.time())))
        delay_s = min(delay_s * 1.5, 0.25)
    return False


def load_mosquitto_conf() -> str:
    """Return the project's recommended Mosquitto config, as shipped in the package."""
    return MOSQUITTO_CONF_PATH.read_text(encoding="utf-8")


def render_mosquitto_conf(
    base: str, *, host: str, port: int, data_dir: Path, extra_conf: str = ""
) -> str:
    """Derive a runnable config from the recommended one.

    The first ``listener`` line becomes ``listener PORT HOST``, ``persistence_location``
    points at ``data_dir``, ``pid_file`` is dropped, and every option named in
    ``extra_conf`` replaces the base's lines for that option. Run as root, the broker
    stays root (it would otherwise switch to the ``mosquitto`` user, which cannot write
    ``data_dir``).

    Args:
        base: The recommended config text.
        host: Address to listen on.
        port: Port to listen on.
        data_dir: Directory of the persistence database.
        extra_conf: Additional config lines; they win over the base.

    Returns:
        The config text.

    Raises:
        ValueError: ``base`` has no ``listener`` line.
    """
    extra = [ln.strip() for ln in extra_conf.splitlines() if ln.strip()]
    overridden = {ln.split()[0] for ln in extra if not ln.startswith("#")}
    out: list[str] = []
    has_listener = False
    for line in base.splitlines():
        key = line.split()[0] if line.strip() and not line.startswith("#") else ""
        if key == "listener" and not has_listener:
            has_listener = True
            out.append(f"listener {port} {host}")
        elif key in {"persistence_location", "pid_file"} or (key and key in overridden):
            continue
        else:
            out.append(line)
    if not has_listener:
        raise ValueError("the Mosquitto config has no 'listener' line to rewrite")
    out.append(f"persistence_location {data_dir}/")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "user" not in overridden:
        out.append("user root")
    out.extend(extra)
    return "\n".join(out) + "\n"


class ServerProcess(StartClose):
    """A server subprocess on a loopback port: started, probed until ready, stopped in time.

    Subclasses give the command line and the readiness probe. The port is chosen on the
    first start (a free one unless given) and kept: ``stop()`` or ``kill()`` then
    ``start()`` brings the server back on the same port. Output goes to ``log_path``; a
    failed start raises :class:`ServerStartError` quoting its tail.
    """

    name = "server"
    scheme = "http"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        """Configure the server; nothing starts before :meth:`start`."""
        self.host = host
        self._port = port
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: asyncio.subprocess.Process | None = None
        self._scratch: Path | None = None
        self._closed = False

    # Subclass hooks.
    async def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    async def _probe(self, port: int) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    @property
    def port(self) -> int:
        """The port the server listens on (known once started)."""
        if self._port is None:
            raise RuntimeError(f"{self.name} has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``scheme://host:port`` of the server."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def scratch_dir(self) -> Path:
        """Private directory for logs and generated config, removed by :meth:`aclose`."""
        if self._scratch is None:
            raise RuntimeError(f"{self.name} has not been started yet")
        return self._scratch

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        return self.scratch_dir / f"{self.name}.log"

    async def log_tail(self, lines: int = 20) -> str:
        """Return the last ``lines`` lines of the server's output."""
        if self._scratch is None:
            return ""

        def read() -> str:
            try:
                text = self.log_path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                return ""
            return "\n".join(text.splitlines()[-lines:])

        return await asyncio.to_thread(read)

    async def start(self) -> None:
        """Start the server and wait until it answers.

        Raises:
            ServerNotInstalledError: The program is missing.
            ServerStartError: It exited or did not answer within ``startup_timeout_s``.
            RuntimeError: It is running already, or it was closed.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} is closed; create a new one")
        if self.running:
            raise RuntimeError(f"{self.name} is running already at {self.url}")
        if self._scratch is None:
            self._scratch = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix=f"iot-ingest-{self.name}-")
            )
        attempts = 1 if self._port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port(self.host)
            try:
                await self._start_once(port)
            except ServerStartError as exc:
                if attempt == attempts or not exc.port_in_use:
                    raise
                logger.info("%s: port %d was taken meanwhile; trying another", self.name, port)
            else:
                self._port = port
                return

    async def _start_once(self, port: int) -> None:
        # Otherwise the readiness probe could be answered by whoever holds the port.
        if not _port_is_free(self.host, port):
            raise ServerStartError(
                f"{self.name}: port {port} on {self.host} is in use by another process",
                port_in_use=True,
            )
        argv = await self._command(port)
        log = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env(),
                # Its own session (process group): a terminal's Ctrl-C reaches only the
                # parent, which drains its clients first and then stops the server itself.
                start_new_session=True,
                # ...yet it dies with the parent, however the parent ends.
                preexec_fn=_dies_with_parent(),
            )
        except FileNotFoundError as exc:
            raise ServerNotInstalledError(
                f"{self.name}: cannot run {argv[0]!r} ({exc.strerror}); run `make test-deps`"
            ) from exc
        except subprocess.SubprocessError as exc:  # only the preexec_fn raises it
            raise ServerStartError(
                f"{self.name}: cannot tie {argv[0]!r} to this process: {exc.__cause__ or exc}"
            ) from exc
        finally:
            log.close()
        proc = self._proc
        try:
            ready = await _poll(
                lambda: self._probe(port),
                timeout_s=self.startup_timeout_s,
                gone=lambda: proc.returncode is not None,
            )
        except BaseException:
            await self.kill()
            raise
        if not ready:
            status = proc.returncode
            await self.kill()
            why = (
                f"exited with status {status}"
                if status is not None
                else f"did not answer within {self.startup_timeout_s:g} s"
            )
            tail = await self.log_tail()
            raise ServerStartError(
                f"{self.name} ({' '.join(argv)}) {why} on port {port}; last output:\n{tail}",
                port_in_use=status is not None
                and any(s in tail.lower() for s in ("in use", "eaddrinuse")),
            )
        logger.debug(
            "%s pid %d ready at %s://%s:%d", self.name, proc.pid, self.scheme, self.host, port
        )

    async def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``stop_timeout_s``. Safe to repeat."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            logger.warning(
                "%s did not stop within %.1f s; killing it", self.name, self.stop_timeout_s
            )
            await self.kill()
        except asyncio.CancelledError:
            # Our caller is being cancelled: leave no server behind, then let it go on.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise

    async def kill(self) -> None:
        """Kill the server with SIGKILL (no clean shutdown) and reap it. Safe to repeat."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

    async def aclose(self) -> None:
        """Stop the server for good and remove its scratch directory. Safe to repeat."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.stop()
        finally:
            if self._scratch is not None:
                await asyncio.to_thread(shutil.rmtree, self._scratch, True)


class MosquittoProcess(ServerProcess):
    """Mosquitto with a config derived from the recommended one (see :func:`render_mosquitto_conf`).

    Args:
        port: Fixed port, or ``None`` for a free one.
        data_dir: Persistence directory; kept across restarts. Default: in the scratch dir.
        extra_conf: Config lines that replace or add options.
        conf_path: The config to derive from; default: the packaged recommended config.
        binary: The ``mosquitto`` program (name on ``PATH`` or path).
        host: Address to listen on.
        startup_timeout_s: Deadline for the broker to answer CONNECT.
    """

    name = "mosquitto"
    scheme = "mqtt"

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        extra_conf: str = "",
        *,
        conf_path: Path | str = MOSQUITTO_CONF_PATH,
        binary: str = "mosquitto",
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
    ) -> None:
        """Configure the broker; nothing starts before :meth:`start`."""
        super().__init__(host=host, port=port, startup_timeout_s=startup_timeout_s)
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.extra_conf = extra_conf
        self.conf_path = Path(conf_path)
        self.binary = binary

    @property
    def data_dir(self) -> Path:
        """The persistence directory."""
        return self._data_dir if self._data_dir is not None else self.scratch_dir / "data"

    async def _command(self, port: int) -> list[str]:
        binary = shutil.which(self.binary)
        if binary is None:
            raise ServerNotInstalledError(
                f"mosquitto: {self.binary!r} not found on PATH; run `make test-deps` "
                "(Debian package 'mosquitto')"
            )
        base = await asyncio.to_thread(self.conf_path.read_text, encoding="utf-8")
        conf = render_mosquitto_conf(
            base, host=self.host, port=port, data_dir=self.data_dir, extra_conf=self.extra_conf
        )
        conf_path = self.scratch_dir / "mosquitto.conf"

        def write() -> None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conf_path.write_text(conf, encoding="utf-8")

        await asyncio.to_thread(write)
        return [binary, "-c", str(conf_path)]

    async def _probe(self, port: int) -> bool:
        return await probe_mqtt(self.host, port)


class MotoProcess(ServerProcess):
    """moto in server mode (``python -m moto.server``): DynamoDB and S3 on one endpoint.

    :attr:`server_module` is the module run with ``python -m``.

    Args:
        port: Fixed port, or ``None`` for a free one.
        host: Address to listen on.
        python: The interpreter that has moto installed.
        startup_timeout_s: Deadline for the server to answer HTTP.
    """

    name = "moto"
    server_module = "moto.server"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        python: str = sys.executable,
        startup_timeout_s: float = 60.0,
    ) -> None:
        """Configure the server; nothing starts before :meth:`start`."""
        super().__init__(host=host, port=port, startup_timeout_s=startup_timeout_s)
        self.python = python

    @property
    def endpoint_url(self) -> str:
        """The endpoint URL to give to botocore clients."""
        return self.url

    def _env(self) -> dict[str, str] | None:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    async def _command(self, port: int) -> list[str]:
        return [self.python, "-m", self.server_module, "-H", self.host, "-p", str(port)]

    async def _probe(self, port: int) -> bool:
        return await probe_dynamodb(f"http://{self.host}:{port}/")


class EmbeddedDynamo(MotoProcess):
    """The trial mode's DynamoDB-API (and S3) endpoint: moto in server mode on loopback.

    Use as ``async with EmbeddedDynamo() as dynamo: dynamo.endpoint_url``.

    moto runs with base-table Queries that read only their partition
    (:mod:`ingest.trial.motoserver`): with plain moto every Query sorts the whole table,
    which held the demo's dashboard to a few hundred devices. A moto whose internals the
    patch does not know fails the start (the log's tail names it).
    """

    server_module = "ingest.trial.motoserver"

    async def start(self) -> None:
        """Start moto and wait until it answers (see :meth:`ServerProcess.start`)."""
        await super().start()
        logger.warning(
            "trial mode: embedded DynamoDB (moto, in memory: data is lost on exit) at %s",
            self.endpoint_url,
        )


class EmbeddedBroker(StartClose):
    """The trial mode's MQTT broker: Mosquitto if installed, else amqtt in-process.

    Use as ``async with EmbeddedBroker(data_dir=...) as broker: broker.url``.

    Args:
        data_dir: Mosquitto's persistence directory (default: a temporary one).
        host: Address to listen on.
        port: Fixed port, or ``None`` for a free one.
        backend: ``"auto"`` (Mosquitto when on PATH, else amqtt), ``"mosquitto"`` or
            ``"amqtt"``.
        mosquitto_binary: The ``mosquitto`` program.
        startup_timeout_s: Deadline for the broker to answer.
    """

    def __init__(
        self,
        *,
        data_dir: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        backend: Literal["auto", "mosquitto", "amqtt"] = "auto",
        mosquitto_binary: str = "mosquitto",
        startup_timeout_s: float = 30.0,
    ) -> None:
        """Configure the broker; nothing starts before :meth:`start`."""
        self.host = host
        self._port = port
        self._data_dir = data_dir
        self._backend = backend
        self._binary = mosquitto_binary
        self._startup_timeout_s = startup_timeout_s
        self._mosquitto: MosquittoProcess | None = None
        self._amqtt: Any = None
        self._state: Literal["new", "started", "closed"] = "new"
        self.backend: Literal["mosquitto", "amqtt"] | None = None

    @property
    def port(self) -> int:
        """The port the broker listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the embedded broker has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the broker."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def protocols(self) -> tuple[MqttProtocol, ...]:
        """The MQTT versions the running broker speaks, the preferred one first.

        Mosquitto speaks 5 and 3.1.1; amqtt (0.12) only 3.1.1: it does not even answer an
        MQTT 5 CONNECT (it waits for bytes that never come, then logs ``Invalid protocol``).
        """
        if self.backend is None:
            raise RuntimeError("the embedded broker has not been started yet")
        return ("5", "3.1.1") if self.backend == "mosquitto" else ("3.1.1",)

    def protocol_for(self, wanted: MqttProtocol) -> MqttProtocol:
        """The version trial mode's clients use: ``wanted`` if the broker speaks it, else its own.

        Says so once, at WARNING, when it is not ``wanted``.
        """
        spoken = self.protocols
        if wanted in spoken:
            return wanted
        logger.warning(
            "trial mode: the embedded broker speaks MQTT %s only (%s): the service and the "
            "demo's fleet connect with MQTT %s, not %s (install Mosquitto for MQTT 5)",
            " and ".join(spoken),
            self.backend,
            spoken[0],
            wanted,
        )
        return spoken[0]

    async def start(self) -> None:
        """Start the broker and wait until it answers CONNECT.

        Raises:
            ServerNotInstalledError: ``backend="mosquitto"`` and Mosquitto is missing.
            ServerStartError: The broker did not come up.
            RuntimeError: Started twice, or closed.
        """
        if self._state != "new":
            raise RuntimeError(f"the embedded broker is {self._state}; create a new one")
        self._state = "started"
        use_mosquitto = self._backend == "mosquitto" or (
            self._backend == "auto" and shutil.which(self._binary) is not None
        )
        if use_mosquitto:
            self._mosquitto = MosquittoProcess(
                self._port,
                self._data_dir,
                binary=self._binary,
                host=self.host,
                startup_timeout_s=self._startup_timeout_s,
            )
            await self._mosquitto.start()
            self._port, self.backend = self._mosquitto.port, "mosquitto"
            logger.info(
                "trial mode: embedded MQTT broker (mosquitto, MQTT 5 and 3.1.1) at %s", self.url
            )
        else:
            if self._backend == "auto":
                logger.warning(
                    "trial mode: %r not found on PATH; falling back to the in-process amqtt "
                    "broker (MQTT 3.1.1 only, in memory, slow, and it redelivers nothing after "
                    "a crash: install Mosquitto for real use)",
                    self._binary,
                )
            await self._start_amqtt()
            self.backend = "amqtt"
            logger.warning(
                "trial mode: embedded MQTT broker (amqtt, in-process, MQTT 3.1.1) at %s", self.url
            )

    async def _start_amqtt(self) -> None:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        from ingest.trial._amqtt import broker_config

        attempts = 1 if self._port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port(self.host)
            broker = Broker(broker_config(self.host, port))
            try:
                await broker.start()
            except BrokerError as exc:
                if attempt == attempts:
                    raise ServerStartError(f"amqtt broker failed on port {port}: {exc}") from exc
                continue
            except BaseException:  # cancelled while starting: leave no listener behind
                with contextlib.suppress(Exception):
                    await broker.shutdown()
                raise
            self._amqtt = broker
            if not await _poll(
                functools.partial(probe_mqtt, self.host, port),
                timeout_s=self._startup_timeout_s,
                gone=lambda: False,
            ):
                raise ServerStartError(f"amqtt broker on port {port} does not answer CONNECT")
            self._port = port
            return

    async def aclose(self) -> None:
        """Stop the broker. Safe to repeat."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._mosquitto is not None:
            await self._mosquitto.aclose()
        if self._amqtt is not None:
            broker, self._amqtt = self._amqtt, None
            await broker.shutdown()
