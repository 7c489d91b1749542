"""iot-ingest queries: the read path (shard fan-out and merge), downsampling, the HTTP API.

``iot-ingest serve`` runs :func:`create_app` with uvicorn; the demo and tests run it
in their own loop with :class:`ApiServer`. See ``docs/api.md``.
"""

__all__: list[str] = []
