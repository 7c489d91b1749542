"""The key CLI and ``serve``'s authentication switch, as an operator runs them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from ingest.trial.servers import free_port
from queries.api.apikeys import load_keys_file
from tests.queries.harness import TestTable

CLI = [sys.executable, "-m", "ingest.cli"]


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """The command is under test: one DynamoDB-API server is enough."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _hash_key(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "apikey", "hash", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_apikey_hash_prints_the_token_once_and_an_entry_without_it(tmp_path: Path) -> None:
    done = _hash_key("--name", "grafana", "--sensors", "site-a-", "--sensors", "lab:")
    assert done.returncode == 0, done.stderr
    token = done.stderr.strip().splitlines()[-1]
    assert token.startswith("iot_")
    assert token not in done.stdout  # the entry holds the hash only
    keys = tmp_path / "keys.toml"
    keys.write_text(done.stdout)
    key = load_keys_file(keys).authenticate(token)
    assert key is not None
    assert key.name == "grafana"
    assert key.sensors == ("site-a-", "lab:")

    existing = "x" * 40
    done = _hash_key("--name", "ci", "--sensors", "*", "--stdin", stdin=existing + "\n")
    assert done.returncode == 0
    assert existing not in done.stdout + done.stderr
    keys.write_text(done.stdout)
    assert load_keys_file(keys).authenticate(existing) is not None

    done = _hash_key("--name", "weak", "--sensors", "*", "--stdin", stdin="hunter2\n")
    assert done.returncode == 2
    assert "at least 32 characters" in done.stderr


def test_serve_refuses_to_start_without_keys_or_no_auth(tmp_path: Path) -> None:
    base = [*CLI, "serve", "--table", "some-table", "--port", str(free_port())]
    done = subprocess.run(base, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no API keys configured" in done.stderr
    assert "--no-auth" in done.stderr
    keys = tmp_path / "keys.toml"
    keys.write_text(_hash_key("--name", "a", "--sensors", "*").stdout)
    done = subprocess.run(
        [*base, "--api-keys", str(keys), "--no-auth"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "exclude each other" in done.stderr
    keys.write_text('[[keys]]\nname = "a"\ntoken = "iot_plaintext"\nsensors = ["*"]\n')
    done = subprocess.run(
        [*base, "--api-keys", str(keys)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "plaintext tokens are not accepted" in done.stderr
    assert "iot_plaintext" not in done.stderr


async def test_serve_with_a_keys_file_requires_the_key(
    make_table: Callable[..., Awaitable[TestTable]], tmp_path: Path
) -> None:
    table = await make_table()
    created = _hash_key("--name", "ops", "--sensors", "*")
    token = created.stderr.strip().splitlines()[-1]
    keys = tmp_path / "keys.toml"
    keys.write_text(created.stdout)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "serve",
        "--table",
        table.name,
        "--dynamodb-endpoint",
        table.endpoint,
        "--aws-access-key-id",
        "test",
        "--aws-secret-access-key",
        "test",
        "--port",
        str(port),
        "--api-keys",
        str(keys),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while line := (await proc.stderr.readline()).decode():
                log.append(line)
                if "Uvicorn running on" in line:
                    break
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/v1/sensors") as resp:
                assert resp.status == 401
            async with session.get(url + "/v1/sensors", headers={"X-API-Key": token}) as resp:
                assert resp.status == 200
            async with session.get(url + "/healthz") as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    text = "".join(log) + (await proc.stderr.read()).decode()
    assert "API keys: ops" in text
    assert token not in text  # never logged
    assert "authentication is OFF" not in text
