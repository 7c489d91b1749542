"""Data faults injected on purpose, each with a rate, decided from the seed.

Readings that stay valid (the table must hold them):

- ``duplicates``: the reading is sent again, identical, up to ``duplicate_delay_s``
  later (a redelivery; it collapses onto the same item);
- ``late``: the reading is held back up to ``late_max_s`` and sent after newer
  readings (out of order);
- ``clock skew``: a fraction of devices has a clock off by a constant up to
  ± ``skew_max_s`` (their timestamps are what they send; keep it under the
  ingest's ``max_future_ms``, 5 min by default, or they are rejected).

Readings that are invalid (each in a message of its own, so that the service's
dead letters must hold exactly them, whatever the granularity of its checks):

- ``malformed``: truncated JSON, not JSON, a NaN literal, a ``ts`` that is not a
  timestamp, a metric of a wrong type (boolean), a top-level array;
- ``missing fields``: a reading with no metrics at all;
- ``oversize``: a message of ``oversize_bytes`` (over the ingest's
  ``max_message_bytes``, 256 KiB by default).

Readings never sent:

- ``dropouts``: with ``dropout_rate`` per reading, the device goes silent for
  ``dropout_s`` (this reading and its next ones are not sent).

Rates are per reading (probabilities), except clock skew (a fraction of
devices). Duplicates, late, malformed, missing and oversize exclude each
other, so their rates must add up to at most 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from simulator.errors import SimConfigError

__all__ = [
    "INVALID_FAULTS",
    "BoolArray",
    "Fault",
    "FaultConfig",
    "FaultInjector",
    "IntArray",
    "MalformedKind",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class Fault(IntEnum):
    """What happens to one reading (exclusive categories)."""

    NONE = 0
    DUPLICATE = 1
    LATE = 2
    MALFORMED = 3
    MISSING = 4
    OVERSIZE = 5


INVALID_FAULTS = (Fault.MALFORMED, Fault.MISSING, Fault.OVERSIZE)


class MalformedKind(IntEnum):
    """Variants of malformed payloads (each refused by any correct decoder)."""

    TRUNCATED_JSON = 0
    NOT_JSON = 1
    NAN_VALUE = 2
    BAD_TIMESTAMP = 3
    WRONG_TYPE = 4
    NOT_AN_OBJECT = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultConfig:
    """Which faults to inject, and how often (see the module docstring).

    Args:
        duplicate_rate: Fraction of readings sent twice.
        duplicate_delay_s: Largest delay of the second copy.
        late_rate: Fraction of readings held back and sent out of order.
        late_max_s: Largest hold-back time.
        skew_rate: Fraction of devices whose clock is off.
        skew_max_s: Largest clock offset (either sign).
        malformed_rate: Fraction of readings sent as a malformed payload.
        missing_rate: Fraction of readings sent without their metrics.
        oversize_rate: Fraction of readings sent as an oversize message.
        oversize_bytes: Size of an oversize message.
        dropout_rate: Chance per reading that the device goes silent (from that reading on).
        dropout_s: How long a silence lasts.
    """

    duplicate_rate: float = 0.0
    duplicate_delay_s: float = 2.0
    late_rate: float = 0.0
    late_max_s: float = 5.0
    skew_rate: float = 0.0
    skew_max_s: float = 60.0
    malformed_rate: float = 0.0
    missing_rate: float = 0.0
    oversize_rate: float = 0.0
    oversize_bytes: int = 300_000
    dropout_rate: float = 0.0
    dropout_s: float = 10.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise SimConfigError(f"fault rate {name}={value!r} must be between 0 and 1")
        for name in ("duplicate_delay_s", "late_max_s", "skew_max_s", "dropout_s"):
            if getattr(self, name) <= 0:
                raise SimConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.oversize_bytes < 1024:
            raise SimConfigError(f"oversize_bytes must be >= 1024, got {self.oversize_bytes}")
        if self.exclusive_total > 1.0:
            raise SimConfigError(
                "duplicate, late, malformed, missing and oversize rates exclude each other: "
                f"their sum {self.exclusive_total:g} must be <= 1"
            )

    @property
    def exclusive_total(self) -> float:
        return (
            self.duplicate_rate
            + self.late_rate
            + self.malformed_rate
            + self.missing_rate
            + self.oversize_rate
        )

    @property
    def any(self) -> bool:
        return self.exclusive_total > 0 or self.skew_rate > 0 or self.dropout_rate > 0


class FaultInjector:
    """Draws the faults of each reading from its own generator (so values never change).

    Args:
        config: Fault rates.
        n_devices: Fleet size.
        tick_s: Tick length (delays are whole ticks, at least one).
        rng: The faults' generator.
    """

    def __init__(
        self, config: FaultConfig, *, n_devices: int, tick_s: float, rng: np.random.Generator
    ) -> None:
        self.config = config
        self.tick_s = tick_s
        self._rng = rng
        skewed = rng.random(n_devices) < config.skew_rate
        max_ms = round(config.skew_max_s * 1000)
        offsets = rng.integers(1, max_ms + 1, n_devices) * rng.choice(np.array([-1, 1]), n_devices)
        self.skew_ms: IntArray = np.where(skewed, offsets, 0).astype(np.int64)
        self._silent_from_ms: IntArray = np.zeros(n_devices, dtype=np.int64)
        self._silent_until_ms: IntArray = np.zeros(n_devices, dtype=np.int64)
        self._dropout_ms = round(config.dropout_s * 1000)
        self._thresholds = np.cumsum(
            [
                config.duplicate_rate,
                config.late_rate,
                config.malformed_rate,
                config.missing_rate,
                config.oversize_rate,
            ]
        )

    @property
    def skewed_devices(self) -> int:
        return int(np.count_nonzero(self.skew_ms))

    def dropouts(self, dev: IntArray, offset_ms: IntArray) -> tuple[BoolArray, int]:
        """Decide silences; return (mask of readings to keep, silences started)."""
        if self.config.dropout_rate <= 0 or dev.size == 0:
            return np.ones(dev.size, dtype=np.bool_), 0
        frm, until = self._silent_from_ms, self._silent_until_ms
        silent = (offset_ms >= frm[dev]) & (offset_ms < until[dev])
        start = ~silent & (self._rng.random(dev.size) < self.config.dropout_rate)
        started = 0
        if start.any():
            # readings come in time order: a device's first start in this tick wins
            devices, first = np.unique(dev[start], return_index=True)
            at = offset_ms[start][first]
            frm[devices] = at
            until[devices] = at + self._dropout_ms
            started = int(devices.size)
            silent = (offset_ms >= frm[dev]) & (offset_ms < until[dev])
        keep: BoolArray = ~silent
        return keep, started

    def categorise(self, n: int) -> IntArray:
        """A :class:`Fault` code for each of ``n`` readings."""
        if self.config.exclusive_total <= 0 or n == 0:
            return np.zeros(n, dtype=np.int64)
        u = self._rng.random(n)
        codes: IntArray = np.searchsorted(self._thresholds, u, side="right").astype(np.int64) + 1
        codes[codes > len(self._thresholds)] = Fault.NONE
        return codes

    def delay_ticks(self, n: int, max_s: float) -> IntArray:
        """Delays (whole ticks, 1 to ``max_s``) for ``n`` deferred readings."""
        high = max(1, round(max_s / self.tick_s))
        out: IntArray = self._rng.integers(1, high + 1, n).astype(np.int64)
        return out

    def malformed_kinds(self, n: int) -> IntArray:
        out: IntArray = self._rng.integers(0, len(MalformedKind), n).astype(np.int64)
        return out
