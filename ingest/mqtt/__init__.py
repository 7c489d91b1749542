"""ingest.mqtt."""
