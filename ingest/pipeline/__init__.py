"""The ingest service, one module a stage: ``receiver`` (the MQTT session, reconnects)
→ ``decode`` (bounded inbox, decoding with ``codec``) → ``batcher`` → ``writer`` (retries,
dead letters on give-up) → ``acks`` (PUBACK once durable, in arrival order);
``deadletters`` (the spool writer), ``registry`` (the per-sensor summary stage),
``replay`` (dead letters back to the broker); ``service`` wires them and owns the drain.
"""

__all__: list[str] = []
