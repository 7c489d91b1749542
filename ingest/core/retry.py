"""Retry pacing: capped exponential backoff with full jitter, shared by every stage that retries."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**attempt)).

    Args:
        base_ms: First ceiling.
        cap_ms: Largest ceiling.
        rng: Random source (seedable in tests).
    """

    def __init__(self, *, base_ms: float, cap_ms: float, rng: random.Random | None = None) -> None:
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self._rng = rng or random.Random()

    def ceiling_ms(self, attempt: int) -> float:
        return float(min(self.cap_ms, self.base_ms * (2 ** min(attempt, 32))))

    def delay_s(self, attempt: int) -> float:
        """The sleep before retry number ``attempt`` (0-based), in seconds."""
        return self._rng.uniform(0, self.ceiling_ms(attempt)) / 1000
