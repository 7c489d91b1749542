"""Table management: create the table (on-demand, TTL on), its features, backups, the layout record.

``table create`` makes the table the service expects and, on request, what protects
or spreads it, each idempotent (a second run sends nothing that is already so):

- point-in-time recovery (UpdateContinuousBackups, once the table is ACTIVE);
- a table class (``TableClass`` at CreateTable; UpdateTable on an existing table);
- replicas in other regions: Global Tables version 2019.11.21, which needs the
  table's stream on with ``NEW_AND_OLD_IMAGES`` (AWS's tutorial enables it before the
  first replica), then one UpdateTable ``ReplicaUpdates: [{Create: {RegionName}}]`` per
  region, each waited for until the replica and the table are ACTIVE (DynamoDB refuses
  an UpdateTable while the table is UPDATING).

On-demand backups are made and listed here too (CreateBackup, ListBackups). What an
endpoint lacks is said plainly: moto 5.2 accepts ``TableClass`` and ``ReplicaUpdates``
and ignores both; dynalite has no backup, point-in-time recovery, stream or TTL-update
call (docs/operations.md has the whole list).

What waiting can heal (DynamoDB unreachable, throttled, a 5xx: see
:func:`ingest.storage.dynamo.is_transient`) is raised as the client's
:class:`~ingest.core.errors.DynamoRetriable`, so that a caller may retry; what it
cannot (a missing table, another layout, access denied) is a
:class:`~ingest.core.errors.TableError` naming the table.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from ingest.core.errors import DynamoError, TableError
from ingest.storage.dynamo import DynamoClient, TableClient, is_transient
from ingest.storage.items import ArchivePolicyItem, LayoutItem
from ingest.storage.layout import ARCHIVE_POLICY_SK, LAYOUT_PK, ArchivePolicy, TableLayout

__all__ = [
    "BACKUP_NAME_PATTERN",
    "REGION_PATTERN",
    "TABLE_CLASSES",
    "BackupInfo",
    "Sleep",
    "TableFeatures",
    "create_backup",
    "create_table",
    "create_table_request",
    "default_backup_name",
    "describe_features",
    "ensure_layout",
    "list_backups",
    "read_archive_policy",
    "read_layout",
    "write_archive_policy",
]

log = logging.getLogger(__name__)

TABLE_CLASSES = {"standard": "STANDARD", "standard-ia": "STANDARD_INFREQUENT_ACCESS"}
"""The ``--table-class`` values and DynamoDB's names for them."""
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
"""An AWS region name: ``eu-west-1``, ``us-gov-west-1``, ``ap-southeast-2``."""
BACKUP_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{3,255}")
"""DynamoDB's rule for a backup name."""

_STREAM_FOR_REPLICAS = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
_POLL_FIRST_S = 0.25
_POLL_MAX_S = 10.0
_REPLICA_WAIT_S = 1800.0
"""A replica copies the table's data before it is ACTIVE: minutes, more for large tables."""

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class TableFeatures:
    """What ``table create`` ensures beyond the table, its TTL and its layout record.

    Args:
        pitr: Point-in-time recovery on.
        table_class: ``STANDARD`` or ``STANDARD_INFREQUENT_ACCESS``; None leaves it as is
            (a new table is Standard).
        replica_regions: Regions to hold a replica (Global Tables 2019.11.21); repeats
            are dropped, the order is kept.
    """

    pitr: bool = False
    table_class: str | None = None
    replica_regions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.table_class is not None and self.table_class not in TABLE_CLASSES.values():
            raise ValueError(
                f"table class {self.table_class!r}: use one of {sorted(TABLE_CLASSES.values())}"
            )
        for region in self.replica_regions:
            if not REGION_PATTERN.fullmatch(region):
                raise ValueError(f"replica region {region!r} is not an AWS region name")
        object.__setattr__(self, "replica_regions", tuple(dict.fromkeys(self.replica_regions)))


