"""`table create --pitr/--table-class/--replica-region` and `table backup`, on moto and dynalite.

What moto implements is asserted on the values moto reports (DescribeTable,
DescribeContinuousBackups, DescribeTimeToLive, ListBackups). What moto 5.2 ignores
(``TableClass`` in CreateTable/UpdateTable, ``ReplicaUpdates`` in UpdateTable) is proved
on the exact request sent, recorded at the client (:class:`Recording`), and the wait for
a replica on a scripted table (:class:`GlobalTableScript`) whose answers follow the
API reference (UpdateTable, DescribeTable: ``Replicas[].ReplicaStatus``).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import re
from typing import Any

import orjson
import pytest

from ingest.aws.settings import AwsSettings
from ingest.cli.main import main as cli_main
from ingest.core.errors import DynamoRejected, TableError
from ingest.storage.dynamo import DynamoClient
from ingest.storage.layout import LAYOUT_PK, Reading, TableLayout
from ingest.storage.reads import read_range
from ingest.storage.table import TableFeatures, create_table, create_table_request
from tests.conftest import REGION
from tests.ingest.harness import AWS

NEW_AND_OLD = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
HOUR_MS = 3_600_000


def table_args(endpoint: str, table: str) -> list[str]:
    return [
        "--table",
        table,
        "--dynamodb-endpoint",
        endpoint,
        "--region",
        REGION,
        "--aws-access-key-id",
        "test",
        "--aws-secret-access-key",
        "test",
    ]


async def cli(*argv: str) -> int:
    """Run the command in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(cli_main, list(argv))


def admin(endpoint: str, table: str) -> DynamoClient:
    return DynamoClient(table=table, aws=AwsSettings(region=REGION, endpoint_url=endpoint, **AWS))


