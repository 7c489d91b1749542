"""The DynamoDB client: aiobotocore, wrapped so the rest speaks the project's errors.

botocore's own retries are switched off: the writer owns one retry policy
(exponential backoff, full jitter, a deadline) with metrics per cause.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from .awsclient import BotocoreClient
from .errors import WriteError, WriteRejected, WriteRetriable
from .layout import Item

if TYPE_CHECKING:
    from .config import Config

__all__ = ["BatchSink", "DynamoClient", "classify", "wrap_error"]

log = logging.getLogger(__name__)

THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
        "TooManyRequestsException",
    }
)
# Not the data's fault: an operator can fix these while we keep retrying.
OPERATIONAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "ResourceInUseException",
    }
)


class BatchSink(Protocol):
    """Where batches go: the writer's one dependency (a fake in unit tests)."""

    async def batch_write(self, items: list[Item]) -> list[Item]:
        """Put items; return those DynamoDB left unprocessed. Raise WriteError."""
        ...


def classify(code: str, status: int, message: str) -> WriteError:
    """The project's error for a DynamoDB error code and HTTP status (one policy, both clients)."""
    text = f"{code}: {message}"
    if code in THROTTLE_CODES:
        return WriteRetriable(text, cause="throttled")
    if status >= 500 or code in ("InternalServerError", "ServiceUnavailable"):
        return WriteRetriable(text, cause="server_error")
    if code in OPERATIONAL_CODES:
        return WriteRetriable(text, cause=code)
    return WriteRejected(text, cause="rejected")


def wrap_error(exc: BaseException) -> WriteError:
    """Map a botocore/aiohttp error to WriteRetriable or WriteRejected."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return classify(str(err.get("Code", "Unknown")), status, str(err.get("Message", "")))
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
        return WriteRetriable(f"{type(exc).__name__}: {exc}", cause="connection")
    return WriteRejected(f"{type(exc).__name__}: {exc}", cause="unexpected")


class DynamoClient(BotocoreClient):
    """An aiobotocore DynamoDB client bound to one table.

    Args:
        table: Table name.
        region: AWS region.
        endpoint_url: Endpoint (None: AWS's, from the region).
        max_connections: Connection pool size (size it to the write concurrency).
        aws_access_key_id: Explicit credentials (None: the standard provider chain).
        aws_secret_access_key: Explicit credentials.
    """

    @classmethod
    def from_config(cls, cfg: Config, *, max_connections: int = 16) -> DynamoClient:
        """The client of ``cfg``'s table, endpoint, region and credentials."""
        return cls(
            table=cfg.table,
            region=cfg.region,
            endpoint_url=cfg.dynamodb_endpoint,
            max_connections=max_connections,
            aws_access_key_id=cfg.aws_access_key_id,
            aws_secret_access_key=cfg.aws_secret_access_key,
        )

    def __init__(
        self,
        *,
        table: str,
        region: str,
        endpoint_url: str | None = None,
        max_connections: int = 16,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
    ) -> None:
        super().__init__(
            "dynamodb",
            config=AioConfig(
                max_pool_connections=max_connections,
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                tcp_keepalive=True,
            ),
            region=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
        )
        self.table = table

    async def batch_write(self, items: list[Item]) -> list[Item]:
        try:
            resp = await self.client.batch_write_item(
                RequestItems={self.table: [{"PutRequest": {"Item": it}} for it in items]}
            )
        except Exception as exc:
            raise wrap_error(exc) from exc
        left = resp.get("UnprocessedItems", {}).get(self.table, [])
        return [r["PutRequest"]["Item"] for r in left]

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Any other DynamoDB operation (snake_case name), with errors wrapped."""
        try:
            result: dict[str, Any] = await getattr(self.client, operation)(**kwargs)
        except Exception as exc:
            raise wrap_error(exc) from exc
        return result
