"""queries.api."""
