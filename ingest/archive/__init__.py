"""The archiver job: closed buckets → Parquet in S3, verified before they are marked.

``planner`` (which buckets), ``exporter`` (Query every shard; a ``packed`` table's
sealed windows, merged), ``verify`` (read back,
compare), ``deleter`` (early delete with backoff), ``archiver`` (the step and its loop),
``streams`` (DynamoDB Streams consumer of TTL deletions), ``lifecycle`` (S3 storage-class
rule), ``metrics`` (the pass report, Prometheus ``iot_archive_*``), ``sql`` (Athena DDL,
DuckDB over downloaded objects: ``archive ddl``/``archive sql``). The data it writes
(store, paths, parquet, manifest) lives in :mod:`ingest.storage.archive`. See
docs/archival.md.
"""

__all__: list[str] = []
