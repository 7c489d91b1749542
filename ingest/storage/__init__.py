"""The table and the archive as data: the only layer that knows item shapes and keys.

``layout`` (every key: readings, layout record, registry, late marks, archive markers),
``items`` (every item kind's wire format, as ``TypedDict`` s mypy checks),
``dynamo`` (the aiobotocore client, error mapping, the ``TableClient`` protocol),
``dynamohttp`` (the lean HTTP writer), ``table`` (create, layout record, backups),
``reads`` (the one pager, whole-range reads), ``registry`` (registry and late-mark
items), ``spool`` (the dead-letter spool's file format), ``packed`` (the codec of packed
items: one sensor's readings in one compressed blob, decision 0007), ``archive`` (the S3
side).
"""

__all__: list[str] = []
