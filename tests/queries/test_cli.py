"""``iot-ingest serve``: starts on the given table and port, answers, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.storage.layout import Reading
from ingest.trial.servers import free_port
from tests.queries.harness import TestTable, ms_now


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


async def _start_serve(cmd: list[str], env: dict[str, str] | None = None) -> Any:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    try:
        await _wait_for_line(proc.stderr, "Uvicorn running on", 30)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def _stop(proc: Any) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_replicas_sharing_a_cursor_key_file_accept_each_others_cursors(
    make_table: Callable[..., Awaitable[TestTable]], tmp_path: Path
) -> None:
    table = await make_table()
    now = ms_now()
    await table.put([Reading("cli-2", now - 1000 * i, {"v": i}) for i in range(20)])
    key_file = tmp_path / "cursor.key"
    key_file.write_text("# shared by both replicas\n" + secrets.token_hex(32) + "\n")
    ports = [free_port(), free_port()]
    # One replica reads the file from the flag, the other from the environment.
    one = await _start_serve(
        [*_serve_cmd(table.name, table.endpoint, ports[0]), "--cursor-key-file", str(key_file)]
    )
    procs = [one]
    try:
        env = {**os.environ, "IOT_INGEST_CURSOR_KEY_FILE": str(key_file)}
        procs.append(await _start_serve(_serve_cmd(table.name, table.endpoint, ports[1]), env))
        params = {"start": str(now - 60_000), "end": str(now), "limit": "8"}
        seen: list[int] = []
        cursor = None
        async with aiohttp.ClientSession() as session:
            for i in range(10):
                url = f"http://127.0.0.1:{ports[i % 2]}/v1/sensors/cli-2/readings"
                query = params | ({"cursor": cursor} if cursor else {})
                async with session.get(url, params=query) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                seen += [r["ts"] for r in body["readings"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
        assert seen == [now - 1000 * i for i in range(19, -1, -1)]
    finally:
        for proc in procs:
            await _stop(proc)


def test_serve_refuses_a_bad_cursor_key_file_naming_file_and_line(tmp_path: Path) -> None:
    key_file = tmp_path / "cursor.key"
    key_file.write_text(secrets.token_hex(32) + "\nnot-long-enough\n")
    cmd = [*_serve_cmd("some-table", "http://127.0.0.1:9", free_port())]
    done = subprocess.run(
        [*cmd, "--cursor-key-file", str(key_file)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"cursor key file {key_file}, line 2" in done.stderr
    assert "at least 32 characters" in done.stderr
    assert "not-long-enough" not in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [*cmd, "--cursor-key-file", str(tmp_path / "missing.key")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "missing.key" in done.stderr


async def test_serve_caches_closed_buckets_with_the_ingest_configs_allowance(
    make_table: Callable[..., Awaitable[TestTable]],
) -> None:
    """``--cache-mb`` from its environment variable, the allowance from the shared config
    (``max_past_ms`` 0 and the default settle time: 300 + 2 × 10 + 60 s): buckets that ended hours
    ago are served from the cache, the open one is read each time."""
    table = await make_table()  # hour buckets
    now = ms_now()
    old = now - now % 3_600_000 - 3 * 3_600_000
    await table.put([Reading("cli-c", old + 1000 * i, {"v": i}) for i in range(20)])
    port = free_port()
    env = {**os.environ, "IOT_INGEST_QUERY_CACHE_MB": "1", "IOT_INGEST_MAX_PAST_MS": "0"}
    proc = await asyncio.create_subprocess_exec(
        *_serve_cmd(table.name, table.endpoint, port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        log = await _wait_for_line(proc.stderr, "Uvicorn running on", 30)
        assert "closed-bucket cache: 1 MB; a bucket is closed 0.106 h after its end" in log
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            closed = f"{url}/v1/sensors/cli-c/readings?start={old}&end={old + 3_599_999}"
            spent = []
            for _ in range(2):
                async with session.get(closed) as resp:
                    assert resp.status == 200 and (await resp.json())["count"] == 20
                    spent.append(resp.headers["X-Read-Units"])
            assert spent[0] != "0" and spent[1] == "0"
            async with session.get(f"{url}/v1/sensors/cli-c/readings?start=now-1m") as resp:
                assert resp.headers["X-DynamoDB-Calls"] != "0"  # the open bucket
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            assert "iot_query_cache_max_bytes 1.048576e+06" in text
            assert "iot_query_cache_hits_total 1.0" in text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cache_settings_from_flag_environment_and_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from ingest.config import load_config
    from ingest.core.errors import ConfigError
    from queries.cli import CACHE_MB_ENV, cache_settings

    cfg = load_config(file=None, flags={"table": "tbl"}, env={"IOT_INGEST_MAX_PAST_MS": "600000"})
    monkeypatch.delenv(CACHE_MB_ENV, raising=False)
    got = cache_settings(cfg, argparse.Namespace(cache_mb=None))
    # 64 MB by default; max_past_ms + 300 s write retries + 2 x 10 s registry + 60 s skew.
    assert got == {"cache_max_bytes": 64 << 20, "cache_late_allowance_ms": 600_000 + 380_000}
    monkeypatch.setenv(CACHE_MB_ENV, "0.5")
    assert cache_settings(cfg, argparse.Namespace(cache_mb=None))["cache_max_bytes"] == 1 << 19
    assert cache_settings(cfg, argparse.Namespace(cache_mb=0.0))["cache_max_bytes"] == 0
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(CACHE_MB_ENV, bad)
        with pytest.raises(ConfigError, match="MB"):
            cache_settings(cfg, argparse.Namespace(cache_mb=None))
