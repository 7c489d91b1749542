"""Device fleets: stable sensor ids, kinds, per-device rates, tags; from flags or a TOML file.

A fleet is a list of groups; each group has a sensor kind, a device count, a
rate and optional tags. Sensor ids are ``{id_prefix}{index:05d}`` with the
index running over the whole fleet (plus ``device_offset``, so that several
processes can simulate disjoint parts of one big fleet).

Fleet file (TOML)::

    [[group]]
    kind = "env"            # env | vibration | power | gps
    count = 4000
    rate_per_s = 1.0        # or interval_s = 60 (one reading a minute)
    id_prefix = "env-"      # default: "{kind}-"
    tags = { site = "plant-1" }

    [[group]]
    kind = "vibration"
    count = 20
    rate_per_s = 100
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ingest.storage.layout import SENSOR_ID_PATTERN
from simulator.errors import SimConfigError
from simulator.signals import KINDS

__all__ = ["MAX_DEVICE_RATE_PER_S", "DeviceGroup", "Fleet", "load_fleet_file"]

MAX_DEVICE_RATE_PER_S = 500.0
"""Highest rate of one device (after spikes): readings of a device stay >= 2 ms apart, so
their millisecond timestamps are always distinct."""

_RESERVED_TAGS = frozenset({"ts", "sensor_id", "readings"})


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceGroup:
    """Devices of one kind sharing a rate and tags.

    Args:
        kind: Sensor kind, one of :data:`simulator.signals.KINDS`.
        count: Number of devices.
        rate_per_s: Readings per second of each device.
        id_prefix: Sensor id prefix (default ``"{kind}-"``).
        tags: String tags sent with every reading of these devices.
    """

    kind: str
    count: int
    rate_per_s: float
    id_prefix: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SimConfigError(
                f"unknown sensor kind {self.kind!r}: use one of {', '.join(KINDS)}"
            )
        if self.count < 0:
            raise SimConfigError(f"group count must be >= 0, got {self.count}")
        if not 0 < self.rate_per_s <= MAX_DEVICE_RATE_PER_S:
            raise SimConfigError(
                f"rate_per_s of each {self.kind} device must be in (0, {MAX_DEVICE_RATE_PER_S:g}], "
                f"got {self.rate_per_s:g}/s: add devices or lower the rate"
            )
        if self.id_prefix is not None and not SENSOR_ID_PATTERN.fullmatch(self.id_prefix + "0"):
            raise SimConfigError(
                f"id_prefix {self.id_prefix!r} would make invalid sensor ids: "
                "allowed are [A-Za-z0-9_.:-]"
            )
        for k, v in self.tags.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SimConfigError(f"tags must map strings to strings, got {k!r} = {v!r}")
            if k in _RESERVED_TAGS or k in KINDS[self.kind].metrics:
                raise SimConfigError(f"tag name {k!r} is reserved or a metric name of {self.kind}")
            if not 1 <= len(k) <= 64 or len(v) > 256:
                raise SimConfigError(f"tag {k!r}: names are 1-64 characters, values at most 256")

    @property
    def prefix(self) -> str:
        return self.id_prefix if self.id_prefix is not None else f"{self.kind}-"


class Fleet:
    """The devices of a run, in a stable order (index = position in ``sensor_ids``).

    Args:
        groups: Device groups, in order.
        device_offset: Added to every device index in the ids.
    """

    def __init__(self, groups: Sequence[DeviceGroup], *, device_offset: int = 0) -> None:
        if not groups or sum(g.count for g in groups) == 0:
            raise SimConfigError(
                "the fleet has no devices: give --devices or groups with count > 0"
            )
        if device_offset < 0:
            raise SimConfigError(f"device_offset must be >= 0, got {device_offset}")
        self.groups = tuple(groups)
        self.device_offset = device_offset
        ids: list[str] = []
        kinds: list[str] = []
        rates: list[float] = []
        group_of: list[int] = []
        index = device_offset
        for gi, g in enumerate(self.groups):
            for _ in range(g.count):
                ids.append(f"{g.prefix}{index:05d}")
                index += 1
            kinds += [g.kind] * g.count
            rates += [g.rate_per_s] * g.count
            group_of += [gi] * g.count
        for sid in ids[:1] + ids[-1:]:
            if not SENSOR_ID_PATTERN.fullmatch(sid):
                raise SimConfigError(
                    f"sensor id {sid!r} is invalid: at most 128 of [A-Za-z0-9_.:-]"
                )
        if len(set(ids)) != len(ids):
            raise SimConfigError("sensor ids collide: give the groups distinct id_prefix values")
        self.sensor_ids: tuple[str, ...] = tuple(ids)
        self.kinds: tuple[str, ...] = tuple(kinds)
        self.rates_per_s: npt.NDArray[np.float64] = np.array(rates, dtype=np.float64)
        self.group_of: npt.NDArray[np.int64] = np.array(group_of, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sensor_ids)

    @property
    def total_rate_per_s(self) -> float:
        return float(self.rates_per_s.sum())

    def tags_of(self, device: int) -> Mapping[str, str]:
        return self.groups[int(self.group_of[device])].tags

    @classmethod
    def uniform(
        cls,
        *,
        devices: int,
        rate_per_s: float,
        kinds: Sequence[str] = ("env",),
        id_prefix: str | None = None,
        device_offset: int = 0,
    ) -> Fleet:
        """A fleet from flags: ``devices`` split evenly over ``kinds``, a total rate shared evenly.

        Args:
            devices: Number of devices.
            rate_per_s: Total readings per second of the fleet.
            kinds: Sensor kinds, devices assigned in equal parts (in this order).
            id_prefix: Sensor id prefix for all devices (default ``"{kind}-"``).
            device_offset: First device index in the ids.
        """
        if devices < 1:
            raise SimConfigError(f"--devices must be >= 1, got {devices}")
        if not kinds:
            raise SimConfigError("give at least one sensor kind")
        if rate_per_s <= 0:
            raise SimConfigError(f"--rate must be > 0, got {rate_per_s}")
        per_device = rate_per_s / devices
        groups = []
        for k, kind in enumerate(kinds):
            count = devices // len(kinds) + (1 if k < devices % len(kinds) else 0)
            if count:
                groups.append(
                    DeviceGroup(kind=kind, count=count, rate_per_s=per_device, id_prefix=id_prefix)
                )
        return cls(groups, device_offset=device_offset)

    def with_total_rate(self, rate_per_s: float) -> Fleet:
        """The same fleet with every rate scaled so that the total is ``rate_per_s``."""
        if rate_per_s <= 0:
            raise SimConfigError(f"--rate must be > 0, got {rate_per_s}")
        factor = rate_per_s / self.total_rate_per_s
        groups = [
            DeviceGroup(
                kind=g.kind,
                count=g.count,
                rate_per_s=g.rate_per_s * factor,
                id_prefix=g.id_prefix,
                tags=g.tags,
            )
            for g in self.groups
        ]
        return Fleet(groups, device_offset=self.device_offset)


def _group_from_toml(i: int, raw: Any) -> DeviceGroup:
    where = f"group {i + 1}"
    if not isinstance(raw, dict):
        raise SimConfigError(f"{where}: expected a table ([[group]]), got {raw!r}")
    unknown = set(raw) - {"kind", "count", "rate_per_s", "interval_s", "id_prefix", "tags"}
    if unknown:
        raise SimConfigError(f"{where}: unknown keys {sorted(unknown)}")
    if "rate_per_s" in raw and "interval_s" in raw:
        raise SimConfigError(f"{where}: give rate_per_s or interval_s, not both")
    try:
        if "interval_s" in raw:
            interval_s = float(raw["interval_s"])
            if interval_s <= 0:
                raise SimConfigError(f"interval_s must be > 0, got {interval_s}")
            rate = 1.0 / interval_s
        else:
            rate = float(raw.get("rate_per_s", 1.0))
        return DeviceGroup(
            kind=str(raw.get("kind", "env")),
            count=int(raw["count"]),
            rate_per_s=rate,
            id_prefix=raw.get("id_prefix"),
            tags=dict(raw.get("tags", {})),
        )
    except KeyError as exc:
        raise SimConfigError(f"{where}: missing key {exc}") from exc
    except (TypeError, ValueError) as exc:  # SimConfigError included: say which group
        raise SimConfigError(f"{where}: {exc}") from exc


def load_fleet_file(path: Path, *, device_offset: int = 0) -> Fleet:
    """Read a fleet file (TOML, see the module docstring).

    Raises:
        SimConfigError: The file is missing, not TOML, or describes an invalid fleet.
    """
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(f"cannot read fleet file {str(path)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"fleet file {str(path)!r} is not valid TOML: {exc}") from exc
    groups = doc.get("group")
    if not isinstance(groups, list) or not groups:
        raise SimConfigError(f"fleet file {str(path)!r} has no [[group]] tables")
    return Fleet(
        [_group_from_toml(i, g) for i, g in enumerate(groups)], device_offset=device_offset
    )
