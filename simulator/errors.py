"""The simulator's errors.

::

    SimulatorError
    ├── SimConfigError       bad options or fleet file: fail at start, name the value
    ├── PublishError         the MQTT side failed
    │   └── BrokerRefused    the broker refused CONNECT (bad credentials: not retriable)
    └── ManifestError        a manifest cannot be read or is not a simulator manifest
"""

from __future__ import annotations

from ingest.core.errors import ConfigError, IngestError

__all__ = ["BrokerRefused", "ManifestError", "PublishError", "SimConfigError", "SimulatorError"]


class SimulatorError(IngestError):
    """Base of every error the simulator package raises (an IngestError: one tree, one
    ``retriable`` flag, one exit-code rule in the CLI)."""


class SimConfigError(SimulatorError, ConfigError, ValueError):
    """An option or fleet file value is invalid; the message names it and says what to do."""


class PublishError(SimulatorError):
    """Connecting to the broker or publishing failed (connection trouble is retriable)."""

    retriable = True


class BrokerRefused(PublishError):
    """The broker answered CONNECT with a refusal code."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class ManifestError(SimulatorError):
    """A manifest file is missing, unreadable, or not a simulator manifest."""
