"""ingest.cli."""
