"""The DynamoDB client: aiobotocore, wrapped so the rest speaks the project's errors.

botocore's own retries are switched off: the writer owns one retry policy
(exponential backoff, full jitter, a deadline) with metrics per cause.

One classification for both clients (this one and :mod:`ingest.storage.dynamohttp`),
by ``cause`` (the ``iot_ingest_write_retries_total`` label):

- ``throttled``: a throttling error type, HTTP 429, or a body without an error
  type that says it is throttling (a proxy's page);
- ``server_error``: a 5xx;
- ``connection``: refused, reset, timed out, TLS, a truncated or malformed
  HTTP response;
- ``credentials``: the provider chain could not give credentials (a failed
  refresh from the instance or container role, none found);
- ``bad_response``: an answer that is not DynamoDB's: a 2xx whose body is not
  a JSON object (or whose ``UnprocessedItems`` is malformed), an error without
  an error type (an HTML page from something in between);
- an operator-fixable error type (``ResourceNotFoundException``,
  ``AccessDeniedException``…): its own name;
- ``unexpected``: an exception of a type nobody foresaw (retried too: it is no
  evidence that the data is bad).

Only an error type DynamoDB itself returned for the request (ValidationException
and the like) is :class:`~ingest.core.errors.DynamoRejected`.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    MetadataRetrievalError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    RefreshWithMFAUnsupportedError,
    UnknownCredentialError,
)

from ingest.aws.client import BotocoreClient
from ingest.aws.settings import AwsSettings
from ingest.core.errors import DynamoError, DynamoRejected, DynamoRetriable
from ingest.storage.items import Item

if TYPE_CHECKING:
    from ingest.config import Config

__all__ = [
    "OPERATIONAL_CODES",
    "THROTTLE_CODES",
    "TRANSIENT_CAUSES",
    "BatchSink",
    "DynamoClient",
    "Queryable",
    "TableClient",
    "bad_response",
    "classify",
    "error_answer",
    "is_condition_failure",
    "is_transient",
    "json_object",
    "put_all",
    "unprocessed_puts",
    "wrap_error",
]

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


# A body without an error type that says this is throttling (a proxy's or gateway's page).
_THROTTLE_WORDS = ("throttl", "rate exceeded", "slowdown", "slow down", "too many requests")
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    UnknownCredentialError,
    RefreshWithMFAUnsupportedError,
    MetadataRetrievalError,
)
TRANSIENT_CAUSES = frozenset(
    {"throttled", "server_error", "connection", "credentials", "bad_response", "unexpected"}
)
"""Causes that say nothing about the request or the table: they heal by themselves."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a DynamoRetriable that waiting can heal (not an operator's fix)."""
    return isinstance(exc, DynamoRetriable) and exc.cause in TRANSIENT_CAUSES


class BatchSink(Protocol):
    """Where batches go: the writer's one dependency (a fake in unit tests)."""

    async def batch_write(self, items: Sequence[Item]) -> list[Item]:
        """Put items; return those DynamoDB left unprocessed. Raise DynamoError."""
        ...


async def put_all(sink: BatchSink, items: Sequence[Item], *, pause_s: float = 0.05) -> None:
    """Put every item, 25 to a BatchWriteItem, sending again what DynamoDB left
    unprocessed (after a pause that doubles, up to 2 s); errors propagate."""
    for first in range(0, len(items), 25):
        left = list(items[first : first + 25])
        pause = pause_s
        while left := await sink.batch_write(left):
            await asyncio.sleep(pause)
            pause = min(2 * pause, 2.0)


