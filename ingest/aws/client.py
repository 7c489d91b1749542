"""An aiobotocore client's lifecycle, shared by the DynamoDB and S3 wrappers."""

from __future__ import annotations

from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from ingest.aws.settings import AwsSettings
from ingest.core.lifecycle import StartClose

__all__ = ["BotocoreClient"]


class BotocoreClient(StartClose):
    """Owns one aiobotocore client (``.client``) between ``start`` and ``aclose``.

    Args:
        service: Botocore service name (``dynamodb``, ``s3``).
        config: The client's AioConfig.
        aws: Region, endpoint and credentials.
    """

    def __init__(
        self,
        service: str,
        *,
        config: AioConfig,
        aws: AwsSettings,
    ) -> None:
        self._service = service
        self.aws = aws
        self._kwargs: dict[str, Any] = {**aws.client_kwargs(), "config": config}
        self._cm: Any = None
        self.client: Any = None
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new one")
        self._cm = get_session().create_client(self._service, **self._kwargs)
        self.client = await self._cm.__aenter__()

    async def aclose(self) -> None:
        """Close the client; safe to call twice."""
        if self._cm is not None and not self._closed:
            self._closed = True
            await self._cm.__aexit__(None, None, None)
        self._closed = True
