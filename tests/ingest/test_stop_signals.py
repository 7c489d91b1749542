"""``iot-ingest demo`` and ``iot-ingest run`` (trial mode) stop on the first SIGTERM or
SIGINT in any state (starting, stuck reconnecting, running) within their deadline, and
their embedded servers (Mosquitto, moto) never outlive them, not even their SIGKILL. Each
command is a real subprocess; its servers are followed by PID and start time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest.trial.servers import free_port
from tests.ingest.processes import Cli, descendants, still_running, trial_env, wait_gone

SHUTDOWN_S = 15.0  # the demo's stop budget (shutdown_timeout_s's default)
DEADLINE_S = SHUTDOWN_S + 5.0  # as documented in docs/operations.md
FLEET = ("--devices", "5", "--rate", "10")


@contextlib.asynccontextmanager
async def fake_broker(kind: str) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A broker the demo cannot use: ``unreachable`` (nothing listens), ``silent`` (takes
    the connection and never answers, as amqtt does an MQTT 5 CONNECT) or ``refusing``
    (answers CONNACK "server unavailable", which a client retries). Yields its URL and an
    event set once the demo has tried it."""
    tried = asyncio.Event()
    if kind == "unreachable":
        tried.set()  # the demo's log says when it has tried
        yield f"mqtt://127.0.0.1:{free_port()}", tried
        return

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(1024)  # its CONNECT
            tried.set()
            if kind == "refusing":
                writer.write(b"\x20\x03\x00\x88\x00")  # MQTT 5 CONNACK, 0x88 server unavailable
                await writer.drain()
                writer.close()
            else:
                await reader.read()  # until the demo gives up on it
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mqtt://127.0.0.1:{port}", tried
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("sig", "kind"),
    [
        pytest.param(signal.SIGTERM, "unreachable", id="SIGTERM-unreachable"),
        pytest.param(signal.SIGINT, "silent", id="SIGINT-silent"),
        pytest.param(signal.SIGTERM, "refusing", id="SIGTERM-refusing"),
    ],
)
async def test_a_demo_stuck_connecting_stops_on_the_first_signal(
    sig: signal.Signals, kind: str, tmp_path: Path
) -> None:
    async with fake_broker(kind) as (url, tried):
        args = ["demo", *FLEET, "--port", str(free_port()), "--data-dir", str(tmp_path)]
        async with Cli(*args, "--mqtt-url", url) as cli:
            await cli.wait_for(r"metrics and health on", 60)  # the service is connecting
            if kind != "silent":
                await cli.wait_for(r"MQTT connect failed", 30)
            await asyncio.wait_for(tried.wait(), 30)
            servers = descendants(cli.pid)
            assert len(servers) == 1, servers  # moto
            cli.signal(sig)
            assert await cli.wait(DEADLINE_S) == 0, cli.text
            assert still_running(servers) == {}, cli.text
    assert "demo stopped" in cli.text, cli.text
    assert "Traceback" not in cli.text, cli.text


async def test_a_signal_while_starting_stops_the_demo(tmp_path: Path) -> None:
    args = ["demo", *FLEET, "--port", str(free_port()), "--data-dir", str(tmp_path)]
    async with Cli(*args) as cli:
        await cli.wait_for(r"embedded MQTT broker", 30)  # moto is starting
        cli.signal(signal.SIGINT)
        assert await cli.wait(DEADLINE_S) == 0, cli.text
        started = cli.text
    assert "dashboard at" not in started, started
    assert "Traceback" not in started, started


async def _running_demo(cli: Cli) -> dict[tuple[int, int], str]:
    await cli.wait_for(r"dashboard at http://", 60)
    servers = descendants(cli.pid)
    assert sorted(servers.values())[0] == "mosquitto" and len(servers) == 2, servers
    return servers


async def test_sigterm_to_a_running_demo_leaves_no_server_behind(tmp_path: Path) -> None:
    args = ["demo", *FLEET, "--port", str(free_port()), "--data-dir", str(tmp_path)]
    async with Cli(*args) as cli:
        servers = await _running_demo(cli)
        cli.signal(signal.SIGTERM)
        assert await cli.wait(DEADLINE_S) == 0, cli.text
        assert still_running(servers) == {}, cli.text
    assert "demo stopped" in cli.text, cli.text


async def test_sigkill_to_a_running_demo_leaves_no_server_behind(tmp_path: Path) -> None:
    args = ["demo", *FLEET, "--port", str(free_port()), "--data-dir", str(tmp_path)]
    async with Cli(*args) as cli:
        servers = await _running_demo(cli)
        cli.signal(signal.SIGKILL)
        assert await cli.wait(5) == -signal.SIGKILL
        try:
            assert await wait_gone(servers, 5) == {}, servers
        finally:  # never leave orphans on the machine, even when failing
            for pid, _ in still_running(servers):
                os.kill(pid, signal.SIGKILL)


async def test_run_stuck_connecting_stops_on_the_first_signal(tmp_path: Path) -> None:
    async with fake_broker("silent") as (url, tried):
        args = ["run", "--mqtt-url", url, "--data-dir", str(tmp_path), "--metrics-port", "0"]
        async with Cli(*args, env=trial_env(os.environ["PATH"], tmp_path)) as cli:
            await asyncio.wait_for(tried.wait(), 60)
            servers = descendants(cli.pid)
            assert len(servers) == 1, servers  # moto: no AWS credentials, trial mode
            cli.signal(signal.SIGINT)
            assert await cli.wait(DEADLINE_S) == 0, cli.text
            assert still_running(servers) == {}, cli.text
    assert "ingest.pipeline.service: stopped" in cli.text, cli.text


async def test_sigkill_to_run_in_trial_mode_leaves_no_server_behind(tmp_path: Path) -> None:
    args = ["run", "--data-dir", str(tmp_path), "--metrics-port", "0"]
    async with Cli(*args, env=trial_env(os.environ["PATH"], tmp_path)) as cli:
        await cli.wait_for(r"ingest ready", 60)
        servers = descendants(cli.pid)
        assert sorted(servers.values())[0] == "mosquitto" and len(servers) == 2, servers
        cli.signal(signal.SIGKILL)
        assert await cli.wait(5) == -signal.SIGKILL
        try:
            assert await wait_gone(servers, 5) == {}, servers
        finally:
            for pid, _ in still_running(servers):
                os.kill(pid, signal.SIGKILL)
