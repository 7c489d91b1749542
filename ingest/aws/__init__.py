"""ingest.aws."""
