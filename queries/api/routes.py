"""The ``/v1`` HTTP API: sensors, raw readings, downsampled series, latest values.

Every handler parses its parameters first (a bad one is a 400 naming it), then
reads; no handler blocks the event loop, and every read is bounded by the range,
point and page limits of :class:`~queries.api.settings.ServeSettings`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from ingest.storage.layout import REGISTRY_PARTITIONS
from queries.api.cursor import fingerprint
from queries.api.responses import Context, JSONResponse, context, json_response
from queries.errors import BadParameter, NotFound
from queries.read.pages import read_page
from queries.read.params import (
    Agg,
    format_duration,
    parse_aggs,
    parse_fields,
    parse_int,
    parse_order,
    parse_range,
    parse_sensor_id,
    parse_sensors,
    parse_step,
)
from queries.read.reader import reading_json
from queries.read.sampler import SensorSeries, read_series
from queries.read.sensors import get_sensor, latest_reading, list_sensors, sensor_json
from queries.read.series import WindowGrid, choose_step
from queries.read.tiers import tiers_json

__all__ = [
    "CURSOR_CLOCK_SKEW_MS",
    "DEFAULT_SPAN_MS",
    "MIN_MAX_POINTS",
    "multi_series",
    "routes",
    "sensor_detail",
    "sensor_latest",
    "sensor_readings",
    "sensor_series",
    "sensors_list",
    "series_grid",
]

DEFAULT_SPAN_MS = 3_600_000
"""``start`` defaults to one hour before ``end`` (which defaults to now)."""
MIN_MAX_POINTS = 10


# -- sensors --------------------------------------------------------------------


async def sensors_list(request: Request) -> JSONResponse:
    """``GET /v1/sensors?limit=&cursor=``: the sensor registry, a page at a time.

    With a scoped API key, only sensors in its scope are listed; a page may then hold
    fewer than ``limit`` sensors (even none) while ``next_cursor`` is set: each request
    examines a bounded number of registry entries.
    """
    ctx = context(request)
    q = request.query_params
    limit = parse_int(
        "limit",
        q.get("limit"),
        default=min(100, ctx.settings.max_sensor_page),
        minimum=1,
        maximum=ctx.settings.max_sensor_page,
    )
    fp = fingerprint("sensors")
    after: tuple[int, int] | None = None
    if q.get("cursor"):
        after = _sensors_position(q["cursor"], ctx.cursors.decode(q["cursor"], "sensors", fp))
    keep = None if ctx.principal.reads_all else ctx.principal.may_read
    page = await list_sensors(ctx.reader, limit=limit, after=after, keep=keep, stats=ctx.stats)
    next_cursor = None
    if page.next_position is not None:
        p, sk = page.next_position
        next_cursor = ctx.cursors.encode("sensors", fp, {"p": p, "s": str(sk)})
    body = {"sensors": [sensor_json(it) for it in page.items], "next_cursor": next_cursor}
    return json_response(body, ctx)


_REGISTRY_SK_LIMIT = (
    2**112
)  # registry sort keys are 112-bit hashes (ingest.storage.layout.registry_key)


def _sensors_position(raw: str, doc: dict[str, Any]) -> tuple[int, int]:
    """The ``(partition, sort key)`` a sensor-list cursor resumes after, checked.

    Raises:
        BadParameter: not a registry partition index, or not a registry sort key.
    """
    p, sk = doc.get("p"), doc.get("s")
    if (
        type(p) is not int
        or not 0 <= p < REGISTRY_PARTITIONS
        or not isinstance(sk, str)
        or not 0 < len(sk) <= 40
        or not sk.isascii()
        or not sk.isdigit()
        or int(sk) >= _REGISTRY_SK_LIMIT
    ):
        raise BadParameter(
            "cursor", raw, "a next_cursor of this endpoint", reason="not a registry position"
        )
    return p, int(sk)


async def sensor_detail(request: Request) -> JSONResponse:
    """``GET /v1/sensors/{sensor_id}``: one sensor's registry entry (404 when unknown)."""
    ctx = context(request)
    sensor_id = ctx.check_sensor(parse_sensor_id(request.path_params["sensor_id"]))
    item = await get_sensor(ctx.reader, sensor_id, stats=ctx.stats)
    if item is None or "sid" not in item:
        raise NotFound(f"sensor {sensor_id!r} is not in the registry (it has sent no reading)")
    body = sensor_json(item)
    body["metrics"] = sorted(body["latest"])
    layout = ctx.reader.layout
    body["layout"] = {
        "bucket_ms": layout.bucket_ms,
        "shards": layout.shards,
        "retention_days": layout.retention_days,
    }
    return json_response(body, ctx)


