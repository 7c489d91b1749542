"""DynamoDB Streams consumer: archive items as TTL deletes them, in the same S3 layout.

For deployments that enable a stream (``NEW_AND_OLD_IMAGES`` or ``OLD_IMAGE``) on
the table instead of (or beside) the batch archiver. TTL deletions appear as
``REMOVE`` records whose ``userIdentity`` is ``{"type": "Service",
"principalId": "dynamodb.amazonaws.com"}``; their ``OldImage`` is the expired
item. Each poll groups them by sensor and bucket and writes one object per
group, ``part-{bucket}.s-{shard}-{first sequence number}.parquet`` beside the
batch archiver's ``part-{bucket}.parquet`` (:mod:`.paths`), reads it back and
compares count and content checksum, and only then moves the shard's checkpoint
(an S3 object under ``{prefix}/_streams/``). A crash before the checkpoint
re-reads the same records and rewrites the same keys: at-least-once, no
duplicates at read time (:func:`.reader.read_cold` returns each timestamp once).

Stream records are kept 24 hours: the consumer must run at least that often.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import orjson

from ingest.layout import LAYOUT_PK, Item, Reading, TableLayout

from .errors import StorageError, VerifyError
from .parquet import content_checksum, decode, encode
from .paths import data_key
from .store import S3Store

__all__ = ["StreamArchiver", "is_ttl_delete"]

log = logging.getLogger(__name__)

_SERVICE = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}


def is_ttl_delete(record: dict[str, Any], *, include_user_deletes: bool = False) -> bool:
    """True for a REMOVE of a reading item by DynamoDB's TTL (or any REMOVE, if asked)."""
    if record.get("eventName") != "REMOVE":
        return False
    old = record.get("dynamodb", {}).get("OldImage")
    if not old or "pk" not in old or old["pk"]["S"].startswith("#") or old["pk"]["S"] == LAYOUT_PK:
        return False
    identity = record.get("userIdentity") or {}
    return include_user_deletes or all(identity.get(k) == v for k, v in _SERVICE.items())


class StreamArchiver:
    """Polls a table's stream and archives TTL-deleted readings.

    Args:
        streams: An open aiobotocore ``dynamodbstreams`` client.
        stream_arn: The table's ``LatestStreamArn``.
        store: The archive's S3 store.
        layout: The table's layout.
        include_user_deletes: Archive every REMOVE, not only TTL's (tests; moto's
            records have no ``userIdentity``).
        max_records: Records per GetRecords call.
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
    ) -> None:
        self.streams = streams
        self.stream_arn = stream_arn
        self.store = store
        self.layout = layout
        self.include_user_deletes = include_user_deletes
        self.max_records = max_records

    def _checkpoint_key(self, shard_id: str) -> str:
        return f"{self.store.prefix}/_streams/{shard_id}.json"

    async def poll_once(self) -> int:
        """Read every shard from its checkpoint to its current end; return readings archived."""
        desc = await self.streams.describe_stream(StreamArn=self.stream_arn)
        total = 0
        for shard in desc["StreamDescription"].get("Shards", []):
            total += await self._shard(shard["ShardId"])
        return total

    async def _shard(self, shard_id: str) -> int:
        raw = await self.store.get(self._checkpoint_key(shard_id))
        after = orjson.loads(raw)["sequence_number"] if raw else None
        kwargs: dict[str, Any] = {"StreamArn": self.stream_arn, "ShardId": shard_id}
        if after:
            kwargs |= {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        iterator = (await self.streams.get_shard_iterator(**kwargs))["ShardIterator"]
        records: list[dict[str, Any]] = []
        while iterator:
            resp = await self.streams.get_records(ShardIterator=iterator, Limit=self.max_records)
            page = resp.get("Records", [])
            records += page
            iterator = resp.get("NextShardIterator")
            if not page:  # caught up with the shard's open end
                break
        if not records:
            return 0
        groups: dict[tuple[str, int], list[Reading]] = defaultdict(list)
        first_seq: dict[tuple[str, int], str] = {}
        for rec in records:
            if not is_ttl_delete(rec, include_user_deletes=self.include_user_deletes):
                continue
            old: Item = rec["dynamodb"]["OldImage"]
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
