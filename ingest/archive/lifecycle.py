"""An S3 lifecycle rule that moves old archive objects to a colder storage class.

The rule (id ``iot-ingest-archive``) applies to the archive's prefix only and is
merged into the bucket's existing lifecycle configuration (other rules are kept).
The cold-tier reader needs objects to stay instantly readable: ``STANDARD_IA``,
``ONEZONE_IA``, ``INTELLIGENT_TIERING`` and ``GLACIER_IR`` do; ``GLACIER`` and
``DEEP_ARCHIVE`` need a restore before every read, so the query API cannot serve
them (allowed, with a warning, for archives kept for compliance only).
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from ingest.storage.archive.errors import ArchiveConfigError
from ingest.storage.archive.store import S3Store

__all__ = ["INSTANT_CLASSES", "RULE_ID", "STORAGE_CLASSES", "apply_lifecycle", "lifecycle_rule"]

log = logging.getLogger(__name__)

RULE_ID = "iot-ingest-archive"
INSTANT_CLASSES = frozenset({"STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR"})
STORAGE_CLASSES = INSTANT_CLASSES | {"GLACIER", "DEEP_ARCHIVE"}


def lifecycle_rule(prefix: str, *, days: int, storage_class: str) -> dict[str, Any]:
    """The rule: objects under ``{prefix}/`` move to ``storage_class`` ``days`` after creation.

    Raises:
        ArchiveConfigError: unknown storage class or days < 1.
    """
    if storage_class not in STORAGE_CLASSES:
        raise ArchiveConfigError(
            f"--storage-class {storage_class!r} is not one of {', '.join(sorted(STORAGE_CLASSES))}"
        )
    if days < 1:
        raise ArchiveConfigError(f"--days must be >= 1, got {days}")
    return {
        "ID": RULE_ID,
        "Filter": {"Prefix": f"{prefix}/"},
        "Status": "Enabled",
        "Transitions": [{"Days": days, "StorageClass": storage_class}],
    }


async def apply_lifecycle(store: S3Store, *, days: int, storage_class: str) -> list[dict[str, Any]]:
    """Put the archive's rule into the bucket's lifecycle configuration; return all rules.

    Raises:
        ArchiveConfigError: bad arguments.
        StorageError: missing bucket, permissions.
    """
    rule = lifecycle_rule(store.prefix, days=days, storage_class=storage_class)
    if storage_class not in INSTANT_CLASSES:
        log.warning(
            "%s objects need a restore before they can be read: the query API will fail on "
            "ranges older than %d days",
            storage_class,
            days,
        )
    await store.check()
    try:
        resp = await store.client.get_bucket_lifecycle_configuration(Bucket=store.bucket)
        rules: list[dict[str, Any]] = list(resp.get("Rules", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise store.wrap(exc, "read the lifecycle configuration") from exc
        rules = []
    except Exception as exc:
        raise store.wrap(exc, "read the lifecycle configuration") from exc
    rules = [r for r in rules if r.get("ID") != RULE_ID] + [rule]
    try:
        await store.client.put_bucket_lifecycle_configuration(
            Bucket=store.bucket, LifecycleConfiguration={"Rules": rules}
        )
    except Exception as exc:
        raise store.wrap(exc, "put the lifecycle configuration") from exc
    return rules
