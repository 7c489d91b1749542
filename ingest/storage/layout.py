"""Table layout: the one place that knows how a reading becomes a DynamoDB item.

Both the write path (`ingest`) and the read path (`queries`, archival) import
this module; nothing else builds or parses keys. The attributes' types, item kind by
item kind, are :mod:`ingest.storage.items` (``TypedDict`` s that mypy checks).

Item shape (DynamoDB wire format, short attribute names so items stay < 1 KB)::

    pk   S  "{sensor_id}#{bucket}#{shard}"   e.g. "dev-17#2026-11-22#3"
    sk   N  reading timestamp, epoch milliseconds
    ttl  N  epoch seconds when DynamoDB may expire the item (ts + retention)
    m    M  metrics {name: N}
    g    M  tags {name: S}                     (absent when there are none)

The bucket is a UTC time window (a day by default) written as its start time,
ISO-like, at the precision the width needs (``2026-11-22``, ``2026-11-22T13``,
``2026-11-22T13:05``). The shard is derived from the timestamp alone, with a
multiplicative hash, so a redelivered reading lands on the same key and
overwrites itself; readers fan out over every shard of every bucket.

Sensor registry items live in the same table under partitions that no sensor
id can produce (sensor ids never contain ``#``)::

    pk   S  "#sensors#{p}"        p = stable hash of the sensor id mod REGISTRY_PARTITIONS
    sk   N  112-bit stable hash of the sensor id
    sid  S  sensor id; ls N last seen (ms); n N readings counted; m M latest metrics;
    fs   N  first seen: the lowest reading timestamp ever observed (0: unknown)

The layout parameters (bucket width, shard count) are stored in the item
``pk="#layout", sk=0`` so a reader or a restarted writer uses the same ones.

Beside it, ``pk="#layout", sk=1`` holds the archive policy (written by the
archiver, read by the ingest's registry, see :class:`ArchivePolicy`)::

    hz N horizon (ms); bw N bucket width (ms); st N settle time (ms);
    since N when this policy was first recorded (epoch ms)

An ingest worker's journal (``packed`` layout only, decision 0008: the flushes that
made its readings durable, read back only when it restarts)::

    pk   S  "#journal#{worker}"   worker = the worker's MQTT client id
    sk   N  flush sequence: epoch ms · 1000 + a counter, increasing within a worker
    ttl  N  when DynamoDB may delete it; n N readings; b B the readings (ingest.storage.journal)

A ``packed`` table's sealed windows (decision 0008: one sensor's readings over a window,
one packed blob, ``ingest.storage.windows``) and its staging items (the last seconds of
a group of sensors, for dashboards)::

    pk   S  "{sensor_id}#{bucket}"                 e.g. "dev-17#2026-11-22" (no shard)
    sk   N  window start ms · 2**64 + part          part = 64-bit hash of the part's blob
    pk   S  "#stage#{group}#{hour}"                group = stable hash of the id mod groups
    sk   N  flush ms · 2**24 + a hash of the writing worker · 16 + index

Late marks (a sensor's bucket received readings once it may already have been
archived; written by the registry, cleared by the archiver) live under
partitions no sensor id can produce either::

    pk   S  "#late#{p}"           p = the sensor's registry partition number
    sk   N  112-bit stable hash of "{sensor_id}#{bucket start}"
    sid  S  sensor id; b N bucket start (ms); t N last marked at (epoch ms);
    n    N  late readings counted; ttl N set (and t, n removed) once cleared

Stale marks (``packed``: an hour whose rollups lack a late seal; written by the worker
that sealed it, cleared by the rollup pass that rolled it up again)::

    pk   S  "#stale#{sensor_id}"  sk N hour start (ms); t N sealed at (epoch ms); ttl N
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest.storage import items as _items
from ingest.storage.items import (
    ArchivePolicyItem,
    ItemKey,
    LayoutItem,
    ReadingItem,
    ReadingProjection,
)

__all__ = [
    "ARCHIVE_POLICY_SK",
    "COMPACTION_PK",
    "JOURNAL_PREFIX",
    "LAYOUT_KINDS",
    "LAYOUT_PK",
    "MARKER_PREFIX",
    "REGISTRY_PARTITIONS",
    "ROLLUP_LOG_PREFIX",
    "ROLLUP_PREFIX",
    "SEAL_LOG_PREFIX",
    "SENSOR_ID_PATTERN",
    "STAGE_PREFIX",
    "STALE_PREFIX",
    "WINDOW_PART_SPACE",
    "ArchivePolicy",
    "Item",
    "Reading",
    "TableLayout",
    "binary_value",
    "format_number",
    "is_reserved_pk",
    "journal_pk",
    "late_mark_key",
    "late_partition_keys",
    "marker_pk",
    "marker_sensor_id",
    "parse_number",
    "registry_key",
    "registry_partition_keys",
    "rollup_day_log_key",
    "rollup_log_pk",
    "rollup_pk",
    "rollup_stale_key",
    "rollup_stale_pk",
    "round_ms_of",
    "round_sk",
    "seal_log_pk",
    "sensor_group",
    "stage_pk",
    "stored_number",
    "window_of_sk",
    "window_sk",
]

Item = _items.Item
"""Any item in wire format: :data:`ingest.storage.items.Item`, named here too for the many
modules that import it with the layout (the typed items are in :mod:`ingest.storage.items`)."""

SENSOR_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
"""Allowed sensor ids: never the key delimiter ``#``, at most 128 characters."""

