"""The query API's settings: where the table is, and the limits that keep every request bounded."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServeSettings"]

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeSettings:
    """Settings of ``iot-ingest serve``, validated once at construction.

    Args:
        table: DynamoDB table name.
        region: AWS region.
        endpoint_url: DynamoDB endpoint (``None``: AWS's, from the region).
        aws_access_key_id: Explicit credentials (``None``: the standard provider chain).
        aws_secret_access_key: Explicit credentials.
        max_range_ms: Longest ``end - start`` of one request (raw pages and series).
        max_points: Most windows of one series (per sensor).
        default_points: Windows of a series when neither ``step`` nor ``max_points`` is given.
        max_page_limit: Largest ``limit`` of a raw readings page.
        default_page_limit: ``limit`` of a raw readings page when not given.
        max_sensors: Most sensors in one multi-sensor series request.
        max_sensor_page: Largest ``limit`` of a sensor-list page.
        query_concurrency: DynamoDB calls in flight, across all requests (the fan-out bound).
        latest_future_ms: How far past "now" ``/latest`` looks (clock skew of devices).
    """

    table: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    max_range_ms: int = 31 * _DAY_MS
    max_points: int = 10_000
    default_points: int = 500
    max_page_limit: int = 10_000
    default_page_limit: int = 1_000
    max_sensors: int = 20
    max_sensor_page: int = 1_000
    query_concurrency: int = 16
    latest_future_ms: int = 300_000

    def __post_init__(self) -> None:
        for name in (
            "max_range_ms",
            "max_points",
            "default_points",
            "max_page_limit",
            "default_page_limit",
            "max_sensors",
            "max_sensor_page",
            "query_concurrency",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_points < 10:
            raise ValueError(f"max_points must be >= 10, got {self.max_points}")
        if self.default_points > self.max_points:
            raise ValueError(
                f"default_points ({self.default_points}) exceeds max_points ({self.max_points})"
            )
        if self.default_page_limit > self.max_page_limit:
            raise ValueError(
                f"default_page_limit ({self.default_page_limit}) exceeds "
                f"max_page_limit ({self.max_page_limit})"
            )
        if self.latest_future_ms < 0:
            raise ValueError(f"latest_future_ms must be >= 0, got {self.latest_future_ms}")
