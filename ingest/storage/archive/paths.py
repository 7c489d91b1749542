"""Object keys of the archive: the one place that knows the S3 layout.

::

    {prefix}/sensor_id={sensor_id}/date={YYYY-MM-DD}/part-{YYYYMMDDTHHMMZ}.parquet
    {prefix}/sensor_id={sensor_id}/date={YYYY-MM-DD}/part-{YYYYMMDDTHHMMZ}.s-{tag}.parquet
    {prefix}/_manifests/sensor_id={sensor_id}/date={YYYY-MM-DD}/part-{YYYYMMDDTHHMMZ}.json

``date`` is the UTC date of the bucket's start and the ``part`` stamp is the
bucket's start, so a sensor-and-time-range read lists one prefix from the first
date on and stops after the last. The first form is the batch archiver's one
object per bucket; the ``.s-`` form holds readings the DynamoDB Streams consumer
saw expire (several per bucket). Manifests live under ``_manifests`` because
Hive-style readers (Athena, Spark, ``pyarrow.dataset``) skip names starting
with ``_``.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

__all__ = ["ObjectName", "data_key", "date_prefix", "manifest_key", "parse_key", "sensor_prefix"]

_PART = re.compile(r"part-(\d{8}T\d{4}Z)(?:\.s-([A-Za-z0-9_.\-]+))?\.parquet")


def _stamp(bucket_start_ms: int) -> str:
    return time.strftime("%Y%m%dT%H%MZ", time.gmtime(bucket_start_ms // 1000))


def _date(ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ms // 1000))


def sensor_prefix(prefix: str, sensor_id: str) -> str:
    """``{prefix}/sensor_id={sensor_id}/``: every data object of one sensor."""
    return f"{prefix}/sensor_id={sensor_id}/"


def date_prefix(prefix: str, sensor_id: str, ms: int) -> str:
    """The prefix of one sensor's objects whose bucket starts on the UTC date of ``ms``."""
    return f"{sensor_prefix(prefix, sensor_id)}date={_date(ms)}/"


def data_key(prefix: str, sensor_id: str, bucket_start_ms: int, *, stream_tag: str = "") -> str:
    """The key of a bucket's data object (``stream_tag``: a Streams consumer's part)."""
    suffix = f".s-{stream_tag}" if stream_tag else ""
    return (
        f"{date_prefix(prefix, sensor_id, bucket_start_ms)}"
        f"part-{_stamp(bucket_start_ms)}{suffix}.parquet"
    )


def manifest_key(prefix: str, sensor_id: str, bucket_start_ms: int) -> str:
    """The key of a bucket's manifest (JSON)."""
    return (
        f"{prefix}/_manifests/sensor_id={sensor_id}/date={_date(bucket_start_ms)}/"
        f"part-{_stamp(bucket_start_ms)}.json"
    )


@dataclass(frozen=True, slots=True)
class ObjectName:
    """What a data object's file name says.

    Attributes:
        bucket_start_ms: Start of the bucket it holds.
        stream_tag: The Streams consumer's tag, or ``""`` for the batch archiver's object.
    """

    bucket_start_ms: int
    stream_tag: str


def parse_key(key: str) -> ObjectName | None:
    """Parse a data object's key; ``None`` for anything else (manifests, foreign files)."""
    m = _PART.fullmatch(key.rpartition("/")[2])
    if m is None:
        return None
    start_s = calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%MZ"))
    return ObjectName(bucket_start_ms=start_s * 1000, stream_tag=m.group(2) or "")
