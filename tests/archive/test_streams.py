"""The Streams consumer and ``iot-ingest archive streams``.

Against moto's DynamoDB Streams (user deletes stand in for TTL's: moto's records
carry no ``userIdentity`` and moto never expires items), and, for what moto
cannot produce (several shards, DescribeStream pages, a trimmed checkpoint), a
fake streams client at the consumer's interface.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from ingest.archive.streams import StreamArchiver, find_stream_arn, is_ttl_delete
from ingest.cli.archive import add_commands
from ingest.storage.archive.errors import ArchiveConfigError
from ingest.storage.archive.reader import read_cold
from ingest.storage.layout import Reading
from tests.archive.conftest import LAYOUT, NOW_MS, ArchiveEnv

_OLD = {"pk": {"S": "dev-1#2026-11-22#0"}, "sk": {"N": "1"}, "m": {"M": {}}}


def test_only_service_principal_removes_of_readings_count() -> None:
    ttl = {
        "eventName": "REMOVE",
        "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
        "dynamodb": {"OldImage": _OLD},
    }
    assert is_ttl_delete(ttl)
    assert not is_ttl_delete({**ttl, "userIdentity": None})  # a user's DeleteItem
    assert is_ttl_delete({**ttl, "userIdentity": None}, include_user_deletes=True)
    assert not is_ttl_delete({**ttl, "eventName": "MODIFY"})
    marker = {**ttl, "dynamodb": {"OldImage": {**_OLD, "pk": {"S": "#archive#dev-1"}}}}
    assert not is_ttl_delete(marker)


async def test_stream_removes_land_in_the_archive_layout(archive_env: ArchiveEnv) -> None:
    env = archive_env
    resp = await env.dynamo.call(
        "update_table",
        TableName=env.dynamo.table,
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    arn = resp["TableDescription"]["LatestStreamArn"]
    readings = [
        Reading("dev-s", NOW_MS - 50 * 3_600_000 + i * 1000, {"t": i / 2}) for i in range(12)
    ]
    await env.put(readings)
    for r in readings[:8]:  # "expire" eight of them
        await env.dynamo.call(
            "delete_item",
            TableName=env.dynamo.table,
            Key={
                "pk": {"S": env.layout.partition_key("dev-s", r.ts_ms)},
                "sk": {"N": str(r.ts_ms)},
            },
        )
    async with get_session().create_client(
        "dynamodbstreams",
        region_name="us-east-1",
        endpoint_url=env.endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ) as streams:
        consumer = StreamArchiver(streams, arn, env.store, env.layout, include_user_deletes=True)
        assert await consumer.poll_once() == 8
        assert await consumer.poll_once() == 0  # checkpointed
    cold = await read_cold(env.store, env.layout, "dev-s", 0, NOW_MS)
    assert cold == readings[:8]


# -- iot-ingest archive streams ------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="iot-ingest")
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def _stream_setup(env: ArchiveEnv, view: str | None) -> list[Reading]:
    if view is not None:
        await env.dynamo.call(
            "update_table",
            TableName=env.dynamo.table,
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
        )
    readings = [Reading("dev-c", NOW_MS - 30 * 3_600_000 + i, {"t": float(i)}) for i in range(9)]
    await env.put(readings)
    for r in readings[:5]:
        await env.dynamo.call(
            "delete_item",
            TableName=env.dynamo.table,
            Key={
                "pk": {"S": env.layout.partition_key("dev-c", r.ts_ms)},
                "sk": {"N": str(r.ts_ms)},
            },
        )
    return readings


def _streams_argv(env: ArchiveEnv) -> list[str]:
    return [
        "archive",
        "streams",
        "--table",
        env.dynamo.table,
        "--dynamodb-endpoint",
        env.endpoint,
        "--region",
        "us-east-1",
        "--s3-bucket",
        env.store.bucket,
        "--s3-endpoint",
        env.endpoint,
    ]


async def test_streams_command_polls_and_checkpoints(
    archive_env: ArchiveEnv, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = archive_env
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    readings = await _stream_setup(env, "OLD_IMAGE")
    argv = _streams_argv(env)

    def run(extra: list[str]) -> int:
        args = _parse(argv + extra)
        return int(args.func(args))

    # moto's records carry no userIdentity, so without the flag nothing counts as TTL's
    assert await asyncio.to_thread(run, []) == 0
    assert "0 readings archived" in capsys.readouterr().out
    assert await read_cold(env.store, env.layout, "dev-c", 0, NOW_MS) == []
    # the checkpoint moved past those records: read them again from a fresh prefix
    assert await asyncio.to_thread(run, ["--include-user-deletes", "--s3-prefix", "p2"]) == 0
    assert "5 readings archived" in capsys.readouterr().out
    assert await asyncio.to_thread(run, ["--include-user-deletes", "--s3-prefix", "p2"]) == 0
    assert "0 readings archived" in capsys.readouterr().out  # checkpointed
    env.store.prefix = "p2"
    assert await read_cold(env.store, env.layout, "dev-c", 0, NOW_MS) == readings[:5]


@pytest.mark.parametrize(
    ("view", "message"),
    [(None, "has no enabled stream"), ("KEYS_ONLY", "view type KEYS_ONLY")],
)
async def test_stream_must_exist_and_carry_old_images(
    archive_env: ArchiveEnv, view: str | None, message: str
) -> None:
    if view is not None:
        await archive_env.dynamo.call(
            "update_table",
            TableName=archive_env.dynamo.table,
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
        )
    with pytest.raises(ArchiveConfigError, match=message) as info:
        await find_stream_arn(archive_env.dynamo)
    assert "StreamViewType=OLD_IMAGE" in str(info.value)


def test_streams_metrics_port_needs_every() -> None:
    args = _parse(["archive", "streams", "--table", "t", "--s3-bucket", "b", "--metrics-port", "0"])
    with pytest.raises(ArchiveConfigError, match="--metrics-port 0 needs --every"):
        args.func(args)


# -- what moto cannot show: a fake streams client ------------------------------------


def _record(seq: int, ts: int, *, ttl: bool = True) -> dict[str, Any]:
    layout = LAYOUT
    return {
        "eventName": "REMOVE",
        "userIdentity": (
            {"type": "Service", "principalId": "dynamodb.amazonaws.com"} if ttl else None
        ),
        "dynamodb": {
            "SequenceNumber": f"{seq:021d}",
            "OldImage": layout.to_item(Reading("dev-f", ts, {"t": float(seq)})),
        },
    }


class FakeStreams:
    """Two shards (described on two pages); the first one's checkpoint can be trimmed."""

    def __init__(self, shards: dict[str, list[dict[str, Any]]], *, trimmed: bool = False) -> None:
        self.shards = shards
        self.trimmed = trimmed
        self.pages: list[int] = []

    async def describe_stream(self, **kwargs: Any) -> dict[str, Any]:
        ids = list(self.shards)
        if "ExclusiveStartShardId" not in kwargs:
            return {
                "StreamDescription": {
                    "Shards": [{"ShardId": ids[0]}],
                    "LastEvaluatedShardId": ids[0],
                }
            }
        return {"StreamDescription": {"Shards": [{"ShardId": i} for i in ids[1:]]}}

    async def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        records = self.shards[kwargs["ShardId"]]
        if kwargs["ShardIteratorType"] == "TRIM_HORIZON":
            return {"ShardIterator": f"{kwargs['ShardId']}|0"}
        if self.trimmed:
            raise ClientError(
                {"Error": {"Code": "TrimmedDataAccessException", "Message": "trimmed"}},
                "GetShardIterator",
            )
        seqs = [r["dynamodb"]["SequenceNumber"] for r in records]
        return {"ShardIterator": f"{kwargs['ShardId']}|{seqs.index(kwargs['SequenceNumber']) + 1}"}

    async def get_records(self, *, ShardIterator: str, Limit: int) -> dict[str, Any]:
        shard, _, pos = ShardIterator.partition("|")
        start = int(pos)
        page = self.shards[shard][start : start + Limit]
        self.pages.append(len(page))
        return {"Records": page, "NextShardIterator": f"{shard}|{start + len(page)}"}


