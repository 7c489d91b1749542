"""The real servers that tests and benchmarks start: Mosquitto, moto and dynalite.

Each runs as a subprocess on a free loopback port, waits until it answers a real
request (bounded deadline), and is an async context manager exposing ``url`` (and
``endpoint_url`` for the DynamoDB-API servers)::

    async with MosquittoServer() as broker, DynaliteServer() as dynamo:
        ...  # broker.url == "mqtt://127.0.0.1:PORT", dynamo.endpoint_url == "http://..."

A missing program raises :class:`~ingest.trial.servers.ServerNotInstalledError` whose message
says to run ``make test-deps``; a server that does not come up raises
:class:`~ingest.trial.servers.ServerStartError` quoting the tail of its output.

The process handling is shared with the trial mode's servers in :mod:`ingest.trial.servers`:
each server runs in a session of its own and dies with the process that started it, so
a test run killed by a timeout (or SIGKILL) leaves no server behind on the machine.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from ingest.trial.servers import (
    MosquittoProcess,
    MotoProcess,
    ServerNotInstalledError,
    ServerProcess,
    probe_dynamodb,
)

__all__ = [
    "DEPLOY_MOSQUITTO_CONF",
    "DYNALITE_BIN",
    "REPO_ROOT",
    "DynaliteServer",
    "MosquittoServer",
    "MotoServer",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_MOSQUITTO_CONF = REPO_ROOT / "deploy" / "mosquitto.conf"
DYNALITE_BIN = REPO_ROOT / ".tools" / "node_modules" / ".bin" / "dynalite"


class MosquittoServer(MosquittoProcess):
    """Mosquitto with the project's recommended config (``deploy/mosquitto.conf``).

    Only the listener (loopback, a free port) and the persistence directory are
    rewritten. For broker-restart tests, ``stop()`` (clean: the database is saved) or
    ``kill()`` (SIGKILL: what arrived since the last autosave is lost) and then
    ``start()`` bring it back on the same port with the same persistence directory.

    Args:
        port: Fixed port, or ``None`` for a free one.
        data_dir: Persistence directory, kept across restarts (default: a private
            temporary one, removed by ``aclose()``).
        extra_conf: Config lines replacing or adding options, e.g.
            ``"max_inflight_messages 20"``.
        conf_path: The config to derive from.
        binary: The ``mosquitto`` program.
        host: Address to listen on.
        startup_timeout_s: Deadline for the broker to answer CONNECT.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | str | None = None,
        extra_conf: str = "",
        *,
        conf_path: Path | str = DEPLOY_MOSQUITTO_CONF,
        binary: str = "mosquitto",
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
    ) -> None:
        """Configure the broker; nothing starts before :meth:`start`."""
        super().__init__(
            port,
            data_dir,
            extra_conf,
            conf_path=conf_path,
            binary=binary,
            host=host,
            startup_timeout_s=startup_timeout_s,
        )


class MotoServer(MotoProcess):
    """moto in server mode: a DynamoDB-API (and S3) endpoint, in memory.

    moto never throttles, never returns ``UnprocessedItems`` and does not enforce the
    25-request batch limit: put :class:`bench.faultproxy.FaultProxy` in front of it to
    test retry paths.
    """


class DynaliteServer(ServerProcess):
    """dynalite: a DynamoDB implementation that validates requests like DynamoDB does.

    Installed by ``make test-deps`` under ``.tools/`` (npm package ``dynalite@4.0.0``).

    Args:
        port: Fixed port, or ``None`` for a free one.
        path: LevelDB directory; ``None`` keeps the data in memory.
        binary: The ``dynalite`` program; default: ``.tools/node_modules/.bin/dynalite``,
            else ``dynalite`` on ``PATH``.
        table_transition_ms: How long tables stay CREATING, UPDATING or DELETING
            (dynalite's default is 500 ms). Kept above zero so that code which does not
            wait for ACTIVE fails here as it would against DynamoDB.
        host: Address to listen on.
        startup_timeout_s: Deadline for the server to answer HTTP.
    """

    name = "dynalite"

    def __init__(
        self,
        port: int | None = None,
        *,
        path: Path | str | None = None,
        binary: Path | str | None = None,
        table_transition_ms: int = 100,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 30.0,
    ) -> None:
        """Configure the server; nothing starts before :meth:`start`."""
        super().__init__(host=host, port=port, startup_timeout_s=startup_timeout_s)
        self.path = Path(path) if path is not None else None
        self.binary = Path(binary) if binary is not None else None
        self.table_transition_ms = table_transition_ms

    @property
    def endpoint_url(self) -> str:
        """The endpoint URL to give to botocore clients."""
        return self.url

    def _resolve_binary(self) -> str:
        if self.binary is not None:
            return str(self.binary)
        if DYNALITE_BIN.exists():
            return str(DYNALITE_BIN)
        found = shutil.which("dynalite")
        if found is None:
            raise ServerNotInstalledError(
                f"dynalite: not found at {DYNALITE_BIN} nor on PATH; run `make test-deps` "
                "(npm install --prefix .tools dynalite@4.0.0)"
            )
        return found

    async def _command(self, port: int) -> list[str]:
        binary = await asyncio.to_thread(self._resolve_binary)
        ms = str(self.table_transition_ms)
        argv = [binary, "--host", self.host, "--port", str(port)]
        argv += ["--createTableMs", ms, "--deleteTableMs", ms, "--updateTableMs", ms]
        if self.path is not None:
            await asyncio.to_thread(self.path.mkdir, parents=True, exist_ok=True)
            argv += ["--path", str(self.path)]
        return argv

    async def _probe(self, port: int) -> bool:
        return await probe_dynamodb(f"http://{self.host}:{port}/")
