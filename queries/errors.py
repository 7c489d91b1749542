"""The read path's errors, each with the HTTP status it maps to.

::

    QueryError                    base; ``status`` and ``code`` on the class
    ├── BadParameter      400     a request parameter is malformed or out of bounds:
    │                             names the parameter, the value and the allowed form
    ├── NotFound          404     no such sensor (or no unexpired reading of it)
    ├── TooManyCalls      422     the request needs more DynamoDB calls than the server's
    │                             cap (``max_calls_per_sensor`` per sensor read)
    └── ReadFailed        502     DynamoDB refused the read (a bug or a misconfiguration)
        ├── ArchiveReadFailed 502 the S3 archive (cold tier) refused a read or holds
        │                         an unreadable object
        └── ReadUnavailable 503   DynamoDB throttled, failed (5xx) or was unreachable:
            │                     the same request may succeed later (``retriable``)
            └── ArchiveUnavailable 503  the same for the S3 archive

:func:`wrap_read_error` turns the DynamoDB client's errors into ``ReadFailed``
where they enter the read path, so handlers speak this tree only.
"""

from __future__ import annotations

from typing import Any

from ingest.core.errors import DynamoError, IngestError

__all__ = [
    "ArchiveReadFailed",
    "ArchiveUnavailable",
    "BadParameter",
    "NotFound",
    "QueryError",
    "ReadFailed",
    "ReadUnavailable",
    "TooManyCalls",
    "wrap_read_error",
]


class QueryError(IngestError):
    """Base of every error the queries package raises; carries its HTTP status."""

    status = 500
    code = "internal_error"
    retriable = False

    def to_json(self) -> dict[str, Any]:
        """The error as the API's JSON error body (``{"error": {...}}``)."""
        return {"error": {"code": self.code, "message": str(self)}}


class BadParameter(QueryError):
    """A request parameter is malformed or out of bounds.

    Args:
        parameter: The parameter's name as the client sent it (``start``, ``step``…).
        value: The offending value (``None`` when the parameter is missing).
        allowed: The allowed form, e.g. ``"epoch milliseconds or RFC 3339"``.
        reason: What is wrong, when more than "invalid" (e.g. "range too long").
    """

    status = 400
    code = "bad_parameter"

    def __init__(
        self, parameter: str, value: object, allowed: str, *, reason: str | None = None
    ) -> None:
        self.parameter = parameter
        self.value = value
        self.allowed = allowed
        shown = "missing" if value is None else repr(value)
        what = reason or "invalid"
        super().__init__(f"parameter {parameter!r}: {what} ({shown}); allowed: {allowed}")

    def to_json(self) -> dict[str, Any]:
        """The error body, with ``parameter`` and ``allowed`` as separate fields."""
        body = super().to_json()
        body["error"]["parameter"] = self.parameter
        body["error"]["allowed"] = self.allowed
        return body


class NotFound(QueryError):
    """The sensor is unknown (not in the registry), or has no unexpired reading."""

    status = 404
    code = "not_found"


class TooManyCalls(QueryError):
    """The request needs more DynamoDB calls than one request may make.

    Raised before the call past the cap is made, so a request never exceeds it.

    Args:
        per_sensor: The cap per sensor read (``max_calls_per_sensor``).
        sensors: Sensors the request reads (the cap is ``per_sensor * sensors``).
    """

    status = 422
    code = "too_many_calls"

    def __init__(self, *, per_sensor: int, sensors: int) -> None:
        self.per_sensor = per_sensor
        self.sensors = sensors
        self.max_calls = per_sensor * sensors
        who = "1 sensor" if sensors == 1 else f"{sensors} sensors"
        super().__init__(
            f"this request needs more than {self.max_calls} DynamoDB calls, the limit for "
            f"{who} (max_calls_per_sensor = {per_sensor}): narrow the range (start/end) or "
            "read fewer sensors per request; the server's operator can raise "
            "--max-calls-per-sensor"
        )

    def to_json(self) -> dict[str, Any]:
        """The error body, with the limit's name and value as separate fields."""
        body = super().to_json()
        body["error"]["limit"] = "max_calls_per_sensor"
        body["error"]["max_calls"] = self.max_calls
        return body


class ReadFailed(QueryError):
    """DynamoDB refused a read: retrying the same request cannot help."""

    status = 502
    code = "dynamodb_error"


class ReadUnavailable(ReadFailed):
    """DynamoDB throttled, failed or was unreachable: retry later."""

    status = 503
    code = "dynamodb_unavailable"
    retriable = True


def wrap_read_error(exc: DynamoError) -> ReadFailed:
    """Map the DynamoDB client's error (``ingest.core.errors.DynamoError``) to the read-side tree."""
    if exc.retriable:
        return ReadUnavailable(f"DynamoDB read failed, try again later ({exc.cause}): {exc}")
    return ReadFailed(f"DynamoDB rejected the read ({exc.cause}): {exc}")


class ArchiveReadFailed(ReadFailed):
    """The S3 archive (cold tier) refused a read, or an archived object is unreadable."""

    status = 502
    code = "archive_error"


class ArchiveUnavailable(ReadUnavailable):
    """The S3 archive failed or was unreachable: retry later."""

    status = 503
    code = "archive_unavailable"
