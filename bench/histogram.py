"""A millisecond latency histogram: exact at 1 ms up to two minutes, cheap to record.

The benchmark sink records, for every item it acknowledges, how long after its
scheduled publish time it became durable; a list of per-millisecond counters
makes that one index and one add per item, and percentiles exact at 1 ms. The
histogram travels as a sparse ``{ms: count}`` map (JSON object keys are strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["MAX_MS", "MsHistogram", "percentile_from_sparse"]

MAX_MS = 120_000
"""Largest latency held exactly; larger ones are counted in the last bin (``MAX_MS``)."""


class MsHistogram:
    """Counts of latencies in whole milliseconds, 0..``MAX_MS`` (clamped at both ends)."""

    __slots__ = ("bins", "total")

    def __init__(self) -> None:
        self.bins: list[int] = [0] * (MAX_MS + 1)
        self.total = 0

    def record(self, latency_ms: float) -> None:
        """Count one latency (negative ones, from clock skew, count as 0)."""
        i = int(latency_ms)
        if i < 0:
            i = 0
        elif i > MAX_MS:
            i = MAX_MS
        self.bins[i] += 1
        self.total += 1

    def record_many(self, now_ms: float, scheduled_ms: Iterable[float]) -> None:
        """Count ``now_ms - t`` for each scheduled time ``t``."""
        bins = self.bins
        n = 0
        for t in scheduled_ms:
            i = int(now_ms - t)
            if i < 0:
                i = 0
            elif i > MAX_MS:
                i = MAX_MS
            bins[i] += 1
            n += 1
        self.total += n

    def sparse(self) -> dict[str, int]:
        """The non-empty bins as ``{"ms": count}``."""
        return {str(i): n for i, n in enumerate(self.bins) if n}

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) in ms, or None when empty."""
        return percentile_from_sparse({i: n for i, n in enumerate(self.bins) if n}, q)


def percentile_from_sparse(hist: Mapping[int, int] | Mapping[str, int], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of a sparse ``{ms: count}`` histogram, in ms.

    Uses the nearest-rank definition: the smallest value with at least ``q`` % of
    the observations at or below it.

    Args:
        hist: Bin (ms, int or decimal string) to count.
        q: Percentile, 0 to 100.

    Returns:
        The percentile, or None when the histogram is empty.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    pairs = sorted((int(k), int(v)) for k, v in hist.items() if int(v) > 0)
    total = sum(n for _, n in pairs)
    if total == 0:
        return None
    rank = max(1, -(-q * total // 100))  # ceil(q/100 * total), at least the first
    seen = 0
    for ms, n in pairs:
        seen += n
        if seen >= rank:
            return float(ms)
    return float(pairs[-1][0])
