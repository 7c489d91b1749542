"""Run manifests: exactly what a run sent, so that `verify` can check the table against it.

Per sensor the manifest holds the number of VALID distinct readings (a
duplicate counts once: it lands on the same item), their first and last
timestamp, the span of every timestamp sent (valid or not, so that verify
knows which buckets to read) and a checksum; per run it holds the counts of
each injected fault and of the invalid messages the dead letters must hold.

The checksum of a sensor is the sum (mod 2**64) of a digest per reading, so it
does not depend on order. A reading's digest mixes (splitmix64) a stable hash
of its sensor id and tags, its timestamp, and each metric's name and value
(the IEEE-754 bits of the value as a float, -0.0 taken as 0.0), metrics in
name order. Numbers are compared by value, not by their text: ``22`` read back
from DynamoDB equals the ``22.0`` that was sent, as ``format_number`` makes
them equal too. The vectorised form (:func:`digest_readings`, used while
generating) and the scalar one (:func:`reading_digest`, used on items read
back) are two implementations of the same function; a test holds them equal.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import numpy as np
import numpy.typing as npt
import orjson

from simulator.errors import ManifestError

__all__ = [
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "FloatArray",
    "IntArray",
    "Manifest",
    "ManifestBuilder",
    "SensorRecord",
    "U64Array",
    "digest_readings",
    "load_manifest",
    "metric_hash",
    "reading_digest",
    "save_manifest",
    "sensor_hash",
]

MANIFEST_FORMAT = "iot-ingest-simulator-manifest"
MANIFEST_VERSION = 1

_MASK = 0xFFFFFFFFFFFFFFFF
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

U64Array = npt.NDArray[np.uint64]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class SensorRecord(TypedDict):
    """What one sensor sent: ``count`` valid distinct readings and their checksum."""

    count: int
    first_ts: int | None
    last_ts: int | None
    checksum: str
    span: list[int] | None  # [min, max] of every ts sent, valid or not


class Manifest(TypedDict):
    """The manifest file (JSON)."""

    format: str
    version: int
    complete: bool
    run: dict[str, Any]
    totals: dict[str, int]
    faults: dict[str, int]
    invalid: dict[str, int]
    ts_range: list[int] | None
    sensors: dict[str, SensorRecord]
    readings: NotRequired[dict[str, list[list[Any]]]]


# -- digests ------------------------------------------------------------------


def _mix(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _mix_array(z: U64Array) -> U64Array:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    out: U64Array = z ^ (z >> np.uint64(31))
    return out


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def sensor_hash(sensor_id: str, tags: Mapping[str, str]) -> int:
    """Stable 64-bit hash of a sensor id and its tags."""
    tag_text = "\x1f".join(f"{k}\x1e{tags[k]}" for k in sorted(tags))
    return _hash64(f"s\x1d{sensor_id}\x1d{tag_text}")


@lru_cache(maxsize=1024)
def metric_hash(name: str) -> int:
    """Stable 64-bit hash of a metric name."""
    return _hash64(f"m\x1d{name}")


def _float_bits(value: float | int) -> int:
    bits: int = struct.unpack("<Q", struct.pack("<d", float(value) + 0.0))[0]
    return bits


def reading_digest(
    sensor_id: str, ts_ms: int, metrics: Mapping[str, float | int], tags: Mapping[str, str]
) -> int:
    """Digest of one reading (scalar form; see the module docstring)."""
    h = _mix(sensor_hash(sensor_id, tags) ^ (ts_ms & _MASK))
    for name in sorted(metrics):
        h = _mix(h ^ metric_hash(name) ^ _mix(_float_bits(metrics[name])))
    return h


def digest_readings(
    sensor_hashes: U64Array, ts_ms: IntArray, metrics: Mapping[str, FloatArray]
) -> U64Array:
    """Digests of many readings at once (vectorised form of :func:`reading_digest`).

    Args:
        sensor_hashes: :func:`sensor_hash` of each reading's sensor.
        ts_ms: Timestamps as sent.
        metrics: Metric name to values, aligned with ``ts_ms``.
    """
    h = _mix_array(sensor_hashes ^ ts_ms.astype(np.int64).view(np.uint64))
    for name in sorted(metrics):
        values = np.asarray(metrics[name], dtype=np.float64) + 0.0
        h = _mix_array(h ^ np.uint64(metric_hash(name)) ^ _mix_array(values.view(np.uint64)))
    return h


# -- building -----------------------------------------------------------------

_NO_TS = np.iinfo(np.int64).max


class ManifestBuilder:
    """Accumulates what a run sends, per sensor, vectorised.

    Args:
        sensor_ids: The fleet's sensor ids (device index = position).
        tags: Each device's tags.
        detail: Also keep every valid reading's (ts, digest), so that verify can
            name the exact readings that differ (for small runs and tests).
    """

    def __init__(
        self, sensor_ids: Sequence[str], tags: Sequence[Mapping[str, str]], *, detail: bool = False
    ) -> None:
        n = len(sensor_ids)
        self.sensor_ids = sensor_ids
        self.sensor_hashes: U64Array = np.array(
            [sensor_hash(s, t) for s, t in zip(sensor_ids, tags, strict=True)], dtype=np.uint64
        )
        self._count: IntArray = np.zeros(n, dtype=np.int64)
        self._first: IntArray = np.full(n, _NO_TS, dtype=np.int64)
        self._last: IntArray = np.full(n, -_NO_TS, dtype=np.int64)
        self._span_min: IntArray = np.full(n, _NO_TS, dtype=np.int64)
        self._span_max: IntArray = np.full(n, -_NO_TS, dtype=np.int64)
        self._checksum: U64Array = np.zeros(n, dtype=np.uint64)
        self._detail: list[tuple[IntArray, IntArray, U64Array]] | None = [] if detail else None

    def add_valid(self, dev: IntArray, ts_ms: IntArray, metrics: Mapping[str, FloatArray]) -> None:
        """Record valid readings (first copies only: duplicates are not counted again)."""
        if dev.size == 0:
            return
        digests = digest_readings(self.sensor_hashes[dev], ts_ms, metrics)
        np.add.at(self._count, dev, 1)
        np.minimum.at(self._first, dev, ts_ms)
        np.maximum.at(self._last, dev, ts_ms)
        np.add.at(self._checksum, dev, digests)
        if self._detail is not None:
            self._detail.append((dev.copy(), ts_ms.copy(), digests))
        self.add_sent(dev, ts_ms)

    def add_sent(self, dev: IntArray, ts_ms: IntArray) -> None:
        """Record timestamps sent (valid or not): the span verify has to read."""
        if dev.size:
            np.minimum.at(self._span_min, dev, ts_ms)
            np.maximum.at(self._span_max, dev, ts_ms)

    @property
    def valid_readings(self) -> int:
        return int(self._count.sum())

    def build(
        self,
        *,
        run: dict[str, Any],
        totals: dict[str, int],
        faults: dict[str, int],
        invalid: dict[str, int],
        complete: bool,
    ) -> Manifest:
        """The manifest, as a JSON-ready dict."""
        sensors: dict[str, SensorRecord] = {}
        counts = self._count.tolist()
        firsts, lasts = self._first.tolist(), self._last.tolist()
        smin, smax = self._span_min.tolist(), self._span_max.tolist()
        sums = self._checksum.tolist()
        for i, sid in enumerate(self.sensor_ids):
            sent = smin[i] != _NO_TS
            sensors[sid] = {
                "count": counts[i],
                "first_ts": firsts[i] if counts[i] else None,
                "last_ts": lasts[i] if counts[i] else None,
                "checksum": f"{sums[i]:016x}",
                "span": [smin[i], smax[i]] if sent else None,
            }
        spans = [s["span"] for s in sensors.values() if s["span"] is not None]
        ts_range = [min(s[0] for s in spans), max(s[1] for s in spans)] if spans else None
        manifest: Manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "complete": complete,
            "run": run,
            "totals": totals,
            "faults": faults,
            "invalid": invalid,
            "ts_range": ts_range,
            "sensors": sensors,
        }
        if self._detail is not None:
            per: dict[str, list[list[Any]]] = {}
            for dev, ts, dig in self._detail:
                for d, t, g in zip(dev.tolist(), ts.tolist(), dig.tolist(), strict=True):
                    per.setdefault(self.sensor_ids[d], []).append([t, f"{g:016x}"])
            for rows in per.values():
                rows.sort()
            manifest["readings"] = per
        return manifest


# -- files --------------------------------------------------------------------


def save_manifest(manifest: Manifest, path: Path) -> None:
    """Write the manifest (JSON) atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def load_manifest(path: Path) -> Manifest:
    """Read a manifest written by :func:`save_manifest`.

    Raises:
        ManifestError: The file cannot be read, or is not a simulator manifest.
    """
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {str(path)!r}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise ManifestError(f"manifest {str(path)!r} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ManifestError(
            f"{str(path)!r} is not a simulator manifest "
            "(write one with `iot-ingest simulate --manifest`)"
        )
    if doc.get("version") != MANIFEST_VERSION:
        raise ManifestError(
            f"manifest {str(path)!r} has version {doc.get('version')!r}; this verify reads "
            f"version {MANIFEST_VERSION}"
        )
    return cast(Manifest, doc)
