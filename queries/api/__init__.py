"""The HTTP API: ``app`` (the Starlette ASGI application), ``routes``, ``server`` (uvicorn, and the
in-loop server of the demo and tests), ``settings``, ``auth`` and ``apikeys``,
``ratelimit``, ``cursor`` (signed page cursors), ``responses``, ``openapi``, ``grafana``,
``metricnames``; the dashboard's files are in ``static/``.
"""

__all__: list[str] = []