class Recording(DynamoClient):
    """A DynamoDB client that records every management call: (operation, request, answer)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        request = copy.deepcopy(kwargs)
        try:
            answer = await super().call(operation, **kwargs)
        except Exception:
            self.calls.append((operation, request, None))
            raise
        self.calls.append((operation, request, copy.deepcopy(answer)))
        return answer

    def requests(self, operation: str) -> list[dict[str, Any]]:
        return [req for op, req, _ in self.calls if op == operation]


# -- flag values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["table", "create", "--table-class", "cold"], ["--table-class", "'cold'", "standard-ia"]),
        (["table", "create", "--replica-region", "Europe"], ["--replica-region", "'Europe'"]),
        (["table", "create", "--replica-region", "eu-west"], ["--replica-region", "'eu-west'"]),
        (["table", "backup", "create", "--name", "my backup!"], ["--name", "'my backup!'"]),
        (["table", "backup", "create", "--name", "ab"], ["--name", "'ab'"]),
    ],
)
def test_a_bad_flag_value_names_the_flag_and_the_value(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_a_replica_in_the_tables_own_region_is_refused_before_any_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No endpoint answers on this port: the refusal must come first.
    rc = cli_main(
        [
            "table",
            "create",
            "--table",
            "t-own-region",
            "--region",
            "eu-west-1",
            "--dynamodb-endpoint",
            "http://127.0.0.1:9",
            "--replica-region",
            "eu-west-1",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "--replica-region eu-west-1" in err and "--region" in err


def test_table_features_validate_their_values() -> None:
    with pytest.raises(ValueError, match="STANDARD_IA"):
        TableFeatures(table_class="STANDARD_IA")
    with pytest.raises(ValueError, match="'EU'"):
        TableFeatures(replica_regions=("EU",))
    # Repeated regions are asked for once, in the order given.
    assert TableFeatures(
        replica_regions=("eu-west-1", "ap-south-1", "eu-west-1")
    ).replica_regions == (
        "eu-west-1",
        "ap-south-1",
    )


# -- point-in-time recovery and table class, on moto -------------------------------------


async def test_create_with_pitr_and_standard_ia_on_moto(
    moto_server: Any, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = moto_server.endpoint_url
    args = table_args(url, unique_name)
    assert await cli("table", "create", *args, "--pitr", "--table-class", "standard-ia") == 0
    async with admin(url, unique_name) as db:
        cb = (await db.call("describe_continuous_backups", TableName=unique_name))[
            "ContinuousBackupsDescription"
        ]
        ttl = (await db.call("describe_time_to_live", TableName=unique_name))[
            "TimeToLiveDescription"
        ]
        desc = (await db.call("describe_table", TableName=unique_name))["Table"]
        layout = await db.call(
            "get_item", TableName=unique_name, Key={"pk": {"S": LAYOUT_PK}, "sk": {"N": "0"}}
        )
    pitr = cb["PointInTimeRecoveryDescription"]
    assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"
    assert pitr["RecoveryPeriodInDays"] == 35
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    assert desc["TableStatus"] == "ACTIVE"
    assert desc["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert "TableClassSummary" not in desc  # moto 5.2 ignores TableClass
    assert layout["Item"] == TableLayout().to_layout_item()
    captured = capsys.readouterr()
    assert f"table {unique_name}: created" in captured.out
    assert "point-in-time recovery: ENABLED" in captured.out
    # What moto does not keep is said, not hidden.
    assert "table class: not reported by this endpoint" in captured.out
    assert "STANDARD_INFREQUENT_ACCESS" in captured.err

    # Idempotent: a second run changes nothing and says so.
    assert await cli("table", "create", *args, "--pitr") == 0
    assert f"table {unique_name}: already exists" in capsys.readouterr().out


async def test_create_sends_table_class_and_enables_pitr_once_after_active(
    moto_server: Any, unique_name: str
) -> None:
    features = TableFeatures(pitr=True, table_class="STANDARD_INFREQUENT_ACCESS")
    async with Recording(
        table=unique_name,
        aws=AwsSettings(region=REGION, endpoint_url=moto_server.endpoint_url, **AWS),
    ) as client:
        assert await create_table(client, TableLayout(), features=features) is True
        assert client.requests("create_table") == [
            {**create_table_request(unique_name), "TableClass": "STANDARD_INFREQUENT_ACCESS"}
        ]
        assert client.requests("update_continuous_backups") == [
            {
                "TableName": unique_name,
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            }
        ]
        # PITR was asked for only once DescribeTable had answered ACTIVE.
        ops = [(op, ans) for op, _, ans in client.calls]
        first_pitr = next(i for i, (op, _) in enumerate(ops) if op == "update_continuous_backups")
        assert any(
            op == "describe_table" and ans and ans["Table"]["TableStatus"] == "ACTIVE"
            for op, ans in ops[:first_pitr]
        )

        client.calls.clear()
        assert await create_table(client, TableLayout(), features=features) is False
        assert client.requests("create_table") == []
        assert client.requests("update_continuous_backups") == []  # already ENABLED
        # moto forgets the class (no TableClassSummary), so the second run asks again for
        # the switch; DynamoDB's description carries the class and the run sends nothing.
        assert client.requests("update_table") == [
            {"TableName": unique_name, "TableClass": "STANDARD_INFREQUENT_ACCESS"}
        ]


async def test_standard_is_the_default_and_sends_no_class(
    moto_server: Any, unique_name: str
) -> None:
    async with Recording(
        table=unique_name,
        aws=AwsSettings(region=REGION, endpoint_url=moto_server.endpoint_url, **AWS),
    ) as client:
        await create_table(client, TableLayout(), features=TableFeatures(table_class="STANDARD"))
        assert "TableClass" not in client.requests("create_table")[0]
        # No TableClassSummary is DynamoDB's default class: nothing to switch.
        assert client.requests("update_table") == []
        assert client.requests("update_continuous_backups") == []


# -- backups, on moto -------------------------------------------------------------


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_backup_create_and_list_on_moto(
    moto_server: Any, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = moto_server.endpoint_url
    args = table_args(url, unique_name)
    assert await cli("table", "create", *args) == 0
    capsys.readouterr()
    assert await cli("table", "backup", "create", *args, "--name", "before-upgrade") == 0
    out = capsys.readouterr().out
    assert await cli("table", "backup", "create", *args) == 0  # a default name
    out2 = capsys.readouterr().out
    async with admin(url, unique_name) as db:
        summaries = (await db.call("list_backups", TableName=unique_name))["BackupSummaries"]
    by_name = {s["BackupName"]: s for s in summaries}
    assert len(summaries) == 2 and "before-upgrade" in by_name
    named = by_name.pop("before-upgrade")
    (default_name,) = by_name
    assert re.fullmatch(re.escape(unique_name) + r"-\d{8}T\d{6}Z", default_name), default_name
    assert f"backup before-upgrade of table {unique_name}: {named['BackupArn']}" in out
    assert named["BackupStatus"] in out
    assert default_name in out2

    assert await cli("table", "backup", "list", *args, "--json") == 0
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(rows, key=lambda r: r["name"]) == sorted(
        (
            {
                "name": s["BackupName"],
                "arn": s["BackupArn"],
                "created": _iso(s["BackupCreationDateTime"]),
                "size_bytes": s.get("BackupSizeBytes"),
                "status": s["BackupStatus"],
                "type": s["BackupType"],
            }
            for s in summaries
        ),
        key=lambda r: r["name"],
    )

    assert await cli("table", "backup", "list", *args) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["NAME", "CREATED", "SIZE", "STATUS", "ARN"]
    line = next(line for line in text if line.startswith("before-upgrade "))
    assert _iso(named["BackupCreationDateTime"]) in line and named["BackupArn"] in line


async def test_the_documented_restore_procedure_on_moto(
    moto_server: Any, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/operations.md "Restoring": restore to a new table, `table create` it, read it."""
    url = moto_server.endpoint_url
    layout = TableLayout()
    now = int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)
    readings = [
        Reading(sensor_id="restore-1", ts_ms=now - HOUR_MS + i, metrics={"t": 20.5 + i})
        for i in range(5)
    ]
    assert await cli("table", "create", *table_args(url, unique_name), "--pitr") == 0
    async with admin(url, unique_name) as db:
        for r in readings:
            await db.call("put_item", TableName=unique_name, Item=layout.to_item(r))
    assert await cli("table", "backup", "create", *table_args(url, unique_name)) == 0
    capsys.readouterr()

    restored, pit = f"{unique_name}-restored", f"{unique_name}-pit"
    async with admin(url, unique_name) as db:
        (summary,) = (await db.call("list_backups", TableName=unique_name))["BackupSummaries"]
        await db.call(
            "restore_table_from_backup", TargetTableName=restored, BackupArn=summary["BackupArn"]
        )
        await db.call(
            "restore_table_to_point_in_time",
            SourceTableName=unique_name,
            TargetTableName=pit,
            UseLatestRestorableTime=True,
        )
        for name in (restored, pit):
            # What a restore does not carry over: TTL (and streams, PITR, tags, scaling).
            ttl = await db.call("describe_time_to_live", TableName=name)
            assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "DISABLED"
            pitr = await db.call("describe_continuous_backups", TableName=name)
            assert (
                pitr["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"][
                    "PointInTimeRecoveryStatus"
                ]
                == "DISABLED"
            )
            # The layout record comes back with the data.
            item = await db.call(
                "get_item", TableName=name, Key={"pk": {"S": LAYOUT_PK}, "sk": {"N": "0"}}
            )
            assert item["Item"] == layout.to_layout_item()

    for name in (restored, pit):
        # Step 2 of the procedure: `table create` on the restored table (idempotent).
        assert await cli("table", "create", *table_args(url, name), "--pitr") == 0
        assert f"table {name}: already exists" in capsys.readouterr().out
        async with admin(url, name) as db:
            ttl = await db.call("describe_time_to_live", TableName=name)
            assert ttl["TimeToLiveDescription"] == {
                "TimeToLiveStatus": "ENABLED",
                "AttributeName": "ttl",
            }
            got = await read_range(db, layout, "restore-1", now - 2 * HOUR_MS, now)
        assert [(r.ts_ms, r.metrics) for r in got] == [(r.ts_ms, r.metrics) for r in readings]


