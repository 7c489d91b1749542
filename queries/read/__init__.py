"""The read path: ``reader`` (the table with read-unit accounting and call budgets),
``pages`` (raw pages across shards), ``series`` and ``sampler`` (windowed aggregates),
``tiers`` (hot DynamoDB + cold S3 archive), ``sensors`` (the registry as a list),
``params`` (validated request parameters).
"""

__all__: list[str] = []
