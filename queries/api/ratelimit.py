"""Per-client request rate limits: one token bucket per API key (or per client address).

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; each request
takes one. An empty bucket answers "retry after N seconds" (the time until one
token is back), which the auth middleware turns into a 429 with ``Retry-After``.

Memory is bounded: buckets live in an LRU of at most ``max_clients`` entries. With
authentication on there is one bucket per configured key; without it the bucket
is per client address, and a flood of addresses evicts the least recently seen
(an evicted bucket comes back full, which errs on the side of the client).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ingest.core.ratelimit import TokenBucket

__all__ = ["RateLimitSettings", "RateLimiter"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings:
    """Request rate limits of the query API.

    Args:
        rate_per_s: Sustained requests per second per client (a key, or an address
            when authentication is off).
        burst: Requests a client may make at once after being idle (the bucket size).
        max_clients: Buckets kept in memory (least recently used ones are dropped).
    """

    rate_per_s: float = 50.0
    burst: int = 100
    max_clients: int = 10_000

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive number, got {self.rate_per_s}")
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        if self.max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {self.max_clients}")


class RateLimiter:
    """Token buckets by client identity, in a bounded LRU.

    Args:
        settings: Default rate and burst, and the most buckets kept.
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, settings: RateLimitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(
        self, client: str, *, rate_per_s: float | None = None, burst: int | None = None
    ) -> float:
        """Take a token from ``client``'s bucket.

        Args:
            client: The identity (``key:<name>`` or ``addr:<host>``).
            rate_per_s: This client's own rate (a key's override); default: the settings'.
            burst: This client's own burst; default: the settings'.

        Returns:
            0.0 when the request may proceed; otherwise the seconds to wait.
        """
        now_s = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = TokenBucket(
                rate_per_s or self.settings.rate_per_s, burst or self.settings.burst, now_s
            )
            self._buckets[client] = bucket
            if len(self._buckets) > self.settings.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take(now_s)

    def __len__(self) -> int:
        return len(self._buckets)
