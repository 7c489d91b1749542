"""The foundation every layer may use; imports nothing of the project's above it.

``errors`` (the one error tree, retry policy on the class), ``retry`` (capped full-jitter
backoff), ``lifecycle`` (start/close, stop requests, signal handling), ``aio`` (the uvloop
runner, stop signals, exception-group leaves), ``argtypes`` (CLI argument types),
``metrics`` (Prometheus registry, ``/metrics``, ``/healthz``, ``/readyz``), ``logs``,
``gctune``.
"""

__all__: list[str] = []
