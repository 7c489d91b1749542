"""The ingest service's errors, with their retry policy on the class.

::

    IngestError
    ├── ConfigError              bad configuration: fail at start, name the key and value
    ├── TableError               the table is missing or its layout differs
    ├── DynamoUnreachable        DynamoDB did not answer at start within startup_retry_deadline_s
    ├── WriteError               a DynamoDB write failed
    │   ├── WriteRetriable       throttling, 5xx, connection trouble: retry with backoff
    │   └── WriteRejected        the request is invalid: retrying cannot help
    ├── DeadLetterError          the dead-letter spool cannot keep a message (disk full…)
    └── MqttError                (ingest.mqtt.client) connection failed or lost: reconnect
        └── MqttConnectError     the broker refused us (bad credentials are not retriable)
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadLetterError",
    "DynamoUnreachable",
    "IngestError",
    "TableError",
    "WriteError",
    "WriteRejected",
    "WriteRetriable",
]


class IngestError(Exception):
    """Base of every error the ingest package raises."""

    retriable = False


class ConfigError(IngestError):
    """A configuration value is invalid; the message names the key and the value."""


class TableError(IngestError):
    """The table does not exist, or was created with another layout."""


class DynamoUnreachable(IngestError):
    """DynamoDB did not answer at start (unreachable, throttled, 5xx…) before the deadline."""


class WriteError(IngestError):
    """A DynamoDB write failed."""

    def __init__(self, message: str, *, cause: str = "error") -> None:
        super().__init__(message)
        self.cause = cause


class WriteRetriable(WriteError):
    """Throttling, a 5xx or a connection problem: the same request may succeed later."""

    retriable = True


class WriteRejected(WriteError):
    """DynamoDB refused the request as invalid (ValidationException and the like)."""


class DeadLetterError(IngestError):
    """The dead-letter spool could not durably keep an entry."""

    retriable = True
