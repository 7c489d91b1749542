"""The archive in S3 as data: ``store`` (the bucket), ``paths`` (object keys), ``parquet``
(typed Arrow/Parquet with a content checksum), ``manifest`` (the S3 manifest and the
DynamoDB marker item), ``reader`` (cold-tier reads), ``errors``.
"""

__all__: list[str] = []