# -- streams and replicas, on moto ---------------------------------------------------


async def test_replica_region_enables_the_stream_and_asks_for_the_replica_on_moto(
    moto_server: Any, unique_name: str
) -> None:
    features = TableFeatures(replica_regions=("eu-west-1",))
    async with Recording(
        table=unique_name,
        aws=AwsSettings(region=REGION, endpoint_url=moto_server.endpoint_url, **AWS),
    ) as client:
        with pytest.raises(TableError) as info:
            await create_table(client, TableLayout(), features=features)
        assert client.requests("update_table") == [
            {"TableName": unique_name, "StreamSpecification": NEW_AND_OLD},
            {"TableName": unique_name, "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}]},
        ]
        desc = (await client.call("describe_table", TableName=unique_name))["Table"]
    # moto accepts ReplicaUpdates and reports no replica: said plainly, not waited for.
    message = str(info.value)
    assert "eu-west-1" in message and "Global Tables" in message
    assert desc["StreamSpecification"] == NEW_AND_OLD
    assert desc["LatestStreamArn"]
    assert "Replicas" not in desc or desc["Replicas"] == []


@pytest.mark.parametrize("view", ["OLD_IMAGE", "KEYS_ONLY"])
async def test_a_stream_of_another_view_type_is_refused_with_the_fix(
    moto_server: Any, unique_name: str, view: str
) -> None:
    url = moto_server.endpoint_url
    async with admin(url, unique_name) as db:
        await db.call(
            "create_table",
            **create_table_request(unique_name),
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
        )
    async with Recording(
        table=unique_name, aws=AwsSettings(region=REGION, endpoint_url=url, **AWS)
    ) as client:
        with pytest.raises(TableError) as info:
            await create_table(
                client, TableLayout(), features=TableFeatures(replica_regions=("eu-west-1",))
            )
        assert client.requests("update_table") == []
    message = str(info.value)
    assert view in message and "NEW_AND_OLD_IMAGES" in message


class GlobalTableScript:
    """A table answering like DynamoDB while replicas are added (the fake's one interface).

    UpdateTable with ``ReplicaUpdates`` answers the description with the new replica
    ``CREATING`` and the table ``UPDATING``; the replica turns ``ACTIVE`` (or
    ``CREATION_FAILED``) after ``describes`` DescribeTable calls; an UpdateTable while
    the table is not ACTIVE is refused, as DynamoDB refuses it (ResourceInUseException).
    """

    def __init__(self, *, replicas: dict[str, str] | None = None, describes: int = 3) -> None:
        self.table = "gt-script"
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.replicas: dict[str, list[Any]] = {r: [s, 0] for r, s in (replicas or {}).items()}
        self.stream: dict[str, Any] = dict(NEW_AND_OLD)
        self.describes = describes
        self.fail: set[str] = set()

    def _description(self) -> dict[str, Any]:
        busy = any(status != "ACTIVE" for status, _ in self.replicas.values())
        desc: dict[str, Any] = {
            "TableName": self.table,
            "TableStatus": "UPDATING" if busy else "ACTIVE",
            "StreamSpecification": self.stream,
        }
        if self.replicas:
            desc["GlobalTableVersion"] = "2019.11.21"
            desc["Replicas"] = [
                {"RegionName": r, "ReplicaStatus": s} for r, (s, _) in self.replicas.items()
            ]
        return desc

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append((operation, copy.deepcopy(kwargs)))
        if operation == "describe_table":
            for region, state in self.replicas.items():
                if state[0] == "CREATING":
                    state[1] += 1
                    if state[1] >= self.describes:
                        state[0] = "CREATION_FAILED" if region in self.fail else "ACTIVE"
            return {"Table": self._description()}
        if operation == "update_table":
            if self._description()["TableStatus"] != "ACTIVE":
                raise DynamoRejected(
                    "ResourceInUseException: Attempt to change a resource which is still in use",
                    cause="rejected",
                )
            (update,) = kwargs["ReplicaUpdates"]
            self.replicas[update["Create"]["RegionName"]] = ["CREATING", 0]
            return {"TableDescription": self._description()}
        if operation == "describe_time_to_live":
            return {
                "TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
            }
        if operation == "get_item":
            return {"Item": TableLayout().to_layout_item()}
        raise AssertionError(f"unexpected call {operation} {kwargs}")

    def replica_creates(self) -> list[str]:
        return [
            kw["ReplicaUpdates"][0]["Create"]["RegionName"]
            for op, kw in self.calls
            if op == "update_table"
        ]


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_replicas_are_added_one_region_per_call_each_waited_for() -> None:
    script = GlobalTableScript(replicas={"us-west-2": "ACTIVE"})
    features = TableFeatures(replica_regions=("eu-west-1", "us-west-2", "ap-southeast-2"))
    created = await create_table(
        script,  # type: ignore[arg-type]
        TableLayout(),
        features=features,
        sleep=_no_sleep,
    )
    assert created is False
    # us-west-2 was a replica already; each other region is one call, the second only
    # once the first replica and the table were ACTIVE (the script refuses otherwise).
    assert script.replica_creates() == ["eu-west-1", "ap-southeast-2"]
    assert {r: s for r, (s, _) in script.replicas.items()} == {
        "us-west-2": "ACTIVE",
        "eu-west-1": "ACTIVE",
        "ap-southeast-2": "ACTIVE",
    }
    # Run again: everything is there, nothing is sent.
    script.calls.clear()
    await create_table(script, TableLayout(), features=features, sleep=_no_sleep)  # type: ignore[arg-type]
    assert script.replica_creates() == []


async def test_a_replica_that_fails_to_create_is_an_error_naming_it() -> None:
    script = GlobalTableScript()
    script.fail.add("eu-central-1")
    with pytest.raises(TableError) as info:
        await create_table(
            script,  # type: ignore[arg-type]
            TableLayout(),
            features=TableFeatures(replica_regions=("eu-central-1", "eu-west-1")),
            sleep=_no_sleep,
        )
    assert "eu-central-1" in str(info.value) and "CREATION_FAILED" in str(info.value)
    assert script.replica_creates() == ["eu-central-1"]


async def test_a_replica_still_creating_past_the_deadline_says_so() -> None:
    script = GlobalTableScript(describes=10**9)
    with pytest.raises(TableError) as info:
        await create_table(
            script,  # type: ignore[arg-type]
            TableLayout(),
            features=TableFeatures(replica_regions=("eu-west-1",)),
            replica_wait_s=0.05,
            sleep=asyncio.sleep,
        )
    message = str(info.value)
    assert "eu-west-1" in message and "CREATING" in message and "again" in message


# -- dynalite --------------------------------------------------------------------


@pytest.mark.dynalite
async def test_the_create_path_on_dynalite(
    dynalite_server: Any, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """dynalite has CreateTable and DescribeTable, none of the feature calls: each says so."""
    url = dynalite_server.endpoint_url
    args = table_args(url, unique_name)
    assert await cli("table", "create", *args, "--table-class", "standard-ia") == 0
    captured = capsys.readouterr()
    assert "table class: not reported by this endpoint" in captured.out
    async with admin(url, unique_name) as db:
        desc = (await db.call("describe_table", TableName=unique_name))["Table"]
        layout = await db.call(
            "get_item", TableName=unique_name, Key={"pk": {"S": LAYOUT_PK}, "sk": {"N": "0"}}
        )
    assert desc["TableStatus"] == "ACTIVE" and "TableClassSummary" not in desc
    assert layout["Item"] == TableLayout().to_layout_item()

    assert await cli("table", "create", *args, "--pitr") == 1
    err = capsys.readouterr().err
    assert "point-in-time recovery" in err and unique_name in err

    assert await cli("table", "create", *args, "--replica-region", "eu-west-1") == 1
    err = capsys.readouterr().err
    assert "stream" in err and unique_name in err

    assert await cli("table", "backup", "create", *args) == 1
    err = capsys.readouterr().err
    assert "backup" in err and unique_name in err