REGISTRY_PARTITIONS = 8
LAYOUT_PK = "#layout"
ARCHIVE_POLICY_SK = 1
_REGISTRY_PREFIX = "#sensors#"
_LATE_PREFIX = "#late#"
MARKER_PREFIX = "#archive#"
JOURNAL_PREFIX = "#journal#"
STAGE_PREFIX = "#stage#"
SEAL_LOG_PREFIX = "#sealed#"
COMPACTION_PK = "#compaction"
ROLLUP_PREFIX = "#rollup#"
ROLLUP_LOG_PREFIX = "#rolled#"
STALE_PREFIX = "#stale#"
LAYOUT_KINDS = ("reading", "packed")
WINDOW_PART_SPACE = 2**64
_SHARD_MULTIPLIER = 0x9E3779B1  # Knuth's multiplicative hash constant (2**32 / phi)


@dataclass(slots=True)
class Reading:
    """One sensor reading, as decoded from a payload or read back from the table."""

    sensor_id: str
    ts_ms: int
    metrics: dict[str, float | int]
    tags: dict[str, str] = field(default_factory=dict)


def format_number(value: float | int) -> str:
    """Format a metric value as a DynamoDB number string (shortest round-trip form)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def parse_number(text: str) -> float | int:
    """A DynamoDB number string as a Python number: ``int`` unless it has a fraction or exponent."""
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


def stored_number(value: float | int) -> float | int:
    """The number the table gives back for ``value``: ``parse_number(format_number(value))``,
    without the string (an integral float below 1e15 comes back as an ``int``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return int(value)
    return value


def binary_value(value: Mapping[str, Any]) -> bytes:
    """The bytes of a binary attribute value ``{"B": ...}``: botocore gives bytes, the
    lean client's answers the JSON protocol's base64 text."""
    raw = value["B"]
    if isinstance(raw, str):
        return base64.b64decode(raw, validate=True)
    return bytes(raw)


def _stable_hash(sensor_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sensor_id.encode(), digest_size=14).digest(), "big")


def registry_key(sensor_id: str) -> tuple[str, int]:
    """Return the (pk, sk) of a sensor's registry item."""
    h = _stable_hash(sensor_id)
    return f"{_REGISTRY_PREFIX}{h % REGISTRY_PARTITIONS}", h


def registry_partition_keys() -> list[str]:
    """Every registry partition key, for listing sensors with Query (never Scan)."""
    return [f"{_REGISTRY_PREFIX}{p}" for p in range(REGISTRY_PARTITIONS)]


def late_mark_key(sensor_id: str, bucket_start_ms: int) -> tuple[str, int]:
    """Return the (pk, sk) of the late mark of one sensor's bucket."""
    p = _stable_hash(sensor_id) % REGISTRY_PARTITIONS
    return f"{_LATE_PREFIX}{p}", _stable_hash(f"{sensor_id}#{bucket_start_ms}")


