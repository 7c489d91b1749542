"""ingest.storage."""
