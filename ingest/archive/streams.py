"""DynamoDB Streams consumer: archive items as TTL deletes them, in the same S3 layout.

For deployments that enable a stream (``NEW_AND_OLD_IMAGES`` or ``OLD_IMAGE``) on
the table instead of (or beside) the batch archiver. TTL deletions appear as
``REMOVE`` records whose ``userIdentity`` is ``{"type": "Service",
"principalId": "dynamodb.amazonaws.com"}``; their ``OldImage`` is the expired
item. A poll reads every shard from its checkpoint to its current end, in
batches of at most ``batch_records`` records; each batch's readings are grouped
by sensor and bucket and written as one object per group, ``part-{bucket}.s-{shard}-{first
sequence number}.parquet`` beside the batch archiver's ``part-{bucket}.parquet``
(:mod:`.paths`), read back and compared (count and content checksum), and only
then does the shard's checkpoint (an S3 object under ``{prefix}/_streams/``)
move. A crash before the checkpoint re-reads the same records and rewrites
them: at-least-once, no duplicates at read time (:func:`.reader.read_cold`
returns each timestamp once).

Stream records are kept 24 hours: the consumer must run at least that often. A
checkpoint older than that (``TrimmedDataAccessException``) is logged as an
error (the deletions in the gap were not seen) and the shard is read again
from its oldest record.

``iot-ingest archive streams`` runs it (:mod:`.cli`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Any

import aiohttp
import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from ingest.archive.metrics import ArchiveMetrics
from ingest.aws.client import BotocoreClient
from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoError
from ingest.storage.archive.errors import (
    ArchiveConfigError,
    ArchiveError,
    SourceError,
    StorageError,
    VerifyError,
)
from ingest.storage.archive.parquet import content_checksum, decode, encode
from ingest.storage.archive.paths import data_key
from ingest.storage.archive.store import S3Store
from ingest.storage.dynamo import DynamoClient
from ingest.storage.items import ReadingItem
from ingest.storage.layout import Reading, TableLayout, is_reserved_pk

__all__ = ["StreamArchiver", "StreamsClient", "find_stream_arn", "is_ttl_delete"]

log = logging.getLogger(__name__)

_SERVICE = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
_OLD_IMAGE_VIEWS = frozenset({"OLD_IMAGE", "NEW_AND_OLD_IMAGES"})
_RETRIABLE_CODES = frozenset(
    {"LimitExceededException", "ThrottlingException", "InternalServerError", "RequestLimitExceeded"}
)


def is_ttl_delete(record: dict[str, Any], *, include_user_deletes: bool = False) -> bool:
    """True for a REMOVE of a reading item by DynamoDB's TTL (or any REMOVE, if asked)."""
    if record.get("eventName") != "REMOVE":
        return False
    old = record.get("dynamodb", {}).get("OldImage")
    if not old or "pk" not in old or is_reserved_pk(old["pk"]["S"]):
        return False
    identity = record.get("userIdentity") or {}
    return include_user_deletes or all(identity.get(k) == v for k, v in _SERVICE.items())


