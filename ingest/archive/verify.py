"""Read an archived object back and compare it with its manifest before anything trusts it."""

from __future__ import annotations

import asyncio
import hashlib

import pyarrow as pa

from ingest.layout import Reading

from .errors import VerifyError
from .manifest import Manifest
from .parquet import content_checksum, decode
from .store import S3Store

__all__ = ["verify_object"]


async def verify_object(store: S3Store, manifest: Manifest) -> list[Reading]:
    """Fetch the manifest's object, check bytes, row count and content checksum.

    Returns:
        The readings read back (sorted by timestamp): what the early delete may remove.

    Raises:
        VerifyError: the object is missing, truncated, not Parquet, or holds other readings.
        StorageError: S3 failed.
    """
    key = manifest.key
    data = await store.get(key)
    if data is None:
        raise VerifyError(f"archived object s3://{store.bucket}/{key} is missing", key=key)
    if manifest.object_bytes and len(data) != manifest.object_bytes:
        raise VerifyError(
            f"archived object s3://{store.bucket}/{key} is partial: {len(data)} bytes, "
            f"manifest says {manifest.object_bytes}",
            key=key,
        )
    digest = hashlib.sha256(data).hexdigest()
    if manifest.object_sha256 and digest != manifest.object_sha256:
        raise VerifyError(
            f"archived object s3://{store.bucket}/{key} is corrupt: SHA-256 {digest}, "
            f"manifest says {manifest.object_sha256}",
            key=key,
        )
    try:
        readings = await asyncio.to_thread(decode, data, manifest.sensor_id)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise VerifyError(
            f"archived object s3://{store.bucket}/{key} is not a readable archive: {exc}", key=key
        ) from exc
    if len(readings) != manifest.rows:
        raise VerifyError(
            f"archived object s3://{store.bucket}/{key} holds {len(readings)} readings, "
            f"manifest says {manifest.rows}",
            key=key,
        )
    checksum = await asyncio.to_thread(content_checksum, readings)
    if checksum != manifest.content_sha256:
        raise VerifyError(
            f"archived object s3://{store.bucket}/{key} holds other readings than archived "
            f"(content checksum {checksum}, manifest says {manifest.content_sha256})",
            key=key,
        )
    return readings
