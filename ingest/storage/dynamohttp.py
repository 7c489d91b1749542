"""The lean DynamoDB client for the hot path: pre-built JSON bodies, cached SigV4, aiohttp.

Items are already in DynamoDB's wire format when they reach the writer, so
botocore's request-shape validation and serialization (most of its ≈ 4 ms of
CPU per 25-item BatchWriteItem) is work we can skip. This client sends the
JSON-protocol request directly: ``orjson`` body, :mod:`ingest.aws.sigv4` headers,
credentials from botocore's provider chain (refreshed as botocore decides),
and :mod:`ingest.aws.httpconn`'s keep-alive pool sized to the write concurrency.

Errors are classified exactly as :func:`ingest.storage.dynamo.wrap_error` does for
botocore's (see :mod:`ingest.storage.dynamo` for the causes), so the writer's retry
policy is the same on both paths; the botocore path stays available
(``writer = "botocore"``) for comparison. Nothing but a
:class:`~ingest.core.errors.DynamoError` leaves :meth:`LeanDynamoClient.request`: a
failed credential refresh, a connection or framing problem, a 200 that is not
a JSON object, an error page that is not DynamoDB's are all
:class:`~ingest.core.errors.DynamoRetriable` with their cause.
"""

from __future__ import annotations

import base64
import logging
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiobotocore.session import get_session

from ingest.aws.httpconn import HttpPool
from ingest.aws.settings import AwsSettings
from ingest.aws.sigv4 import Credentials, SigV4Signer
from ingest.core.errors import DynamoRetriable
from ingest.core.lifecycle import StartClose
from ingest.storage.dynamo import error_answer, json_object, unprocessed_puts
from ingest.storage.layout import Item

__all__ = ["LeanDynamoClient"]

log = logging.getLogger(__name__)

_TARGET = "DynamoDB_20120810."


class LeanDynamoClient(StartClose):
    """A minimal DynamoDB JSON-protocol client (BatchWriteItem, UpdateItem, Query…).

    Args:
        table: Table name.
        aws: Region, endpoint (``None``: ``https://dynamodb.{region}.amazonaws.com``) and
            credentials (none given: botocore's provider chain).
        max_connections: Connection pool size.
        timeout_s: Total timeout of one request.
    """

    def __init__(
        self,
        *,
        table: str,
        aws: AwsSettings,
        max_connections: int = 16,
        timeout_s: float = 30.0,
    ) -> None:
        self.table = table
        region = aws.region
        self.url = (aws.endpoint_url or f"https://dynamodb.{region}.amazonaws.com").rstrip(
            "/"
        ) + "/"
        parts = urlsplit(self.url)
        default_port = 443 if parts.scheme == "https" else 80
        host = parts.hostname or ""
        self._host_header = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self._signer = SigV4Signer(host=self._host_header, region=region)
        self._origin = (host, parts.port or default_port, parts.scheme == "https")
        static = aws.static_credentials
        self._static = Credentials(*static, None) if static else None
        self._creds: Any = None
        self._max_connections = max_connections
        self._timeout_s = timeout_s
        self._http: HttpPool | None = None
        self._prefix = b'{"RequestItems":{' + orjson.dumps(table) + b":["
        self._closed = False

    async def start(self) -> None:
        """Find the credentials and open the connection pool (``async with`` does it)."""
        if self._closed:
            raise RuntimeError("LeanDynamoClient is closed; create a new one")
        if self._static is None:
            try:
                self._creds = await get_session().get_credentials()
            except Exception as exc:
                raise _credential_error(exc) from exc
            if self._creds is None:
                raise DynamoRetriable(
                    "no AWS credentials found (environment, profile, or instance/task role)",
                    cause="credentials",
                )
        host, port, tls = self._origin
        self._http = HttpPool(
            host,
            port,
            tls=ssl.create_default_context() if tls else None,
            max_connections=self._max_connections,
            timeout_s=self._timeout_s,
        )

    async def aclose(self) -> None:
        """Close the connection pool; safe to call twice."""
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def _credentials(self) -> Credentials:
        if self._static is not None:
            return self._static
        try:
            # A refresh (instance or container role, SSO, credential_process) can fail
            # in any way: botocore propagates whatever its provider raised.
            frozen = await self._creds.get_frozen_credentials()
        except Exception as exc:
            raise _credential_error(exc) from exc
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    async def request(self, operation: str, body: bytes) -> dict[str, Any]:
        """Send one operation with a ready JSON body; return the parsed response.

        Raises:
            DynamoRetriable: Anything transient, with its cause (see :mod:`ingest.storage.dynamo`).
            DynamoRejected: DynamoDB refused the request (ValidationException…).
        """
        if self._http is None:
            raise RuntimeError("LeanDynamoClient is not open")
        headers = self._signer.headers(await self._credentials(), _TARGET + operation, body)
        head = "".join(
            [
                f"POST / HTTP/1.1\r\nHost: {self._host_header}\r\n",
                *[f"{k}: {v}\r\n" for k, v in headers.items()],
                f"Content-Length: {len(body)}\r\n\r\n",
            ]
        ).encode()
        try:
            status, raw = await self._http.post(head, body)
        except (OSError, TimeoutError) as exc:  # all HttpPool.post raises
            raise DynamoRetriable(f"{type(exc).__name__}: {exc}", cause="connection") from exc
        if status == 200:
            return json_object(operation, status, raw)
        raise error_answer(status, raw)

    async def batch_write(self, items: Sequence[Item]) -> list[Item]:
        """BatchWriteItem of PutRequests; return the items DynamoDB left unprocessed."""
        puts = b",".join(
            [b'{"PutRequest":{"Item":' + orjson.dumps(it, default=_binary) + b"}}" for it in items]
        )
        resp = await self.request("BatchWriteItem", self._prefix + puts + b"]}}")
        return unprocessed_puts(resp, self.table)

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Any operation with a JSON-able payload; ``update_item`` or ``UpdateItem`` alike."""
        if operation[:1].islower():
            operation = "".join(part.title() for part in operation.split("_"))
        return await self.request(operation, orjson.dumps(kwargs, default=_binary))


def _binary(value: object) -> str:
    """A binary attribute's bytes as the JSON protocol sends them (base64); orjson calls
    this only for what it cannot serialize itself, so text items pay nothing for it.
    Answers keep base64 text in ``B``: :func:`ingest.storage.layout.binary_value` reads
    either form."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not a DynamoDB attribute value")


def _credential_error(exc: Exception) -> DynamoRetriable:
    return DynamoRetriable(
        f"cannot get AWS credentials from the provider chain: {type(exc).__name__}: {exc}",
        cause="credentials",
    )
