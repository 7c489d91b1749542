"""ingest.aws."""

__all__: list[str] = []
