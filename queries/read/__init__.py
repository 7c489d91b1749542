"""queries.read."""