def create_table_request(table: str) -> dict[str, Any]:
    """CreateTable's arguments for a table of this layout (on-demand; keys pk S, sk N)."""
    return {
        "TableName": table,
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


async def read_layout(client: DynamoClient) -> TableLayout | None:
    """The table's layout record, or None when it has none; TableError if the table is missing."""
    try:
        resp = await client.call(
            "get_item",
            TableName=client.table,
            Key={"pk": {"S": LAYOUT_PK}, "sk": {"N": "0"}},
            ConsistentRead=True,
        )
    except DynamoError as exc:
        if is_transient(exc):
            raise
        if "ResourceNotFoundException" in str(exc):
            raise TableError(
                f"table {client.table!r} does not exist: check --table and --region, or create "
                f"it with `iot-ingest table create --table {client.table}` (or --create-table)"
            ) from exc
        raise TableError(f"cannot read the layout of table {client.table!r}: {exc}") from exc
    item: LayoutItem | None = resp.get("Item")
    return None if item is None else TableLayout.from_layout_item(item)


async def _describe(client: DynamoClient) -> dict[str, Any] | None:
    try:
        resp = await client.call("describe_table", TableName=client.table)
    except DynamoError as exc:
        if "ResourceNotFoundException" in str(exc):
            return None
        if is_transient(exc):
            raise
        raise TableError(f"cannot describe table {client.table!r}: {exc}") from exc
    table: dict[str, Any] = resp["Table"]
    return table


async def _wait_for(
    client: DynamoClient,
    done: Callable[[dict[str, Any]], bool],
    *,
    wait_s: float,
    sleep: Sleep,
) -> dict[str, Any]:
    """Describe the table until ``done``; TimeoutError (with the last description) past wait_s."""
    deadline = time.monotonic() + wait_s
    delay = _POLL_FIRST_S
    while True:
        desc = await _describe(client)
        if desc is None:
            raise TableError(f"table {client.table!r} disappeared while it was being set up")
        if done(desc):
            return desc
        if time.monotonic() >= deadline:
            raise _Late(desc)
        # Polling a remote state (no event to wait for): capped backoff with jitter.
        await sleep(min(delay, max(deadline - time.monotonic(), 0.0)) * random.uniform(0.5, 1.0))
        delay = min(delay * 2, _POLL_MAX_S)


class _Late(Exception):
    def __init__(self, desc: dict[str, Any]) -> None:
        super().__init__("still waiting")
        self.desc = desc


def _active(desc: dict[str, Any]) -> bool:
    return desc.get("TableStatus") == "ACTIVE"


async def _wait_active(client: DynamoClient, wait_s: float, sleep: Sleep) -> dict[str, Any]:
    try:
        return await _wait_for(client, _active, wait_s=wait_s, sleep=sleep)
    except _Late as late:
        raise TableError(
            f"table {client.table!r} is still {late.desc.get('TableStatus')} after {wait_s:g} s: "
            "check it in the DynamoDB console, then start again"
        ) from None


def _reject(client: DynamoClient, what: str, exc: DynamoError) -> TableError:
    if "UnknownOperation" in str(exc):
        return TableError(
            f"cannot {what} on table {client.table!r}: this DynamoDB endpoint does not "
            f"implement it ({exc})"
        )
    return TableError(f"cannot {what} on table {client.table!r}: {exc}")


async def _update(client: DynamoClient, what: str, **kwargs: Any) -> dict[str, Any]:
    try:
        return await client.call("update_table", TableName=client.table, **kwargs)
    except DynamoError as exc:
        if is_transient(exc):
            raise
        raise _reject(client, what, exc) from exc


async def create_table(
    client: DynamoClient,
    layout: TableLayout,
    *,
    features: TableFeatures | None = None,
    wait_s: float = 60.0,
    replica_wait_s: float = _REPLICA_WAIT_S,
    sleep: Sleep = asyncio.sleep,
) -> bool:
    """Create the table if missing, enable TTL, write the layout record, add ``features``.

    Idempotent: what is already so is left alone. Returns True when the table was
    created by this call.

    Args:
        client: Client bound to the table (and its region).
        layout: The layout to record (or to check against the recorded one).
        features: Point-in-time recovery, table class, replicas.
        wait_s: Longest wait for the table to turn ACTIVE after each change.
        replica_wait_s: Longest wait for each replica to turn ACTIVE.
        sleep: Sleep between polls (injected in tests).
    """
    features = features or TableFeatures()
    created = False
    desc = await _describe(client)
    if desc is None:
        request = create_table_request(client.table)
        if features.table_class not in (None, "STANDARD"):
            request["TableClass"] = features.table_class
        try:
            await client.call("create_table", **request)
            created = True
            log.info("created table %s (on-demand)", client.table)
        except DynamoError as exc:
            if is_transient(exc):
                raise
            if "ResourceInUseException" not in str(exc):
                raise TableError(f"cannot create table {client.table!r}: {exc}") from exc
    desc = await _wait_active(client, wait_s, sleep)
    if features.table_class is not None and not created:
        current = desc.get("TableClassSummary", {}).get("TableClass", "STANDARD")
        if current != features.table_class:
            await _update(client, "change the table class", TableClass=features.table_class)
            log.info("table %s: table class %s → %s", client.table, current, features.table_class)
            desc = await _wait_active(client, wait_s, sleep)
    if features.table_class not in (None, "STANDARD") and "TableClassSummary" not in desc:
        log.warning(
            "table %s: this DynamoDB endpoint does not report a table class: it ignored "
            "TableClass=%s (moto and dynalite ignore it; DynamoDB reports it)",
            client.table,
            features.table_class,
        )
    await _ensure_ttl(client)
    await ensure_layout(client, layout)
    if features.pitr:
        await _ensure_pitr(client, wait_s, sleep)
    if features.replica_regions:
        await _ensure_replicas(client, features.replica_regions, wait_s, replica_wait_s, sleep)
    return created


async def _ensure_ttl(client: DynamoClient) -> None:
    try:
        ttl = await client.call("describe_time_to_live", TableName=client.table)
        if ttl.get("TimeToLiveDescription", {}).get("TimeToLiveStatus") not in (
            "ENABLED",
            "ENABLING",
        ):
            await client.call(
                "update_time_to_live",
                TableName=client.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"},
            )
            log.info("enabled TTL on %s.ttl", client.table)
    except DynamoError as exc:
        if is_transient(exc):
            raise
        if "UnknownOperation" not in str(exc):
            raise TableError(f"cannot enable TTL on table {client.table!r}: {exc}") from exc
        # dynalite and some other DynamoDB-API servers have no TTL API; AWS always does.
        log.warning("this DynamoDB endpoint has no TTL API (%s): items will not expire", exc)


async def _ensure_pitr(client: DynamoClient, wait_s: float, sleep: Sleep) -> None:
    what = "enable point-in-time recovery"
    try:
        resp = await client.call("describe_continuous_backups", TableName=client.table)
        if _pitr_status(resp) == "ENABLED":
            return
        deadline = time.monotonic() + wait_s
        delay = _POLL_FIRST_S
        while True:
            try:
                resp = await client.call(
                    "update_continuous_backups",
                    TableName=client.table,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
                )
                break
            except DynamoError as exc:
                # A table created a moment ago: "Backups are being enabled for the table".
                if "ContinuousBackupsUnavailable" not in str(exc) or time.monotonic() > deadline:
                    raise
                await sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, _POLL_MAX_S)
    except DynamoError as exc:
        if is_transient(exc):
            raise
        raise _reject(client, what, exc) from exc
    status = _pitr_status(resp)
    if status != "ENABLED":
        raise TableError(f"cannot {what} on table {client.table!r}: its status is {status}")
    log.info("enabled point-in-time recovery on %s", client.table)


