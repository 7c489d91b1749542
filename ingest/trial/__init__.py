"""ingest.trial."""
