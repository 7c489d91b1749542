"""The archive's errors, with their retry policy on the class.

::

    IngestError                      (ingest.core.errors)
    └── ArchiveError                 base of every archive error
        ├── ArchiveConfigError       bad settings (also a ConfigError): horizon >= retention…
        ├── StorageError             S3 refused or failed: missing bucket, permissions, network
        │   └── ObjectChanged        a conditional put found the object replaced meanwhile
        ├── SourceError              reading or deleting DynamoDB items failed
        └── VerifyError              the object read back is missing, partial or corrupt
"""

from __future__ import annotations

from ingest.core.aio import leaf_exceptions
from ingest.core.errors import ConfigError, IngestError

__all__ = [
    "ArchiveConfigError",
    "ArchiveError",
    "ObjectChanged",
    "SourceError",
    "StorageError",
    "VerifyError",
    "single_archive_error",
]


class ArchiveError(IngestError):
    """Base of every error the archive raises."""


class ArchiveConfigError(ArchiveError, ConfigError):
    """An archive setting is invalid; the message names it, its value and the fix."""


class StorageError(ArchiveError):
    """S3 refused or failed a request (missing bucket, access denied, connection)."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class ObjectChanged(StorageError):
    """A conditional put found the object changed (another run replaced it): nothing written."""


class SourceError(ArchiveError):
    """Reading items from (or deleting them in) DynamoDB failed."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class VerifyError(ArchiveError):
    """The archived object does not match its manifest: the bucket must be archived again.

    Attributes:
        key: The object key.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


def single_archive_error(exc: BaseExceptionGroup[BaseException]) -> ArchiveError | None:
    """The first ArchiveError of a group made of ArchiveErrors only, else ``None``."""
    found = leaf_exceptions(exc)
    if found and all(isinstance(e, ArchiveError) for e in found):
        first = found[0]
        assert isinstance(first, ArchiveError)
        return first
    return None
