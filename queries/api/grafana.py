"""A Grafana data source endpoint: the JSON datasource protocol, under ``/grafana``.

Speaks the protocol of the Grafana "JSON" data source plugin
(``simpod-json-datasource``: ``GET /``, ``POST /metrics``,
``POST /metric-payload-options``, ``POST /query``, ``POST /variable``) and of its
predecessor SimpleJson (``POST /search``, ``POST /annotations``), so an existing
Grafana charts the data without a plugin of ours. See ``docs/api.md`` for the
data source configuration.

A metric ("target") is ``{sensor_id}/{metric}``: sensor ids never contain ``/``.
The aggregation is the target's payload ``{"agg": "max"}`` (default ``avg``); the
window is chosen from the panel's ``maxDataPoints`` like the API's ``max_points``.
Time series come back as ``[{"target": name, "datapoints": [[value, ts_ms], ...]}]``
with ``null`` for empty windows (Grafana draws a gap).

Name lists (``/metrics``, ``/search``, ``/variable``) come from one registry
snapshot shared by every key for up to 30 s (:mod:`queries.api.metricnames`), so
a narrow key over a large registry no longer reads the whole registry per call.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from queries.api.metricnames import MetricNames
from queries.api.responses import Context, JSONResponse, context, json_response
from queries.api.routes import MIN_MAX_POINTS
from queries.errors import BadParameter
from queries.read.params import AGGREGATIONS, Agg, parse_sensor_id, parse_time
from queries.read.reader import ReadStats
from queries.read.sampler import read_series
from queries.read.series import WindowGrid, choose_step

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_METRIC_NAMES",
    "empty_list",
    "health",
    "metric_payload_options",
    "metrics",
    "query",
    "routes",
    "search",
    "variable",
]

MAX_BODY_BYTES = 256 * 1024
"""Largest request body accepted (a Grafana query is a few KB)."""

MAX_METRIC_NAMES = 10_000
"""Most ``sensor/metric`` names listed by ``/metrics`` and ``/search``."""

_TARGET_FORM = "'{sensor_id}/{metric}', e.g. 'dev-1/temperature'"
_AGG_PAYLOAD = {
    "label": "Aggregation",
    "name": "agg",
    "type": "select",
    "placeholder": "avg",
    "options": [{"label": a, "value": a} for a in AGGREGATIONS],
}


async def _body(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadParameter("body", f"{size}+ bytes", f"at most {MAX_BODY_BYTES} bytes of JSON")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadParameter("body", raw[:80].decode(errors="replace"), "a JSON object") from None
    if not isinstance(doc, dict):
        raise BadParameter("body", str(doc)[:80], "a JSON object")
    return doc


async def _metric_names(request: Request, ctx: Context) -> tuple[str, ...]:
    """``sensor/metric`` of every sensor in the key's scope (capped at
    :data:`MAX_METRIC_NAMES`), from the server's shared registry snapshot."""
    names: MetricNames = request.app.state.metric_names
    return await names.names(ctx.reader, ctx.principal, ctx.stats, limit=MAX_METRIC_NAMES)


async def health(request: Request) -> JSONResponse:
    """``GET /grafana/``: "Test connection" (200 when the table's layout was read)."""
    ctx = context(request)
    return json_response({"status": "ok", "table": ctx.reader.table}, ctx)


async def metrics(request: Request) -> JSONResponse:
    """``POST /grafana/metrics``: every ``sensor/metric``, with the aggregation payload."""
    ctx = context(request)
    await _body(request)
    names = await _metric_names(request, ctx)
    body = [{"label": n, "value": n, "payloads": [_AGG_PAYLOAD]} for n in names]
    return json_response(body, ctx)


async def metric_payload_options(request: Request) -> JSONResponse:
    """``POST /grafana/metric-payload-options``: the aggregations."""
    ctx = context(request)
    doc = await _body(request)
    options = _AGG_PAYLOAD["options"] if doc.get("name", "agg") == "agg" else []
    return json_response(options, ctx)


async def search(request: Request) -> JSONResponse:
    """``POST /grafana/search`` (SimpleJson): names containing ``target``."""
    ctx = context(request)
    doc = await _body(request)
    needle = str(doc.get("target") or "")
    names = await _metric_names(request, ctx)
    return json_response([n for n in names if needle in n], ctx)


async def variable(request: Request) -> JSONResponse:
    """``POST /grafana/variable``: sensor ids (payload ``{"target": "sensors"}``) or metrics."""
    ctx = context(request)
    doc = await _body(request)
    payload = doc.get("payload")
    kind = payload.get("target") if isinstance(payload, dict) else None
    names = await _metric_names(request, ctx)
    values = names if kind == "metrics" else sorted({n.partition("/")[0] for n in names})
    return json_response([{"__text": v, "__value": v} for v in values], ctx)


