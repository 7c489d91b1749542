"""Request parameters: parsing and validation, one function per kind of parameter.

Every failure raises :class:`~queries.errors.BadParameter` naming the parameter, the
value and the allowed form, so a client sees at once what to change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Literal, get_args

from ingest.storage.layout import SENSOR_ID_PATTERN
from queries.errors import BadParameter

__all__ = [
    "AGGREGATIONS",
    "FIELDS_FORM",
    "RELATIVE_FORM",
    "SENSOR_FORM",
    "STEP_FORM",
    "TIME_FORM",
    "Agg",
    "Order",
    "format_duration",
    "is_relative",
    "parse_aggs",
    "parse_fields",
    "parse_int",
    "parse_order",
    "parse_range",
    "parse_sensor_id",
    "parse_sensors",
    "parse_step",
    "parse_time",
]

Agg = Literal["avg", "min", "max", "sum", "count", "first", "last"]
AGGREGATIONS: tuple[Agg, ...] = get_args(Agg)
Order = Literal["asc", "desc"]

RELATIVE_FORM = (
    "now, now-<n><unit> or now+<n><unit> with unit s, m, h, d or w (e.g. now-15m, now-24h, now-7d)"
)
TIME_FORM = (
    "epoch milliseconds (e.g. 1763780000000), RFC 3339 (e.g. 2026-11-22T03:00:00Z) "
    f"or relative to the request's time: {RELATIVE_FORM}"
)
SENSOR_FORM = "1-128 characters of A-Z a-z 0-9 _ . : -"
FIELDS_FORM = "comma-separated metric names, at most 64, each 1-255 characters"
STEP_FORM = "a positive integer and a unit: ms, s, m, h or d (e.g. 500ms, 10s, 1m, 1h, 1d)"

_MAX_FIELDS = 64
_STEP_RE = re.compile(r"([1-9][0-9]{0,9})(ms|s|m|h|d)")
_STEP_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_EPOCH_MS_RE = re.compile(r"[0-9]{1,15}")
# Grafana's relative times without rounding (``now/d``): the subset a range needs.
_RELATIVE_RE = re.compile(r"now(?:([+-])([1-9][0-9]{0,8}|0)(s|m|h|d|w))?")
_RELATIVE_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Years 1970..9999 in epoch ms: the largest value that prints as RFC 3339.
_MAX_EPOCH_MS = 253_402_300_799_999
_ABSOLUTE_FORM = TIME_FORM.partition(" or relative")[0]


def is_relative(raw: str | None) -> bool:
    """True when ``raw`` is a time relative to now (``now``, ``now-24h``, …), valid or not."""
    return raw is not None and raw.strip().startswith("now")


def parse_time(name: str, raw: str, *, now_ms: int | None = None) -> int:
    """Parse a point in time: epoch milliseconds, RFC 3339 with an offset, or relative.

    A relative time (:data:`RELATIVE_FORM`, Grafana's syntax without rounding) is
    resolved against ``now_ms``, the request's one clock reading; without it only
    absolute times are accepted. A ``+`` in a query string decodes to a space; a space
    is read back as ``+`` so ``...T03:00:00+01:00`` and ``now+1h`` work even unencoded.

    Raises:
        BadParameter: malformed, before 1970 or after 9999.
    """
    text = raw.strip()
    if is_relative(text):
        m = _RELATIVE_RE.fullmatch(text.replace(" ", "+"))
        if m is None or now_ms is None:
            raise BadParameter(name, raw, TIME_FORM if now_ms is not None else _ABSOLUTE_FORM)
        sign, count, unit = m.groups()
        offset = 0 if sign is None else int(count) * _RELATIVE_UNIT_MS[unit]
        value = now_ms - offset if sign == "-" else now_ms + offset
    elif _EPOCH_MS_RE.fullmatch(text):
        value = int(text)
    else:
        try:
            parsed = datetime.fromisoformat(text.replace(" ", "+").replace("z", "Z"))
        except ValueError:
            raise BadParameter(name, raw, TIME_FORM) from None
        if parsed.tzinfo is None:
            raise BadParameter(
                name, raw, TIME_FORM, reason="no timezone offset (add Z for UTC)"
            ) from None
        value = round(parsed.timestamp() * 1000)
    if not 0 <= value <= _MAX_EPOCH_MS:
        raise BadParameter(name, raw, TIME_FORM, reason="before 1970 or after 9999")
    return value


def parse_range(
    params: Mapping[str, str],
    *,
    now_ms: int,
    default_span_ms: int,
    max_range_ms: int,
) -> tuple[int, int]:
    """Parse ``start`` and ``end`` (both inclusive); defaults: end = now, start = end - span.

    Relative times (``now-24h``) and the defaults are resolved against ``now_ms``, one
    clock reading for the whole request, so ``start=now-1h&end=now`` is exactly 1 h.

    Raises:
        BadParameter: malformed, ``end`` before ``start``, or a range over ``max_range_ms``.
    """
    end = parse_time("end", params["end"], now_ms=now_ms) if params.get("end") else now_ms
    start = (
        parse_time("start", params["start"], now_ms=now_ms)
        if params.get("start")
        else end - default_span_ms
    )
    start = max(start, 0)
    if end < start:
        raise BadParameter(
            "end",
            params.get("end", str(end)),
            f"a time at or after start ({start})",
            reason="before start",
        )
    if end - start > max_range_ms:
        raise BadParameter(
            "start",
            params.get("start", str(start)),
            f"a range of at most {format_duration(max_range_ms)} (end - start); "
            "page or split longer ranges",
            reason=f"range of {format_duration(end - start)} is too long",
        )
    return start, end


def parse_int(name: str, raw: str | None, *, default: int, minimum: int, maximum: int) -> int:
    """Parse an integer parameter within ``[minimum, maximum]`` (``default`` when absent)."""
    if raw is None or raw == "":
        return default
    allowed = f"an integer from {minimum} to {maximum}"
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadParameter(name, raw, allowed) from None
    if not minimum <= value <= maximum:
        raise BadParameter(name, raw, allowed, reason="out of range")
    return value


def parse_order(raw: str | None) -> Order:
    """``asc`` (default) or ``desc``."""
    if raw is None or raw in {"", "asc"}:
        return "asc"
    if raw == "desc":
        return "desc"
    raise BadParameter("order", raw, "asc or desc")


def parse_fields(raw: str | None, name: str = "fields") -> tuple[str, ...] | None:
    """Metric names to return (a projection); ``None`` when absent: every metric."""
    if raw is None or raw.strip() == "":
        return None
    fields = tuple(dict.fromkeys(f.strip() for f in raw.split(",")))
    if len(fields) > _MAX_FIELDS or any(not 1 <= len(f) <= 255 for f in fields):
        raise BadParameter(name, raw, FIELDS_FORM)
    return fields


def parse_aggs(raw: str | None, *, default: tuple[Agg, ...] = ("avg",)) -> tuple[Agg, ...]:
    """Aggregations, comma-separated (``avg,min,max``); ``default`` when absent."""
    if raw is None or raw.strip() == "":
        return default
    names = tuple(dict.fromkeys(a.strip() for a in raw.split(",")))
    bad = [a for a in names if a not in AGGREGATIONS]
    if bad:
        raise BadParameter("agg", raw, "comma-separated among " + ", ".join(AGGREGATIONS))
    return names  # type: ignore[return-value]  # checked against AGGREGATIONS above


def parse_step(raw: str) -> int:
    """A window width such as ``10s``, in milliseconds."""
    m = _STEP_RE.fullmatch(raw.strip())
    if m is None:
        raise BadParameter("step", raw, STEP_FORM)
    return int(m.group(1)) * _STEP_UNIT_MS[m.group(2)]


def parse_sensor_id(raw: str, name: str = "sensor_id") -> str:
    """A sensor id as the ingest service accepts it (never contains the key delimiter)."""
    if not SENSOR_ID_PATTERN.fullmatch(raw):
        raise BadParameter(name, raw, SENSOR_FORM)
    return raw


def parse_sensors(raw: str | None, *, maximum: int) -> tuple[str, ...]:
    """Comma-separated sensor ids for a multi-sensor request (1 to ``maximum``)."""
    allowed = f"1 to {maximum} comma-separated sensor ids ({SENSOR_FORM})"
    if raw is None or raw.strip() == "":
        raise BadParameter("sensors", raw, allowed)
    ids = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    if not 1 <= len(ids) <= maximum:
        raise BadParameter("sensors", raw, allowed, reason=f"{len(ids)} sensors")
    for s in ids:
        if not SENSOR_ID_PATTERN.fullmatch(s):
            raise BadParameter("sensors", raw, allowed, reason=f"bad sensor id {s!r}")
    return ids


def format_duration(ms: int) -> str:
    """A duration in ms as the largest whole unit: ``1d``, ``90s``, ``500ms``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    if ms >= 86_400_000:
        return f"{ms / 86_400_000:.1f}d"
    return f"{ms}ms"
