"""ingest.storage."""

__all__: list[str] = []
