"""TTL archival: closed buckets → Parquet in S3, verified before they are marked archived.

Modules by role: ``planner`` (which buckets), ``exporter`` (Query every shard),
``parquet`` (typed Arrow/Parquet, content checksum), ``paths`` (object keys),
``store`` (S3), ``manifest`` (S3 manifest and DynamoDB marker item), ``verify``
(read back, compare), ``deleter`` (early delete with backoff), ``archiver``
(the step and its loop), ``reader`` (cold-tier reads for the query API),
``streams`` (DynamoDB Streams consumer of TTL deletions), ``lifecycle`` (S3
storage-class rule), ``metrics`` (Prometheus ``iot_archive_*``), ``cli``. See
docs/archival.md.
"""

from ingest.archive.archiver import Archiver, ArchiveReport, ArchiveSettings
from ingest.archive.errors import (
    ArchiveConfigError,
    ArchiveError,
    ObjectChanged,
    SourceError,
    StorageError,
    VerifyError,
)
from ingest.archive.lifecycle import apply_lifecycle
from ingest.archive.manifest import MARKER_PREFIX, Manifest
from ingest.archive.metrics import ArchiveMetrics
from ingest.archive.reader import archive_markers, archived_buckets, merge_tiers, read_cold
from ingest.archive.store import S3Store

__all__ = [
    "MARKER_PREFIX",
    "ArchiveConfigError",
    "ArchiveError",
    "ArchiveMetrics",
    "ArchiveReport",
    "ArchiveSettings",
    "Archiver",
    "Manifest",
    "ObjectChanged",
    "S3Store",
    "SourceError",
    "StorageError",
    "VerifyError",
    "apply_lifecycle",
    "archive_markers",
    "archived_buckets",
    "merge_tiers",
    "read_cold",
]
