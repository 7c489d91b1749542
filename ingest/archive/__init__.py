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

__all__: list[str] = []
