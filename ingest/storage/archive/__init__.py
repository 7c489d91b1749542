"""ingest.storage.archive."""

__all__: list[str] = []
