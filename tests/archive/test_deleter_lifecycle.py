"""Early delete under UnprocessedItems/throttling (fault proxy), and the S3 lifecycle rule."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ingest.archive.deleter import delete_keys
from ingest.archive.lifecycle import RULE_ID, apply_lifecycle
from ingest.aws.settings import AwsSettings
from ingest.core.retry import Backoff
from ingest.storage.archive.errors import ArchiveConfigError
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Reading
from tests.archive.conftest import NOW_MS, ArchiveEnv


async def test_delete_resends_unprocessed_and_throttled_with_backoff(
    archive_env: ArchiveEnv, fault_proxy: Callable[..., Awaitable[Any]]
) -> None:
    env = archive_env
    readings = [Reading("dev-x", NOW_MS - 86_400_000 + i, {"t": i}) for i in range(60)]
    await env.put(readings)
    proxy = await fault_proxy(env.endpoint, seed=3, unprocessed=0.5, throttle=0.2)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    async with DynamoClient(
        table=env.dynamo.table,
        aws=AwsSettings(
            region="us-east-1",
            endpoint_url=proxy.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ),
    ) as client:
        keys = [(env.layout.partition_key(r.sensor_id, r.ts_ms), r.ts_ms) for r in readings]
        n = await delete_keys(
            client, keys + keys[:5], backoff=Backoff(base_ms=1, cap_ms=4), sleep=sleep
        )
    assert n == 60
    assert sleeps, "the proxy's faults must have been retried"
    bucket = env.layout.bucket_start(readings[0].ts_ms)
    assert await env.count_items("dev-x", bucket) == 0


async def test_lifecycle_rule_is_merged_into_the_bucket(archive_env: ArchiveEnv) -> None:
    store = archive_env.store
    await store.client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "other",
                    "Filter": {"Prefix": "logs/"},
                    "Status": "Enabled",
                    "Expiration": {"Days": 9},
                }
            ]
        },
    )
    await apply_lifecycle(store, days=30, storage_class="GLACIER_IR")
    await apply_lifecycle(store, days=60, storage_class="GLACIER_IR")  # replaces ours
    resp = await store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)
    rules = {r["ID"]: r for r in resp["Rules"]}
    assert set(rules) == {"other", RULE_ID}
    assert rules[RULE_ID]["Filter"] == {"Prefix": "archive/"}
    assert rules[RULE_ID]["Transitions"] == [{"Days": 60, "StorageClass": "GLACIER_IR"}]
    with pytest.raises(ArchiveConfigError, match="not one of"):
        await apply_lifecycle(store, days=30, storage_class="COLD")
