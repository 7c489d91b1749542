"""The project's errors: one tree, with the retry policy on the class (``retriable``).

Every error any package raises on purpose is an :class:`IngestError`, so the command
line has one rule (``iot-ingest: <message>``, exit 2 for a :class:`ConfigError`, else
1) and every retry loop asks ``exc.retriable``::

    IngestError
    ├── ConfigError              bad configuration: fail at start, name the key and value
    │   ├── KeysFileError        (queries.api.apikeys) the API keys file
    │   ├── CursorKeyError       (queries.api.cursor) the cursor key file
    │   └── SimConfigError       (simulator.errors) a simulator option or fleet file
    ├── TableError               the table is missing or its layout differs
    ├── DynamoUnreachable        DynamoDB did not answer at start within startup_retry_deadline_s
    ├── DynamoError              a DynamoDB call (read, write or management) failed
    │   ├── DynamoRetriable      throttling, 5xx, connection trouble: retry with backoff
    │   └── DynamoRejected       the request is invalid: retrying cannot help
    ├── DeadLetterError          the dead-letter spool cannot keep a message (disk full…)
    ├── HttpError                (ingest.aws.httpconn) the HTTP/1.1 connection failed (an OSError too)
    ├── MqttError                (ingest.mqtt.link) connection failed or lost: reconnect
    │   └── MqttConnectError     the broker refused us (bad credentials are not retriable)
    ├── ArchiveError             (ingest.storage.archive.errors) S3 or verification trouble
    ├── PackedError              (ingest.storage.packed) a packed item cannot be encoded or decoded
    ├── EmbeddedServerError      (ingest.trial.servers) a trial-mode server did not start
    ├── QueryError               (queries.errors) a request failed; carries its HTTP status
    ├── SimulatorError           (simulator.errors) publishing or verifying failed
    └── BenchError               (bench.errors) a load run cannot go on

``MqttProtocolError`` (ingest.mqtt.proto) is not in the tree on purpose: it is the
parser's signal that the peer's bytes are not MQTT, always caught by the connection,
which drops the link with a reasoned DISCONNECT; it never reaches a caller.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeadLetterError",
    "DynamoError",
    "DynamoRejected",
    "DynamoRetriable",
    "DynamoUnreachable",
    "IngestError",
    "TableError",
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


class DynamoError(IngestError):
    """A DynamoDB call failed (reads and table management raise it too, not only writes)."""

    def __init__(self, message: str, *, cause: str = "error") -> None:
        super().__init__(message)
        self.cause = cause


class DynamoRetriable(DynamoError):
    """Throttling, a 5xx or a connection problem: the same request may succeed later."""

    retriable = True


class DynamoRejected(DynamoError):
    """DynamoDB refused the request as invalid (ValidationException and the like)."""


class DeadLetterError(IngestError):
    """The dead-letter spool could not durably keep an entry."""

    retriable = True
