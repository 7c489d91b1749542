"""``iot-ingest archive`` end to end on moto (real clock, one pass), and its argument errors."""

from __future__ import annotations

import argparse
import asyncio
import time

import pytest

from bench.servers import MotoServer
from ingest.cli.archive import add_commands
from ingest.storage.archive.errors import ArchiveConfigError
from ingest.storage.layout import Reading, TableLayout
from tests.archive.conftest import bucket_name, seed_table_and_bucket


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="iot-ingest")
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def _setup(endpoint: str, table: str, bucket: str) -> int:
    layout = TableLayout(bucket_ms=86_400_000, shards=2, retention_days=5)
    now = int(time.time() * 1000)
    readings = [Reading("cli-1", now - 3 * 86_400_000 + i, {"t": i}) for i in range(10)]
    return await seed_table_and_bucket(endpoint, table, bucket, layout, readings)


def test_archive_command_one_pass(
    moto_server: MotoServer,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    endpoint = moto_server.endpoint_url
    bucket = bucket_name(unique_name)
    n = asyncio.run(_setup(endpoint, unique_name, bucket))
    common = ["--s3-bucket", bucket, "--s3-endpoint", endpoint, "--region", "us-east-1"]
    args = parse(
        [
            "archive",
            "--table",
            unique_name,
            "--dynamodb-endpoint",
            endpoint,
            *common,
            "--horizon-days",
            "1",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"1 buckets archived ({n} readings)" in out
    args = parse(["archive", "lifecycle", *common, "--days", "30"])
    assert args.func(args) == 0
    assert "GLACIER_IR" in capsys.readouterr().out


def test_archive_command_needs_a_bucket() -> None:
    args = parse(["archive", "--table", "t"])
    with pytest.raises(ArchiveConfigError, match="--s3-bucket is required"):
        args.func(args)
