"""The least-privilege IAM policies of deploy/iam/, proved on an account that enforces them.

Each role's component runs for real with its own user's key (moto enforcing IAM:
see conftest.py for what moto evaluates and what it does not): ``iot-ingest run``
(the service in-process) writes readings, ``iot-ingest serve`` reads them (and
archived ones with query-archive.json), ``iot-ingest archive`` archives to S3 and
puts the lifecycle rule. Each then has used exactly the actions its policy grants
(none missing: it worked; none spare: the recording shows each one called, or the
test names why not), and a second key of the same user is refused, with a message
naming the action, for what lies outside the role.

docs/security.md shows the same JSON as the files (checked here), and the
resources the moto run cannot check are checked statically.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from botocore.exceptions import ClientError

from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoError
from ingest.core.metrics import Metrics
from ingest.pipeline.registry import SensorRegistry
from ingest.pipeline.service import IngestService
from ingest.storage.archive.errors import StorageError
from ingest.storage.archive.store import S3Store
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import Reading, TableLayout
from ingest.storage.reads import read_range
from ingest.storage.table import create_table, create_table_request
from ingest.trial.servers import free_port
from tests.conftest import REGION
from tests.ingest.harness import counter, make_config, publish, running, wait_until
from tests.security.conftest import IAM_DIR, PREFIX, ROLES, IamAws, Key, load_policy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
DAY_MS = 86_400_000
CLI = [sys.executable, "-m", "ingest.cli"]


def granted(*roles: str) -> set[str]:
    """Every action the roles' policy files allow."""
    actions: set[str] = set()
    for role in roles:
        for st in load_policy(role)["Statement"]:
            assert st["Effect"] == "Allow"
            actions.update([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    return actions


def admin_dynamo(aws: IamAws) -> DynamoClient:
    return DynamoClient(
        table=aws.table,
        aws=AwsSettings(region=REGION, endpoint_url=aws.endpoint, **aws.admin.kwargs()),
    )


def store(aws: IamAws, key: Key) -> S3Store:
    return S3Store(
        bucket=aws.bucket, prefix=PREFIX, aws=AwsSettings(endpoint_url=aws.endpoint, **key.kwargs())
    )


async def refused(key: Key, aws: IamAws, operation: str, **kwargs: Any) -> str:
    """Call a DynamoDB operation on the table with ``key``; it must fail: the error's message.

    ``TableName`` is added unless the operation names tables otherwise (``RequestItems``).
    """
    if "RequestItems" not in kwargs:
        kwargs["TableName"] = aws.table
    async with DynamoClient(
        table=aws.table, aws=AwsSettings(region=REGION, endpoint_url=aws.endpoint, **key.kwargs())
    ) as client:
        with pytest.raises(DynamoError) as info:
            await client.call(operation, **kwargs)
    return str(info.value)


def denied(message: str, action: str, user: str) -> bool:
    """moto's AccessDenied for DynamoDB names the user and the action, as AWS's does."""
    return f"user/{user} is not authorized to perform: {action}" in message


async def seed(aws: IamAws, layout: TableLayout, readings: list[Reading]) -> None:
    """As an administrator: the table with its layout, the readings, the registry, the bucket."""
    async with admin_dynamo(aws) as db:
        await create_table(db, layout)
        items = [layout.to_item(r) for r in readings]
        for i in range(0, len(items), 25):
            pending = items[i : i + 25]
            while pending:
                pending = await db.batch_write(pending)
        registry = SensorRegistry(db, Metrics())
        registry.observe(readings)
        await registry.flush()
    async with store(aws, aws.admin) as s3:
        await s3.client.create_bucket(Bucket=aws.bucket)


async def run_cli(key: Key, *args: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run ``iot-ingest …`` with ``key`` in its environment; (exit status, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env=key.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    return proc.returncode or 0, out.decode()


class Serve:
    """``iot-ingest serve --no-auth`` with one key, on a free port."""

    def __init__(self, aws: IamAws, key: Key, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [
            *CLI,
            "serve",
            "--table",
            aws.table,
            "--dynamodb-endpoint",
            aws.endpoint,
            "--region",
            REGION,
            "--port",
            str(self.port),
            "--no-auth",
            *extra,
        ]
        self.env = key.env()
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []

    async def start(self) -> bool:
        """Start; True once it listens, False if it exited first (see ``log``)."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):
            while line := (await self.proc.stderr.readline()).decode():
                self.log.append(line)
                if "Uvicorn running on" in line:
                    return True
        await self.proc.wait()
        return False

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        query = {k: str(v) for k, v in params.items()}
        async with aiohttp.ClientSession() as http, http.get(self.url + path, params=query) as r:
            return r.status, await r.json()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- the files and the docs ---------------------------------------------------------------


def test_docs_show_the_policy_files_verbatim() -> None:
    """Each file is linked from docs/security.md and followed by the same JSON."""
    text = DOCS.read_text()
    for role in ROLES:
        link = f"](../deploy/iam/{role}.json)"
        assert link in text, f"docs/security.md does not link deploy/iam/{role}.json"
        block = re.search(r"```json\n(.*?)```", text[text.index(link) :], re.S)
        assert block is not None, f"no JSON block after the link to {role}.json"
        assert json.loads(block.group(1)) == load_policy(role), (
            f"docs/security.md and deploy/iam/{role}.json differ"
        )
    assert sorted(p.stem for p in IAM_DIR.glob("*.json")) == sorted(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_policy_resources_are_scoped_to_the_table_bucket_and_prefix(role: str) -> None:
    """What moto does not evaluate (DynamoDB resources), checked in the files themselves."""
    table_arn = "arn:aws:dynamodb:${REGION}:${ACCOUNT}:table/${TABLE}"
    for st in load_policy(role)["Statement"]:
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        assert all("*" not in a for a in actions), f"{role}: wildcard action in {st['Sid']}"
        for res in resources:
            if all(a.startswith("dynamodb:") for a in actions):
                assert res in (table_arn, table_arn + "/stream/*"), (role, st["Sid"], res)
            else:
                assert all(a.startswith("s3:") for a in actions), (role, st["Sid"])
                assert res in ("arn:aws:s3:::${BUCKET}", "arn:aws:s3:::${BUCKET}/${PREFIX}/*"), (
                    role,
                    st["Sid"],
                    res,
                )
                if res == "arn:aws:s3:::${BUCKET}" and "s3:ListBucket" in actions:
                    cond = st["Condition"]["StringLike"]["s3:prefix"]
                    assert cond == ["${PREFIX}/", "${PREFIX}/*"], (role, st["Sid"])


# -- the roles at work ---------------------------------------------------------------------


async def test_ingest_role_writes_readings_and_is_refused_the_rest(
    iam_aws: IamAws, mosquitto: Any, tmp_path: Path
) -> None:
    aws, key = iam_aws, iam_aws.users["ingest"]
    # The table exists, created by an administrator, without a layout record yet:
    # the service's first start writes it.
    async with admin_dynamo(aws) as db:
        await db.call("create_table", **create_table_request(aws.table))
    cfg = make_config(
        broker_url=mosquitto.url,
        endpoint=aws.endpoint,
        name=aws.table,
        data_dir=tmp_path / "data",
        create_table=False,
        **key.kwargs(),
    )
    now = int(time.time() * 1000) - 60_000
    sensors = [f"iam-{i}" for i in range(3)]
    messages = [
        (f"{aws.table}/{sensors[i % 3]}/telemetry", orjson.dumps({"ts": now + i, "t": i}))
        for i in range(30)
    ]
    service = IngestService(cfg)
    async with running(service):
        sent = await publish(cfg.mqtt.mqtt_url or "", messages)
        await wait_until(
            lambda: counter(service, "iot_ingest_messages_completed_total") >= sent, 30, "durable"
        )
        await wait_until(
            lambda: counter(service, "iot_ingest_registry_updates_total") >= len(sensors),
            30,
            "registry updates",
        )
        assert service.readiness()[0], service.readiness()
    assert counter(service, "iot_ingest_dead_letters_total") == 0
    assert counter(service, "iot_ingest_write_retries_total") == 0
    async with admin_dynamo(aws) as db:
        found = {s: await read_range(db, service.layout, s, now - 1, now + 100) for s in sensors}
    assert sum(len(r) for r in found.values()) == sent == 30

    assert aws.actions(key) == granted("ingest"), "the ingest role's policy is not exact"

    probe = aws.probes["ingest"]
    some_key = {"pk": {"S": "x"}, "sk": {"N": "0"}}
    assert denied(
        await refused(probe, aws, "delete_item", Key=some_key), "dynamodb:DeleteItem", "ingest"
    )
    assert denied(await refused(probe, aws, "scan"), "dynamodb:Scan", "ingest")
    async with store(aws, aws.admin) as s3:
        await s3.client.create_bucket(Bucket=aws.bucket)
        await s3.put(f"{PREFIX}/x.parquet", b"x", content_type="application/octet-stream")
    async with store(aws, probe) as s3:
        with pytest.raises(StorageError, match=r"denied while trying to get archive/x\.parquet"):
            await s3.get(f"{PREFIX}/x.parquet")


async def test_query_role_serves_readings_and_is_refused_writes(iam_aws: IamAws) -> None:
    aws, key = iam_aws, iam_aws.users["query"]
    layout = TableLayout(bucket_ms=DAY_MS, shards=2, retention_days=30)
    now = int(time.time() * 1000)
    readings = [Reading("q-1", now - 60_000 * i, {"v": float(i)}) for i in range(20)]
    await seed(aws, layout, readings)
    serve = Serve(aws, key)
    try:
        assert await serve.start(), "".join(serve.log)
        status, body = await serve.get("/v1/sensors")
        assert status == 200 and [s["sensor_id"] for s in body["sensors"]] == ["q-1"], body
        status, body = await serve.get(
            "/v1/sensors/q-1/readings", start=now - 3_600_000, end=now + 1
        )
        assert status == 200 and body["count"] == 20, body
        status, body = await serve.get("/v1/sensors/q-1/latest")
        assert status == 200, body
    finally:
        await serve.stop()

    assert aws.actions(key) == granted("query"), "the query role's policy is not exact"

    probe = aws.probes["query"]
    item = layout.to_item(Reading("q-1", now, {"v": 1.0}))
    message = await refused(
        probe, aws, "batch_write_item", RequestItems={aws.table: [{"PutRequest": {"Item": item}}]}
    )
    assert denied(message, "dynamodb:BatchWriteItem", "query"), message
    assert denied(await refused(probe, aws, "put_item", Item=item), "dynamodb:PutItem", "query")
    assert denied(await refused(probe, aws, "scan"), "dynamodb:Scan", "query")


async def test_query_role_reads_the_archive_only_with_query_archive_json(
    iam_aws: IamAws,
) -> None:
    aws = iam_aws
    layout = TableLayout(bucket_ms=DAY_MS, shards=2, retention_days=5)
    now = int(time.time() * 1000)
    old = now - 3 * DAY_MS
    readings = [Reading("cold-1", old + i, {"v": float(i)}) for i in range(10)]
    await seed(aws, layout, readings)
    status, out = await run_cli(aws.admin, *archive_args(aws), "--delete-archived")
    assert status == 0 and "1 buckets archived (10 readings)" in out, out
    s3_args = ("--s3-bucket", aws.bucket, "--s3-endpoint", aws.endpoint)

    # query.json alone: serve refuses to start with the archive, saying why.
    serve = Serve(aws, aws.users["query"], *s3_args)
    try:
        assert not await serve.start(), "serve started without S3 permissions"
        log = "".join(serve.log)
        assert f"access to s3://{aws.bucket}" in log, log
        assert "denied while trying to check the bucket" in log, log
    finally:
        await serve.stop()

    key = aws.users["query+archive"]
    serve = Serve(aws, key, *s3_args)
    try:
        assert await serve.start(), "".join(serve.log)
        status, body = await serve.get("/v1/sensors/cold-1/readings", start=old - 1, end=old + 1000)
        assert status == 200 and body["count"] == 10, body
        assert [r["v"] for r in body["readings"]] == [float(i) for i in range(10)], body
    finally:
        await serve.stop()
    assert aws.actions(key) == granted("query", "query-archive")

    probe = aws.probes["query+archive"]
    async with store(aws, probe) as s3:
        with pytest.raises(StorageError, match="denied while trying to put"):
            await s3.put(f"{PREFIX}/x.parquet", b"x", content_type="application/octet-stream")


def archive_args(aws: IamAws) -> list[str]:
    return [
        "archive",
        "--table",
        aws.table,
        "--dynamodb-endpoint",
        aws.endpoint,
        "--region",
        REGION,
        "--s3-bucket",
        aws.bucket,
        "--s3-endpoint",
        aws.endpoint,
        "--s3-prefix",
        PREFIX,
        "--horizon-days",
        "1",
    ]


async def test_archive_role_archives_deletes_and_is_refused_the_rest(iam_aws: IamAws) -> None:
    aws, key = iam_aws, iam_aws.users["archive"]
    layout = TableLayout(bucket_ms=DAY_MS, shards=2, retention_days=5)
    old = int(time.time() * 1000) - 3 * DAY_MS
    readings = [Reading("arch-1", old + i, {"v": float(i)}) for i in range(10)]
    await seed(aws, layout, readings)

    status, out = await run_cli(key, *archive_args(aws), "--delete-archived")
    assert status == 0 and "1 buckets archived (10 readings)" in out, out
    status, out = await run_cli(
        key, "archive", "lifecycle", "--s3-bucket", aws.bucket, "--s3-endpoint", aws.endpoint,
        "--region", REGION, "--s3-prefix", PREFIX, "--days", "30",
    )  # fmt: skip
    assert status == 0 and "GLACIER_IR" in out, out

    async with store(aws, aws.admin) as s3:
        keys = [k async for k in s3.keys(PREFIX + "/")]
    assert any(k.endswith(".parquet") for k in keys), keys
    async with admin_dynamo(aws) as db:
        left = await read_range(db, layout, "arch-1", old - 1, old + 1000)
    assert left == [], "--delete-archived left the archived items"

    assert aws.actions(key) == granted("archive"), "the archive role's policy is not exact"

    probe = aws.probes["archive"]
    some_key = {"pk": {"S": "x"}, "sk": {"N": "0"}}
    assert denied(
        await refused(probe, aws, "delete_item", Key=some_key), "dynamodb:DeleteItem", "archive"
    )
    assert denied(await refused(probe, aws, "scan"), "dynamodb:Scan", "archive")
    async with store(aws, probe) as s3:
        with pytest.raises(StorageError, match="denied while trying to put elsewhere/x"):
            s3.prefix = "elsewhere"
            await s3.put("elsewhere/x", b"x", content_type="application/octet-stream")


async def test_archive_streams_role_archives_stream_removes_and_is_refused_the_rest(
    iam_aws: IamAws,
) -> None:
    aws, key = iam_aws, iam_aws.users["archive-streams"]
    layout = TableLayout(bucket_ms=DAY_MS, shards=2, retention_days=5)
    old = int(time.time() * 1000) - 2 * DAY_MS
    readings = [Reading("str-1", old + i, {"v": float(i)}) for i in range(6)]
    async with admin_dynamo(aws) as db:
        await create_table(db, layout)
        await db.call(
            "update_table",
            TableName=aws.table,
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "OLD_IMAGE"},
        )
    await seed(aws, layout, readings)
    async with admin_dynamo(aws) as db:
        for r in readings[:4]:  # moto has no TTL deleter: an administrator's deletes stand in
            pk = layout.partition_key("str-1", r.ts_ms)
            await db.call(
                "delete_item", TableName=aws.table, Key={"pk": {"S": pk}, "sk": {"N": str(r.ts_ms)}}
            )

    status, out = await run_cli(
        key, "archive", "streams", "--table", aws.table, "--dynamodb-endpoint", aws.endpoint,
        "--region", REGION, "--s3-bucket", aws.bucket, "--s3-endpoint", aws.endpoint,
        "--s3-prefix", PREFIX, "--include-user-deletes",
    )  # fmt: skip
    assert status == 0, out
    async with store(aws, aws.admin) as s3:
        keys = [k async for k in s3.keys(PREFIX + "/")]
    assert any(".s-" in k and k.endswith(".parquet") for k in keys), (keys, out)

    assert aws.actions(key) == granted("archive-streams"), "the streams role's policy is not exact"

    probe = aws.probes["archive-streams"]
    assert denied(await refused(probe, aws, "query", KeyConditionExpression="pk = :p",
                                ExpressionAttributeValues={":p": {"S": "x"}}),
                  "dynamodb:Query", "archive-streams")  # fmt: skip
    item = layout.to_item(readings[0])
    assert denied(
        await refused(probe, aws, "put_item", Item=item), "dynamodb:PutItem", "archive-streams"
    )
    # The batch archiver's policy has no stream access: Streams requests are enforced too.
    async with admin_dynamo(aws) as db:
        arn = (await db.call("describe_table", TableName=aws.table))["Table"]["LatestStreamArn"]
    async with aws.client("dynamodbstreams", aws.probes["archive"]) as streams:
        with pytest.raises(ClientError) as info:
            await streams.describe_stream(StreamArn=arn)
    assert denied(str(info.value), "dynamodb:DescribeStream", "archive"), info.value
