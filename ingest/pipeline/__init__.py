"""ingest.pipeline."""