async def sensor_latest(request: Request) -> JSONResponse:
    """``GET /v1/sensors/{sensor_id}/latest?fields=``: the newest unexpired reading."""
    ctx = context(request)
    sensor_id = ctx.check_sensor(parse_sensor_id(request.path_params["sensor_id"]))
    fields = parse_fields(request.query_params.get("fields"))
    item = await get_sensor(ctx.reader, sensor_id, stats=ctx.stats)
    if item is None or "sid" not in item:
        raise NotFound(f"sensor {sensor_id!r} is not in the registry (it has sent no reading)")
    entry = sensor_json(item)
    reading = await latest_reading(
        ctx.reader,
        sensor_id,
        int(entry["last_seen"] or 0),
        now_ms=ctx.now_ms,
        future_ms=ctx.settings.latest_future_ms,
        max_range_ms=ctx.settings.max_range_ms,
        fields=fields,
        stats=ctx.stats,
    )
    body = {"sensor_id": sensor_id, "last_seen": entry["last_seen"], "reading": reading}
    return json_response(body, ctx)


# -- raw readings ---------------------------------------------------------------

CURSOR_CLOCK_SKEW_MS = 60_000
"""How far a cursor's defaulted ``end`` ("now" on the replica that issued it) may lie
ahead of this replica's clock."""


def _readings_position(
    q: Mapping[str, str], doc: dict[str, Any], now_ms: int, max_range_ms: int
) -> tuple[int, int, int, int]:
    """The ``(start, end, next, t)`` of a readings cursor, checked against its request.

    The cursor carries the range its first page resolved and the clock reading ``t``
    it resolved it at, so paging ``start=now-1h`` never shifts as the clock moves on.
    The range must be the one this very request resolves at ``t`` (``parse_range``
    then: absolute times as given, relative ones and defaults from ``t``), with ``t``
    no later than now (plus :data:`CURSOR_CLOCK_SKEW_MS`), and ``next`` inside it. So a
    cursor, even one signed with a leaked key, never widens what the request asks for:
    at most it replays a range the same request named earlier.

    Raises:
        BadParameter: the position is not integers, or is not this request's range.
    """
    raw = q["cursor"]
    s, e, n = doc.get("s"), doc.get("e"), doc.get("n")
    t = doc.get("t", e)  # cursors issued before ``t`` existed: a defaulted end was now
    if type(s) is not int or type(e) is not int or type(n) is not int or type(t) is not int:
        raise BadParameter("cursor", raw, "a next_cursor of this endpoint", reason="not a position")
    try:
        resolved = (
            parse_range(q, now_ms=t, default_span_ms=DEFAULT_SPAN_MS, max_range_ms=max_range_ms)
            if 0 <= t <= now_ms + CURSOR_CLOCK_SKEW_MS
            else None
        )
    except BadParameter:
        resolved = None
    if resolved != (s, e) or not s <= n <= e:
        raise BadParameter(
            "cursor",
            raw,
            "a next_cursor of this query: its range is this request's, resolved when its "
            "first page was read",
            reason=f"position outside the request's range ({s}..{e}, next {n})",
        )
    return s, e, n, t


async def sensor_readings(request: Request) -> JSONResponse:
    """``GET /v1/sensors/{id}/readings?start=&end=&fields=&order=&limit=&cursor=``."""
    ctx = context(request)
    s = ctx.settings
    q = request.query_params
    sensor_id = ctx.check_sensor(parse_sensor_id(request.path_params["sensor_id"]))
    start, end = parse_range(
        q, now_ms=ctx.now_ms, default_span_ms=DEFAULT_SPAN_MS, max_range_ms=s.max_range_ms
    )
    fields = parse_fields(q.get("fields"))
    order = parse_order(q.get("order"))
    limit = parse_int(
        "limit", q.get("limit"), default=s.default_page_limit, minimum=1, maximum=s.max_page_limit
    )
    # The raw start/end identify the query; their resolved values (relative times and
    # defaults) and the clock reading they came from travel in the cursor, so every page
    # of one query reads the same range.
    resolved_at = ctx.now_ms
    fp = fingerprint("readings", sensor_id, q.get("start", ""), q.get("end", ""), order)
    lo, hi = start, end
    if q.get("cursor"):
        doc = ctx.cursors.decode(q["cursor"], "readings", fp)
        start, end, nxt, resolved_at = _readings_position(q, doc, ctx.now_ms, s.max_range_ms)
        lo, hi = (nxt, end) if order == "asc" else (start, nxt)
    page = await read_page(
        ctx.reader,
        sensor_id,
        lo,
        hi,
        limit=limit,
        descending=order == "desc",
        fields=fields,
        stats=ctx.stats,
    )
    next_cursor = None
    if page.next_ts is not None:
        next_cursor = ctx.cursors.encode(
            "readings", fp, {"s": start, "e": end, "n": page.next_ts, "t": resolved_at}
        )
    body = {
        "sensor_id": sensor_id,
        "start": start,
        "end": end,
        "order": order,
        "count": len(page.items),
        "readings": [reading_json(it) for it in page.items],
        "next_cursor": next_cursor,
    }
    if ctx.reader.cold is not None:
        body["tiers"] = tiers_json(page.tiers)
    return json_response(body, ctx)


# -- series ---------------------------------------------------------------------