async def test_fake_stream_batches_pages_shards_and_trimmed_checkpoints(
    archive_env: ArchiveEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = archive_env
    base = NOW_MS - 40 * 3_600_000
    one = [_record(i + 1, base + i) for i in range(25)]
    one.append(_record(99, base + 99, ttl=False))  # a user's delete: skipped
    two = [_record(100 + i, base + 1_000 + i) for i in range(7)]
    fake = FakeStreams({"shardId-000000000001": one, "shardId-000000000002": two})
    consumer = StreamArchiver(fake, "arn:fake", env.store, env.layout, max_records=4)
    consumer.batch_records = 10  # below the default floor (max_records) on purpose
    assert await consumer.poll_once() == 25 + 7
    keys = [k async for k in env.store.keys("archive/sensor_id=dev-f/")]
    assert len(keys) == 3 + 1  # shard 1 in batches of <= 12 records (3 objects), shard 2 in one
    cold = await read_cold(env.store, env.layout, "dev-f", 0, NOW_MS)
    assert [r.ts_ms for r in cold] == [base + i for i in range(25)] + [
        base + 1_000 + i for i in range(7)
    ]
    assert await consumer.poll_once() == 0  # checkpointed at each shard's end

    fake.trimmed = True  # the consumer was down longer than the stream keeps records
    with caplog.at_level(logging.ERROR):
        assert await consumer.poll_once() == 25 + 7  # read again from the oldest record
    assert "older than the stream's 24 hours" in caplog.text
    assert [r.ts_ms for r in await read_cold(env.store, env.layout, "dev-f", 0, NOW_MS)] == [
        r.ts_ms for r in cold
    ]  # rewritten under the same keys: no duplicates
