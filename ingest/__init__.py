"""iot-ingest: the ingest service (MQTT → DynamoDB, at least once).

Stages, one module each: ``receiver`` (MQTT session) → ``pipeline`` (inbox,
decode) using ``codec`` and ``layout`` → ``batcher`` → ``writer`` (via
``dynamo``) → ``acks``; ``deadletters`` for what is refused; ``registry``
for the per-sensor summary; ``service`` wires them; ``cli`` is the entry.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
