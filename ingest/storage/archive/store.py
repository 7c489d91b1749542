"""The S3 client of the archive: aiobotocore, wrapped so the rest speaks the archive's errors."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from ingest.aws.client import BotocoreClient
from ingest.aws.settings import AwsSettings
from ingest.storage.archive.errors import ObjectChanged, StorageError

__all__ = ["S3Store", "StoredObject"]

log = logging.getLogger(__name__)

_MISSING_BUCKET = frozenset({"NoSuchBucket", "404", "NotFound"})
_CHANGED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
_DENIED = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object as read: its bytes, its ETag (for a conditional replace) and user metadata."""

    data: bytes
    etag: str
    metadata: dict[str, str]


class S3Store(BotocoreClient):
    """One S3 bucket and key prefix holding the archive.

    Args:
        bucket: S3 bucket name.
        prefix: Key prefix of the archive, without a trailing slash (default ``archive``).
        aws: Region, endpoint (path-style addressing when one is given) and credentials.
        max_connections: Connection pool size.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "archive",
        aws: AwsSettings,
        max_connections: int = 16,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url = aws.endpoint_url
        config: dict[str, Any] = {
            "max_pool_connections": max_connections,
            "retries": {"total_max_attempts": 3, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 60,
        }
        if endpoint_url is not None:
            config["s3"] = {"addressing_style": "path"}
        super().__init__(
            "s3",
            config=AioConfig(**config),
            aws=aws,
        )

    def _where(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def wrap(self, exc: BaseException, action: str) -> StorageError:
        """The archive's error for a botocore/aiohttp error during ``action``."""
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "Unknown"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in _MISSING_BUCKET and "NoSuchKey" not in code:
                return StorageError(
                    f"S3 bucket {self.bucket!r} does not exist ({self._where()}): create it, "
                    "or fix --s3-bucket / --s3-endpoint / --region"
                )
            if code in _DENIED:
                return StorageError(
                    f"access to {self._where()} denied while trying to {action} ({code}): "
                    "`iot-ingest archive` needs s3:ListBucket, s3:GetObject, s3:PutObject "
                    "(and s3:PutLifecycleConfiguration for `archive lifecycle`), `serve` "
                    "s3:ListBucket and s3:GetObject: see deploy/iam/"
                )
            return StorageError(
                f"S3 {action} failed on {self._where()}: {code}: {err.get('Message', '')}",
                retriable=status >= 500 or code in ("SlowDown", "RequestTimeout"),
            )
        if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
            return StorageError(
                f"S3 {action} failed on {self._where()}: {type(exc).__name__}: {exc}",
                retriable=True,
            )
        return StorageError(f"S3 {action} failed: {type(exc).__name__}: {exc}")

    async def check(self) -> None:
        """Fail early with a clear message when the bucket is missing or not ours to use.

        Raises:
            StorageError: missing bucket, access denied, endpoint unreachable.
        """
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise self.wrap(exc, "check the bucket") from exc

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        metadata: dict[str, str] | None = None,
        if_match: str | None = None,
        if_absent: bool = False,
    ) -> str:
        """Put an object; S3 checks the body against its MD5 (a torn upload is refused).

        Args:
            key: The object key.
            body: Its bytes.
            content_type: Its Content-Type.
            metadata: User metadata.
            if_match: Replace only the object with this ETag (S3 conditional write).
            if_absent: Write only if there is no object at ``key``.

        Returns:
            The new object's ETag.

        Raises:
            ObjectChanged: the condition failed (the object was replaced or created meanwhile).
            StorageError: S3 refused or failed.
        """
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        kwargs: dict[str, Any] = {}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        elif if_absent:
            kwargs["IfNoneMatch"] = "*"
        try:
            resp = await self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentMD5=md5,
                ContentType=content_type,
                Metadata=metadata or {},
                **kwargs,
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if kwargs and code in _CHANGED:
                raise ObjectChanged(f"s3://{self.bucket}/{key} changed meanwhile ({code})") from exc
            raise self.wrap(exc, f"put {key}") from exc
        except Exception as exc:
            raise self.wrap(exc, f"put {key}") from exc
        return str(resp.get("ETag", ""))

    async def get(self, key: str) -> bytes | None:
        """An object's bytes, or ``None`` when there is no such key."""
        obj = await self.get_object(key)
        return None if obj is None else obj.data

    async def get_object(self, key: str) -> StoredObject | None:
        """An object's bytes, ETag and metadata, or ``None`` when there is no such key."""
        try:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self.wrap(exc, f"get {key}") from exc
        except Exception as exc:
            raise self.wrap(exc, f"get {key}") from exc
        return StoredObject(data, str(resp.get("ETag", "")), dict(resp.get("Metadata") or {}))

    async def delete(self, key: str) -> None:
        """Delete an object (absent is fine)."""
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            raise self.wrap(exc, f"delete {key}") from exc

    async def keys(self, prefix: str, *, start_after: str = "") -> AsyncIterator[str]:
        """Keys under ``prefix`` in lexicographic order, after ``start_after``."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        while True:
            try:
                resp = await self.client.list_objects_v2(**kwargs)
            except Exception as exc:
                raise self.wrap(exc, f"list {prefix}") from exc
            for obj in resp.get("Contents", []):
                yield str(obj["Key"])
            token = resp.get("NextContinuationToken")
            if not resp.get("IsTruncated") or not token:
                return
            kwargs.pop("StartAfter", None)
            kwargs["ContinuationToken"] = token
