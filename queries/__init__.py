"""iot-ingest queries: the read path (shard fan-out and merge), downsampling, the HTTP API.

``iot-ingest serve`` runs :func:`create_app` with uvicorn; the demo and tests run it
in their own loop with :class:`ApiServer`. See ``docs/api.md``.
"""

from .app import create_app
from .errors import BadParameter, NotFound, QueryError, ReadFailed, ReadUnavailable
from .pages import Page, read_page
from .reader import ReadStats, TableReader, query_partition, read_range
from .sampler import read_series
from .series import SeriesAccumulator, WindowGrid, choose_step
from .server import ApiServer
from .settings import ServeSettings

__all__ = [
    "ApiServer",
    "BadParameter",
    "NotFound",
    "Page",
    "QueryError",
    "ReadFailed",
    "ReadStats",
    "ReadUnavailable",
    "SeriesAccumulator",
    "ServeSettings",
    "TableReader",
    "WindowGrid",
    "choose_step",
    "create_app",
    "query_partition",
    "read_page",
    "read_range",
    "read_series",
]
