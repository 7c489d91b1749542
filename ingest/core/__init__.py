"""ingest.core."""
