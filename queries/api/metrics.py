"""Prometheus metrics of the query API (``iot_query_*``), served at ``GET /metrics``.

One registry per app (tests run several side by side), as the ingest service and the
archiver have theirs. Today it holds the closed-bucket cache's figures
(:mod:`queries.read.cache`), read from the cache at each scrape (no counter is bumped
on the request path):

- ``iot_query_cache_hits_total``: closed-bucket lookups served from the cache;
- ``iot_query_cache_misses_total``: closed-bucket lookups not found (then read and kept);
- ``iot_query_cache_evictions_total``: entries evicted to stay within the bound;
- ``iot_query_cache_expired_total``: entries dropped because a reading's TTL passed;
- ``iot_query_cache_bytes``: the entries' estimated size; ``iot_query_cache_max_bytes``
  the bound; ``iot_query_cache_entries`` how many there are.

Without a cache (``--cache-mb 0``) the page is served with no ``iot_query_cache_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from queries.read.cache import BucketCache

__all__ = ["CONTENT_TYPE", "QueryMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The exposition's media type."""


class _CacheCollector(Collector):
    def __init__(self, cache: Callable[[], BucketCache | None]) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        cache = self._cache()
        if cache is None:
            return
        p = "iot_query_cache_"
        yield CounterMetricFamily(
            p + "hits", "Closed-bucket lookups served from the cache", value=cache.hits
        )
        yield CounterMetricFamily(
            p + "misses",
            "Closed-bucket lookups not in the cache (the bucket was read and kept)",
            value=cache.misses,
        )
        yield CounterMetricFamily(
            p + "evictions",
            "Entries evicted (least recently used) to stay within the bound",
            value=cache.evictions,
        )
        yield CounterMetricFamily(
            p + "expired",
            "Entries dropped because one of their readings' TTL passed",
            value=cache.expired,
        )
        yield GaugeMetricFamily(p + "bytes", "Estimated size of the entries", value=cache.bytes)
        yield GaugeMetricFamily(
            p + "max_bytes", "The cache's bound (--cache-mb)", value=cache.max_bytes
        )
        yield GaugeMetricFamily(p + "entries", "Entries (sensor buckets) cached", value=len(cache))


class QueryMetrics:
    """The query API's registry.

    Args:
        cache: Returns the reader's cache (``None``: none), looked up at each scrape.
    """

    def __init__(self, cache: Callable[[], BucketCache | None]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_CacheCollector(cache))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
