"""iot-ingest queries: the read path (shard fan-out and merge), downsampling, the HTTP API.

``iot-ingest serve`` runs :func:`create_app` with uvicorn; the demo and tests run it
in their own loop with :class:`ApiServer`. See ``docs/api.md``.
"""

from queries.app import create_app
from queries.errors import BadParameter, NotFound, QueryError, ReadFailed, ReadUnavailable
from queries.pages import Page, read_page
from queries.reader import ReadStats, TableReader, query_partition, read_range
from queries.sampler import read_series
from queries.series import SeriesAccumulator, WindowGrid, choose_step
from queries.server import ApiServer
from queries.settings import ServeSettings

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
