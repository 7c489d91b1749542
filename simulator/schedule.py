"""When each device reads: scheduled ticks, per-device phase accumulators, ramp-up and spikes.

Logical time is cut into fixed ticks (10 ms by default). Each device carries a
phase in readings; a tick advances it by ``rate_per_s x multiplier x tick_s``
and every integer it crosses is one reading, timestamped at the exact crossing
time. The timestamps come from this schedule, never from the wall clock, so a
run is reproducible and never drifts; the publishing loop only decides *when*
a tick is sent (and reports how far behind schedule it is).

The multiplier is the rate profile: a linear ramp-up from 0 over ``ramp_s``,
times the factor of any spike in force (e.g. 10x for 30 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulator.errors import SimConfigError

__all__ = ["FloatArray", "IntArray", "RateProfile", "Spike", "TickSchedule"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class Spike:
    """A burst: the rate is multiplied by ``factor`` from ``at_s`` for ``duration_s``."""

    at_s: float
    duration_s: float
    factor: float

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.duration_s <= 0 or self.factor <= 0:
            raise SimConfigError(
                f"spike needs at_s >= 0, duration_s > 0, factor > 0; got {self.at_s}:"
                f"{self.duration_s}:{self.factor}"
            )

    @classmethod
    def parse(cls, text: str) -> Spike:
        """Parse ``AT_S:DURATION_S:FACTOR`` (e.g. ``30:30:10``: 10x for 30 s from t=30 s)."""
        parts = text.split(":")
        try:
            at_s, duration_s, factor = (float(p) for p in parts)
        except ValueError:
            raise SimConfigError(
                f"--spike {text!r}: expected AT_S:DURATION_S:FACTOR, e.g. 30:30:10"
            ) from None
        return cls(at_s=at_s, duration_s=duration_s, factor=factor)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateProfile:
    """How the fleet's rate varies over a run (relative to the nominal rate).

    Args:
        ramp_s: Seconds of linear ramp-up from 0 to the nominal rate (0: none).
        spikes: Bursts; overlapping spikes multiply.
    """

    ramp_s: float = 0.0
    spikes: tuple[Spike, ...] = ()

    def __post_init__(self) -> None:
        if self.ramp_s < 0:
            raise SimConfigError(f"--ramp-s must be >= 0, got {self.ramp_s}")

    def multiplier(self, t_s: float) -> float:
        """Rate multiplier at ``t_s`` seconds into the run."""
        m = min(1.0, t_s / self.ramp_s) if self.ramp_s > 0 else 1.0
        for s in self.spikes:
            if s.at_s <= t_s < s.at_s + s.duration_s:
                m *= s.factor
        return m

    @property
    def max_multiplier(self) -> float:
        """An upper bound of :meth:`multiplier` (all spikes at once)."""
        return math.prod([max(1.0, s.factor) for s in self.spikes], start=1.0)


class TickSchedule:
    """Which devices read in each tick, and exactly when.

    Args:
        rates_per_s: Nominal rate of each device.
        tick_s: Tick length in seconds.
        profile: Rate profile (ramp, spikes).
        rng: Draws each device's initial phase, spreading devices over their period.
    """

    def __init__(
        self,
        rates_per_s: FloatArray,
        *,
        tick_s: float,
        profile: RateProfile,
        rng: np.random.Generator,
    ) -> None:
        if not 0.0005 <= tick_s <= 1.0:
            raise SimConfigError(f"tick must be 0.5-1000 ms, got {tick_s * 1000:g} ms")
        self.rates_per_s = rates_per_s
        self.tick_s = tick_s
        self.profile = profile
        self._phase: FloatArray = rng.random(rates_per_s.size)

    def tick(self, j: int) -> tuple[IntArray, IntArray, FloatArray]:
        """Readings of tick ``j`` (ticks must be taken in order 0, 1, 2, …).

        Returns:
            (device index, ms since the run start, seconds since the run start),
            one element per reading, in time order.
        """
        t0 = j * self.tick_s
        m = self.profile.multiplier(t0 + self.tick_s / 2)
        if m <= 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0, dtype=np.float64)
        delta = self.rates_per_s * (m * self.tick_s)
        p_old = self._phase
        p_new = p_old + delta
        n = p_new.astype(np.int64)  # floor: phases are >= 0
        self._phase = p_new - n
        has = np.flatnonzero(n)
        counts = n[has]
        if counts.size and counts.max() > 1:
            dev = np.repeat(has, counts)
            # k = 1..n within each device: position minus the start of its run
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            k = (np.arange(dev.size) - starts + 1).astype(np.float64)
        else:
            dev = has
            k = np.ones(has.size)
        frac = (k - p_old[dev]) / delta[dev]
        t_s = t0 + frac * self.tick_s
        offset_ms = np.floor(t_s * 1000.0).astype(np.int64)
        order = np.argsort(offset_ms, kind="stable")
        return dev[order], offset_ms[order], t_s[order]
