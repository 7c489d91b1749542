"""iot-ingest: MQTT → DynamoDB ingestion, at least once (see docs/architecture.md).

The sub-packages are the layers, top to bottom; a package imports only from its own
layer's package or from layers below (``lint-imports`` checks it, from pyproject.toml)::

    cli        the ``iot-ingest`` command: parses, composes, runs
    demo       ``iot-ingest demo``: trial servers + ingest + archiver + simulator + API
    trial      embedded broker (Mosquitto or amqtt) and DynamoDB/S3 (moto) for trial mode
    pipeline   the ingest service: receive → decode → batch → write → acknowledge
    archive    the archiver job: closed buckets → verified Parquet in S3 → early delete
    storage    the table and the archive as data: keys, clients, reads, registry, spool
    mqtt       MQTT 3.1.1/5 on the wire: packet codec, the asyncio connection
    aws        AWS plumbing: settings, SigV4, the HTTP/1.1 pool, aiobotocore lifecycle
    config     the service's configuration (file < env < flags), validated once
    core       errors, retry pacing, lifecycle and signals, metrics/health, logging

``queries`` (the read path and the HTTP API) and ``simulator`` sit beside ``pipeline``
and ``archive``, above ``storage``; ``bench`` sits beside ``demo``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
