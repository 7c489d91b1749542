"""Table management: create the table (on-demand, TTL on) and check its layout record.

What waiting can heal (DynamoDB unreachable, throttled, a 5xx: see
:func:`ingest.dynamo.is_transient`) is raised as the client's
:class:`~ingest.errors.WriteRetriable`, so that a caller may retry; what it
cannot (a missing table, another layout, access denied) is a
:class:`~ingest.errors.TableError` naming the table.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .dynamo import DynamoClient, is_transient
from .dynamohttp import LeanDynamoClient
from .errors import TableError, WriteError
from .layout import ARCHIVE_POLICY_SK, LAYOUT_PK, ArchivePolicy, TableLayout

__all__ = [
    "create_table",
    "create_table_request",
    "ensure_layout",
    "read_archive_policy",
    "read_layout",
    "write_archive_policy",
]

log = logging.getLogger(__name__)


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
    except WriteError as exc:
        if is_transient(exc):
            raise
        if "ResourceNotFoundException" in str(exc):
            raise TableError(
                f"table {client.table!r} does not exist: check --table and --region, or create "
                f"it with `iot-ingest table create --table {client.table}` (or --create-table)"
            ) from exc
        raise TableError(f"cannot read the layout of table {client.table!r}: {exc}") from exc
    item = resp.get("Item")
    return None if item is None else TableLayout.from_layout_item(item)


async def _table_status(client: DynamoClient) -> str | None:
    try:
        resp = await client.call("describe_table", TableName=client.table)
    except WriteError as exc:
        if "ResourceNotFoundException" in str(exc):
            return None
        if is_transient(exc):
            raise
        raise TableError(f"cannot describe table {client.table!r}: {exc}") from exc
    return str(resp["Table"]["TableStatus"])


async def create_table(client: DynamoClient, layout: TableLayout, *, wait_s: float = 60.0) -> bool:
    """Create the table if missing, enable TTL and write the layout record; idempotent.

    Returns True when the table was created by this call.
    """
    created = False
    status = await _table_status(client)
    if status is None:
        try:
            await client.call("create_table", **create_table_request(client.table))
            created = True
            log.info("created table %s (on-demand)", client.table)
        except WriteError as exc:
            if is_transient(exc):
                raise
            if "ResourceInUseException" not in str(exc):
                raise TableError(f"cannot create table {client.table!r}: {exc}") from exc
    try:
        async with asyncio.timeout(wait_s):
            # Polling a remote state (no event to wait for), bounded by the timeout.
            while (status := await _table_status(client)) != "ACTIVE":  # noqa: ASYNC110
                await asyncio.sleep(0.5)
    except TimeoutError:
        raise TableError(
            f"table {client.table!r} is still {status} after {wait_s:g} s: check it in the "
            "DynamoDB console, then start again"
        ) from None
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
    except WriteError as exc:
        if is_transient(exc):
            raise
        if "UnknownOperation" not in str(exc):
            raise TableError(f"cannot enable TTL on table {client.table!r}: {exc}") from exc
        # dynalite and some other DynamoDB-API servers have no TTL API; AWS always does.
        log.warning("this DynamoDB endpoint has no TTL API (%s): items will not expire", exc)
    await ensure_layout(client, layout)
    return created


async def ensure_layout(client: DynamoClient, layout: TableLayout) -> TableLayout:
    """Check the table's layout record (writing it if absent); raise TableError on mismatch."""
    stored = await read_layout(client)
    if stored is None:
        await client.call("put_item", TableName=client.table, Item=layout.to_layout_item())
        return layout
    if (stored.bucket_ms, stored.shards) != (layout.bucket_ms, layout.shards):
        raise TableError(
            f"table {client.table!r} was created with bucket_minutes={stored.bucket_ms // 60000}, "
            f"shards={stored.shards}; the config says bucket_minutes={layout.bucket_ms // 60000}, "
            f"shards={layout.shards}. Keys would not match: use the table's values or a new table."
        )
    return stored


_POLICY_KEY = {"pk": {"S": LAYOUT_PK}, "sk": {"N": str(ARCHIVE_POLICY_SK)}}


async def read_archive_policy(client: DynamoClient | LeanDynamoClient) -> ArchivePolicy | None:
    """The archive policy recorded beside the layout record, or None (no archiver ran yet).

    Raises:
        WriteError: the read failed (the client's error).
    """
    resp = await client.call(
        "get_item", TableName=client.table, Key=_POLICY_KEY, ConsistentRead=True
    )
    item = resp.get("Item")
    return None if item is None else ArchivePolicy.from_item(item)


async def write_archive_policy(client: DynamoClient, policy: ArchivePolicy) -> None:
    """Record the archive policy (replacing the one recorded before).

    Raises:
        WriteError: the write failed (the client's error).
    """
    await client.call("put_item", TableName=client.table, Item=policy.to_item())
