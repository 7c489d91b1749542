"""queries.read."""

__all__: list[str] = []