def series_grid(
    step_raw: str | None, max_points_raw: str | None, start: int, end: int, ctx: Context
) -> WindowGrid:
    """The windows of a series request: ``step`` if given, else chosen from ``max_points``.

    Raises:
        BadParameter: too many windows for ``max_points``, or windows spanning more
            than twice the maximum range (a step too large for any chart).
    """
    s = ctx.settings
    if step_raw:
        step = parse_step(step_raw)
        cap = parse_int(
            "max_points",
            max_points_raw,
            default=s.max_points,
            minimum=MIN_MAX_POINTS,
            maximum=s.max_points,
        )
        grid = WindowGrid.covering(start, end, step)
        if grid.count > cap:
            fit = choose_step(start, end, cap)
            raise BadParameter(
                "step",
                step_raw,
                f"a step giving at most {cap} points over this range: "
                f"{format_duration(fit)} or more",
                reason=f"{grid.count} points",
            )
    else:
        cap = parse_int(
            "max_points",
            max_points_raw,
            default=s.default_points,
            minimum=MIN_MAX_POINTS,
            maximum=s.max_points,
        )
        grid = WindowGrid.covering(start, end, choose_step(start, end, cap))
    if grid.end_ms - grid.origin_ms > 2 * s.max_range_ms:
        raise BadParameter(
            "step",
            step_raw or f"{grid.step_ms}ms",
            f"at most half the maximum range: {format_duration(s.max_range_ms // 2)}",
            reason="windows too wide",
        )
    return grid


def _metrics_json(series: SensorSeries, aggs: tuple[Agg, ...]) -> dict[str, Any]:
    return {
        name: {agg: acc.result(agg) for agg in aggs} for name, acc in sorted(series.metrics.items())
    }


def _series_request(request: Request, ctx: Context) -> tuple[int, int, WindowGrid, Any, Any]:
    q = request.query_params
    start, end = parse_range(
        q,
        now_ms=ctx.now_ms,
        default_span_ms=DEFAULT_SPAN_MS,
        max_range_ms=ctx.settings.max_range_ms,
    )
    aggs = parse_aggs(q.get("agg"))
    fields = parse_fields(q.get("fields"))
    grid = series_grid(q.get("step"), q.get("max_points"), start, end, ctx)
    return start, end, grid, aggs, fields


def _series_head(start: int, end: int, grid: WindowGrid, aggs: tuple[Agg, ...]) -> dict[str, Any]:
    return {
        "start": start,
        "end": end,
        "step_ms": grid.step_ms,
        "agg": list(aggs),
        "ts": grid.starts(),
    }


async def sensor_series(request: Request) -> JSONResponse:
    """``GET /v1/sensors/{id}/series?start=&end=&step=&agg=&max_points=&fields=``."""
    ctx = context(request)
    sensor_id = ctx.check_sensor(parse_sensor_id(request.path_params["sensor_id"]))
    start, end, grid, aggs, fields = _series_request(request, ctx)
    series = await read_series(ctx.reader, sensor_id, grid, aggs, fields=fields, stats=ctx.stats)
    body = {"sensor_id": sensor_id, **_series_head(start, end, grid, aggs)}
    body["metrics"] = _metrics_json(series, aggs)
    if series.omitted:
        body["omitted_metrics"] = sorted(series.omitted)
    if ctx.reader.cold is not None:
        body["tiers"] = tiers_json(series.tiers)
    return json_response(body, ctx)


async def multi_series(request: Request) -> JSONResponse:
    """``GET /v1/series?sensors=a,b&start=&end=&step=&agg=&max_points=&fields=``: one chart."""
    ctx = context(request)
    sensors = parse_sensors(request.query_params.get("sensors"), maximum=ctx.settings.max_sensors)
    for sid in sensors:
        ctx.check_sensor(sid, "sensors")
    ctx.reads_sensors(len(sensors))
    start, end, grid, aggs, fields = _series_request(request, ctx)
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(
                read_series(ctx.reader, sid, grid, aggs, fields=fields, stats=ctx.stats),
                name=f"series-{sid}",
            )
            for sid in sensors
        ]
    body = _series_head(start, end, grid, aggs)
    cold = ctx.reader.cold is not None
    body["sensors"] = [
        {"sensor_id": sid, "metrics": _metrics_json(t.result(), aggs)}
        | ({"tiers": tiers_json(t.result().tiers)} if cold else {})
        for sid, t in zip(sensors, tasks, strict=True)
    ]
    return json_response(body, ctx)


routes = [
    Route("/v1/sensors", sensors_list, methods=["GET"]),
    Route("/v1/series", multi_series, methods=["GET"]),
    Route("/v1/sensors/{sensor_id}", sensor_detail, methods=["GET"]),
    Route("/v1/sensors/{sensor_id}/readings", sensor_readings, methods=["GET"]),
    Route("/v1/sensors/{sensor_id}/series", sensor_series, methods=["GET"]),
    Route("/v1/sensors/{sensor_id}/latest", sensor_latest, methods=["GET"]),
]
"""The ``/v1`` routes."""