def _pitr_status(resp: dict[str, Any]) -> str | None:
    desc = resp.get("ContinuousBackupsDescription", {}).get("PointInTimeRecoveryDescription", {})
    status: str | None = desc.get("PointInTimeRecoveryStatus")
    return status


def _replica_status(desc: dict[str, Any], region: str) -> str | None:
    for replica in desc.get("Replicas") or []:
        if replica.get("RegionName") == region:
            status: str | None = replica.get("ReplicaStatus")
            return status
    return None


async def _ensure_replicas(
    client: DynamoClient,
    regions: tuple[str, ...],
    wait_s: float,
    replica_wait_s: float,
    sleep: Sleep,
) -> None:
    desc = await _wait_active(client, wait_s, sleep)
    stream = desc.get("StreamSpecification") or {}
    if not stream.get("StreamEnabled"):
        await _update(
            client,
            "enable the stream (NEW_AND_OLD_IMAGES) that Global Tables need",
            StreamSpecification=_STREAM_FOR_REPLICAS,
        )
        desc = await _wait_active(client, wait_s, sleep)
        stream = desc.get("StreamSpecification") or {}
    if stream != _STREAM_FOR_REPLICAS:
        view = stream.get("StreamViewType") if stream.get("StreamEnabled") else "none"
        raise TableError(
            f"table {client.table!r} has a stream of view type {view}; Global Tables need "
            "NEW_AND_OLD_IMAGES. Changing it means disabling the stream and enabling it again "
            "(aws dynamodb update-table --table-name "
            f"{client.table} --stream-specification StreamEnabled=false, then "
            "StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES): a new stream, so a "
            "stream reader (`iot-ingest archive streams`) starts over on it"
        )
    for region in regions:
        if _replica_status(desc, region) is None:
            resp = await _update(
                client,
                f"add a replica in {region}",
                ReplicaUpdates=[{"Create": {"RegionName": region}}],
            )
            if _replica_status(resp.get("TableDescription", {}), region) is None:
                raise TableError(
                    f"table {client.table!r}: the endpoint accepted the replica in {region} "
                    "but reports none: it does not implement Global Tables version "
                    "2019.11.21 (moto and dynalite do not)"
                )
            log.info("table %s: creating a replica in %s", client.table, region)
        desc = await _wait_replica(client, region, replica_wait_s, sleep)


