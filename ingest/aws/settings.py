"""Where and as whom a client reaches AWS: one settings object for every AWS client.

The DynamoDB clients (aiobotocore and the lean HTTP writer), the S3 archive store and the
Streams client all take an :class:`AwsSettings`; :meth:`ingest.config.AwsConfig.client_settings` builds
the service's from its ``region``, ``dynamodb_endpoint`` and ``aws_*`` keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AwsSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsSettings:
    """Region, endpoint and (optional) explicit credentials of an AWS client.

    Args:
        region: AWS region.
        endpoint_url: Endpoint (``None``: AWS's own, from the region and service).
        aws_access_key_id: Explicit credentials (``None``: botocore's provider chain:
            environment, shared files, container and instance roles).
        aws_secret_access_key: Explicit credentials (never shown in ``repr``).
    """

    region: str = "us-east-1"
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)

    def with_endpoint(self, endpoint_url: str | None) -> AwsSettings:
        """The same region and credentials at another endpoint (S3 next to DynamoDB)."""
        return dataclasses.replace(self, endpoint_url=endpoint_url)

    @property
    def static_credentials(self) -> tuple[str, str] | None:
        """The explicit key pair, or ``None`` when the provider chain is to be used."""
        if self.aws_access_key_id and self.aws_secret_access_key:
            return self.aws_access_key_id, self.aws_secret_access_key
        return None

    def client_kwargs(self) -> dict[str, Any]:
        """The arguments of aiobotocore's ``create_client`` these settings stand for."""
        return {
            "region_name": self.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }
