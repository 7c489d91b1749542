"""JSON responses (orjson: numpy arrays directly, NaN as null) and the request context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from queries.api.apikeys import ANONYMOUS, Principal
from queries.api.cursor import CursorCodec
from queries.api.settings import ServeSettings
from queries.errors import NotFound
from queries.read.reader import ReadStats, TableReader, default_calls_per_sensor

__all__ = ["Context", "JSONResponse", "context", "json_response"]


class JSONResponse(Response):
    """A JSON response rendered with orjson (numpy arrays included; NaN as ``null``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialize ``content``."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


@dataclass(slots=True)
class Context:
    """What a handler needs: the reader, the settings, this request's read accounting,
    the server's cursor codec, who is asking (the scope of sensors they may read), and
    ``now_ms``: the server's clock read once for this request, so every relative time and
    default in it resolves against the same instant."""

    reader: TableReader
    settings: ServeSettings
    stats: ReadStats
    cursors: CursorCodec
    now_ms: int
    principal: Principal = ANONYMOUS

    def reads_sensors(self, count: int) -> None:
        """This request reads ``count`` sensors: its DynamoDB call budget is per sensor."""
        self.stats.sensors = max(1, count)

    def check_sensor(self, sensor_id: str, parameter: str = "sensor_id") -> str:
        """``sensor_id`` if the caller may read it.

        Raises:
            NotFound: out of the key's scope: answered like an unknown sensor, so a
                key cannot tell which ids exist beyond its scope.
        """
        if not self.principal.may_read(sensor_id):
            raise NotFound(
                f"{parameter}: sensor {sensor_id!r} is not in the registry, or not "
                "readable with this API key"
            )
        return sensor_id


def context(request: Request) -> Context:
    """The handler context; the request's :class:`ReadStats` (with its DynamoDB call budget
    for one sensor: see :meth:`Context.reads_sensors`) is kept on ``request.state`` so
    error responses report what was spent too."""
    state = request.app.state
    reader: TableReader = state.reader
    settings: ServeSettings = state.settings
    cap = settings.max_calls_per_sensor or default_calls_per_sensor(
        reader.layout, settings.max_range_ms
    )
    stats = reader.new_stats(max_calls_per_sensor=cap)
    request.state.stats = stats
    who: Any = request.scope.get("state", {}).get("principal")
    return Context(
        reader=reader,
        settings=settings,
        stats=stats,
        cursors=state.cursors,
        now_ms=int(state.clock_ms()),
        principal=who if isinstance(who, Principal) else ANONYMOUS,
    )


def json_response(content: Any, ctx: Context, status: int = 200) -> JSONResponse:
    """A JSON response carrying the request's read-unit headers, not cached."""
    headers = ctx.stats.headers()
    headers["Cache-Control"] = "no-store"
    return JSONResponse(content, status_code=status, headers=headers)