def late_partition_keys() -> list[str]:
    """Every late-mark partition key, for reading the marks with Query (never Scan)."""
    return [f"{_LATE_PREFIX}{p}" for p in range(REGISTRY_PARTITIONS)]


def marker_pk(sensor_id: str) -> str:
    """The partition key of a sensor's archive markers."""
    return f"{MARKER_PREFIX}{sensor_id}"


def marker_sensor_id(pk: str) -> str:
    """The sensor id of an archive marker's partition key (the inverse of :func:`marker_pk`)."""
    return pk.removeprefix(MARKER_PREFIX)


def journal_pk(worker: str) -> str:
    """The partition key of one ingest worker's journal (``packed`` layout, decision 0008).

    ``worker`` is the worker's MQTT client id: the broker keeps the worker's session under
    it, so a restarted worker finds both its unacknowledged messages and its journal.
    """
    if not worker:
        raise ValueError("a journal needs a worker id")
    return f"{JOURNAL_PREFIX}{worker}"


def window_sk(window_start_ms: int, part: int) -> int:
    """The sort key of part ``part`` of the window starting at ``window_start_ms``.

    A part is named by a 64-bit hash of its content (ingest.storage.windows), so writing
    the same part again overwrites it and two different parts never collide (38 digits:
    DynamoDB's numbers hold it exactly).
    """
    if not 0 <= part < WINDOW_PART_SPACE:
        raise ValueError(f"part must be 0..{WINDOW_PART_SPACE - 1}, got {part}")
    return window_start_ms * WINDOW_PART_SPACE + part


def window_of_sk(sk: int) -> tuple[int, int]:
    """(window start ms, part) of a sealed window's sort key: the inverse of :func:`window_sk`."""
    start, part = divmod(sk, WINDOW_PART_SPACE)
    return start, part


def stage_pk(group: int, hour_start_ms: int) -> str:
    """The partition key of one sensor group's staging items written in one UTC hour."""
    return (
        f"{STAGE_PREFIX}{group}#{time.strftime('%Y-%m-%dT%H', time.gmtime(hour_start_ms // 1000))}"
    )


def seal_log_pk(window_start_ms: int) -> str:
    """The partition key of the seal log of one window period (``packed``): which sensors'
    windows of that period each worker sealed, in which round (ingest.storage.compaction)."""
    return f"{SEAL_LOG_PREFIX}{window_start_ms}"


def round_sk(round_ms: int, worker: str, index: int = 0) -> int:
    """The sort key of one of a worker's items of one round (a staging flush, a sealing
    round, a rollup pass): the round's millisecond · 2**24 + 20 bits of a hash of the
    worker's id · 16 + the item's index in the round (< 16), so two workers' items of
    one millisecond never collide and a retry of the same round overwrites."""
    if not 0 <= index < 16:
        raise ValueError(f"a round writes at most 16 items per partition, got {index}")
    tag = int.from_bytes(hashlib.blake2b(worker.encode(), digest_size=3).digest()) % 2**20
    return round_ms * 2**24 + tag * 16 + index


def round_ms_of(sk: int) -> int:
    """The round's millisecond of a :func:`round_sk` sort key."""
    return sk // 2**24


def rollup_pk(step_ms: int, sensor_id: str) -> str:
    """The partition key of a sensor's rollup items of one step (``packed``,
    ingest.storage.rollups): ``1m`` (an item per hour) or ``1h`` (an item per day)."""
    if step_ms == 60_000:
        return f"{ROLLUP_PREFIX}1m#{sensor_id}"
    if step_ms == 3_600_000:
        return f"{ROLLUP_PREFIX}1h#{sensor_id}"
    raise ValueError(f"rollups have steps of a minute or an hour, got {step_ms} ms")


def rollup_stale_key(sensor_id: str, hour_ms: int) -> ItemKey:
    """The key of a sensor-hour's stale mark (see :func:`rollup_stale_pk`)."""
    return {"pk": {"S": rollup_stale_pk(sensor_id)}, "sk": {"N": str(hour_ms)}}


