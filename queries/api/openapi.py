"""The OpenAPI 3.1 description of the HTTP API, served at ``GET /openapi.json``.

Written by hand (the handlers parse their own parameters); a test checks it
against the OpenAPI schema and against the app's routes, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from ingest.storage.layout import SENSOR_ID_PATTERN
from queries.api.auth import PUBLIC_PATHS
from queries.api.settings import ServeSettings
from queries.read.params import AGGREGATIONS, FIELDS_FORM, SENSOR_FORM, STEP_FORM, TIME_FORM

__all__ = ["openapi_document"]

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "X-Read-Units": {"$ref": "#/components/headers/X-Read-Units"},
            "X-DynamoDB-Calls": {"$ref": "#/components/headers/X-DynamoDB-Calls"},
            "X-Cold-Objects": {"$ref": "#/components/headers/X-Cold-Objects"},
        },
        "content": {_JSON: {"schema": schema}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "A parameter is invalid: the body names it and the allowed form.",
        401: "No API key, or an invalid one (see the security schemes).",
        404: "Unknown sensor, or one out of the API key's scope.",
        422: "The request needs more DynamoDB calls than the server allows one request "
        "(`max_calls_per_sensor` per sensor read): narrow the range or read fewer sensors.",
        429: "Too many requests for this key: retry after `Retry-After` seconds.",
        502: "DynamoDB rejected the read.",
        503: "DynamoDB throttled, failed or was unreachable: retry later.",
    }
    return {
        str(s): {"description": text[s], "content": {_JSON: {"schema": _ref("Error")}}}
        for s in statuses
    }


def _param(name: str, description: str, schema: dict[str, Any], where: str = "query") -> Any:
    p: dict[str, Any] = {"name": name, "in": where, "description": description, "schema": schema}
    if where == "path":
        p["required"] = True
    return p


def openapi_document(settings: ServeSettings) -> dict[str, Any]:
    """The OpenAPI document, with this server's limits in the descriptions."""
    s = settings
    string = {"type": "string"}
    sensor_path = _param(
        "sensor_id",
        f"The sensor id: {SENSOR_FORM}.",
        {**string, "pattern": f"^{SENSOR_ID_PATTERN.pattern}$"},
        "path",
    )
    relative = (
        " Relative times (`now-24h`) resolve against one clock reading per request; "
        "pages after the first keep the range their cursor resolved."
    )
    start = _param(
        "start",
        f"First time, inclusive: {TIME_FORM}. Default: one hour before `end`.{relative}",
        {**string, "examples": ["now-24h", "1763780000000", "2026-11-22T03:00:00Z"]},
    )
    end = _param(
        "end",
        f"Last time, inclusive: {TIME_FORM}. Default: now.{relative}",
        {**string, "examples": ["now", "1763783600000", "2026-11-22T04:00:00Z"]},
    )
    fields = _param("fields", f"Metrics to return ({FIELDS_FORM}). Default: all.", string)
    step = _param(
        "step",
        f"Window width: {STEP_FORM}. Windows are aligned to multiples of the step from "
        "the Unix epoch (UTC); the series covers every window overlapping [start, end].",
        string,
    )
    agg = _param(
        "agg",
        "Aggregations, comma-separated, among " + ", ".join(AGGREGATIONS) + ". Default: avg.",
        string,
    )
    max_points = _param(
        "max_points",
        f"Without `step`: the server picks the smallest round step giving at most this many "
        f"windows (default {s.default_points}). With `step`: a cap. Allowed 10..{s.max_points}.",
        {"type": "integer", "minimum": 10, "maximum": s.max_points},
    )
    series_params = [start, end, step, agg, max_points, fields]
    number_or_null = {"type": ["number", "null"]}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "enum": [
                                "bad_parameter",
                                "not_found",
                                "dynamodb_error",
                                "dynamodb_unavailable",
                                "internal_error",
                                "unauthorized",
                                "rate_limited",
                                "too_many_calls",
                                "method_not_allowed",
                                "http_error",
                            ],
                        },
                        "message": string,
                        "parameter": {**string, "description": "The offending parameter (400)."},
                        "allowed": {**string, "description": "The parameter's allowed form."},
                        "limit": {
                            **string,
                            "description": "The server limit the request exceeded (422).",
                        },
                        "max_calls": {
                            "type": "integer",
                            "description": "The DynamoDB calls this request was allowed (422).",
                        },
                    },
                }
            },
        },
        "Sensor": {
            "type": "object",
            "required": ["sensor_id", "last_seen", "readings", "latest"],
            "properties": {
                "sensor_id": string,
                "last_seen": {"type": ["integer", "null"], "description": "Epoch ms."},
                "readings": {"type": ["integer", "null"], "description": "Readings counted."},
                "latest": {
                    "type": "object",
                    "additionalProperties": {"type": "number"},
                    "description": "Metrics of the latest reading, by name.",
                },
            },
        },
        "SensorDetail": {
            "allOf": [
                _ref("Sensor"),
                {
                    "type": "object",
                    "properties": {
                        "metrics": {"type": "array", "items": string},
                        "layout": {
                            "type": "object",
                            "properties": {
                                "bucket_ms": {"type": "integer"},
                                "shards": {"type": "integer"},
                                "retention_days": {"type": "integer"},
                            },
                        },
                    },
                },
            ]
        },
        "SensorPage": {
            "type": "object",
            "required": ["sensors", "next_cursor"],
            "properties": {
                "sensors": {"type": "array", "items": _ref("Sensor")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "Reading": {
            "type": "object",
            "required": ["ts"],
            "properties": {"ts": {"type": "integer", "description": "Epoch ms."}},
            "additionalProperties": {"type": "number"},
            "description": "`ts` and the metrics by the names sent.",
        },
        "ReadingPage": {
            "type": "object",
            "required": ["sensor_id", "start", "end", "order", "count", "readings", "next_cursor"],
            "properties": {
                "sensor_id": string,
                "start": {"type": "integer"},
                "end": {"type": "integer"},
                "order": {"type": "string", "enum": ["asc", "desc"]},
                "count": {"type": "integer"},
                "readings": {"type": "array", "items": _ref("Reading")},
                "tiers": _ref("Tiers"),
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` (with the same other parameters) for the "
                    "next page; null on the last page.",
                },
            },
        },
        "Tiers": {
            "type": "array",
            "description": "Only when the server reads an S3 archive (`serve --s3-bucket`): "
            "each time bucket the response covers and the tier that served it: `hot` "
            "(DynamoDB), `cold` (the S3 archive) or `hot+cold` (both, merged by timestamp; "
            "DynamoDB wins where both hold a reading).",
            "items": {
                "type": "object",
                "required": ["bucket_start", "tier"],
                "properties": {
                    "bucket_start": {"type": "integer", "description": "Epoch ms."},
                    "tier": {"type": "string", "enum": ["hot", "cold", "hot+cold"]},
                },
            },
        },
        "Latest": {
            "type": "object",
            "required": ["sensor_id", "last_seen", "reading"],
            "properties": {
                "sensor_id": string,
                "last_seen": {"type": ["integer", "null"]},
                "reading": {"oneOf": [_ref("Reading"), {"type": "null"}]},
            },
        },
        "Metrics": {
            "type": "object",
            "description": "Per metric, per aggregation: one value per window (null: empty "
            "window; `count` is 0 there).",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": number_or_null},
            },
        },
        "SeriesHead": {
            "type": "object",
            "required": ["start", "end", "step_ms", "agg", "ts"],
            "properties": {
                "start": {"type": "integer"},
                "end": {"type": "integer"},
                "step_ms": {"type": "integer"},
                "agg": {"type": "array", "items": {"type": "string", "enum": list(AGGREGATIONS)}},
                "ts": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "description": "Start of each window, epoch ms.",
                },
            },
        },
        "Series": {
            "allOf": [
                _ref("SeriesHead"),
                {
                    "type": "object",
                    "required": ["sensor_id", "metrics"],
                    "properties": {
                        "sensor_id": string,
                        "metrics": _ref("Metrics"),
                        "omitted_metrics": {"type": "array", "items": string},
                        "tiers": _ref("Tiers"),
                    },
                },
            ]
        },
        "MultiSeries": {
            "allOf": [
                _ref("SeriesHead"),
                {
                    "type": "object",
                    "required": ["sensors"],
                    "properties": {
                        "sensors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "sensor_id": string,
                                    "metrics": _ref("Metrics"),
                                    "tiers": _ref("Tiers"),
                                },
                            },
                        }
                    },
                },
            ]
        },
        "GrafanaQuery": {
            "type": "object",
            "required": ["range", "targets"],
            "properties": {
                "range": {
                    "type": "object",
                    "properties": {"from": string, "to": string},
                },
                "maxDataPoints": {"type": "integer"},
                "targets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "target": {**string, "description": "`{sensor_id}/{metric}`"},
                            "refId": string,
                            "payload": {
                                "type": "object",
                                "properties": {
                                    "agg": {"type": "string", "enum": list(AGGREGATIONS)}
                                },
                            },
                        },
                    },
                },
            },
        },
        "GrafanaSeries": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "target": string,
                    "datapoints": {
                        "type": "array",
                        "items": {
                            "type": "array",
                            "prefixItems": [number_or_null, {"type": "integer"}],
                        },
                    },
                },
            },
        },
    }
    any_json = {"description": "JSON", "content": {_JSON: {"schema": {}}}}
    grafana_body = {"required": False, "content": {_JSON: {"schema": {"type": "object"}}}}

    def grafana_post(summary: str) -> dict[str, Any]:
        return {
            "post": {
                "tags": ["grafana"],
                "summary": summary,
                "requestBody": grafana_body,
                "responses": {"200": any_json, **_errors(400, 502, 503)},
            }
        }

    paths: dict[str, Any] = {
        "/v1/sensors": {
            "get": {
                "tags": ["sensors"],
                "summary": "List sensors (from the registry; never a table scan)",
                "parameters": [
                    _param(
                        "limit",
                        f"Sensors per page, 1..{s.max_sensor_page} (default 100).",
                        {"type": "integer", "minimum": 1, "maximum": s.max_sensor_page},
                    ),
                    _param(
                        "cursor",
                        "`next_cursor` of the previous page, unchanged (it is signed by the "
                        "server: a changed, forged or foreign cursor is a 400).",
                        string,
                    ),
                ],
                "responses": {
                    "200": _ok("A page of sensors.", _ref("SensorPage")),
                    **_errors(400, 502, 503),
                },
            }
        },
        "/v1/sensors/{sensor_id}": {
            "get": {
                "tags": ["sensors"],
                "summary": "One sensor: last seen, readings counted, latest values, layout",
                "parameters": [sensor_path],
                "responses": {
                    "200": _ok("The sensor.", _ref("SensorDetail")),
                    **_errors(400, 404, 502, 503),
                },
            }
        },
        "/v1/sensors/{sensor_id}/readings": {
            "get": {
                "tags": ["readings"],
                "summary": "Raw readings in a time range, paged with an opaque cursor",
                "description": "Reads every shard of every bucket in the range and merges "
                "them in timestamp order; expired readings (TTL) are never returned. Every "
                "reading appears exactly once across the pages of one query. The range "
                f"(`end - start`) is at most {s.max_range_ms} ms.",
                "parameters": [
                    sensor_path,
                    start,
                    end,
                    fields,
                    _param(
                        "order",
                        "asc (default) or desc.",
                        {"type": "string", "enum": ["asc", "desc"]},
                    ),
                    _param(
                        "limit",
                        f"Readings per page, 1..{s.max_page_limit} "
                        f"(default {s.default_page_limit}).",
                        {"type": "integer", "minimum": 1, "maximum": s.max_page_limit},
                    ),
                    _param(
                        "cursor",
                        "`next_cursor` of the previous page, unchanged (it is signed by the "
                        "server: a changed, forged or foreign cursor is a 400).",
                        string,
                    ),
                ],
                "responses": {
                    "200": _ok("A page of readings.", _ref("ReadingPage")),
                    **_errors(400, 502, 503),
                },
            }
        },
        "/v1/sensors/{sensor_id}/series": {
            "get": {
                "tags": ["series"],
                "summary": "A downsampled series (numpy), windows aligned to the epoch",
                "parameters": [sensor_path, *series_params],
                "responses": {"200": _ok("The series.", _ref("Series")), **_errors(400, 502, 503)},
            }
        },
        "/v1/sensors/{sensor_id}/latest": {
            "get": {
                "tags": ["readings"],
                "summary": "The newest unexpired reading of a sensor",
                "parameters": [sensor_path, fields],
                "responses": {
                    "200": _ok("The newest reading (null when none is left).", _ref("Latest")),
                    **_errors(400, 404, 502, 503),
                },
            }
        },
        "/v1/series": {
            "get": {
                "tags": ["series"],
                "summary": "Downsampled series of several sensors on one time axis (one chart)",
                "parameters": [
                    _param(
                        "sensors",
                        f"Comma-separated sensor ids, 1..{s.max_sensors}.",
                        string,
                    )
                    | {"required": True},
                    *series_params,
                ],
                "responses": {
                    "200": _ok("One series per sensor.", _ref("MultiSeries")),
                    **_errors(400, 502, 503),
                },
            }
        },
        "/grafana": {
            "get": {
                "tags": ["grafana"],
                "summary": "Grafana JSON data source: test connection",
                "responses": {"200": any_json},
            }
        },
        "/grafana/": {
            "get": {
                "tags": ["grafana"],
                "summary": "Grafana JSON data source: test connection",
                "responses": {"200": any_json},
            }
        },
        "/grafana/metrics": grafana_post("Metric names `{sensor_id}/{metric}` with payloads"),
        "/grafana/metric-payload-options": grafana_post("Options of the `agg` payload"),
        "/grafana/search": grafana_post("Metric names containing `target` (SimpleJson)"),
        "/grafana/variable": grafana_post("Sensor ids (or metric names) for a variable"),
        "/grafana/annotations": grafana_post("No annotations (an empty list)"),
        "/grafana/tag-keys": grafana_post("No ad hoc filter keys (an empty list)"),
        "/grafana/tag-values": grafana_post("No ad hoc filter values (an empty list)"),
        "/grafana/query": {
            "post": {
                "tags": ["grafana"],
                "summary": "Time series for Grafana targets",
                "requestBody": {
                    "required": True,
                    "content": {_JSON: {"schema": _ref("GrafanaQuery")}},
                },
                "responses": {
                    "200": {
                        "description": "One series per target.",
                        "content": {_JSON: {"schema": _ref("GrafanaSeries")}},
                    },
                    **_errors(400, 502, 503),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ["meta"],
                "summary": "This document",
                "responses": {"200": any_json},
            }
        },
        "/healthz": {
            "get": {
                "tags": ["meta"],
                "summary": "Liveness: serving, the table's layout known (no DynamoDB call)",
                "responses": {"200": any_json},
            }
        },
        "/metrics": {
            "get": {
                "tags": ["meta"],
                "summary": "Prometheus metrics: the closed-bucket cache's hits, misses, "
                "evictions and bytes (no DynamoDB call)",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": string}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "tags": ["meta"],
                "summary": "The dashboard page",
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": string}}}
                },
            }
        },
    }
    _secure(paths, s)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "iot-ingest query API",
            "version": "1",
            "description": "Range queries over sensor readings stored in DynamoDB: raw pages, "
            "downsampled series, latest values, the sensor list, and a Grafana data source. "
            "Every response reports the DynamoDB read units it consumed in `X-Read-Units`. "
            "Times are epoch milliseconds (UTC).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": {
                "X-Read-Units": {
                    "description": "DynamoDB read capacity units this request consumed.",
                    "schema": {"type": "number"},
                },
                "X-DynamoDB-Calls": {
                    "description": "DynamoDB calls this request made.",
                    "schema": {"type": "integer"},
                },
                "X-Cold-Objects": {
                    "description": "S3 archive objects this request read (only when the "
                    "server reads an archive: `serve --s3-bucket`).",
                    "schema": {"type": "integer"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                },
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key as a bearer token: `Authorization: Bearer "
                    "iot_...`. Keys are created with `iot-ingest apikey hash`; each reads "
                    "the sensors whose ids start with one of its prefixes.",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "The same API key in the `X-API-Key` header.",
                },
            },
        },
    }
    if s.auth is not None:
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return doc


def _secure(paths: dict[str, Any], s: ServeSettings) -> None:
    """Mark public operations, and add the access-control errors of the others."""
    for path, ops in paths.items():
        for op in ops.values():
            if path in PUBLIC_PATHS:
                op["security"] = []
                continue
            extra: list[int] = []
            if s.auth is not None:
                extra.append(401)
                if "{sensor_id}" in path or path in ("/v1/series", "/grafana/query"):
                    extra.append(404)
            if "502" in op["responses"]:  # it reads DynamoDB: its calls are capped
                extra.append(422)
            if s.rate_limit is not None:
                extra.append(429)
            added = _errors(*extra)
            if 429 in extra:
                added["429"]["headers"] = {
                    "Retry-After": {"$ref": "#/components/headers/Retry-After"}
                }
            op["responses"] = {**added, **op["responses"]}
