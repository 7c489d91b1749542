"""Token buckets: the one rate-limiting mechanism (API requests per key, new sensor ids per minute)."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate_per_s``.

    Args:
        rate_per_s: Refill rate, tokens per second.
        burst: Capacity (and the initial fill).
        now_s: The current time on the limiter's monotonic clock.
    """

    __slots__ = ("burst", "rate_per_s", "stamp_s", "tokens")

    def __init__(self, rate_per_s: float, burst: int, now_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.stamp_s = now_s

    def take(self, now_s: float) -> float:
        """Take one token.

        Returns:
            0.0 when the token was taken; otherwise the seconds until one is available.
        """
        elapsed = max(0.0, now_s - self.stamp_s)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.stamp_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s