def rollup_stale_pk(sensor_id: str) -> str:
    """The partition key of a sensor's stale marks (``packed``; sort key: an hour's start):
    hours whose rollups lack a late seal, which series read as readings until the next
    rollup pass (ingest.storage.rollpass)."""
    return f"{STALE_PREFIX}{sensor_id}"


def rollup_log_pk(hour_start_ms: int) -> str:
    """The partition key of the rollup log of one hour (``packed``): which seal rounds of
    the hour's windows each rollup pass folded in (ingest.storage.rollpass)."""
    return f"{ROLLUP_LOG_PREFIX}{hour_start_ms}"


def rollup_day_log_key(day_start_ms: int) -> ItemKey:
    """The key of the day log of one UTC day (``packed``): which of its hours the day's
    hour rollups cover (ingest.storage.rollpass)."""
    return {"pk": {"S": f"{ROLLUP_LOG_PREFIX}day"}, "sk": {"N": str(day_start_ms)}}


def sensor_group(sensor_id: str, groups: int) -> int:
    """The staging group of a sensor: a stable hash of its id modulo ``groups``."""
    return _stable_hash(sensor_id) % groups


def is_reserved_pk(pk: str) -> bool:
    """Whether a partition key is one of the table's own records (layout, registry, late
    marks, archive markers: all start with ``#``, which a sensor id cannot), not readings."""
    return pk.startswith("#")


def _bucket_label_format(bucket_ms: int) -> str:
    if bucket_ms % 86_400_000 == 0:
        return "%Y-%m-%d"
    if bucket_ms % 3_600_000 == 0:
        return "%Y-%m-%dT%H"
    return "%Y-%m-%dT%H:%M"