class StreamsClient(BotocoreClient):
    """An aiobotocore ``dynamodbstreams`` client (``.client``), as an async context manager.

    Args:
        aws: Region, endpoint (DynamoDB emulators serve streams on their DynamoDB
            endpoint) and credentials.
    """

    def __init__(
        self,
        *,
        aws: AwsSettings,
    ) -> None:
        super().__init__(
            "dynamodbstreams",
            config=AioConfig(
                retries={"total_max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            ),
            aws=aws,
        )


async def find_stream_arn(dynamo: DynamoClient) -> str:
    """The table's current stream ARN, checked to carry old images.

    Raises:
        ArchiveConfigError: the table has no enabled stream, or one without old images.
        SourceError: DescribeTable failed.
    """
    try:
        desc = (await dynamo.call("describe_table", TableName=dynamo.table))["Table"]
    except DynamoError as exc:
        raise SourceError(
            f"cannot describe table {dynamo.table!r}: {exc}", retriable=exc.retriable
        ) from exc
    spec = desc.get("StreamSpecification") or {}
    arn = desc.get("LatestStreamArn")
    fix = (
        f"enable one: aws dynamodb update-table --table-name {dynamo.table} "
        "--stream-specification StreamEnabled=true,StreamViewType=OLD_IMAGE"
    )
    if not spec.get("StreamEnabled") or not arn:
        raise ArchiveConfigError(f"table {dynamo.table!r} has no enabled stream; {fix}")
    view = spec.get("StreamViewType")
    if view not in _OLD_IMAGE_VIEWS:
        raise ArchiveConfigError(
            f"the stream of table {dynamo.table!r} has view type {view}, which carries no old "
            f"image of a deleted item; it needs OLD_IMAGE or NEW_AND_OLD_IMAGES ({fix})"
        )
    return str(arn)


def _wrap(exc: BaseException, action: str) -> SourceError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return SourceError(
            f"DynamoDB Streams {action} failed: {code}: {err.get('Message', '')}",
            retriable=status >= 500 or code in _RETRIABLE_CODES,
        )
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
        return SourceError(
            f"DynamoDB Streams {action} failed: {type(exc).__name__}: {exc}", retriable=True
        )
    return SourceError(f"DynamoDB Streams {action} failed: {type(exc).__name__}: {exc}")


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class StreamArchiver:
    """Polls a table's stream and archives TTL-deleted readings.

    Args:
        streams: An open aiobotocore ``dynamodbstreams`` client (``StreamsClient.client``).
        stream_arn: The table's ``LatestStreamArn`` (:func:`find_stream_arn`).
        store: The archive's S3 store.
        layout: The table's layout.
        include_user_deletes: Archive every REMOVE, not only TTL's (emulators whose
            records carry no ``userIdentity``; also archives user and early deletes).
        max_records: Records per GetRecords call (at most 1000).
        batch_records: Records held before their objects are written and the
            checkpoint moves (bounds memory on a large backlog).
        metrics: Where each poll is recorded (``None``: nowhere).
    """

    def __init__(
        self,
        streams: Any,
        stream_arn: str,
        store: S3Store,
        layout: TableLayout,
        *,
        include_user_deletes: bool = False,
        max_records: int = 1000,
        batch_records: int = 10_000,
        metrics: ArchiveMetrics | None = None,
    ) -> None:
        if layout.kind != "reading":
            raise ArchiveConfigError(
                f"`archive streams` archives only 'reading' tables; this one has the "
                f"{layout.kind!r} layout, whose stream carries sealed windows (a part's TTL "
                "expiry or a compaction's delete removes readings that other sets of the "
                "window may still hold), not one record per reading. Archive it with "
                "`iot-ingest archive` (the batch archiver reads its sealed windows; "
                "docs/archival.md, 'The packed layout')"
            )
        self.streams = streams
        self.stream_arn = stream_arn
        self.store = store
        self.layout = layout
        self.include_user_deletes = include_user_deletes
        self.max_records = max_records
        self.batch_records = max(batch_records, max_records)
        self.metrics = metrics

    def _checkpoint_key(self, shard_id: str) -> str:
        return f"{self.store.prefix}/_streams/{shard_id}.json"

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await getattr(self.streams, operation)(**kwargs)
        except Exception as exc:
            raise _wrap(exc, operation) from exc
        return result

    async def shard_ids(self) -> list[str]:
        """Every shard of the stream (DescribeStream, paged)."""
        ids: list[str] = []
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn}
        while True:
            desc = (await self._call("describe_stream", **kwargs))["StreamDescription"]
            ids += [shard["ShardId"] for shard in desc.get("Shards", [])]
            last = desc.get("LastEvaluatedShardId")
            if not last:
                return ids
            kwargs["ExclusiveStartShardId"] = last

    async def poll_once(self, *, stop: asyncio.Event | None = None) -> int:
        """Read every shard from its checkpoint to its current end; return readings archived.

        Args:
            stop: When set, the poll ends after the batch under way (its checkpoint moved).

        Raises:
            SourceError: the stream could not be read.
            StorageError: S3 failed.
            VerifyError: an object read back differs; the checkpoint did not move.
        """
        total = 0
        try:
            for shard_id in await self.shard_ids():
                if stop is not None and stop.is_set():
                    break
                total += await self._shard(shard_id, stop)
        except ArchiveError as exc:
            if self.metrics is not None:
                self.metrics.observe_poll(None, exc)
            raise
        if self.metrics is not None:
            self.metrics.observe_poll(total)
        return total

    async def run_every(self, every_s: float, stop: asyncio.Event) -> None:
        """Poll every ``every_s`` seconds until ``stop`` is set.

        A failed poll is logged and retried at the next one (the checkpoints did not
        move past what was not archived); a missing S3 bucket at the start ends the
        loop with its error. Setting ``stop`` during a poll ends it after the batch
        under way.
        """
        await self.store.check()
        while not stop.is_set():
            try:
                n = await self.poll_once(stop=stop)
                if n:
                    log.info("streams: archived %d TTL-deleted readings", n)
            except ArchiveError as exc:
                log.error("streams poll failed (retrying in %g s): %s", every_s, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)

    async def _iterator(self, shard_id: str, after: str | None) -> str | None:
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
        if after:
            try:
                resp = await self.streams.get_shard_iterator(
                    **kwargs, ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=after
                )
                found: str | None = resp.get("ShardIterator")
                return found
            except Exception as exc:
                if _error_code(exc) != "TrimmedDataAccessException":
                    raise _wrap(exc, "get_shard_iterator") from exc
            log.error(
                "stream shard %s: the checkpoint (sequence %s) is older than the stream's 24 "
                "hours: TTL deletions in between were not seen by this consumer (the batch "
                "archiver's markers show what was archived); reading from the oldest record",
                shard_id,
                after,
            )
        resp = await self._call("get_shard_iterator", **kwargs, ShardIteratorType="TRIM_HORIZON")
        iterator: str | None = resp.get("ShardIterator")
        return iterator

    async def _shard(self, shard_id: str, stop: asyncio.Event | None) -> int:
        raw = await self.store.get(self._checkpoint_key(shard_id))
        after = orjson.loads(raw)["sequence_number"] if raw else None
        iterator = await self._iterator(shard_id, after)
        archived = 0
        batch: list[dict[str, Any]] = []
        while iterator:
            resp = await self._call("get_records", ShardIterator=iterator, Limit=self.max_records)
            page = resp.get("Records", [])
            batch += page
            iterator = resp.get("NextShardIterator")
            caught_up = not page or not iterator  # the open end, or a closed shard's end
            if batch and (caught_up or len(batch) >= self.batch_records):
                archived += await self._archive_batch(shard_id, batch)
                batch = []
                if stop is not None and stop.is_set():
                    break
            if caught_up:
                break
        return archived

    async def _archive_batch(self, shard_id: str, records: list[dict[str, Any]]) -> int:
        groups: dict[tuple[str, int], list[Reading]] = defaultdict(list)
        first_seq: dict[tuple[str, int], str] = {}
        for rec in records:
            if not is_ttl_delete(rec, include_user_deletes=self.include_user_deletes):
                continue
            old: ReadingItem = rec["dynamodb"]["OldImage"]
            r = TableLayout.from_item(old)
            g = (r.sensor_id, self.layout.bucket_start(r.ts_ms))
            groups[g].append(r)
            first_seq.setdefault(g, rec["dynamodb"]["SequenceNumber"])
        for (sid, bucket), readings in groups.items():
            tag = f"{shard_id[-12:]}-{first_seq[(sid, bucket)]}"
            await self._write(sid, bucket, readings, tag)
        last = records[-1]["dynamodb"]["SequenceNumber"]
        await self.store.put(
            self._checkpoint_key(shard_id),
            orjson.dumps({"sequence_number": last}),
            content_type="application/json",
        )
        return sum(len(v) for v in groups.values())

    async def _write(self, sid: str, bucket: int, readings: list[Reading], tag: str) -> None:
        key = data_key(self.store.prefix, sid, bucket, stream_tag=tag)
        body = await asyncio.to_thread(encode, readings)
        await self.store.put(key, body, content_type="application/vnd.apache.parquet")
        back = await self.store.get(key)
        if back is None:
            raise StorageError(f"stream part s3://{self.store.bucket}/{key} vanished after put")
        got = await asyncio.to_thread(decode, back, sid)
        if len(got) != len(readings) or content_checksum(got) != content_checksum(readings):
            raise VerifyError(f"stream part s3://{self.store.bucket}/{key} did not verify", key=key)
        log.info("archived %d TTL-deleted readings of %s to %s", len(readings), sid, key)
