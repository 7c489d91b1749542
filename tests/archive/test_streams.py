"""The Streams consumer against moto's DynamoDB Streams (user deletes stand in for TTL's)."""

from __future__ import annotations

from aiobotocore.session import get_session

from ingest.archive import read_cold
from ingest.archive.streams import StreamArchiver, is_ttl_delete
from ingest.layout import Reading

from .conftest import NOW_MS, ArchiveEnv

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
