"""Errors of the ``bench`` package.

::

    BenchError            a load run cannot go on (a process failed to start or died,
                          a deadline passed, a publisher printed no summary)

Server start-up failures keep their own types (:class:`ingest.trial.servers.ServerStartError`,
:class:`~ingest.trial.servers.ServerNotInstalledError`, whose message says to run
``make test-deps``).
"""

from __future__ import annotations

from ingest.core.errors import IngestError

__all__ = ["BenchError"]


class BenchError(IngestError):
    """A load run cannot go on; the message says what failed and where its log is."""