class Queryable(Protocol):
    """What a read needs: the table's name and ``call``. Any DynamoDB client fits, and so
    does a request's view of :class:`queries.read.reader.TableReader` (its calls counted
    and bounded)."""

    @property
    def table(self) -> str:
        """The table's name."""
        ...

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One DynamoDB operation (botocore's snake_case name). Raise DynamoError."""
        ...


class TableClient(BatchSink, Queryable, Protocol):
    """A DynamoDB client bound to one table, as the stages use it: either implementation
    (:class:`DynamoClient` on aiobotocore, or :class:`ingest.storage.dynamohttp.LeanDynamoClient`,
    the lean HTTP writer) fits."""


def classify(code: str, status: int, message: str) -> DynamoError:
    """The project's error for an error answer (one policy, both clients).

    Args:
        code: DynamoDB's error type (``ValidationException``); empty when the answer
            carried none, so it is not DynamoDB's verdict on the request.
        status: HTTP status.
        message: The error message, or the start of the body.
    """
    text = f"{code or f'HTTP {status}'}: {message}"
    if code in THROTTLE_CODES or status == 429:
        return DynamoRetriable(text, cause="throttled")
    if status >= 500 or code in ("InternalServerError", "ServiceUnavailable"):
        return DynamoRetriable(text, cause="server_error")
    if code in OPERATIONAL_CODES:
        return DynamoRetriable(text, cause=code)
    if not code:
        lowered = message.lower()
        if any(word in lowered for word in _THROTTLE_WORDS):
            return DynamoRetriable(text, cause="throttled")
        return DynamoRetriable(text, cause="bad_response")
    return DynamoRejected(text, cause="rejected")


def wrap_error(exc: BaseException) -> DynamoError:
    """Map a botocore/aiohttp error (or anything else) to DynamoRetriable or DynamoRejected."""
    if isinstance(exc, DynamoError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        code = str(err.get("Code") or "")
        if code.isdigit() or code == "Unknown":
            code = ""  # botocore's stand-in when the body had no error type
        return classify(code, status, str(err.get("Message", "")))
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return DynamoRetriable(f"cannot get AWS credentials: {text}", cause="credentials")
    if isinstance(exc, ParamValidationError):
        return DynamoRejected(text, cause="rejected")
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
        return DynamoRetriable(text, cause="connection")
    return DynamoRetriable(text, cause="unexpected")


def bad_response(operation: str, status: int, raw: bytes, why: str) -> DynamoRetriable:
    """The error for an answer that is not a DynamoDB answer to ``operation``."""
    return DynamoRetriable(
        f"{operation} answered HTTP {status} with {why}: {raw[:200]!r}", cause="bad_response"
    )


def json_object(operation: str, status: int, raw: bytes) -> dict[str, Any]:
    """A 2xx body as the JSON object DynamoDB always answers; DynamoRetriable otherwise."""
    try:
        result = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_response(operation, status, raw, "a body that is not JSON") from None
    if not isinstance(result, dict):
        raise bad_response(operation, status, raw, f"a JSON {type(result).__name__}")
    return result


_XML_CODE = re.compile(r"<Code>(.*?)</Code>", re.S)
_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S)


def error_answer(status: int, raw: bytes) -> DynamoError:
    """The error for a non-2xx answer with body ``raw`` (both clients)."""
    code, message = "", ""
    try:
        err = orjson.loads(raw)
    except orjson.JSONDecodeError:
        err = None
    if isinstance(err, dict):
        # DynamoDB's error answers always carry their type; one without is not DynamoDB's.
        code = str(err.get("__type") or "").rpartition("#")[2]
        message = str(err.get("message") or err.get("Message") or "")
    elif raw.lstrip().startswith(b"<"):
        # An XML error document (an IAM or gateway layer in front of the endpoint, as moto's
        # IAM enforcement answers): take its code and message whole, not a cut of the markup.
        text = raw.decode("utf-8", "replace")
        found_code = _XML_CODE.search(text)
        found_message = _XML_MESSAGE.search(text)
        code = found_code.group(1).strip() if found_code else ""
        message = html.unescape(found_message.group(1).strip()) if found_message else ""
    if not message:
        message = raw[:200].decode("utf-8", "replace")
    return classify(code, status, message)


def unprocessed_puts(resp: dict[str, Any], table: str) -> list[Item]:
    """The items of a BatchWriteItem answer's ``UnprocessedItems`` (PutRequests on ``table``).

    Raises:
        DynamoRetriable: ``bad_response`` when ``UnprocessedItems`` is not what DynamoDB sends.
    """
    left = resp.get("UnprocessedItems")
    if left is None:
        return []
    try:
        out: list[Item] = []
        for name, requests in left.items():
            for request in requests:
                item = request["PutRequest"]["Item"]
                item["pk"]["S"], item["sk"]["N"]  # the writer keys on them: fail here
                if name == table:
                    out.append(item)
    except (AttributeError, KeyError, TypeError) as exc:
        raise DynamoRetriable(
            f"BatchWriteItem answered with malformed UnprocessedItems "
            f"({type(exc).__name__}: {exc}): {str(left)[:200]}",
            cause="bad_response",
        ) from exc
    return out


class DynamoClient(BotocoreClient):
    """An aiobotocore DynamoDB client bound to one table.

    Args:
        table: Table name.
        aws: Region, endpoint and credentials.
        max_connections: Connection pool size (size it to the write concurrency).
    """

    @classmethod
    def from_config(cls, cfg: Config, *, max_connections: int = 16) -> DynamoClient:
        """The client of ``cfg``'s table, endpoint, region and credentials."""
        return cls(
            table=cfg.dynamodb.table, aws=cfg.aws.client_settings(), max_connections=max_connections
        )

    def __init__(
        self,
        *,
        table: str,
        aws: AwsSettings,
        max_connections: int = 16,
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
            aws=aws,
        )
        self.table = table

    async def start(self) -> None:
        await super().start()
        self.client.meta.events.register("before-parse.dynamodb", _check_answer)

    async def batch_write(self, items: Sequence[Item]) -> list[Item]:
        try:
            resp = await self.client.batch_write_item(
                RequestItems={self.table: [{"PutRequest": {"Item": it}} for it in items]}
            )
        except DynamoError:
            raise
        except Exception as exc:
            raise wrap_error(exc) from exc
        return unprocessed_puts(resp, self.table)

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Any other DynamoDB operation (snake_case name), with errors wrapped."""
        try:
            result: dict[str, Any] = await getattr(self.client, operation)(**kwargs)
        except DynamoError:
            raise
        except Exception as exc:
            raise wrap_error(exc) from exc
        return result


def _check_answer(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
    """Classify every answer as the lean client does, before botocore's parser sees it.

    botocore parses a 2xx body that is not JSON as ``{}`` (a write that never happened
    would look done) and crashes on an error body that is JSON but not an object. A
    ``before-parse`` hook; what it raises reaches the caller.
    """
    status = int(response_dict.get("status_code") or 0)
    body = bytes(response_dict.get("body") or b"")
    if not 200 <= status < 300:
        raise error_answer(status, body)
    name = operation_model.name
    answer = json_object(name, status, body)
    if name == "BatchWriteItem":
        unprocessed_puts(answer, "")


def is_condition_failure(exc: DynamoError) -> bool:
    return "ConditionalCheckFailed" in str(exc)
