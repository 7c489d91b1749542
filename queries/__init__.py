"""iot-ingest queries: the read path (shard fan-out and merge) for dashboards and checks."""

from .reader import query_partition, read_range

__all__ = ["query_partition", "read_range"]
