"""``iot-ingest serve``: starts on the given table and port, answers, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from ingest.embedded import free_port
from ingest.layout import Reading

from .harness import TestTable, ms_now


@pytest.fixture
def dynamodb_endpoint(moto_server: object) -> str:
    """The command is what is under test: one DynamoDB-API server is enough."""
    return moto_server.endpoint_url  # type: ignore[attr-defined, no-any-return]


def _serve_cmd(table: str, endpoint: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ingest.cli",
        "serve",
        "--table",
        table,
        "--dynamodb-endpoint",
        endpoint,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--aws-access-key-id",
        "test",
        "--aws-secret-access-key",
        "test",
        "--no-auth",  # authentication is tested in test_security_cli.py
    ]


async def _wait_for_line(stream: asyncio.StreamReader, needle: str, timeout_s: float) -> str:
    seen = []
    async with asyncio.timeout(timeout_s):
        while line := (await stream.readline()).decode():
            seen.append(line)
            if needle in line:
                return "".join(seen)
    raise AssertionError(f"{needle!r} never logged:\n{''.join(seen)}")


async def test_serve_starts_answers_and_stops_on_sigterm(
    make_table: Callable[..., Awaitable[TestTable]],
) -> None:
    table = await make_table()
    await table.put([Reading("cli-1", ms_now() - 1000 * i, {"v": i}) for i in range(20)])
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *_serve_cmd(table.name, table.endpoint, port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        await _wait_for_line(proc.stderr, "Uvicorn running on", 30)
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            async with session.get(url + "/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["layout"]["shards"] == table.layout.shards
            async with session.get(url + "/v1/sensors/cli-1/readings") as resp:
                assert resp.status == 200
                assert (await resp.json())["count"] == 20
            async with session.get(url + "/") as resp:
                assert resp.status == 200
                assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_on_a_missing_table_fails_with_a_plain_message(moto_server: object) -> None:
    endpoint = moto_server.endpoint_url  # type: ignore[attr-defined]
    proc = await asyncio.create_subprocess_exec(
        *_serve_cmd("no-such-table-here", endpoint, free_port()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "table 'no-such-table-here' does not exist" in err.decode()
    assert "Traceback" not in err.decode()


async def test_serve_with_a_missing_archive_bucket_fails_before_listening(
    make_table: Callable[..., Awaitable[TestTable]],
) -> None:
    table = await make_table()
    cmd = [
        *_serve_cmd(table.name, table.endpoint, free_port()),
        "--s3-bucket",
        "no-such-archive-bucket",
        "--s3-endpoint",
        table.endpoint,
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    text = err.decode()
    assert proc.returncode == 1, text
    assert "S3 bucket 'no-such-archive-bucket' does not exist" in text
    assert "Traceback" not in text and "Uvicorn running" not in text