async def _wait_replica(
    client: DynamoClient, region: str, wait_s: float, sleep: Sleep
) -> dict[str, Any]:
    failed = {"CREATION_FAILED", "REGION_DISABLED", "INACCESSIBLE_ENCRYPTION_CREDENTIALS"}

    def done(desc: dict[str, Any]) -> bool:
        status = _replica_status(desc, region)
        if status in failed or status is None:
            raise TableError(
                f"table {client.table!r}: the replica in {region} is {status or 'gone'}: see "
                "the table's Global tables tab in the DynamoDB console"
            )
        return status == "ACTIVE" and _active(desc)

    try:
        desc = await _wait_for(client, done, wait_s=wait_s, sleep=sleep)
    except _Late as late:
        raise TableError(
            f"table {client.table!r}: the replica in {region} is still "
            f"{_replica_status(late.desc, region)} after {wait_s:g} s (the table is "
            f"{late.desc.get('TableStatus')}); DynamoDB goes on creating it: run "
            "`iot-ingest table create` again with the same flags to wait for it"
        ) from None
    log.info("table %s: replica in %s is ACTIVE", client.table, region)
    return desc


async def ensure_layout(client: DynamoClient, layout: TableLayout) -> TableLayout:
    """Check the table's layout record (writing it if absent); raise TableError on mismatch."""
    stored = await read_layout(client)
    if stored is None:
        await client.call("put_item", TableName=client.table, Item=layout.to_layout_item())
        return layout
    if stored.key_parameters() != layout.key_parameters():
        if (stored.kind, layout.kind) == ("reading", "reading"):
            # The wording users of the reading layout know (and tests match).
            raise TableError(
                f"table {client.table!r} was created with bucket_minutes="
                f"{stored.bucket_ms // 60000}, shards={stored.shards}; the config says "
                f"bucket_minutes={layout.bucket_ms // 60000}, shards={layout.shards}. Keys "
                "would not match: use the table's values or a new table."
            )
        raise TableError(
            f"table {client.table!r} was created with {_params(stored)}; the config says "
            f"{_params(layout)}. Keys would not match: use the table's values or a new table."
        )
    return stored


def _params(layout: TableLayout) -> str:
    return ", ".join(f"{k}={v}" for k, v in layout.key_parameters().items())


_POLICY_KEY = {"pk": {"S": LAYOUT_PK}, "sk": {"N": str(ARCHIVE_POLICY_SK)}}


async def read_archive_policy(client: TableClient) -> ArchivePolicy | None:
    """The archive policy recorded beside the layout record, or None (no archiver ran yet).

    Raises:
        DynamoError: the read failed (the client's error).
    """
    resp = await client.call(
        "get_item", TableName=client.table, Key=_POLICY_KEY, ConsistentRead=True
    )
    item: ArchivePolicyItem | None = resp.get("Item")
    return None if item is None else ArchivePolicy.from_item(item)