@dataclass(frozen=True, slots=True, kw_only=True)
class TableLayout:
    """Key scheme parameters; part of the table's identity (see module docstring).

    Args:
        bucket_ms: Width of a time bucket (one partition-key generation), ms.
            Must be a whole number of minutes dividing a day, or whole days.
        shards: Write shards per sensor and bucket (1 to 64; ``reading`` layout).
        retention_days: Days after a reading's timestamp before its item may expire.
        kind: ``reading`` (one item per reading) or ``packed`` (decision 0008: sealed
            windows of many readings, staging items, a journal).
        window_ms: ``packed``: width of a sealed window (whole seconds dividing the bucket).
        groups: ``packed``: staging groups (a reader of one sensor scans its group's).
        stage_ms: ``packed``: how often a worker writes its staging items.
    """

    bucket_ms: int = 86_400_000
    shards: int = 4
    retention_days: int = 30
    kind: str = "reading"
    window_ms: int = 900_000
    groups: int = 256
    stage_ms: int = 10_000
    _labels: dict[int, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.bucket_ms < 60_000 or self.bucket_ms % 60_000:
            raise ValueError(
                f"bucket_ms must be a positive whole number of minutes, got {self.bucket_ms}"
            )
        if self.bucket_ms < 86_400_000 and 86_400_000 % self.bucket_ms:
            raise ValueError(f"bucket_ms below a day must divide a day, got {self.bucket_ms}")
        if self.bucket_ms > 86_400_000 and self.bucket_ms % 86_400_000:
            raise ValueError(f"bucket_ms above a day must be whole days, got {self.bucket_ms}")
        if not 1 <= self.shards <= 64:
            raise ValueError(f"shards must be 1..64, got {self.shards}")
        if self.retention_days < 1:
            raise ValueError(f"retention_days must be >= 1, got {self.retention_days}")
        if self.kind not in LAYOUT_KINDS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUT_KINDS)}, got {self.kind!r}")
        if self.kind == "reading":
            return  # the packed parameters are unused (and not recorded)
        if self.window_ms < 1_000 or self.window_ms % 1_000 or self.bucket_ms % self.window_ms:
            raise ValueError(
                f"window_ms must be whole seconds dividing the bucket ({self.bucket_ms}), "
                f"got {self.window_ms}"
            )
        if not 1 <= self.groups <= 65_536:
            raise ValueError(f"groups must be 1..65536, got {self.groups}")
        if not 100 <= self.stage_ms <= 600_000:
            raise ValueError(f"stage_ms must be 100..600000, got {self.stage_ms}")

    @property
    def retention_ms(self) -> int:
        return self.retention_days * 86_400_000

    # -- keys ---------------------------------------------------------------

    def shard_of(self, ts_ms: int) -> int:
        """The write shard of a reading: a hash of its timestamp, never random."""
        return ((ts_ms * _SHARD_MULTIPLIER) & 0xFFFFFFFF) * self.shards >> 32

    def bucket_start(self, ts_ms: int) -> int:
        """Start (epoch ms) of the bucket holding ``ts_ms``."""
        return ts_ms - ts_ms % self.bucket_ms

    def bucket_label(self, bucket_start_ms: int) -> str:
        """The bucket's text in the partition key (cached: few distinct buckets are live)."""
        label = self._labels.get(bucket_start_ms)
        if label is None:
            label = time.strftime(
                _bucket_label_format(self.bucket_ms), time.gmtime(bucket_start_ms // 1000)
            )
            if len(self._labels) > 4096:
                self._labels.clear()
            self._labels[bucket_start_ms] = label
        return label

    def partition_key(self, sensor_id: str, ts_ms: int) -> str:
        bucket = self.bucket_label(ts_ms - ts_ms % self.bucket_ms)
        return f"{sensor_id}#{bucket}#{self.shard_of(ts_ms)}"

    def bucket_starts(self, start_ms: int, end_ms: int) -> list[int]:
        """Starts of every bucket overlapping [start_ms, end_ms] (inclusive), ascending."""
        if end_ms < start_ms:
            return []
        first = self.bucket_start(start_ms)
        return list(range(first, end_ms + 1, self.bucket_ms))

    def partition_keys(self, sensor_id: str, bucket_start_ms: int) -> list[str]:
        """All shard partition keys of one sensor's bucket."""
        bucket = self.bucket_label(bucket_start_ms)
        return [f"{sensor_id}#{bucket}#{s}" for s in range(self.shards)]

    def window_pk(self, sensor_id: str, window_start_ms: int) -> str:
        """The partition key of a sensor's sealed windows in this bucket (``packed`` layout:
        no shard, one item holds many readings)."""
        return f"{sensor_id}#{self.bucket_label(self.bucket_start(window_start_ms))}"

    def ttl_of(self, ts_ms: int) -> int:
        """Epoch seconds at which the item may expire."""
        return (ts_ms + self.retention_ms) // 1000

    # -- items --------------------------------------------------------------

    def to_item(self, reading: Reading) -> ReadingItem:
        """Map a reading to its item, in DynamoDB wire format."""
        ts = reading.ts_ms
        item: ReadingItem = {
            "pk": {"S": self.partition_key(reading.sensor_id, ts)},
            "sk": {"N": str(ts)},
            "ttl": {"N": str((ts + self.retention_ms) // 1000)},
            "m": {"M": {k: {"N": format_number(v)} for k, v in reading.metrics.items()}},
        }
        if reading.tags:
            item["g"] = {"M": {k: {"S": v} for k, v in reading.tags.items()}}
        return item

    @staticmethod
    def from_item(item: ReadingItem | ReadingProjection, sensor_id: str | None = None) -> Reading:
        """Map an item (wire format) back to its reading.

        Args:
            item: The item; its ``pk`` may be left out (a projection) when ``sensor_id`` is given.
            sensor_id: The sensor, when the caller knows it (``None``: parsed from ``pk``).
        """
        if sensor_id is None:
            pk: str = item["pk"]["S"]
            sensor_id = pk.split("#", 1)[0]
        # The read path parses every reading it serves here: no default maps built.
        m = item.get("m")
        metrics = {k: parse_number(v["N"]) for k, v in m["M"].items() if "N" in v} if m else {}
        g = item.get("g")
        tags = {k: v["S"] for k, v in g["M"].items()} if g else {}
        return Reading(sensor_id, int(item["sk"]["N"]), metrics, tags)

    @staticmethod
    def is_expired(item: Item, now_s: float | None = None) -> bool:
        """True when the item's TTL has passed (DynamoDB deletes such items only eventually)."""
        ttl = item.get("ttl")
        if ttl is None:
            return False
        now = time.time() if now_s is None else now_s
        return int(ttl["N"]) <= math.floor(now)

    # -- the layout record --------------------------------------------------

    def to_layout_item(self) -> LayoutItem:
        """The layout record (a ``reading`` table's has no ``layout``: records written
        before the ``packed`` layout existed read as ``reading``)."""
        item: LayoutItem = {
            "pk": {"S": LAYOUT_PK},
            "sk": {"N": "0"},
            "bucket_ms": {"N": str(self.bucket_ms)},
            "shards": {"N": str(self.shards)},
            "retention_days": {"N": str(self.retention_days)},
        }
        if self.kind != "reading":
            item["layout"] = {"S": self.kind}
            item["window_ms"] = {"N": str(self.window_ms)}
            item["groups"] = {"N": str(self.groups)}
            item["stage_ms"] = {"N": str(self.stage_ms)}
        return item

    @classmethod
    def from_layout_item(cls, item: LayoutItem) -> TableLayout:
        kind = item.get("layout", {"S": "reading"})["S"]
        packed = {}
        if kind != "reading":
            packed = {k: int(item[k]["N"]) for k in ("window_ms", "groups", "stage_ms")}
        return cls(
            bucket_ms=int(item["bucket_ms"]["N"]),
            shards=int(item["shards"]["N"]),
            retention_days=int(item["retention_days"]["N"]),
            kind=kind,
            **packed,
        )

    def key_parameters(self) -> dict[str, int | str]:
        """What a writer and a reader must agree on (retention may differ: TTL only)."""
        out: dict[str, int | str] = {
            "layout": self.kind,
            "bucket_minutes": self.bucket_ms // 60_000,
        }
        if self.kind == "reading":
            out["shards"] = self.shards
        else:
            out.update(window_ms=self.window_ms, groups=self.groups, stage_ms=self.stage_ms)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchivePolicy:
    """What the archiver does, recorded in the table so that the ingest can follow it.

    Attributes:
        horizon_ms: A bucket is archived once its end is this far in the past.
        bucket_ms: The table's bucket width.
        settle_ms: The longest time a reading may take from decode to durable (write
            retries included), with clock skew: the ingest marks a reading late from
            ``settle_ms`` before its bucket passes the horizon, and the archiver clears a
            late mark only from an export that starts ``settle_ms`` after it was set.
        since_ms: When this policy was first recorded (epoch ms).
    """

    horizon_ms: int
    bucket_ms: int
    settle_ms: int
    since_ms: int = 0

    def same_rules(self, other: ArchivePolicy) -> bool:
        """True when ``other`` is the same policy (recorded at any time)."""
        return (self.horizon_ms, self.bucket_ms, self.settle_ms) == (
            other.horizon_ms,
            other.bucket_ms,
            other.settle_ms,
        )

    def late_before(self, now_ms: int, lookahead_ms: int = 0) -> int:
        """Readings below this timestamp are late: their bucket may be archived by now.

        A reading is late when its bucket ends at or before ``now + settle + lookahead -
        horizon``, i.e. when its timestamp is below that moment's bucket start (buckets
        start at multiples of the width).
        """
        x = now_ms + self.settle_ms + lookahead_ms - self.horizon_ms
        return x - x % self.bucket_ms

    def to_item(self) -> ArchivePolicyItem:
        return {
            "pk": {"S": LAYOUT_PK},
            "sk": {"N": str(ARCHIVE_POLICY_SK)},
            "hz": {"N": str(self.horizon_ms)},
            "bw": {"N": str(self.bucket_ms)},
            "st": {"N": str(self.settle_ms)},
            "since": {"N": str(self.since_ms)},
        }

    @classmethod
    def from_item(cls, item: ArchivePolicyItem) -> ArchivePolicy:
        return cls(
            horizon_ms=int(item["hz"]["N"]),
            bucket_ms=int(item["bw"]["N"]),
            settle_ms=int(item["st"]["N"]),
            since_ms=int(item["since"]["N"]),
        )
