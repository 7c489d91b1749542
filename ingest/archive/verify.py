"""Read an archived object back and compare it with its manifest before anything trusts it.

:func:`verify_object` checks an object against the marker or manifest that names
it. :func:`verify_self` checks an object against the checksums it carries itself
(S3 metadata ``rows`` and ``content-sha256``, written with it): an object that a
re-archive put before its marker write was interrupted, and that is therefore
ahead of its marker.
"""

from __future__ import annotations

import asyncio
import hashlib

import pyarrow as pa

from ingest.storage.archive.errors import VerifyError
from ingest.storage.archive.manifest import Manifest
from ingest.storage.archive.parquet import content_checksum, decode
from ingest.storage.archive.store import S3Store, StoredObject
from ingest.storage.layout import Reading

__all__ = ["verify_object", "verify_self", "verify_stored"]


async def verify_object(store: S3Store, manifest: Manifest) -> list[Reading]:
    """Fetch the manifest's object, check bytes, row count and content checksum.

    Returns:
        The readings read back (sorted by timestamp): what the early delete may remove.

    Raises:
        VerifyError: the object is missing, truncated, not Parquet, or holds other readings.
        StorageError: S3 failed.
    """
    return await verify_stored(store, manifest, await store.get_object(manifest.key))


async def verify_self(store: S3Store, key: str, obj: StoredObject, sensor_id: str) -> list[Reading]:
    """Check an object against the row count and content checksum in its own metadata.

    Raises:
        VerifyError: it is not readable, or does not hold what its metadata says.
    """
    where = f"archived object s3://{store.bucket}/{key}"
    try:
        rows = int(obj.metadata["rows"])
        checksum = obj.metadata["content-sha256"]
        readings = await asyncio.to_thread(decode, obj.data, sensor_id)
    except (KeyError, ValueError, pa.ArrowException, OSError) as exc:
        raise VerifyError(f"{where} is not a readable archive: {exc!r}", key=key) from exc
    if len(readings) != rows or await asyncio.to_thread(content_checksum, readings) != checksum:
        raise VerifyError(f"{where} does not hold what its metadata says", key=key)
    return readings


async def verify_stored(
    store: S3Store, manifest: Manifest, obj: StoredObject | None
) -> list[Reading]:
    """Check an object already fetched (``None``: missing) against its manifest.

    Raises:
        VerifyError: the object is missing, truncated, not Parquet, or holds other readings.
    """
    key = manifest.key
    if obj is None:
        raise VerifyError(f"archived object s3://{store.bucket}/{key} is missing", key=key)
    data = obj.data
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