async def write_archive_policy(client: DynamoClient, policy: ArchivePolicy) -> None:
    """Record the archive policy (replacing the one recorded before).

    Raises:
        DynamoError: the write failed (the client's error).
    """
    await client.call("put_item", TableName=client.table, Item=policy.to_item())


async def describe_features(client: DynamoClient, *, pitr: bool = True) -> dict[str, Any]:
    """What the endpoint reports of the table's features, for people to read.

    Keys: ``table_class`` (None when not reported), ``stream`` (view type or None),
    ``replicas`` ({region: status}), and with ``pitr`` also ``pitr`` (status),
    ``pitr_earliest`` (ISO time or None) and ``pitr_days``.
    """
    desc = await _describe(client)
    if desc is None:
        raise TableError(f"table {client.table!r} does not exist")
    stream = desc.get("StreamSpecification") or {}
    out: dict[str, Any] = {
        "table_class": desc.get("TableClassSummary", {}).get("TableClass"),
        "stream": stream.get("StreamViewType") if stream.get("StreamEnabled") else None,
        "replicas": {
            r.get("RegionName"): r.get("ReplicaStatus") for r in desc.get("Replicas") or []
        },
    }
    if pitr:
        try:
            resp = await client.call("describe_continuous_backups", TableName=client.table)
        except DynamoError as exc:
            if is_transient(exc):
                raise
            raise _reject(client, "describe point-in-time recovery", exc) from exc
        pd = resp.get("ContinuousBackupsDescription", {}).get("PointInTimeRecoveryDescription", {})
        earliest = pd.get("EarliestRestorableDateTime")
        out["pitr"] = pd.get("PointInTimeRecoveryStatus")
        out["pitr_earliest"] = _iso(earliest) if isinstance(earliest, datetime.datetime) else None
        out["pitr_days"] = pd.get("RecoveryPeriodInDays")
    return out


# -- on-demand backups -------------------------------------------------------------


class BackupInfo(TypedDict):
    """One backup, as ``table backup list`` shows it."""

    name: str
    arn: str
    created: str
    """ISO 8601, UTC, seconds."""
    size_bytes: int | None
    """As DynamoDB reports it (absent while a backup is being made)."""
    status: str
    """CREATING, AVAILABLE or DELETED."""
    type: str
    """USER (ours, the console's), SYSTEM, or AWS_BACKUP (AWS Backup's)."""


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_backup_name(table: str, now: datetime.datetime | None = None) -> str:
    """``{table}-{UTC time}``, e.g. ``readings-20261122T130501Z`` (within DynamoDB's 255)."""
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{table[: 255 - len(stamp) - 1]}-{stamp}"


def _backup_info(entry: dict[str, Any]) -> BackupInfo:
    created = entry.get("BackupCreationDateTime")
    return BackupInfo(
        name=str(entry.get("BackupName", "")),
        arn=str(entry.get("BackupArn", "")),
        created=_iso(created) if isinstance(created, datetime.datetime) else str(created),
        size_bytes=entry.get("BackupSizeBytes"),
        status=str(entry.get("BackupStatus", "")),
        type=str(entry.get("BackupType", "")),
    )


async def create_backup(client: DynamoClient, name: str) -> BackupInfo:
    """Make an on-demand backup of the table (CreateBackup); the backup as DynamoDB reports it."""
    try:
        resp = await client.call("create_backup", TableName=client.table, BackupName=name)
    except DynamoError as exc:
        if is_transient(exc):
            raise
        raise _reject(client, "make a backup", exc) from exc
    return _backup_info(resp.get("BackupDetails", {}))


async def list_backups(client: DynamoClient) -> list[BackupInfo]:
    """Every backup of the table (ListBackups, all types, every page), oldest first."""
    out: list[BackupInfo] = []
    start: str | None = None
    try:
        while True:
            kwargs: dict[str, Any] = {"TableName": client.table, "BackupType": "ALL"}
            if start is not None:
                kwargs["ExclusiveStartBackupArn"] = start
            resp = await client.call("list_backups", **kwargs)
            out.extend(_backup_info(s) for s in resp.get("BackupSummaries", []))
            start = resp.get("LastEvaluatedBackupArn")
            if not start:
                break
    except DynamoError as exc:
        if is_transient(exc):
            raise
        raise _reject(client, "list the backups", exc) from exc
    return sorted(out, key=lambda b: b["created"])