async def empty_list(request: Request) -> JSONResponse:
    """``/annotations``, ``/tag-keys``, ``/tag-values``: nothing to offer (yet)."""
    ctx = context(request)
    await _body(request)
    return json_response([], ctx)


def _parse_target(target: dict[str, Any]) -> tuple[str, str, Agg, str]:
    name = target.get("target")
    if not isinstance(name, str) or "/" not in name:
        raise BadParameter("targets[].target", name, _TARGET_FORM)
    sensor_raw, _, metric = name.partition("/")
    sensor_id = parse_sensor_id(sensor_raw, "targets[].target")
    if not metric:
        raise BadParameter("targets[].target", name, _TARGET_FORM)
    payload = target.get("payload")
    agg: Any = payload.get("agg", "avg") if isinstance(payload, dict) else "avg"
    agg = agg or "avg"
    if agg not in AGGREGATIONS:
        raise BadParameter("targets[].payload.agg", agg, "one of " + ", ".join(AGGREGATIONS))
    label = name if agg == "avg" else f"{name}:{agg}"
    return sensor_id, metric, agg, label


async def query(request: Request) -> JSONResponse:
    """``POST /grafana/query``: time series for the panel's targets and range."""
    ctx = context(request)
    s = ctx.settings
    doc = await _body(request)
    rng = doc.get("range")
    if not isinstance(rng, dict):
        raise BadParameter("range", rng, "an object with 'from' and 'to' (RFC 3339)")
    start = parse_time("range.from", str(rng.get("from", "")), now_ms=ctx.now_ms)
    end = parse_time("range.to", str(rng.get("to", "")), now_ms=ctx.now_ms)
    if end < start:
        raise BadParameter("range.to", rng.get("to"), "a time at or after range.from")
    if end - start > s.max_range_ms:
        raise BadParameter(
            "range.from",
            rng.get("from"),
            f"a range of at most {s.max_range_ms} ms",
            reason="range too long",
        )
    max_points = doc.get("maxDataPoints") or s.default_points
    if not isinstance(max_points, int) or max_points < 1:
        raise BadParameter("maxDataPoints", max_points, "a positive integer")
    max_points = min(max(max_points, MIN_MAX_POINTS), s.max_points)
    grid = WindowGrid.covering(start, end, choose_step(start, end, max_points))
    targets = [t for t in doc.get("targets") or [] if isinstance(t, dict) and not t.get("hide")]
    parsed = [_parse_target(t) for t in targets]
    for sensor_id, *_ in parsed:
        ctx.check_sensor(sensor_id, "targets[].target")
    by_sensor: dict[str, tuple[set[str], set[Agg]]] = defaultdict(lambda: (set(), set()))
    for sensor_id, metric, agg, _ in parsed:
        by_sensor[sensor_id][0].add(metric)
        by_sensor[sensor_id][1].add(agg)
    if len(by_sensor) > s.max_sensors:
        raise BadParameter(
            "targets",
            f"{len(by_sensor)} sensors",
            f"targets of at most {s.max_sensors} sensors per query",
        )
    ctx.reads_sensors(len(by_sensor))
    results = await _read_all(ctx, grid, by_sensor)
    ts = grid.starts()
    out = []
    for sensor_id, metric, agg, label in parsed:
        values = results[sensor_id].metrics[metric].result(agg)
        points = [
            [None if math.isnan(v) else v, int(t)]  # empty window -> null
            for v, t in zip(values.tolist(), ts.tolist(), strict=True)
        ]
        out.append({"target": label, "datapoints": points})
    return json_response(out, ctx)


async def _read_all(
    ctx: Context, grid: WindowGrid, by_sensor: dict[str, tuple[set[str], set[Agg]]]
) -> dict[str, Any]:
    stats: ReadStats = ctx.stats
    async with asyncio.TaskGroup() as tg:
        tasks = {
            sid: tg.create_task(
                read_series(
                    ctx.reader,
                    sid,
                    grid,
                    tuple(sorted(aggs)),
                    fields=tuple(sorted(fields)),
                    stats=stats,
                ),
                name=f"grafana-{sid}",
            )
            for sid, (fields, aggs) in by_sensor.items()
        }
    return {sid: t.result() for sid, t in tasks.items()}


routes = [
    Route("/grafana", health, methods=["GET"]),
    Route("/grafana/", health, methods=["GET"]),
    Route("/grafana/metrics", metrics, methods=["POST"]),
    Route("/grafana/metric-payload-options", metric_payload_options, methods=["POST"]),
    Route("/grafana/search", search, methods=["POST"]),
    Route("/grafana/variable", variable, methods=["POST"]),
    Route("/grafana/query", query, methods=["POST"]),
    Route("/grafana/annotations", empty_list, methods=["POST"]),
    Route("/grafana/tag-keys", empty_list, methods=["POST"]),
    Route("/grafana/tag-values", empty_list, methods=["POST"]),
]
"""The Grafana routes."""
