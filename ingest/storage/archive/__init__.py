"""ingest.storage.archive."""
