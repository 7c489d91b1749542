"""iot-ingest queries: the range-query HTTP API over the table and its archive.

Layers, top to bottom (``lint-imports``): ``cli`` (``iot-ingest serve``) → ``api`` (the
HTTP application: routes, auth, cursors, OpenAPI, Grafana, the dashboard) → ``read``
(the read path: shard fan-out and merge, pages, series, cold tier) → ``errors``.
See docs/api.md.
"""

__all__: list[str] = []
