"""ingest.mqtt."""

__all__: list[str] = []
